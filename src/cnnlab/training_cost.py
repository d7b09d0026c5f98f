"""What a network costs to train per image, relative to another, timed here: the search's
compute budget beside its parameter budget.

    relative_training_cost("search_cnn", candidate_kwargs, baseline_kwargs, 256, resolve_runtime())  # 2.0: twice as slow
    cost <= cost_ceiling(cap)  # within the budget, the timing's noise allowed for

E5's winner is retrained within a wall-time budget, and the parameter count does not tell a net's
training time on a CPU: at the same parameter budget, an Inception-style winner of the study
trained far slower per image than the hand-designed residual net (bench/search_cost.json, written
by `make bench-search-cost`, has each trial's ratio). Both nets are timed the same way, step by
step in turn, in the calling process with its threads, so the ratio holds under whatever else
the machine runs.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .models import create_model
from .runtime import Runtime

WARMUP_STEPS = 1  # the first step allocates and picks kernels: not timed
# Per net; the ratio of the medians, so a few steps slowed by other work are outvoted. At 5 steps
# the hand-designed net timed against itself alone on a shared 2-core VM (fp32, 1 s a step) read
# beyond TIMING_NOISE once in 10 (bench/search_cost_5_steps.json, `make bench-search-cost` at 5);
# at 15 within it (bench/search_cost.json's self_costs).
TIMED_STEPS = 15
# A net timed against itself reads a few percent either side of 1.0, more while other work runs
# (bench/search_cost.json's self_costs, `make bench-search-cost`); the last study pruned a net of
# the baseline's own shape at 1.001x under a cap of 1. So the cap admits this much more.
TIMING_NOISE = 0.1


def cost_ceiling(cap: float, timing_noise: float = TIMING_NOISE) -> float:
    """The highest relative cost a candidate may time at under ``cap``: a candidate as fast as
    the baseline passes a cap of 1 whichever way the timing's noise falls. A study records the
    allowance it ran with; one from before it had none (``timing_noise=0``)."""
    return cap * (1 + timing_noise)


def training_step_seconds(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                          labels: torch.Tensor, runtime: Runtime) -> float:
    """Wall seconds of one optimizer step of ``model`` on the batch (forward, loss, backward, update)."""
    started = time.perf_counter()
    with runtime.autocast():
        logits, _ = model(images)
        loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def relative_training_cost(model_name: str, candidate_kwargs: dict[str, Any], baseline_kwargs: dict[str, Any],
                           batch_size: int, runtime: Runtime) -> float:
    """Seconds per training image of ``model_name(**candidate_kwargs)`` over those of
    ``model_name(**baseline_kwargs)`` (1.0: as fast; 2.0: twice as slow). Resolved kwargs name
    the input (``in_channels``, ``image_size``) and ``num_classes``; the batches are random
    images of that shape, in the runtime's precision and memory layout. Building the nets and
    their inputs leaves the global random state as it was (the trial seeds its own)."""
    layout = torch.channels_last if runtime.channels_last else torch.contiguous_format
    with torch.random.fork_rng(devices=[]):
        nets = [create_model(model_name, **kwargs).to(runtime.device, memory_format=layout).train()
                for kwargs in (candidate_kwargs, baseline_kwargs)]
        side = candidate_kwargs["image_size"]
        images = torch.rand(batch_size, candidate_kwargs["in_channels"], side, side)
        images = images.to(runtime.device, memory_format=layout)
        labels = torch.randint(0, candidate_kwargs["num_classes"], (batch_size,)).to(runtime.device)
        # lr 0: an update costs alike for every net, and the weights need not change
        optimizers = [torch.optim.SGD(net.parameters(), lr=0.0) for net in nets]
        seconds: list[list[float]] = [[], []]
        for step in range(WARMUP_STEPS + TIMED_STEPS):
            for net, optimizer, timed in zip(nets, optimizers, seconds):  # in turn: a burst of load slows both alike
                elapsed = training_step_seconds(net, optimizer, images, labels, runtime)
                if step >= WARMUP_STEPS:
                    timed.append(elapsed)
    return statistics.median(seconds[0]) / statistics.median(seconds[1])
