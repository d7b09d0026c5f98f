"""What each trial of the committed study costs to train per image, relative to the entry's own
model (the search's compute budget, cnnlab.training_cost), timed here in one thread as a search
worker trains.

    python bench/search_cost.py [--experiment e5_search] [--repeats 3] [--self-repeats 10]
                                [--out bench/search_cost.json]          # or: make bench-search-cost

Issue #16 wants the search and the winner's retraining within 2.5 h on this 2-core CPU, and the
winner's seeds retrain at the winner's speed. Per complete trial of ``outputs/<study>/search.json``
(and its winner) this records the median over ``--repeats`` of its relative cost, and whether
the compute budget (search.cost_cap) would let it train: a study that ran before the budget shows which
of its trials, the winner included, a search under it would have pruned before training. The
baseline is also timed against itself ``--self-repeats`` times: how far the timing strays from
1.0, which the budget allows for (cnnlab.training_cost.TIMING_NOISE).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from scratch_project import ROOT

from cnnlab.config import load_config
from cnnlab.contract import StudyFiles
from cnnlab.runtime import machine, resolve_runtime
from cnnlab.search import SEARCHED_FAMILY, baseline_model
from cnnlab.selection import search_winner
from cnnlab.training_cost import TIMING_NOISE, cost_ceiling, relative_training_cost

INPUT_KEYS = ("in_channels", "num_classes", "image_size")  # what the study's resolved kwargs add to the entry's


def committed_study(experiment: str):
    """The entry's config, its own model (the compute budget's baseline), and its committed study's
    search.json with the path it came from; exits naming the problem when the entry has no budget."""
    config = load_config(ROOT / "params.yaml", [f"experiment={experiment}"])
    baseline = baseline_model(config)
    if baseline is None:
        raise SystemExit(f"{experiment}'s model is {config.model.name}, not {SEARCHED_FAMILY}: no compute budget")
    summary_path = ROOT / StudyFiles.of(config).search_summary  # outputs_dir is relative to the project
    return config, baseline, summary_path, json.loads(summary_path.read_text())


def baseline_for(baseline, trial_kwargs: dict) -> dict:
    """The baseline's resolved kwargs: its own, with a trial's input shape and classes (one dataset)."""
    return {**{key: trial_kwargs[key] for key in INPUT_KEYS}, **baseline.kwargs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="e5_search")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--self-repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "search_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a search worker's share of the 2 cores
    config, baseline, summary_path, summary = committed_study(args.experiment)
    winner = search_winner(summary)["number"]
    runtime = resolve_runtime(config.train.device, config.train.precision)
    load_before = os.getloadavg()[0]  # other work on the machine slows both nets of a pair alike
    complete = [trial for trial in summary["trials"] if trial["state"] == "COMPLETE"]
    baseline_kwargs = baseline_for(baseline, complete[0]["model_kwargs"])
    self_costs = [relative_training_cost(SEARCHED_FAMILY, baseline_kwargs, baseline_kwargs, config.train.batch_size,
                                         runtime) for _ in range(args.self_repeats)]
    print(f"the baseline against itself: {min(self_costs):.3f}x to {max(self_costs):.3f}x", flush=True)
    rows = []
    for trial in complete:
        kwargs = trial["model_kwargs"]
        costs = [relative_training_cost(SEARCHED_FAMILY, kwargs, baseline_kwargs, trial["training"]["batch_size"], runtime)
                 for _ in range(args.repeats)]
        cost = statistics.median(costs)
        rows.append({"number": trial["number"], "winner": trial["number"] == winner,
                     "val_accuracy": trial["val_accuracy"], "parameters": trial["parameters"],
                     "block_style": kwargs["block_style"], "widths": kwargs["widths"],
                     "relative_costs": [round(c, 3) for c in costs], "relative_cost": round(cost, 3),
                     "within_budget": cost <= cost_ceiling(config.search.cost_cap)})
        print(f"trial {trial['number']:3d} {kwargs['block_style']:9s} {kwargs['widths']}: {cost:.2f}x the baseline",
              flush=True)
    result = {"experiment": args.experiment, "study": summary["study"], "source": str(summary_path.relative_to(ROOT)),
              "baseline": {"model": baseline.name, "kwargs": baseline.kwargs}, "cost_cap": config.search.cost_cap,
              "timing_noise": TIMING_NOISE, "repeats": args.repeats,
              "self_costs": [round(c, 3) for c in self_costs],
              "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}, "runtime": runtime.describe(), "machine": machine(),
              "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "trials": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
