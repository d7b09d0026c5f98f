"""Distributed training throughput: 2 processes x 1 thread (torchrun, gloo) vs 1 process x 2 threads.

    CNNLAB_DATASETS=../shared/datasets python bench/ddp_throughput.py [--images 6400] [--repeats 5] \
        [--out bench/ddp_throughput.json]          # or: make bench-ddp

Both sides run the real command on the same prepared MNIST subset, params.yaml's E1 settings
(SimpleCNN, batch 128, bf16 + channels_last only where the CPU has native bf16), each in fresh
processes: ``cnnlab train -S train.threads=T`` against ``torchrun --standalone
--nproc_per_node=P -m cnnlab.cli train -S train.threads=T`` (T split into T/P threads per rank).
Each measures its second epoch's ``train_images_per_second`` (history.json; the first pays
kernel set-up and the rendezvous). The two alternate, so load that comes and goes hits both;
the JSON holds every repeat, the medians, their ratio and the median of the per-repeat
ratios, with the CPU, its flags, the thread counts and the load average around the runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cnnlab.data import SourceContext, load_raw, prepare
from cnnlab.data.prepare import save_prepared
from cnnlab.runtime import available_cores, cpu_flags, cpu_has_fast_bf16, machine

ROOT = Path(__file__).resolve().parents[1]
RUN = "e1_mnist_simple_cnn"  # params.yaml's experiment: where its files go
# Flags that decide how fast a CPU trains a CNN (oneDNN's kernels), recorded with the numbers.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def train_command(side: str, processes: int, threads: int, workdir: Path) -> list[str]:
    settings = [f"models_dir={workdir / 'models'}", f"outputs_dir={workdir / 'outputs'}",
                f"data.prepared_dir={workdir / 'prepared'}", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
                "tracking.log_model=false", "train.epochs=2", "train.progress=false", f"train.threads={threads}",
                f"run={side}"]
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "cnnlab.cli"] if processes > 1 else [sys.executable, "-m", "cnnlab.cli"])
    return [*launch, "train", "--params", str(ROOT / "params.yaml"), *(w for s in settings for w in ("-S", s))]


def images_per_second(side: str, processes: int, threads: int, workdir: Path) -> tuple[float, str]:
    """The second epoch's training images per second, and the runtime the run reported."""
    done = subprocess.run(train_command(side, processes, threads, workdir), capture_output=True, text=True,
                          cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{side} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    outputs = workdir / "outputs" / side
    history = json.loads((outputs / "history.json").read_text())
    runtime = json.loads((outputs / "train_metrics.json").read_text())["runtime"]
    return history[-1]["train_images_per_second"], runtime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6400, help="training images per epoch")
    parser.add_argument("--val-images", type=int, default=1000, help="validation images per epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2, help="torchrun ranks, each on threads/processes threads")
    parser.add_argument("--threads", type=int, default=0, help="threads in all, both sides (0 = every core)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "ddp_throughput.json"))
    args = parser.parse_args()
    datasets = os.environ.get("CNNLAB_DATASETS")
    if not datasets:
        print("set CNNLAB_DATASETS to the datasets directory (with mnist/*.gz)", file=sys.stderr)
        return 2
    threads = args.threads or available_cores()
    if threads < args.processes:
        print(f"--threads {threads} is fewer than --processes {args.processes}", file=sys.stderr)
        return 2
    single_side, ddp_side = f"1x{threads}_threads", f"{args.processes}x{threads // args.processes}_threads"
    load_before = os.getloadavg()
    repeats = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ctx = SourceContext(raw_dir=workdir / "none", datasets_dir=Path(datasets), download=False, fallback="error")
        data = prepare(load_raw("mnist", ctx), 0.1, 0, train_subset=args.images)
        data = dataclasses.replace(data, x_val=data.x_val[: args.val_images], y_val=data.y_val[: args.val_images])
        save_prepared(data, workdir / "prepared" / "mnist.pt")
        runtimes = {}
        for repeat in range(args.repeats):
            single, runtimes[single_side] = images_per_second(single_side, 1, threads, workdir)
            ddp, runtimes[ddp_side] = images_per_second(ddp_side, args.processes, threads, workdir)
            repeats.append({single_side: round(single, 1), ddp_side: round(ddp, 1), "ratio": round(ddp / single, 3)})
            print(f"repeat {repeat + 1}: {single_side} {single:.0f} img/s, {ddp_side} {ddp:.0f} img/s, "
                  f"ratio {ddp / single:.2f}", flush=True)
    single_median = statistics.median(r[single_side] for r in repeats)
    ddp_median = statistics.median(r[ddp_side] for r in repeats)
    # Each repeat measures both sides back to back: the median of those paired ratios shrugs
    # off load that comes and goes between repeats.
    paired = statistics.median(r["ratio"] for r in repeats)
    flags = cpu_flags()
    result = {
        "command": "python bench/ddp_throughput.py " + " ".join(sys.argv[1:]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": {"model": machine()["cpu"], "cores_available": available_cores(), "native_bf16": cpu_has_fast_bf16(),
                "flags": {flag: flag in flags for flag in SPEED_FLAGS}},
        "torch": torch.__version__,
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "workload": {"model": "simple_cnn (params.yaml, E1)", "train_images": len(data.y_train),
                     "val_images": len(data.y_val), "batch_size": "params.yaml train.batch_size, global",
                     "measured": "second epoch's train_images_per_second"},
        "sides": {single_side: {"processes": 1, "threads_per_process": threads, "runtime": runtimes[single_side]},
                  ddp_side: {"processes": args.processes, "threads_per_process": threads // args.processes,
                             "backend": "gloo", "runtime": runtimes[ddp_side]}},
        "repeats": repeats,
        "median_images_per_second": {single_side: single_median, ddp_side: ddp_median},
        "ratio_of_medians": round(ddp_median / single_median, 3),
        "median_of_paired_ratios": paired,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nCPU {result['cpu']['model']}, native bf16: {cpu_has_fast_bf16()}; load {load_before[0]:.1f} before")
    print(f"{single_side}: median {single_median:.0f} img/s   {ddp_side}: median {ddp_median:.0f} img/s")
    print(f"ratio of medians {ddp_median / single_median:.2f}x; median of per-repeat ratios {paired:.2f}x; "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
