"""How far the search's compute-budget timing strays while a second search worker trains beside
it: in a process on every core, as each worker of the last E5 study timed its candidates until
its first trial trained (it set its threads only then), against the worker's own share, one thread.

    python bench/cost_noise.py [--experiment e5_search] [--candidate-trial 19] [--repeats 16]
                               [--batch-size 32] [--out bench/cost_noise.json]   # or: make bench-cost-noise

In the last E5 study, timed with two workers on 2 cores, nets of one shape read far apart: the
hand-designed net against itself 0.82x to 1.04x, a three-block net 1.46x to 2.22x, against an
allowance of 10% (cnnlab.training_cost.TIMING_NOISE). Here E5's baseline is timed against itself
and the study's ``--candidate-trial`` against the baseline (``relative_training_cost``), ``--repeats``
times each way, the ways interleaved, while another process trains as a search worker does
(training steps, an evaluation, a pause, on one thread). Each way's readings: their median
against the same nets timed on one thread with nothing beside them, and how far they scatter
about that median. The batch is smaller than a trial's so that a step here (fp32 without native
bf16) takes about as long as a trial's does with AMX; the load process trains at that batch too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import torch

from scratch_project import ROOT
from search_cost import baseline_for, committed_study

from cnnlab.models import create_model
from cnnlab.runtime import available_cores, machine, resolve_runtime
from cnnlab.search import SEARCHED_FAMILY
from cnnlab.training_cost import TIMING_NOISE, relative_training_cost

QUIET_REPEATS = 3
# A search worker's rhythm, shortened: an epoch of training steps, its evaluation, the pause of
# logging and starting the next trial.
TRAIN_SECONDS, EVALUATE_SECONDS, PAUSE_SECONDS = 6.0, 1.5, 0.5


def search_worker_load(kwargs: dict, batch_size: int, training, stop) -> None:
    """Train, evaluate and pause in turn on one thread until ``stop`` is set; ``training`` is set
    once the first step is done (torch imported, the net built)."""
    torch.set_num_threads(1)
    net = create_model(SEARCHED_FAMILY, **kwargs)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    images = torch.rand(batch_size, kwargs["in_channels"], kwargs["image_size"], kwargs["image_size"])
    labels = torch.randint(0, kwargs["num_classes"], (batch_size,))
    while not stop.is_set():
        net.train()
        until = time.perf_counter() + TRAIN_SECONDS
        while time.perf_counter() < until and not stop.is_set():
            loss = torch.nn.functional.cross_entropy(net(images)[0], labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            training.set()
        net.eval()
        until = time.perf_counter() + EVALUATE_SECONDS
        with torch.no_grad():
            while time.perf_counter() < until and not stop.is_set():
                net(images)
        time.sleep(PAUSE_SECONDS)


def spread(readings: list[float], quiet: float) -> dict:
    """Where one way's readings sit (their median against the quiet reading: what the worker's
    load does to the ratio) and how far they scatter about their own median (the timing's noise,
    which the compute budget allows for)."""
    median = statistics.median(readings)
    scatter = [abs(reading / median - 1) for reading in readings]
    return {"readings": [round(r, 3) for r in readings], "median": round(median, 3),
            "min": round(min(readings), 3), "max": round(max(readings), 3),
            "median_over_quiet": round(median / quiet, 3), "scatter": round(max(scatter), 3),
            "beyond_timing_noise": sum(s > TIMING_NOISE for s in scatter)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="e5_search")
    parser.add_argument("--candidate-trial", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "cost_noise.json")
    args = parser.parse_args()
    config, baseline, summary_path, summary = committed_study(args.experiment)
    trials = {trial["number"]: trial for trial in summary["trials"]}
    if args.candidate_trial not in trials:
        raise SystemExit(f"{summary_path.relative_to(ROOT)} has no trial {args.candidate_trial}; "
                         f"--candidate-trial takes one of {min(trials)} to {max(trials)}")
    candidate = trials[args.candidate_trial]["model_kwargs"]
    baseline_kwargs = baseline_for(baseline, candidate)
    runtime = resolve_runtime(config.train.device, config.train.precision)
    nets = {"baseline_against_itself": baseline_kwargs, f"trial_{args.candidate_trial}_against_baseline": candidate}

    ways = {"every_core": available_cores(), "one_thread": 1}

    def timed(threads: int, kwargs: dict) -> float:
        torch.set_num_threads(threads)
        return relative_training_cost(SEARCHED_FAMILY, kwargs, baseline_kwargs, args.batch_size, runtime)

    quiet = {name: statistics.median(timed(1, kwargs) for _ in range(QUIET_REPEATS))
             for name, kwargs in nets.items()}
    print("with nothing beside it: " + ", ".join(f"{name} {cost:.3f}x" for name, cost in quiet.items()), flush=True)
    readings: dict[str, dict[str, list[float]]] = {way: {name: [] for name in nets} for way in ways}
    context = multiprocessing.get_context("spawn")
    training, stop = context.Event(), context.Event()
    load = context.Process(target=search_worker_load, args=(baseline_kwargs, args.batch_size, training, stop))
    load.start()
    started = time.perf_counter()
    try:
        if not training.wait(timeout=120):
            raise SystemExit("the load process did not start training within 120 s")
        for repeat in range(args.repeats):
            for way in ways:  # interleaved: each way meets the load's phases alike
                for name, kwargs in nets.items():
                    readings[way][name].append(timed(ways[way], kwargs))
            print(f"repeat {repeat + 1}/{args.repeats}: " + "; ".join(
                f"{way} " + ", ".join(f"{values[-1]:.3f}" for values in readings[way].values()) for way in ways),
                flush=True)
    finally:
        stop.set()
        load.join()
    result = {name: {way: spread(readings[way][name], quiet[name]) for way in ways} for name in nets}
    for name, by_way in result.items():
        print(f"{name}: scatter about the median " + ", ".join(
            f"{way} {by_way[way]['scatter']:.1%}" for way in ways))
    report = {"experiment": args.experiment, "source": str(summary_path.relative_to(ROOT)),
              "baseline": {"model": baseline.name, "kwargs": baseline.kwargs},
              "candidate": {"trial": args.candidate_trial, "kwargs": candidate}, "batch_size": args.batch_size,
              "repeats": args.repeats, "threads": ways, "timing_noise": TIMING_NOISE, "quiet": {k: round(v, 3) for k, v in quiet.items()},
              "load": {"train_seconds": TRAIN_SECONDS, "evaluate_seconds": EVALUATE_SECONDS,
                       "pause_seconds": PAUSE_SECONDS, "threads": 1},
              "nets": result, "seconds": round(time.perf_counter() - started, 1), "runtime": runtime.describe(),
              "machine": machine(), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
