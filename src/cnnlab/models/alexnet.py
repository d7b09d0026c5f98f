"""E2 reduced AlexNet for 32x32 inputs (CIFAR-10)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import Dropout
from .registry import register_model


class ReducedAlexNet(nn.Module):
    """Five convs (48-128-192-192-128) and a 2048-2048 classifier: 6,199,498 params."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 48, 5, stride=2, padding=2), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(48, 128, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(128, 192, 3, padding=1), nn.ReLU(),
            nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(),
            nn.Conv2d(192, 128, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            Dropout(dropout), nn.Linear(512, 2048), nn.ReLU(),
            Dropout(dropout), nn.Linear(2048, 2048), nn.ReLU(),
            nn.Linear(2048, num_classes),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x).flatten(1)  # 128 x 2 x 2 = 512 for 32x32 inputs
        return self.classifier(features), features


@register_model("reduced_alexnet", input_shape=(3, 32, 32))
def reduced_alexnet(in_channels: int = 3, num_classes: int = 10, dropout: float = 0.5) -> nn.Module:
    """E2 reduced AlexNet for CIFAR-10 (6,199,498 params)."""
    return ReducedAlexNet(in_channels, num_classes, dropout)
