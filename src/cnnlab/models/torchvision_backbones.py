"""torchvision AlexNet, ResNet-18 and ResNet-50 as ``(logits, features)`` backbones for transfer learning.

    model = create_model("resnet18", num_classes=2, pretrained=True,
                         weights_path="resnet18-f37072fd.pth", weights_sha256="f37072fd")
    model.pretrained_report  # {"loaded": ..., "skipped": ["net.fc.weight", "net.fc.bias"], "source": ..., "sha256": ...}

Each model keeps the torchvision network under ``.net``, so a torchvision weights file maps one-to-one
onto the model's state dict with the prefix ``net.``. ``features`` is what the final linear layer sees
(ResNet: the pooled 512/2048 vector; AlexNet: the 4096-d output of the second FC + ReLU), and that
final ``nn.Linear`` is the last one in ``model.modules()``: the head transfer learning replaces.

``pretrained=True`` loads ``weights_path`` when given (a raw torchvision state dict), otherwise
torchvision's ImageNet weights through the torch hub cache (downloaded when online). When the file's
head has another number of classes, only the head's weight and bias are skipped (left freshly
initialised); every other tensor must match by name and shape. Inputs are RGB normalised with the
ImageNet mean/std (see ``efficientnet.IMAGENET_MEAN``/``IMAGENET_STD``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import AlexNet_Weights, ResNet18_Weights, ResNet50_Weights, WeightsEnum

from ..hashing import file_digest
from .registry import register_model
from .weights import PretrainedWeightsError, head_keys, load_weights, read_state_dict

__all__ = ["PretrainedWeightsError", "TorchvisionAlexNet", "TorchvisionResNet", "load_pretrained"]

WRAPPED = "net"  # the attribute holding the torchvision module: model keys are "net." + torchvision's
MIN_SHA256_PREFIX = 8  # torch.hub's convention: torchvision file names embed the first 8 hex digits
SHA256_OR_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_SHA256_PREFIX},64}}")
HUB_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # "resnet18-f37072fd.pth" -> "f37072fd", as torch.hub reads it


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet returning ``(logits, pooled features)``; ``.net`` is the torchvision module."""

    def __init__(self, build: Callable[..., nn.Module], num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.net = build(weights=None, num_classes=num_classes)
        if in_channels != 3:
            # Same shape and init as torchvision's stem, for a non-RGB input.
            self.net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.net.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net  # torchvision's ResNet._forward_impl, stopping to keep the pooled vector
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        features = torch.flatten(net.avgpool(x), 1)  # (N, 512) or (N, 2048)
        return net.fc(features), features


class TorchvisionAlexNet(nn.Module):
    """torchvision's AlexNet returning ``(logits, 4096-d features)``; ``.net`` is the torchvision module."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, in_channels: int = 3):
        super().__init__()
        self.net = torchvision.models.alexnet(weights=None, num_classes=num_classes, dropout=dropout)
        if in_channels != 3:
            self.net.features[0] = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        x = torch.flatten(net.avgpool(net.features(x)), 1)  # (N, 256 * 6 * 6)
        features = net.classifier[:-1](x)  # dropout, FC, ReLU, dropout, FC, ReLU: what classifier[6] sees
        return net.classifier[-1](features), features


# ----------------------------------------------------------------------------- pretrained weights


def check_sha256(path: Path, expected: str) -> str:
    """``path``'s sha256; raises unless it starts with ``expected`` (checked by ``check_arguments``)."""
    actual = file_digest(path)
    expected = expected.strip().lower()
    if expected and not actual.startswith(expected):
        raise PretrainedWeightsError(
            f"{path} has sha256 {actual} but weights_sha256 is {expected}: the file is corrupt, truncated or "
            f"another version. Re-download it or point model.kwargs.weights_path at the right file; if this "
            f"file is the one you want, set model.kwargs.weights_sha256 to its hash (all 64 hex digits or "
            f"at least the first {MIN_SHA256_PREFIX})"
        )
    return actual


def load_pretrained(model: nn.Module, state: Mapping[str, torch.Tensor], architecture: str, source: str) -> dict:
    """Load a torchvision-layout ``state`` into ``model.net``: strictly, except a head of another class count.

    Errors name keys as they appear in the file (torchvision's names); the report's ``skipped``
    names them as they appear in ``model.state_dict()`` (with the ``net.`` prefix).
    """
    net = getattr(model, WRAPPED)
    report = load_weights(net, state, source=source, head=head_keys(net),
                          expected=f"a torchvision {architecture} state dict",
                          fix=f"Expected the keys of torchvision.models.{architecture}().state_dict().")
    return {**report, "skipped": [f"{WRAPPED}.{k}" for k in report["skipped"]]}


def hub_file_name(weights: WeightsEnum) -> str:
    return Path(urlparse(weights.url).path).name


def imagenet_state(weights: WeightsEnum) -> tuple[Mapping[str, torch.Tensor], str, str]:
    """torchvision's ImageNet state dict (downloaded into the torch hub cache), its source and sha256."""
    file_name = hub_file_name(weights)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError/OSError offline, RuntimeError on a bad hash or a corrupt cached file
        prefix = HUB_HASH_IN_NAME.search(file_name)
        raise PretrainedWeightsError(
            f"could not get the ImageNet weights {weights} ({type(err).__name__}: {err}): the download of "
            f"{weights.url} into {cached.parent} failed (offline?). Download {file_name} elsewhere and pass "
            f"model.kwargs.weights_path=<local .pth>"
            + (f" with model.kwargs.weights_sha256={prefix.group(1)} (the start of its sha256, from the "
               f"file name)" if prefix else "")
            + f", or copy it to {cached}"
        ) from err
    if cached.is_file():
        return state, str(cached), file_digest(cached)
    return state, weights.url, ""


def check_arguments(name: str, pretrained: bool, weights_path: str, weights_sha256: str, in_channels: int) -> None:
    if weights_path and not pretrained:
        raise ValueError("weights_path is read only with pretrained=True")
    if weights_sha256 and not weights_path:
        raise ValueError("weights_sha256 checks weights_path; set both (torchvision's download checks its own hash)")
    if weights_sha256 and not SHA256_OR_PREFIX.fullmatch(weights_sha256.strip().lower()):
        raise ValueError(f"weights_sha256 must be the file's sha256 or at least its first {MIN_SHA256_PREFIX} "
                         f"hex digits, got {weights_sha256!r}")
    if pretrained and in_channels != 3:
        raise ValueError(f"pretrained {name} takes RGB input (in_channels=3), got {in_channels}")


def with_pretrained(model: nn.Module, architecture: str, imagenet: WeightsEnum, weights_path: str,
                    weights_sha256: str) -> nn.Module:
    """Load ``weights_path`` (or ``imagenet`` through the hub cache) and record ``model.pretrained_report``."""
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise PretrainedWeightsError(f"weights_path {path} does not exist")
        sha256 = check_sha256(path, weights_sha256)  # before unpickling: a wrong file is never loaded
        state, source = read_state_dict(path), str(path)
    else:
        state, source, sha256 = imagenet_state(imagenet)
    model.pretrained_report = {**load_pretrained(model, state, architecture, source), "sha256": sha256}
    return model


# ----------------------------------------------------------------------------- registered models
# Registered at 64 px so the every-model forward and ONNX parity tests stay fast on CPU. ResNets pool
# globally, so any size >= 32 runs; AlexNet's AdaptiveAvgPool2d(6) upsamples its 1x1 map at 64 px
# (torchvision's minimum is 63) and exports to ONNX with parity. The ImageNet weights were trained at 224.


@register_model("alexnet", input_shape=(3, 64, 64), num_classes=1000)
def alexnet(num_classes: int = 1000, pretrained: bool = False, weights_path: str = "", weights_sha256: str = "",
            in_channels: int = 3, image_size: int = 224, dropout: float = 0.5) -> nn.Module:
    """AlexNet (torchvision, 61.1M params): 4096-d features; ImageNet weights with pretrained=True."""
    del image_size  # accepted because the training code passes it; the architecture does not depend on it
    check_arguments("alexnet", pretrained, weights_path, weights_sha256, in_channels)
    model = TorchvisionAlexNet(num_classes, dropout, in_channels)
    if pretrained:
        with_pretrained(model, "alexnet", AlexNet_Weights.IMAGENET1K_V1, weights_path, weights_sha256)
    return model


def build_resnet(name: str, num_classes: int, pretrained: bool, weights_path: str, weights_sha256: str,
                 in_channels: int) -> nn.Module:
    builder, weights = _RESNETS[name]
    check_arguments(name, pretrained, weights_path, weights_sha256, in_channels)
    model = TorchvisionResNet(builder, num_classes, in_channels)
    if pretrained:
        with_pretrained(model, name, weights, weights_path, weights_sha256)
    return model


_RESNETS = {
    "resnet18": (torchvision.models.resnet18, ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, ResNet50_Weights.IMAGENET1K_V2),
}


@register_model("resnet18", input_shape=(3, 64, 64), num_classes=1000)
def resnet18(num_classes: int = 1000, pretrained: bool = False, weights_path: str = "", weights_sha256: str = "",
             in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """ResNet-18 (torchvision, 11.7M params): 512-d pooled features; ImageNet weights with pretrained=True."""
    del image_size
    return build_resnet("resnet18", num_classes, pretrained, weights_path, weights_sha256, in_channels)


@register_model("resnet50", input_shape=(3, 64, 64), num_classes=1000)
def resnet50(num_classes: int = 1000, pretrained: bool = False, weights_path: str = "", weights_sha256: str = "",
             in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """ResNet-50 (torchvision, 25.6M params): 2048-d pooled features; ImageNet weights with pretrained=True."""
    del image_size
    return build_resnet("resnet50", num_classes, pretrained, weights_path, weights_sha256, in_channels)
