"""``cnnlab search-compare``: does the search find anything its hand-designed start does not?

At the same compute, ``search.epoch_budget`` epochs over all trials: the entry's own study
(``cnnlab search``, its winner retrained by ``cnnlab retrain-best``), a study of the other
sampler (TPE <-> random), and the entry's hand-designed model alone (its ``model`` and
``train``). The other study's winner and the hand-designed model are retrained here with the
same protocol (the entry's epochs and augmentation, every seed). Each winner is chosen on
validation accuracy; test accuracy is reported, never used to choose.

    cnnlab search-compare -S experiment=e5_search
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import Config, ConfigError
from ..contract import StudyFiles, baseline_name, sampler_study
from ..files import read_json, write_json
from ..metrics import mean_std
from ..results import format_comparison
from ..runtime import machine
from .search import search, winner_config
from .seeds import seeds

SAMPLERS = ("tpe", "random")


def other_sampler_config(config: Config) -> Config:
    """The entry with the other sampler, in a study of its own, with no enqueued candidates:
    an enqueued hand-designed trial would be the baseline, not that sampler's find."""
    other = next(s for s in SAMPLERS if s != config.search.sampler)
    return dataclasses.replace(config, search=dataclasses.replace(
        config.search, sampler=other, study=sampler_study(config.search.study, other), enqueue=[]))


def retrained(summary: dict[str, Any]) -> dict[str, Any]:
    """A seeds.json's validation and test accuracy (mean, std, per seed) and wall time."""
    runs = summary["runs"]
    val_mean, val_std = mean_std([r["best_val_accuracy"] for r in runs])
    test_mean, test_std = mean_std([r["test_accuracy"] for r in runs])
    return {"val_accuracy_mean": val_mean, "val_accuracy_std": val_std, "test_accuracy_mean": test_mean,
            "test_accuracy_std": test_std, "seeds": [r["seed"] for r in runs],
            "per_seed": [{k: r[k] for k in ("seed", "best_val_accuracy", "test_accuracy")} for r in runs],
            "total_parameters": summary["total_parameters"], "wall_seconds": summary["wall_seconds_total"]}


def search_arm(name: str, study: dict[str, Any], winner_seeds: dict[str, Any]) -> dict[str, Any]:
    best = study["best"][0]
    return {"arm": name, "study": study["study"], "sampler": study["sampler"],
            "epochs_spent": study["epochs_spent"], "trials": len(study["trials"]),
            "states": {k: v for k, v in study["states"].items() if v},
            "search_wall_seconds": study["wall_seconds"],
            "winner": {k: best[k] for k in ("number", "val_accuracy", "parameters", "model_kwargs", "training")},
            "best_so_far": best_so_far(study["trials"]), "retrained": retrained(winner_seeds)}


def best_so_far(trials: list[dict[str, Any]]) -> list[list[float]]:
    """[cumulative trial-epochs, best validation accuracy of complete trials so far], in the
    order trials ended: the search's progress against the compute it spent."""
    ended = sorted((t for t in trials if t.get("completed")), key=lambda t: t["completed"])
    spent, best, curve = 0, None, []
    for trial in ended:
        spent += int(trial.get("epochs") or 0)
        if trial["state"] == "COMPLETE" and not trial.get("enqueued") and trial.get("val_accuracy") is not None:
            best = max(best or 0.0, trial["val_accuracy"])
        if best is not None:
            curve.append([spent, best])
    return curve


def search_compare(config: Config) -> dict[str, Any]:
    """Run the other sampler's study and both retrainings; what search_comparison.json holds."""
    from .. import report as plots

    if not config.search.epoch_budget:
        raise ConfigError("search-compare compares samplers at equal compute: set search.epoch_budget "
                          "(epochs over all trials), the same for both studies, and run `cnnlab search` again")
    files = StudyFiles.of(config)
    own_study = read_json(files.search_summary, "search")
    own = search_arm(config.search.sampler, own_study, read_json(files.winner_seeds, "retrain-best"))
    other_config = other_sampler_config(config)
    other_study = search(other_config)
    if not other_study["best"]:
        raise RuntimeError(f"study {other_config.search.study} has no complete trial within "
                           f"search.epoch_budget={config.search.epoch_budget}; raise the budget")
    other_winner = winner_config(other_config, other_study["best"][0])
    print(f"retraining {other_config.search.study}'s winner over seeds {config.seeds}", flush=True)
    other = search_arm(other_config.search.sampler, other_study, seeds(other_winner))
    print(f"retraining the hand-designed {config.model.name} {config.model.kwargs} over seeds {config.seeds}",
          flush=True)
    hand = {"arm": "hand-designed", "model_kwargs": config.model.kwargs,
            "retrained": retrained(seeds(dataclasses.replace(config, run=baseline_name(config.search.study))))}
    arms = sorted([own, other], key=lambda a: SAMPLERS.index(a["sampler"])) + [hand]
    baseline_test = hand["retrained"]["test_accuracy_mean"]
    comparison = {
        "study": config.search.study, "epoch_budget": config.search.epoch_budget,
        "param_budget": config.search.param_budget, "retrain_epochs": config.train.epochs, "seeds": config.seeds,
        "arms": arms,
        "gain_over_hand_designed_pp": {a["arm"]: 100 * (a["retrained"]["test_accuracy_mean"] - baseline_test)
                                       for a in arms[:2]},
        "search_plus_retrain_hours": {a["arm"]: (a["search_wall_seconds"] + a["retrained"]["wall_seconds"]) / 3600
                                      for a in arms[:2]},
        "machine": machine(),
    }
    write_json(files.search_comparison, comparison)
    plots.plot_search_comparison(comparison, files.search_comparison_figure)
    if own_study.get("mlflow_parent_run_id"):  # beside the study's other figures in MLflow
        from ..tracking import RunTracker

        RunTracker(config, run_id=own_study["mlflow_parent_run_id"]).log_artifacts(
            [files.search_comparison, files.search_comparison_figure], "search_comparison")
    print(format_comparison(comparison))
    return comparison
