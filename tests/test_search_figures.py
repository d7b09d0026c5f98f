"""Figures of an Optuna search summary (search.json): every figure is written whatever the trials hold.

    .venv/bin/python -m pytest -q tests/test_search_figures.py
"""

import json
from pathlib import Path

import numpy as np
import pytest

from cnnlab import report
from cnnlab.report import _pareto_front

from .conftest import PROJECT_ROOT

SEARCH_FIGURES = (report.plot_search_history, report.plot_accuracy_vs_parameters, report.plot_param_importances,
                  report.plot_parallel_coordinates)
# The committed summary of the real E5 study (40 trials, pruned and failed ones included).
REAL_SUMMARY = PROJECT_ROOT / "outputs" / "e5_search" / "search.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_summary(n_trials: int = 12, param_budget: int = 20_000, seed: int = 0) -> dict:
    """A summary shaped like search.write_summary's: complete, pruned mid-training (with and without the
    last accuracy), over-budget, failed and running trials, conditional parameters, None values."""
    rng = np.random.default_rng(seed)
    states = ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "PRUNED", "FAIL", "COMPLETE", "PRUNED", "COMPLETE",
              "RUNNING", "COMPLETE", "PRUNED"]
    trials = []
    for number in range(n_trials):
        state = states[number % len(states)]
        stages = int(rng.integers(2, 5))
        block_style = str(rng.choice(["plain", "residual", "inception"]))
        params = {"stages": stages, "block_style": block_style,
                  **{f"width_{i}": int(rng.choice([8, 16, 32])) for i in range(stages)},
                  "batch_norm": bool(rng.integers(2)), "dropout": float(rng.uniform(0, 0.5))}
        if block_style == "residual":
            params["preactivation"] = bool(rng.integers(2))
        params.update(optimizer=str(rng.choice(["adam", "sgd"])), lr=float(10 ** rng.uniform(-4, -2)), batch_size=128)
        parameters, accuracy, reason = int(rng.integers(3_000, param_budget)), float(rng.uniform(0.5, 0.99)), ""
        if state == "PRUNED" and number % 8 == 2:
            parameters, accuracy, reason = 3 * param_budget, None, f"over budget: {3 * param_budget:,d} parameters"
        elif state == "PRUNED" and number % 8 == 7:
            accuracy, reason = None, "pruned at epoch 1"  # Optuna kept no value
        elif state == "PRUNED":
            reason = f"pruned at epoch 1 (val accuracy {accuracy:.4f})"
        elif state in ("FAIL", "RUNNING"):
            parameters, accuracy = (None if state == "RUNNING" else parameters), None
        trials.append({"number": number, "state": state, "val_accuracy": accuracy, "parameters": parameters,
                       "reason": reason, "params": params, "model_kwargs": None, "mlflow_run_id": None,
                       "seconds": None if state == "RUNNING" else 5.0})
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = [max(complete, key=lambda t: t["val_accuracy"])] if complete else []
    names = sorted({name for t in complete for name in t["params"]})
    return {"study": "synthetic", "param_budget": param_budget, "trials": trials, "best": best,
            "importances": {name: 1 / (i + 1) for i, name in enumerate(names)},
            "states": {s: sum(t["state"] == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}}


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1_000
    assert path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("plot", SEARCH_FIGURES, ids=lambda f: f.__name__)
def test_every_figure_is_written_for_a_mixed_study(plot, tmp_path):
    path = tmp_path / "figures" / f"{plot.__name__}.png"
    assert plot(make_summary(), path) == path
    assert_png(path)


@pytest.mark.parametrize("plot", SEARCH_FIGURES, ids=lambda f: f.__name__)
def test_every_figure_copes_with_no_complete_trial(plot, tmp_path):
    summary = make_summary()
    summary["trials"] = [t for t in summary["trials"] if t["state"] != "COMPLETE"]
    summary.update(best=[], importances={})
    assert_png(plot(summary, tmp_path / "empty.png"))


@pytest.mark.parametrize("plot", SEARCH_FIGURES, ids=lambda f: f.__name__)
def test_every_figure_copes_with_missing_and_none_fields(plot, tmp_path):
    """No trials at all, and a summary whose fields are None (no budget, no study name, a trial of Nones)."""
    assert_png(plot({"trials": []}, tmp_path / "no_trials.png"))
    summary = make_summary(n_trials=4)
    summary.update(study=None, param_budget=None, importances={"lr": None, "dropout": 0.5})
    summary["trials"].append({"number": None, "state": "COMPLETE", "val_accuracy": None, "parameters": None,
                              "reason": None, "params": None})
    summary["trials"][0]["params"]["dropout"] = None
    assert_png(plot(summary, tmp_path / "nones.png"))


def test_one_complete_trial_and_empty_importances(tmp_path):
    summary = make_summary(n_trials=1)
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"]
    summary["importances"] = {}
    for plot in SEARCH_FIGURES:
        assert_png(plot(summary, tmp_path / f"{plot.__name__}.png"))


def test_every_figure_from_a_real_search_summary(tmp_path):
    summary = json.loads(REAL_SUMMARY.read_text())
    assert {"COMPLETE", "PRUNED"} <= {t["state"] for t in summary["trials"]}
    if not any(t["state"] == "FAIL" for t in summary["trials"]):  # the committed study had none: add one
        failed = dict(summary["trials"][-1], number=len(summary["trials"]), state="FAIL", val_accuracy=None,
                      reason="loss became nan at epoch 1")
        summary["trials"].append(failed)
    for plot in SEARCH_FIGURES:
        assert_png(plot(summary, tmp_path / f"{plot.__name__}.png"))


def test_pareto_front_keeps_points_that_nothing_beats():
    points = [(10, 0.5), (20, 0.7), (15, 0.4), (30, 0.7), (25, 0.8)]
    assert _pareto_front(points) == [0, 1, 4]


def test_pareto_front_ties_and_edge_cases():
    assert _pareto_front([]) == []
    assert _pareto_front([(5, 0.1)]) == [0]
    assert _pareto_front([(10, 0.7), (20, 0.7)]) == [0]  # same accuracy, more parameters: dominated
    assert _pareto_front([(10, 0.6), (10, 0.7)]) == [1]  # same parameters, less accurate: dominated
    assert _pareto_front([(10, 0.7), (10, 0.7)]) == [0]  # identical points: the first stands for both
    assert _pareto_front([(30, 0.9), (20, 0.8), (10, 0.7)]) == [2, 1, 0]  # ordered by parameters
