"""E4 SVHN study nets: the base two-block CNN and its deeper variant."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class SVHNNet(nn.Module):
    """conv blocks (conv, ReLU, maxpool) -> optional hidden linear -> classes."""

    def __init__(self, blocks: list[tuple[int, int]], in_channels: int, image_size: int, hidden: int,
                 num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for width, kernel in blocks:
            layers += [nn.Conv2d(prev, width, kernel, padding=kernel // 2), nn.ReLU(), nn.MaxPool2d(2)]
            prev = width
        self.features = nn.Sequential(*layers)
        flat = prev * (image_size // 2 ** len(blocks)) ** 2
        self.hidden = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.classifier = nn.Linear(hidden or flat, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.hidden(self.features(x).flatten(1))
        return self.classifier(features), features


@register_model("svhn_base", input_shape=(3, 32, 32))
def svhn_base(in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> nn.Module:
    """E4 base: conv5x5(16) pool conv3x3(32) pool -> linear(2048 -> 10) (26,346 params)."""
    return SVHNNet([(16, 5), (32, 3)], in_channels, image_size, 0, num_classes)


@register_model("svhn_deep", input_shape=(3, 32, 32))
def svhn_deep(in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> nn.Module:
    """E4 deeper: base + conv5x5(64) block + 256-unit hidden layer (322,090 params)."""
    return SVHNNet([(16, 5), (32, 3), (64, 5)], in_channels, image_size, 256, num_classes)
