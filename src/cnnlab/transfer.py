"""Transfer learning: where a network's weights start and which of its layers train.

    model = create_model("resnet18", num_classes=2, pretrained=True, weights_path="resnet18.pth")
    plan = apply_policy(model, TransferConfig(policy="freeze_first_k", freeze_k=3))
    print(plan.describe())   # "freeze_first_k: 3 of 21 layers frozen (..)"

A network is seen as an ordered list of *layers*: every convolution or linear layer in module
order, with the normalisation layers that follow a convolution counted as part of it ("a conv
with its norm counts as one"). The head is the last linear layer; every policy leaves it
trainable, because a new task always needs a new head. Frozen parameters get
``requires_grad=False`` (so the optimizer never sees them) and frozen normalisation layers stay
in eval mode, so their running statistics do not drift either.

``svm`` keeps the whole network frozen and fits a linear SVM (scikit-learn) on the head's input
features; the SVM, with its feature standardisation folded in, becomes the linear head, so
evaluation, export and registration treat it like any other model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import TransferConfig
from .models.weights import load_weights

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
# Model arguments that fetch pretrained weights: a checkpoint already holds the trained weights,
# so they are dropped when a checkpoint records how to rebuild its model.
PRETRAINED_ARGUMENTS = ("pretrained", "weights_path", "weights_sha256")


class TransferError(ValueError):
    """A policy that does not fit the model; weights that do not fit it raise ``WeightsError``."""


@dataclass
class Layer:
    """One conv or linear layer with the norm layers attached to it."""

    index: int
    kind: str  # "conv" or "fc"
    modules: list[str]  # qualified module names, the conv/linear first
    parameters: int


@dataclass
class FreezePlan:
    policy: str
    layers: list[Layer]
    frozen: list[int] = field(default_factory=list)  # indices into layers

    @property
    def frozen_parameters(self) -> int:
        return sum(self.layers[i].parameters for i in self.frozen)

    def describe(self) -> str:
        names = ", ".join(self.layers[i].modules[0] for i in self.frozen[:6])
        more = f", … ({len(self.frozen) - 6} more)" if len(self.frozen) > 6 else ""
        return (f"{self.policy}: {len(self.frozen)} of {len(self.layers)} layers frozen"
                + (f" ({names}{more})" if self.frozen else "")
                + f"; head {self.layers[-1].modules[0]} trains")


def network_layers(model: nn.Module) -> list[Layer]:
    """Conv and linear layers in module order, each with the norm layers that follow it."""
    layers: list[Layer] = []
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.modules.conv._ConvNd):
            layers.append(Layer(len(layers), "conv", [name], own))
        elif isinstance(module, nn.Linear):
            layers.append(Layer(len(layers), "fc", [name], own))
        elif isinstance(module, NORM_TYPES) and layers:
            layers[-1].modules.append(name)
            layers[-1].parameters += own
    if not layers or layers[-1].kind != "fc":
        raise TransferError(f"{type(model).__name__} does not end in a linear head; transfer policies need one")
    return layers


def frozen_layer_indices(layers: list[Layer], config: TransferConfig) -> list[int]:
    body = layers[:-1]  # the head always trains
    policy = config.policy
    if policy in ("train_all", "scratch"):
        return []
    if policy in ("last_layer", "svm"):
        return [layer.index for layer in body]
    if policy == "freeze_conv":
        return [layer.index for layer in body if layer.kind == "conv"]
    if policy == "freeze_fc":
        frozen = [layer.index for layer in body if layer.kind == "fc"]
        if not frozen:
            raise TransferError("transfer.policy=freeze_fc: this model has no fully-connected layer besides its "
                                "head, so nothing would be frozen; use last_layer or freeze_conv")
        return frozen
    if policy == "freeze_first_k":
        if not 0 <= config.freeze_k <= len(body):
            raise TransferError(f"transfer.freeze_k={config.freeze_k}: this model has {len(body)} layers before its "
                                f"head (a conv with its norm counts as one); choose 0..{len(body)}")
        return list(range(config.freeze_k))
    raise TransferError(f"unknown transfer.policy {policy!r}")


def _keep_in_eval(module: nn.Module, _inputs: Any) -> None:
    # model.train() switches every module back to training mode each epoch; a frozen norm
    # layer must keep using (and not updating) its pretrained running statistics.
    module.eval()


def apply_policy(model: nn.Module, config: TransferConfig) -> FreezePlan:
    """Freeze the layers ``config.policy`` names, in place; returns what was frozen."""
    layers = network_layers(model)
    plan = FreezePlan(config.policy, layers, frozen_layer_indices(layers, config))
    modules = dict(model.named_modules())
    for index in plan.frozen:
        for name in layers[index].modules:
            module = modules[name]
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(False)
            if isinstance(module, NORM_TYPES):
                module.register_forward_pre_hook(_keep_in_eval)
    return plan


def model_arguments(kwargs: dict[str, Any], config: TransferConfig) -> dict[str, Any]:
    """The model's constructor arguments under the policy: ``scratch`` switches pretrained loading off,
    so `-S transfer.policy=scratch` alone turns a fine-tuning experiment into its from-scratch baseline."""
    if config.policy == "scratch":
        return {k: v for k, v in kwargs.items() if k not in PRETRAINED_ARGUMENTS}
    return dict(kwargs)


def checkpoint_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments that rebuild the architecture alone (the checkpoint holds the weights)."""
    return {k: v for k, v in kwargs.items() if k not in PRETRAINED_ARGUMENTS}


