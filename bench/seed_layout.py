"""How to lay out an entry's seeds on this CPU: which ``seed_workers`` trains them soonest.

    CNNLAB_DATASETS=../shared/datasets python bench/seed_layout.py [--experiment e5_search] \
        [--images 10000] [--repeats 3] [--out bench/seed_layout.json]      # or: make bench-seeds

Each layout runs P processes of T threads at once, as ``cnnlab seeds -S seed_workers=P`` lays
them out: each the real ``cnnlab train -S experiment=<entry> -S train.seed=k -S train.threads=T``
for 2 epochs on a subset of the entry's training split (train, not seeds: its test-set
evaluation would only add start-up). It measures each process's second-epoch training images
per second (history.json; the first pays kernel set-up): their sum is the machine's
throughput with that many processes at once. The layouts alternate within each repeat, so load that comes
and goes hits all of them. From the medians it projects the wall time of the entry's
``seeds`` trained for its ``train.epochs`` on its whole training split under each
``seed_workers`` (with 3 seeds and 2 workers, two seeds at once and then the third alone, on
its worker's threads), so the JSON says which setting trains the seeds soonest here. The
projection counts training only (not validation, test evaluation or start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch_project import ROOT, cli_command, entry_settings, prepare_scratch, scratch_settings

from cnnlab.parallel import threads_per_worker
from cnnlab.runtime import available_cores, machine


def per_process_throughput(config_args: list[str], layout: str, processes: int, threads: int,
                           workdir: Path) -> list[float]:
    """Each process's second-epoch training images per second, ``processes`` running at once."""
    runs = [f"{layout}/seed{seed}" for seed in range(processes)]
    settings = [*config_args, *scratch_settings(workdir), "train.epochs=2", f"train.threads={threads}"]
    started = [subprocess.Popen(cli_command("train", [*settings, f"train.seed={seed}", f"run={run}"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
               for seed, run in enumerate(runs)]
    for run, process in zip(runs, started):
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{run} failed ({process.returncode}):\n{stderr[-3000:]}")
    return [json.loads((workdir / "outputs" / run / "history.json").read_text())[-1]["train_images_per_second"]
            for run in runs]


def projected_hours(seeds: int, workers: int, cores: int, epochs: int, images: int,
                    per_process: dict[tuple[int, int], float]) -> float:
    """Wall time of ``seeds`` seeds on ``workers`` processes: full rounds of ``workers`` at once,
    then the rest at once, each process on the threads its worker got."""
    threads = threads_per_worker(workers, cores)
    seconds, left = 0.0, seeds
    while left:
        running = min(workers, left)
        seconds += epochs * images / per_process[(running, threads)]
        left -= running
    return seconds / 3600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="e5_search")
    parser.add_argument("--images", type=int, default=10000, help="training images per epoch")
    parser.add_argument("--val-images", type=int, default=1000, help="validation images per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "seed_layout.json"))
    args = parser.parse_args()
    entry = entry_settings(args.experiment)
    if entry is None:
        return 2
    config_args, config = entry
    cores = available_cores()
    seeds = len(config.seeds)
    # (processes at once, threads each): every layout a projection below needs
    needed = {(min(w, seeds - done), threads_per_worker(w, cores))
              for w in range(1, seeds + 1) for done in range(0, seeds, w)}
    layouts = sorted(needed)
    load_before = os.getloadavg()
    repeats = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        train_images = prepare_scratch(config, workdir, args.images, args.val_images)  # a real epoch's
        for repeat in range(args.repeats):
            measured = {}
            for processes, threads in layouts:
                name = f"{processes}x{threads}"
                measured[name] = [round(v, 1) for v in per_process_throughput(
                    config_args, name, processes, threads, workdir)]
            repeats.append(measured)
            print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {sum(v):.0f} img/s in all" for k, v in measured.items()),
                  flush=True)
    # each process's throughput, median over repeats of the mean over the processes running at once
    per_process = {(p, t): statistics.median(statistics.mean(r[f"{p}x{t}"]) for r in repeats) for p, t in layouts}
    projection = {w: round(projected_hours(seeds, w, cores, config.train.epochs, train_images, per_process), 3)
                  for w in range(1, seeds + 1)}
    fastest = min(projection, key=projection.get)
    result = {
        "command": "python bench/seed_layout.py " + " ".join(sys.argv[1:]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "workload": {"experiment": args.experiment, "model": config.model.name, "model_kwargs": config.model.kwargs,
                     "batch_size": config.train.batch_size, "measured_train_images": args.images,
                     "measured": "second epoch's train_images_per_second of each process, all running at once"},
        "repeats": repeats,
        "median_images_per_second_per_process": {f"{p}x{t}": round(v, 1) for (p, t), v in per_process.items()},
        "median_images_per_second_in_all": {f"{p}x{t}": round(p * v, 1) for (p, t), v in per_process.items()},
        "projected_training_hours": {
            "seeds": seeds, "epochs": config.train.epochs, "train_images": train_images,
            "by_seed_workers": {str(w): h for w, h in projection.items()}},
        "fastest_seed_workers": fastest,
        "entry_seed_workers": config.seed_workers,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['machine']['cpu']}, {cores} cores; load {load_before[0]:.1f} before")
    for w, hours in projection.items():
        print(f"seed_workers={w}: {seeds} seeds x {config.train.epochs} epochs x {train_images:,} images in "
              f"{hours * 60:.0f} min of training")
    print(f"fastest: seed_workers={fastest} (the entry sets {config.seed_workers}); written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
