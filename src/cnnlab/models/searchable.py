"""E5 search family ``search_cnn``: VGG-, ResNet- or Inception-style stages of 3x3 convolutions,
and ``fit_to_budget``, which shrinks a candidate's widths until it fits a parameter budget.

    from cnnlab.models import create_model
    from cnnlab.models.searchable import fit_to_budget
    kwargs, parameters = fit_to_budget({"block_style": "plain", "widths": [64, 128, 256]}, 150_000)
    model = create_model("search_cnn", **kwargs)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .layers import Dropout
from .registry import create_model, register_model, total_parameters

BLOCK_STYLES = ("plain", "residual", "inception")
POOLINGS = ("max", "avg")
DEFAULT_WIDTHS = (32, 64, 128)
MIN_WIDTH = 4  # an inception block splits its width over three branches of at least one channel
WIDTH_STEP = 4  # fit_to_budget rounds widths to multiples of this
BISECTION_STEPS = 20  # resolves the scale factor to 1e-6, far finer than one step of WIDTH_STEP channels


def conv(in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool) -> nn.Conv2d:
    # A following BatchNorm's shift makes a conv bias redundant.
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not batch_norm)


def norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool) -> nn.Sequential:
    return nn.Sequential(conv(in_channels, out_channels, kernel_size, batch_norm), norm(out_channels, batch_norm),
                         nn.ReLU())


def norm_relu(channels: int, batch_norm: bool) -> nn.Sequential:
    return nn.Sequential(norm(channels, batch_norm), nn.ReLU())


def plain_block(in_channels: int, width: int, convs: int, batch_norm: bool) -> nn.Sequential:
    """VGG: ``convs`` x (conv3x3 [BN] ReLU), the first one changing the channels."""
    return nn.Sequential(*(conv_norm_relu(in_channels if i == 0 else width, width, 3, batch_norm)
                           for i in range(convs)))


class ResidualBlock(nn.Module):
    """ResNet basic block of ``convs`` 3x3 convs plus a skip: the identity, or a 1x1 conv
    projection when the channels change.

    Pre-activation (He et al. 2016, "Identity Mappings"): BN-ReLU-conv units and nothing
    after the addition, so the identity path is untouched; the projection reads the
    pre-activated input. Post-activation (He et al. 2015): conv-BN-ReLU units, the last
    without its ReLU, and a ReLU after the addition.
    """

    def __init__(self, in_channels: int, width: int, convs: int, batch_norm: bool, preactivation: bool):
        super().__init__()
        if preactivation:
            self.preactivate = norm_relu(in_channels, batch_norm)
            units = [conv(in_channels, width, 3, batch_norm)]
            units += [nn.Sequential(norm_relu(width, batch_norm), conv(width, width, 3, batch_norm))
                      for _ in range(convs - 1)]
            self.after_addition = nn.Identity()
        else:
            self.preactivate = nn.Identity()
            channels = [in_channels] + [width] * convs
            units = [conv_norm_relu(c, width, 3, batch_norm) for c in channels[:-2]]
            units.append(nn.Sequential(conv(channels[-2], width, 3, batch_norm), norm(width, batch_norm)))
            self.after_addition = nn.ReLU()
        self.body = nn.Sequential(*units)
        self.projection = None
        if in_channels != width:
            projection_norm = nn.Identity() if preactivation else norm(width, batch_norm)
            self.projection = nn.Sequential(conv(in_channels, width, 1, batch_norm), projection_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.preactivate(x)
        skip = x if self.projection is None else self.projection(activated)
        return self.after_addition(self.body(activated) + skip)


def inception_branch_widths(width: int) -> tuple[int, int, int]:
    """(1x1, 3x3, 1x1-reduce-then-3x3) output channels: a half for the 3x3 branch, a quarter
    for the 1x1, the rest for the reduced branch, so they always sum to ``width``."""
    return width // 4, width // 2, width - width // 4 - width // 2


class InceptionModule(nn.Module):
    """GoogLeNet-style parallel 1x1, 3x3 and 1x1->3x3 branches, concatenated to ``width`` channels.
    The reduced branch's 1x1 narrows the input to that branch's own width before its 3x3."""

    def __init__(self, in_channels: int, width: int, batch_norm: bool):
        super().__init__()
        pointwise, full, reduced = inception_branch_widths(width)
        self.pointwise = conv_norm_relu(in_channels, pointwise, 1, batch_norm)
        self.full = conv_norm_relu(in_channels, full, 3, batch_norm)
        self.reduced = nn.Sequential(conv_norm_relu(in_channels, reduced, 1, batch_norm),
                                     conv_norm_relu(reduced, reduced, 3, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pointwise(x), self.full(x), self.reduced(x)], dim=1)


def inception_block(in_channels: int, width: int, modules: int, batch_norm: bool) -> nn.Sequential:
    return nn.Sequential(*(InceptionModule(in_channels if i == 0 else width, width, batch_norm)
                           for i in range(modules)))


def make_block(block_style: str, in_channels: int, width: int, convs: int, batch_norm: bool,
               preactivation: bool) -> nn.Module:
    if block_style == "plain":
        return plain_block(in_channels, width, convs, batch_norm)
    if block_style == "residual":
        return ResidualBlock(in_channels, width, convs, batch_norm, preactivation)
    return inception_block(in_channels, width, convs, batch_norm)


class SearchCNN(nn.Module):
    """stem conv3x3 -> ``blocks_per_stage`` blocks per width, 2x2 pooling between the widths ->
    global average pool -> optional hidden linear + ReLU -> dropout -> classes. ``features`` is
    the input to the dropout and final linear layer."""

    def __init__(self, block_style: str, widths: Sequence[int], convs_per_block: int, blocks_per_stage: int,
                 batch_norm: bool, preactivation: bool, pooling: str, head_width: int, dropout: float,
                 in_channels: int, num_classes: int):
        super().__init__()
        preactivated = block_style == "residual" and preactivation
        # Pre-activation blocks start with their own BN-ReLU, so the stem is a bare conv and the
        # last block's sum needs one more BN-ReLU before pooling (as in PreAct ResNet).
        self.stem = (conv(in_channels, widths[0], 3, batch_norm) if preactivated
                     else conv_norm_relu(in_channels, widths[0], 3, batch_norm))
        layers: list[nn.Module] = []
        previous = widths[0]
        for stage, width in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2) if pooling == "max" else nn.AvgPool2d(2))
            for _ in range(blocks_per_stage):  # the first block changes the channels, the others keep them
                layers.append(make_block(block_style, previous, width, convs_per_block, batch_norm, preactivation))
                previous = width
        if preactivated:
            layers.append(norm_relu(previous, batch_norm))
        self.stages = nn.Sequential(*layers)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Sequential(nn.Linear(previous, head_width), nn.ReLU()) if head_width else nn.Identity()
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(head_width or previous, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.hidden(self.global_pool(self.stages(self.stem(x))).flatten(1))
        return self.classifier(self.dropout(features)), features


def validate_arguments(block_style: str, widths: Sequence[int], convs_per_block: int, blocks_per_stage: int,
                       pooling: str, head_width: int, dropout: float, image_size: int) -> None:
    if block_style not in BLOCK_STYLES:
        raise ValueError(f"block_style must be one of {', '.join(BLOCK_STYLES)}; got {block_style!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    if not widths:
        raise ValueError("widths must name at least one stage; got an empty list")
    if min(widths) < MIN_WIDTH:
        raise ValueError(f"widths must all be at least {MIN_WIDTH}; got {list(widths)}")
    if 2 ** (len(widths) - 1) > image_size:  # each stage but the last halves the image
        raise ValueError(f"widths: {len(widths)} stages halve a {image_size}x{image_size} image "
                         f"{len(widths) - 1} times, below 1x1; use fewer stages")
    if convs_per_block < 1:
        raise ValueError(f"convs_per_block must be at least 1; got {convs_per_block}")
    if blocks_per_stage < 1:
        raise ValueError(f"blocks_per_stage must be at least 1; got {blocks_per_stage}")
    if head_width < 0:
        raise ValueError(f"head_width must be 0 (no hidden layer) or positive; got {head_width}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}")


@register_model("search_cnn", input_shape=(3, 32, 32))
def search_cnn(block_style: str = "residual", widths: Sequence[int] = DEFAULT_WIDTHS, convs_per_block: int = 2,
               blocks_per_stage: int = 1, batch_norm: bool = True, preactivation: bool = True, pooling: str = "max",
               head_width: int = 0, dropout: float = 0.0, in_channels: int = 3, num_classes: int = 10,
               image_size: int = 32) -> nn.Module:
    """E5 search family: plain/residual/inception stages of 3x3 convs, GAP head (308,266 params).

    ``preactivation`` applies to residual blocks only; plain and inception blocks are always
    conv-BN-ReLU. ``batch_norm=False`` drops every BatchNorm and gives the convs biases.
    ``image_size`` only bounds the number of stages: global average pooling takes any size.
    ``blocks_per_stage`` deepens every stage at the same widths (2 residual blocks of 2 convs
    per stage is a ResNet-14): at a fixed parameter budget, depth for width.
    """
    validate_arguments(block_style, widths, convs_per_block, blocks_per_stage, pooling, head_width, dropout,
                       image_size)
    return SearchCNN(block_style, list(widths), convs_per_block, blocks_per_stage, batch_norm, preactivation, pooling,
                     head_width, dropout, in_channels, num_classes)


def count_for(kwargs: dict[str, Any]) -> int:
    """Trainable parameters of ``search_cnn(**kwargs)``, counted on the built model."""
    return total_parameters(create_model("search_cnn", **kwargs))


def scale_width(width: int, factor: float, min_width: int) -> int:
    """``width * factor`` rounded to a multiple of WIDTH_STEP, never above ``width`` nor below ``min_width``."""
    return max(min_width, min(width, WIDTH_STEP * round(width * factor / WIDTH_STEP)))


def scaled_kwargs(kwargs: dict[str, Any], factor: float, min_width: int) -> dict[str, Any]:
    widths = kwargs.get("widths", DEFAULT_WIDTHS)
    scaled = dict(kwargs, widths=[scale_width(w, factor, min_width) for w in widths])
    if kwargs.get("head_width"):
        scaled["head_width"] = scale_width(kwargs["head_width"], factor, min_width)
    return scaled


def fit_to_budget(kwargs: dict[str, Any], budget: int, min_width: int = MIN_WIDTH) -> tuple[dict[str, Any], int]:
    """Shrink-to-fit: ``(kwargs, parameters)`` with ``widths`` and ``head_width`` scaled by the
    largest common factor (found by bisection) whose model has at most ``budget`` trainable
    parameters. Kwargs that already fit come back unchanged; a ValueError says when even
    ``min_width`` everywhere is over the budget.
    """
    count = count_for(kwargs)
    if count <= budget:
        return kwargs, count
    best = scaled_kwargs(kwargs, 0.0, min_width)
    best_count = count_for(best)
    if best_count > budget:
        raise ValueError(f"param budget {budget:,d} is below this architecture's minimum of "
                         f"{best_count:,d} parameters (every width at min_width={min_width})")
    fits, over = 0.0, 1.0
    for _ in range(BISECTION_STEPS):
        factor = (fits + over) / 2
        candidate = scaled_kwargs(kwargs, factor, min_width)
        candidate_count = count_for(candidate)
        if candidate_count <= budget:
            fits, best, best_count = factor, candidate, candidate_count
        else:
            over = factor
    return best, best_count
