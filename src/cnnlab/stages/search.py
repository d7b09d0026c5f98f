"""``cnnlab search``, ``search-report`` and ``retrain-best``: E5's study and its winner."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..config import Config, ModelConfig
from ..contract import RunFiles, StudyFiles, seed_run, winner_name
from ..files import read_json
from ..machines import describe_kind, describe_kinds, one_kind
from ..selection import chosen_seed_run, search_winner
from .export import export
from .register import register
from .seeds import seeds

log = logging.getLogger(__name__)


def search(config: Config) -> dict[str, Any]:
    """Run or resume the study; what search.json holds. The study's MLflow parent run runs while
    this invocation works on the study and ends with it, whatever ends it."""
    from ..lifecycle import describe_exit
    from ..search import end_parent_run, search_with_workers, write_summary

    try:
        study = search_with_workers(config, RunFiles.of(config).prepared)
    except BaseException as err:
        end_parent_run(config, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", describe_exit(err))
        raise
    summary = write_summary(study, StudyFiles.of(config).search_summary, config)
    end_parent_run(config, "FINISHED")
    states = ", ".join(f"{k.lower()} {v}" for k, v in summary["states"].items() if v)
    print(f"study {study.study_name}: {states}")
    for best in summary["best"]:
        print(f"best trial {best['number']}: val accuracy {best['val_accuracy']:.4f}, "
              f"{best['parameters']:,d} parameters, {best['model_kwargs']}")
    return summary


def search_report(config: Config) -> list[Path]:
    """The study's figures from search.json, logged to the study's MLflow parent run."""
    from .. import report as plots
    from ..tracking import RunTracker

    files = StudyFiles.of(config)
    summary = read_json(files.search_summary, "search")
    figures = [
        plots.plot_search_history(summary, files.search_figures / "history.png"),
        plots.plot_accuracy_vs_parameters(summary, files.search_figures / "accuracy_vs_parameters.png"),
        plots.plot_param_importances(summary, files.search_figures / "param_importances.png"),
        plots.plot_parallel_coordinates(summary, files.search_figures / "parallel_coordinates.png"),
    ]
    if summary.get("mlflow_parent_run_id"):
        parent = RunTracker(config, run_id=summary["mlflow_parent_run_id"])
        parent.log_artifacts(figures, "search_figures")
        parent.log_artifact(files.search_summary)
    print("search figures: " + ", ".join(str(f) for f in figures))
    return figures


def winner_config(config: Config, best: dict[str, Any]) -> Config:
    """The experiment's training (its epochs, augmentation, TTA) with the search winner's
    architecture and searched recipe."""
    from ..search import with_recipe

    return dataclasses.replace(config, run=winner_name(config.search.study),
                               train=with_recipe(config.train, best["training"]),
                               model=ModelConfig("search_cnn", best["model_kwargs"]))


def retrained_winner(config: Config) -> Config:
    """The study's winner (chosen on validation) as a run to retrain over the seeds; refuses
    one over the parameter budget."""
    from ..models.searchable import count_for

    summary = read_json(StudyFiles.of(config).search_summary, "search")
    if not summary["best"]:
        raise RuntimeError(f"study {config.search.study} has no complete trial yet; run `cnnlab search` longer")
    best = search_winner(summary)
    parameters = count_for(best["model_kwargs"])
    if parameters > config.search.param_budget:
        raise RuntimeError(f"trial {best['number']} has {parameters:,d} parameters, over the budget "
                           f"{config.search.param_budget:,d}; refusing to train it")
    warn_of_another_machine(config.search.study, summary.get("machines") or [])
    winner = winner_config(config, best)
    print(f"retraining trial {best['number']} of {config.search.study} ({parameters:,d} parameters) as "
          f"{winner.name} with seeds {winner.seeds}", flush=True)
    return winner


def warn_of_another_machine(study: str, searched_on: list[dict[str, Any]]) -> None:
    """Say before hours of retraining, not after, when the study ran on another kind of machine
    than this one: search-compare will not add the two wall times up."""
    from ..runtime import machine

    here = machine()
    if searched_on and one_kind([*searched_on, here]):
        return
    log.warning("study %s ran on %s, this retraining runs on %s: its search plus retraining will not count as "
                "one wall time (to time both on one machine, run the study here too, then retrain)",
                study, describe_kinds(searched_on), describe_kind(here))


def retrain_best(config: Config) -> dict[str, Any]:
    """Retrain the best trial with every seed, then export and register the seed with the best
    validation accuracy (test accuracy is reported, never used to choose)."""
    winner = retrained_winner(config)
    result = seeds(winner)
    chosen_seed = chosen_seed_run(result["runs"])["seed"]
    tracking = dataclasses.replace(winner.tracking, registered_model=winner.name.replace("_", "-"))
    chosen = dataclasses.replace(winner, run=seed_run(winner.name, chosen_seed), tracking=tracking)
    export(chosen)
    return {**result, "registered": register(chosen), "registered_seed": chosen_seed}
