"""Named train-time augmentation pipelines built from ``torchvision.transforms.v2``.

The transfer-learning experiments (E7/E8: Caltech-101, Alien vs Predator) compare a few
fixed pipelines; each one is applied, as a whole, to every image of a batch independently
with probability ``p``, at training time only:

- ``cs_hf``: contrast + saturation jitter, then horizontal flip
- ``h_rp``: hue jitter, then random perspective
- ``b_gs_r``: brightness jitter, grayscale (kept as 3 channels), random rotation
- ``crop_rotate``: random resized crop (mild zoom, same output size), random rotation

Every magnitude lives in ``PIPELINE_DEFINITIONS``; a test or an experiment can build a
variant with some operations switched off by passing its own ``ops`` to ``BatchPipeline``.

Usage::

    import torch
    from cnnlab.augment import BatchPipeline, build_pipeline

    pipeline = build_pipeline("cs_hf", p=0.5)          # "none" -> None
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    augmented = pipeline(images, generator)             # uint8, same shape and device

    # A variant: only the flip, on every image.
    flip_only = BatchPipeline("cs_hf", p=1.0, ops={"horizontal_flip": {}})

Colour pipelines (``cs_hf``, ``h_rp``, ``b_gs_r``) need 3-channel RGB images and raise a
``ValueError`` naming the pipeline on anything else: on a 1-channel image torchvision's
``Grayscale(3)`` would silently return 3 channels and hue/saturation jitter would be a
no-op, so an "h_rp on MNIST" run would not be what its name says. ``crop_rotate`` is
purely geometric and works for any channel count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torchvision.transforms import v2

# The magnitudes, in one place. Each pipeline is an ordered mapping op name -> keyword
# settings for that op's builder in ``OP_BUILDERS``.
PIPELINE_DEFINITIONS: dict[str, dict[str, dict[str, Any]]] = {
    "cs_hf": {
        "color_jitter": {"contrast": 0.4, "saturation": 0.4},  # factors drawn from [0.6, 1.4]
        "horizontal_flip": {},  # always, once the whole pipeline is chosen for an image
    },
    "h_rp": {
        "color_jitter": {"hue": 0.1},  # hue shift drawn from [-0.1, 0.1] of the colour wheel
        "perspective": {"distortion_scale": 0.3},
    },
    "b_gs_r": {
        "color_jitter": {"brightness": 0.4},  # factor drawn from [0.6, 1.4]
        "grayscale": {},  # 3 equal channels, so the model's RGB stem still fits
        "rotation": {"degrees": 15},  # angle drawn from [-15, 15]
    },
    "crop_rotate": {
        # RandomResizedCrop rather than pad-then-crop: the trainer's own augment.crop_padding
        # already does pad-then-crop, this adds a mild zoom instead, and it brings in no black
        # padding bands on top of the rotation's black corners. scale=(0.7, 1) keeps most of the
        # object, which matters for Caltech-101 / Alien vs Predator where it fills the frame.
        "resized_crop": {"scale": (0.7, 1.0), "ratio": (3 / 4, 4 / 3)},
        "rotation": {"degrees": 15},
    },
}

PIPELINES: tuple[str, ...] = ("none", *PIPELINE_DEFINITIONS)

# Ops that only make sense on RGB images (see the module docstring).
COLOUR_OPS = frozenset({"color_jitter", "grayscale"})


def _resized_crop(size: tuple[int, int], **settings) -> v2.Transform:
    return v2.RandomResizedCrop(size, antialias=True, **settings)


# op name -> (image size (H, W), **settings) -> a v2 transform that is applied to every image it
# sees: the whole pipeline is already gated by p, so nothing inside is random-or-skip.
OP_BUILDERS: dict[str, Callable[..., v2.Transform]] = {
    "color_jitter": lambda size, **s: v2.ColorJitter(**s),
    "horizontal_flip": lambda size, **s: v2.RandomHorizontalFlip(p=1.0, **s),
    "perspective": lambda size, **s: v2.RandomPerspective(p=1.0, **s),
    "grayscale": lambda size, **s: v2.Grayscale(num_output_channels=3, **s),
    # Bilinear rather than v2's default nearest: smoother edges on 224-pixel images.
    "rotation": lambda size, **s: v2.RandomRotation(interpolation=v2.InterpolationMode.BILINEAR, **s),
    "resized_crop": _resized_crop,
}


class BatchPipeline:
    """A named pipeline applied to each image of a uint8 batch with probability ``p``."""

    def __init__(self, name: str, p: float = 0.5, ops: Mapping[str, Mapping[str, Any]] | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation pipeline {name!r}: p must be in [0, 1], got {p}")
        if ops is None and name not in PIPELINE_DEFINITIONS:
            raise ValueError(_unknown_pipeline_message(name))
        self.name = name
        self.p = float(p)
        self.ops = {op: dict(settings) for op, settings in (PIPELINE_DEFINITIONS[name] if ops is None else ops).items()}
        unknown = [op for op in self.ops if op not in OP_BUILDERS]
        if unknown:
            raise ValueError(f"augmentation pipeline {name!r}: unknown ops {unknown}; known: {sorted(OP_BUILDERS)}")
        self.needs_rgb = bool(COLOUR_OPS & self.ops.keys())
        self._composed: dict[tuple[int, int], v2.Compose] = {}  # per image size: resized_crop needs it

    def __repr__(self) -> str:
        return f"BatchPipeline({self.name!r}, p={self.p}, ops={self.ops})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (N, C, H, W) -> uint8 (N, C, H, W), same shape, same device; each image gets the
        pipeline with probability p (decided with `generator` so runs are reproducible); the others
        are returned unchanged. The input is never modified."""
        self._check_input(images)
        chosen = self._choose_images(len(images), generator).to(images.device)
        # Drawn on every call, even when no image is chosen, so the generator advances by the
        # same amount per batch whatever p is: a resumed run stays in step.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=_generator_device(generator)))
        selected = chosen.nonzero().flatten().tolist()
        if not selected:
            return images
        transform = self._transform_for(tuple(images.shape[-2:]))
        out = images.clone()
        # v2 transforms draw their parameters from torch's global CPU RNG, once per call: one call
        # per image gives each image its own parameters, and seeding a forked global RNG from the
        # generator makes the result reproducible without disturbing anyone else's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for index in selected:
                out[index] = transform(images[index])
        return out

    def _check_input(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"augmentation pipeline {self.name!r} takes a uint8 (N, C, H, W) batch, "
                             f"got {images.dtype} of shape {tuple(images.shape)}")
        if self.needs_rgb and images.shape[1] != 3:
            raise ValueError(f"augmentation pipeline {self.name!r} changes colours and needs 3-channel RGB "
                             f"images, got {images.shape[1]} channel(s); use 'crop_rotate' or 'none' for these")

    def _choose_images(self, count: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(count, generator=generator, device=_generator_device(generator)) < self.p

    def _transform_for(self, size: tuple[int, int]) -> v2.Compose:
        if size not in self._composed:
            self._composed[size] = v2.Compose([OP_BUILDERS[op](size, **settings) for op, settings in self.ops.items()])
        return self._composed[size]


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _unknown_pipeline_message(name: str) -> str:
    return f"unknown augmentation pipeline {name!r}; choose one of {', '.join(PIPELINES)}"


def build_pipeline(name: str, p: float = 0.5) -> BatchPipeline | None:
    """The named pipeline gated by probability p; None for "none"."""
    if name == "none":
        return None
    if name not in PIPELINE_DEFINITIONS:
        raise ValueError(_unknown_pipeline_message(name))
    return BatchPipeline(name, p)
