"""Training on several processes or GPUs: torchrun's ranks join one DistributedDataParallel fit.

    torchrun --standalone --nproc_per_node=2 -m cnnlab.cli train -S train.epochs=10

torchrun starts one process per rank and gives each ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
and ``LOCAL_WORLD_SIZE``; ``cnnlab train`` reads them (no setting switches it on) and joins a
process group: gloo on the CPU, NCCL on CUDA with one GPU per ``LOCAL_RANK``. In that group:

- every rank holds the whole uint8 dataset and draws the same permutation each epoch (same
  seed); each global batch of ``train.batch_size`` images is split across the ranks, so
  ``train.lr`` ("per batch of 128") means what it means in one process;
- each rank's loss is weighted by its share of the batch, so DDP's averaged gradient is the
  gradient of the global batch's mean loss even when the batch does not split evenly;
- augmentation and dropout draw per rank (seeded by seed, rank and first epoch), so the
  ranks do not draw the same masks for different images;
- validation is sharded by evaluation batch and the summed losses and correct counts are
  all-reduced: the same batches a single process evaluates, so the same accuracy;
- the loss each step is all-reduced before the divergence check, so every rank stops at once;
- rank 0 alone writes checkpoints, metrics files and the MLflow run;
- ``train.threads`` (0 = every core) is the machine's total, split among its ranks.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from .config import Config, ConfigError

# Collectives wait this long for a rank: longer than rank 0 spends alone (opening the MLflow
# run, writing a checkpoint), short enough that a rank stuck for good does not hold the others
# for torch's default half hour.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Ranks:
    """This process's place among torchrun's ranks; the defaults are a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # ranks on this machine, which share its cores and GPUs
    launched: bool = False  # started by torchrun (then DDP, even for one rank)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and logs to MLflow."""
        return self.rank == 0

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch of indices (sizes differ by at most one)."""
        return torch.tensor_split(batch, self.world_size)[self.rank] if self.launched else batch

    def describe(self) -> str:
        return f"{self.world_size} ranks" if self.launched else "1 process"


SINGLE = Ranks()


def ranks_from_env(environ: Mapping[str, str] = os.environ) -> Ranks:
    """The ranks torchrun set in the environment; ``SINGLE`` when it did not start us."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return SINGLE
    world = int(environ["WORLD_SIZE"])
    return Ranks(rank=int(environ["RANK"]), world_size=world, local_rank=int(environ.get("LOCAL_RANK", 0)),
                 local_world_size=int(environ.get("LOCAL_WORLD_SIZE", world)), launched=True)


def refuse_other_commands(command: str, ranks: Ranks) -> None:
    """Only ``cnnlab train`` runs under torchrun; any other command would run once per rank,
    each writing the same files."""
    if ranks.launched and command != "train":
        raise ConfigError(f"`cnnlab {command}` does not run under torchrun (each of its {ranks.world_size} "
                          f"processes would run it in full); only `cnnlab train` trains on several processes. "
                          f"Fix: run `cnnlab {command} ...` without torchrun")


def check_config(config: Config, ranks: Ranks, device: torch.device) -> None:
    """Settings a distributed fit cannot honour, named with the fix, before any process waits."""
    if not ranks.launched:
        return
    if config.transfer.policy == "svm":
        raise ConfigError("transfer.policy=svm fits a linear SVM head in one step, with no gradient to share "
                          "between ranks. Fix: run `cnnlab train` without torchrun")
    if config.train.batch_size < ranks.world_size:
        raise ConfigError(f"train.batch_size={config.train.batch_size} cannot be split across {ranks.world_size} "
                          f"ranks. Fix: set train.batch_size to at least {ranks.world_size}")
    if device.type == "cuda" and ranks.local_world_size > torch.cuda.device_count():
        raise ConfigError(f"torchrun started {ranks.local_world_size} ranks on this machine but "
                          f"{torch.cuda.device_count()} GPU(s) are visible, and NCCL needs one per rank. Fix: "
                          f"--nproc_per_node={torch.cuda.device_count()}, or train.device=cpu")


@contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[Ranks]:
    """Join torchrun's process group for the block (nothing for a single process): NCCL with
    the GPU ``LOCAL_RANK`` on CUDA, gloo on the CPU."""
    if not ranks.launched:
        yield ranks
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(ranks.local_rank)  # "cuda" now means this rank's GPU
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


def data_parallel(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (which starts every rank from rank 0's weights) under
    torchrun; the model itself in one process."""
    if not ranks.launched:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)


def all_sum(values: Sequence[float], ranks: Ranks, device: torch.device) -> list[float]:
    """``values`` summed over the ranks (float64; NCCL needs them on the rank's GPU)."""
    if not ranks.launched:
        return list(values)
    import torch.distributed as dist

    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """A seed of its own for each (seed, rank, first epoch): a resumed rank draws afresh, not
    the masks it drew from the start."""
    digest = hashlib.sha256(f"cnnlab.rank/{seed}/{rank}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # torch.manual_seed takes up to 2**63 - 1


def launch_words(ranks: Ranks) -> list[str]:
    """The words that start ``cnnlab`` the way this process was started: the command a resumed
    run prints. Several machines need the launch options only their user knows."""
    if not ranks.launched:
        return ["cnnlab"]
    if ranks.local_world_size == ranks.world_size:
        return ["torchrun", "--standalone", f"--nproc_per_node={ranks.world_size}", "-m", "cnnlab.cli"]
    return ["torchrun", "<your --nnodes/--rdzv options>", f"--nproc_per_node={ranks.local_world_size}",
            "-m", "cnnlab.cli"]
