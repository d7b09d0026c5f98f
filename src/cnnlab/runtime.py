"""Where and how tensors run: device, numeric precision, threads, seeds, project root.

bf16 autocast is only fast on CPUs with native bf16 arithmetic (AVX-512-BF16 or AMX);
elsewhere it is emulated and several times *slower* than fp32 (seen on an AMD EPYC without
those flags), so "auto" checks the CPU flags instead of assuming them.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@lru_cache(maxsize=1)
def _cpuinfo_lines() -> tuple[str, ...]:
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:  # not Linux: no flags, so bf16 stays off unless on CUDA
        return ()


def cpu_has_fast_bf16() -> bool:
    return bool(cpu_flags() & _BF16_CPU_FLAGS)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool  # autocast to bfloat16 in the forward pass
    channels_last: bool

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def describe(self) -> str:
        precision = "bf16 autocast" if self.bf16 else "fp32"
        layout = "channels_last" if self.channels_last else "contiguous"
        return f"{self.device.type}, {precision}, {layout}"


def resolve_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Pick CUDA when present (or asked for) and bf16 where the hardware does it natively."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use auto or cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda" if use_cuda else "cpu")
    if precision == "auto":
        bf16 = torch.cuda.is_bf16_supported() if use_cuda else cpu_has_fast_bf16()
    else:
        bf16 = precision == "bf16"
    # channels_last pays off with bf16/oneDNN and on GPUs; in fp32 on CPU it was slower at batch 256.
    return Runtime(device=dev, bf16=bf16, channels_last=bf16 or use_cuda)


_threads_set = False
_allocator_tuned = False

# glibc serves blocks above its mmap threshold (128 KiB to start) with fresh mmap pages and
# trims freed heap back to the OS, so every training step's activations (MBs each) were new
# pages to fault in: 70,000-170,000 page faults per 30 SimpleCNN steps and about 10% of the
# step in the kernel. Keeping blocks up to 32 MiB (glibc's ceiling) on the heap and trimming
# only past 1 GiB lets each step reuse the last one's memory, as jemalloc/tcmalloc would.
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def keep_freed_memory() -> bool:
    """Tune glibc's malloc so freed tensor memory is reused, not unmapped; True if applied
    (False off glibc, where the C library's defaults stay)."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    _allocator_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _allocator_tuned


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def set_threads(threads: int = 0) -> int:
    """Process-wide compute settings, once: torch's intra-op threads (0 = every available
    core) and an allocator that keeps freed memory (``keep_freed_memory``)."""
    global _threads_set
    keep_freed_memory()
    wanted = threads or available_cores()
    if not _threads_set or torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
        _threads_set = True
    return wanted


def machine() -> dict:
    """What a measurement ran on, saved beside every measured figure (bench JSONs, train metrics)."""
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")), "")
    return {
        "cpu": model or os.uname().machine,
        "cores_available": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": cpu_has_fast_bf16(),
        "bf16_flags": sorted(cpu_flags() & _BF16_CPU_FLAGS),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
        "torch": torch.__version__,
    }


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch's global RNG (weight init, dropout); returns a generator of
    its own for the data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seeded_generator(seed)


def rng_state() -> dict:
    """Python's, NumPy's and torch's global RNG states (CUDA's too, where present) in types a
    ``weights_only`` checkpoint load accepts: what a resumed run needs to draw the same dropout
    masks as an uninterrupted one."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position,
                                                        has_gauss, gauss],
             "python": [version, list(internal), python_gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, python_gauss = state["python"]
    random.setstate((version, tuple(internal), python_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seeded_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def project_root(start: Path | None = None) -> Path:
    """The repository root, also from inside a DVC queued/temp experiment workspace.

    ``dvc exp run --queue``/``--temp`` runs stages in ``<root>/.dvc/tmp/exps/<tmp>``; stores
    that must outlive the run (MLflow, Optuna) belong to the real root, not that copy.
    """
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    if ".dvc" in parts:
        idx = parts.index(".dvc")
        if parts[idx + 1 : idx + 3] == ("tmp", "exps"):
            return Path(*parts[:idx])
    for candidate in (here, *here.parents):
        if (candidate / "params.yaml").exists() or (candidate / ".git").exists():
            return candidate
    return here
