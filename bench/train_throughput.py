"""E1 training throughput: cnnlab's trainer vs a plain torchvision DataLoader loop.

    CNNLAB_DATASETS=../shared/datasets python bench/train_throughput.py [--images 12800] [--repeats 5]

Baseline: torchvision.datasets.MNIST + ToTensor + Normalize, DataLoader(batch 64, shuffle,
no workers), fp32, Adam; the same SimpleCNN. cnnlab: ``fit`` with params.yaml's settings
(in-memory uint8 batches, bf16 + channels_last only where the CPU has native bf16).
The two alternate, so machine noise hits both; prints medians and the ratio. The baseline
runs in a fresh process with the C library's default allocator, as a plain script would;
cnnlab's side runs here, where ``fit`` tunes it (``runtime.keep_freed_memory``). Target on
a CPU with AVX-512-BF16/AMX: >= 3x.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.nn import functional as F

from cnnlab.config import load_config
from cnnlab.data import SourceContext, load_raw, prepare
from cnnlab.models import create_model
from cnnlab.runtime import cpu_has_fast_bf16, set_threads
from cnnlab.builder import build_model
from cnnlab.train import fit

ROOT = Path(__file__).resolve().parents[1]


def baseline_images_per_second(mnist_root: Path, images: int, threads: int) -> float:
    torch.set_num_threads(threads)
    transform = torchvision.transforms.Compose([
        torchvision.transforms.ToTensor(), torchvision.transforms.Normalize((0.1307,), (0.3081,))])
    dataset = torchvision.datasets.MNIST(str(mnist_root), train=True, download=True, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=0)
    model = create_model("simple_cnn").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, start = 0, None
    for step, (x, y) in enumerate(loader):
        if step == 5:  # warm-up excluded
            start, seen = time.perf_counter(), 0
        logits, _ = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
        if start is not None and seen >= images:
            break
    return seen / (time.perf_counter() - start)


def cnnlab_images_per_second(data, workdir: Path) -> tuple[float, str]:
    config = load_config(ROOT / "params.yaml", [
        "train.epochs=2", "train.progress=false", f"models_dir={workdir / 'models'}"])
    result = fit(config, data, build_model(config, data))
    # The second epoch: the first pays oneDNN's kernel set-up, as the baseline's skipped first steps do.
    return result.history[-1]["train_images_per_second"], result.runtime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12800, help="training images per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    datasets = os.environ.get("CNNLAB_DATASETS")
    if not datasets:
        print("set CNNLAB_DATASETS to the datasets directory (with mnist/*.gz)", file=sys.stderr)
        return 2
    set_threads(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw_dir = tmp / "tv" / "MNIST" / "raw"
        raw_dir.mkdir(parents=True)
        for gz in (Path(datasets) / "mnist").glob("*.gz"):
            shutil.copy(gz, raw_dir)  # torchvision finds them (md5) and skips the download
        ctx = SourceContext(raw_dir=tmp / "none", datasets_dir=Path(datasets), download=False, fallback="error")
        data = prepare(load_raw("mnist", ctx), 0.1, 0, train_subset=args.images)
        data = dataclasses.replace(data, x_val=data.x_val[:1000], y_val=data.y_val[:1000])
        baseline, ours, runtime = [], [], ""
        fresh = multiprocessing.get_context("spawn")  # no allocator tuning inherited
        for repeat in range(args.repeats):
            with fresh.Pool(1) as pool:
                baseline.append(pool.apply(baseline_images_per_second,
                                           (tmp / "tv", args.images, torch.get_num_threads())))
            value, runtime = cnnlab_images_per_second(data, tmp)
            ours.append(value)
            print(f"repeat {repeat + 1}: baseline {baseline[-1]:.0f} img/s, cnnlab {ours[-1]:.0f} img/s", flush=True)
    base_median, ours_median = statistics.median(baseline), statistics.median(ours)
    print(f"\nCPU native bf16: {cpu_has_fast_bf16()}; cnnlab runtime: {runtime}; threads: {torch.get_num_threads()}")
    print(f"baseline (DataLoader + ToTensor, fp32, batch 64): median {base_median:.0f} img/s")
    print(f"cnnlab trainer (params.yaml settings):            median {ours_median:.0f} img/s")
    print(f"ratio cnnlab / baseline: {ours_median / base_median:.2f}x  (target >= 3x on a bf16-capable CPU)")
    # Each repeat measures both sides back to back: the median of those paired ratios shrugs
    # off load that comes and goes between repeats.
    paired = statistics.median(o / b for o, b in zip(ours, baseline))
    print(f"median of the per-repeat ratios: {paired:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
