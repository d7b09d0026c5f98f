"""Train-time augmentation as tensor operations on a whole batch, each image drawing its own
random values from one generator (so a resumed run draws the same): crop after padding,
horizontal flip, rotation, cutout, and mixup of a batch with a shuffled copy of itself.

    x = augment_batch(images.float(), config.train.augment, generator)   # 0..255 floats
    x = cutout(normalised, 8, generator)                                   # after normalising
    x, partner_labels, lam = mix_batch(x, labels, alpha=0.2, generator=generator)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _uniform(generator: torch.Generator | None, device: torch.device, *shape: int) -> torch.Tensor:
    # Drawn on the CPU generator, then moved: the same numbers on every device.
    return torch.rand(*shape, generator=generator).to(device)


def augment_batch(x: torch.Tensor, augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (after zero padding), horizontal flip and rotation, per sample, vectorised."""
    n, _, h, w = x.shape
    dev = x.device
    if augment.crop_padding:
        p = augment.crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = (_uniform(generator, dev, n) * (2 * p + 1)).long().clamp_max(2 * p)
        dx = (_uniform(generator, dev, n) * (2 * p + 1)).long().clamp_max(2 * p)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]  # n, h, 1
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]  # n, 1, w
        batch = torch.arange(n, device=dev)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if augment.hflip:
        flip = _uniform(generator, dev, n) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if augment.rotation_degrees:
        angles = (_uniform(generator, dev, n) * 2 - 1) * math.radians(augment.rotation_degrees)
        cos, sin = angles.cos(), angles.sin()
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    return x.contiguous()


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square at a uniformly drawn centre of each normalised image
    (zero is the dataset mean there); near the border the square is cut by it."""
    n, _, h, w = x.shape
    dev = x.device
    top = (_uniform(generator, dev, n) * h).long() - size // 2
    left = (_uniform(generator, dev, n) * w).long() - size // 2
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # n, h
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # n, w
    return x.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0.0)


def mix_batch(x: torch.Tensor, labels: torch.Tensor, alpha: float, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup: (lam * x + (1 - lam) * x[perm], labels[perm], lam) with lam ~ Beta(alpha, alpha);
    the loss is then lam * CE(labels) + (1 - lam) * CE(labels[perm])."""
    # torch samples Beta without a generator; numpy's, seeded from ours, keeps runs repeatable.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(len(labels), generator=generator).to(x.device)
    mixed = lam * x + (1.0 - lam) * x[perm]
    if x.is_contiguous(memory_format=torch.channels_last):
        mixed = mixed.contiguous(memory_format=torch.channels_last)
    return mixed, labels[perm], lam