def head_name(model: nn.Module) -> str:
    return network_layers(model)[-1].modules[0]


def init_from_checkpoint(model: nn.Module, model_name: str, payload: dict[str, Any], source: str) -> dict[str, Any]:
    """Start ``model`` from a cnnlab checkpoint of the same architecture (E6: digits 1-8 -> 0 vs 9).

    Every tensor must match; only the head may differ, in its number of classes, and then it
    keeps its fresh initialisation (``models.weights.load_weights``).
    """
    if payload["model_name"] != model_name:
        raise TransferError(f"transfer.init_from={source} holds a {payload['model_name']}, but model.name is "
                            f"{model_name}; fine-tune the same architecture it was trained as")
    head = head_name(model)
    report = load_weights(model, payload["state_dict"], source=f"transfer.init_from={source}",
                          head={f"{head}.weight", f"{head}.bias"}, expected=f"a {model_name} of this model's shape",
                          fix="Use the same model.kwargs as the pre-training run.")
    return {**report, "source": source, "source_classes": payload.get("classes")}


def fit_linear_svm(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                   c: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear SVM on standardised features, returned as a linear layer's (weight, bias) on the
    raw features: the standardisation is folded in, and a binary SVM becomes two logits whose
    difference is its decision function, so argmax gives the SVM's prediction."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    x = train_features.double().numpy()
    scaler = StandardScaler().fit(x)
    svm = LinearSVC(C=c, random_state=seed, max_iter=10_000).fit(scaler.transform(x), train_labels.numpy())
    coef, intercept = svm.coef_, svm.intercept_
    if num_classes == 2:  # one decision function w.x + b; logits (-f/2, f/2) keep it as the difference
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float()


def set_head(model: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    head = dict(model.named_modules())[head_name(model)]
    if head.weight.shape != weight.shape:
        raise TransferError(f"head {head_name(model)} is {tuple(head.weight.shape)}, the SVM gives "
                            f"{tuple(weight.shape)}; is `features` the head's input?")
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_(bias.to(head.bias))


def resolve_init_source(path: str) -> Path:
    source = Path(path)
    if not source.exists():
        raise TransferError(f"transfer.init_from={path} not found; run its pre-training experiment first "
                            "(e.g. `dvc repro experiments/transfer/dvc.yaml`)")
    return source
