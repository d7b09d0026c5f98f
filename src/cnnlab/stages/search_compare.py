"""Does the search find anything its hand-designed start does not? Three arms at the same compute.

- the entry's own study (``cnnlab search``), its winner retrained by ``cnnlab retrain-best``;
- the control: the same study with the other sampler (TPE <-> random) and no enqueued trial,
  ``search.epoch_budget`` epochs over its trials like the study's own (``cnnlab search-control``),
  its winner retrained over the same seeds (``cnnlab retrain-control``);
- the entry's hand-designed model alone (its ``model`` and ``train``), trained over the same
  seeds by ``cnnlab seeds``.

``cnnlab search-compare`` puts the three side by side; it trains nothing, so each arm is a DVC
stage of its own, cached and resumable apart from the others. Each winner is chosen on
validation accuracy; test accuracy is reported, never used to choose.

An arm's search plus retraining is a wall time only when both ran on one kind of machine (the
study's trials record theirs, the seeds.json its own): machines here differ by session, and a
search on one CPU added to a retraining on another measures neither.

    dvc repro experiments/dvc.yaml:search_compare-e5_search
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import SAMPLERS, Config, ConfigError
from ..contract import ControlFiles, RunFiles, StudyFiles, control_sampler, control_study
from ..files import read_json, write_json
from ..machines import timed_on_one_kind
from ..metrics import mean_std
from ..results import format_comparison
from ..selection import search_winner
from .search import retrained_winner, search
from .seeds import seeds

def control_config(config: Config) -> Config:
    """The entry with the other sampler, in a study of its own, with no enqueued candidates:
    an enqueued hand-designed trial would be the baseline, not that sampler's find."""
    sampler = control_sampler(config.search.sampler)
    return dataclasses.replace(config, search=dataclasses.replace(
        config.search, sampler=sampler, study=control_study(config.search.study, config.search.sampler), enqueue=[]))


def search_control(config: Config) -> dict[str, Any]:
    """The control study (what ``control_summary`` holds)."""
    return search(control_config(config))


def retrain_control(config: Config) -> dict[str, Any]:
    """The control study's winner over the seeds (what ``control_winner_seeds`` holds)."""
    return seeds(retrained_winner(control_config(config)))


def retrained(summary: dict[str, Any]) -> dict[str, Any]:
    """A seeds.json's validation and test accuracy (mean, std, per seed) and wall time."""
    runs = summary["runs"]
    val_mean, val_std = mean_std([r["best_val_accuracy"] for r in runs])  # seeds.json holds test's only
    return {"val_accuracy_mean": val_mean, "val_accuracy_std": val_std,
            "test_accuracy_mean": summary["test_accuracy_mean"], "test_accuracy_std": summary["test_accuracy_std"],
            "seeds": [r["seed"] for r in runs],
            "per_seed": [{k: r[k] for k in ("seed", "best_val_accuracy", "test_accuracy")} for r in runs],
            "total_parameters": summary["total_parameters"], "wall_seconds": summary["wall_seconds_total"],
            "machine": summary["machine"]}  # where its wall time was measured


def search_plus_retrain_hours(arm: dict[str, Any]) -> float | None:
    """The arm's search and retraining wall time in hours, or None unless every trial of its
    search ran on the kind of machine that retrained its winner (a study from before trials
    recorded their machine has none to check)."""
    seconds = timed_on_one_kind((arm["search_wall_seconds"], arm["search_machines"]),
                                (arm["retrained"]["wall_seconds"], [arm["retrained"]["machine"]]))
    return None if seconds is None else seconds / 3600


def search_arm(name: str, study: dict[str, Any], winner_seeds: dict[str, Any]) -> dict[str, Any]:
    best = search_winner(study)  # the trial its retrain-best / retrain-control retrained
    return {"arm": name, "study": study["study"], "sampler": study["sampler"],
            "epoch_budget": study["epoch_budget"], "epochs_spent": study["epochs_spent"], "trials": len(study["trials"]),
            "states": {k: v for k, v in study["states"].items() if v},
            "search_wall_seconds": study["wall_seconds"], "search_machines": study.get("machines", []),
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
    """The three arms side by side (what search_comparison.json holds), from their files."""
    from .. import report as plots

    if not config.search.epoch_budget:
        raise ConfigError("search-compare compares samplers at equal compute: set search.epoch_budget "
                          "(epochs over all trials), the same for both studies, and run `cnnlab search` again")
    files, control = StudyFiles.of(config), ControlFiles.of(config)
    own_study = read_json(files.search_summary, "search")
    arms = [search_arm(config.search.sampler, own_study, read_json(files.winner_seeds, "retrain-best")),
            search_arm(control_sampler(config.search.sampler), read_json(control.control_summary, "search-control"),
                       read_json(control.control_winner_seeds, "retrain-control"))]
    arms.sort(key=lambda a: SAMPLERS.index(a["sampler"]))
    hand = {"arm": "hand-designed", "model_kwargs": config.model.kwargs,
            "retrained": retrained(read_json(RunFiles.of(config).seeds, "seeds"))}
    check_same_protocol(config, arms, hand)
    baseline_test = hand["retrained"]["test_accuracy_mean"]
    comparison = {
        "study": config.search.study, "epoch_budget": config.search.epoch_budget,
        "param_budget": config.search.param_budget, "retrain_epochs": config.train.epochs, "seeds": config.seeds,
        "arms": [*arms, hand],
        "gain_over_hand_designed_pp": {a["arm"]: 100 * (a["retrained"]["test_accuracy_mean"] - baseline_test)
                                       for a in arms},
        "search_plus_retrain_hours": {a["arm"]: search_plus_retrain_hours(a) for a in arms},
    }
    write_json(files.search_comparison, comparison)
    plots.plot_search_comparison(comparison, files.search_comparison_figure)
    if own_study.get("mlflow_parent_run_id"):  # beside the study's other figures in MLflow
        from ..tracking import RunTracker

        RunTracker(config, run_id=own_study["mlflow_parent_run_id"]).log_artifacts(
            [files.search_comparison, files.search_comparison_figure], "search_comparison")
    print(format_comparison(comparison))
    return comparison


def check_same_protocol(config: Config, arms: list[dict[str, Any]], hand: dict[str, Any]) -> None:
    """Refuse to compare arms that ran under other settings than these (a file left by an
    earlier run): each must have spent this epoch budget and retrained over these seeds."""
    stale = [f"{a['arm']} spent {a['epochs_spent']} trial-epochs of a budget of {a['epoch_budget']}"
             for a in arms if a["epoch_budget"] != config.search.epoch_budget]
    stale += [f"{a['arm']} was retrained with seeds {a['retrained']['seeds']}"
              for a in (*arms, hand) if a["retrained"]["seeds"] != list(config.seeds)]
    if stale:
        raise ConfigError(f"the arms do not share this protocol (search.epoch_budget={config.search.epoch_budget}, "
                          f"seeds={list(config.seeds)}): " + "; ".join(stale) + ". Re-run what is stale: "
                          "`dvc repro experiments/dvc.yaml:search_compare-<entry>` runs exactly that")
