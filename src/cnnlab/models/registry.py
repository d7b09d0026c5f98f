"""Models selected by name, timm-style: ``@register_model``, ``create_model``, ``list_models``.

Every model maps images ``(N, C, H, W)`` to ``(logits, features)``: ``features`` is the
intermediate representation used for t-SNE and transfer learning.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn


class ModelError(ValueError):
    """Unknown model name or constructor arguments it does not take."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    input_shape: tuple[int, int, int]  # the (C, H, W) its defaults are built for
    num_classes: int = 10


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, input_shape: tuple[int, int, int], description: str = "", num_classes: int = 10):
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ModelError(f"model '{name}' is registered twice")
        doc = description or (inspect.getdoc(builder) or "").splitlines()[0]
        _REGISTRY[name] = ModelEntry(name, builder, doc, input_shape, num_classes)
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ModelError(f"unknown model '{name}'; registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown keyword arguments name the valid ones."""
    entry = model_entry(name)
    params = inspect.signature(entry.builder).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ModelError(
            f"model '{name}' takes no argument {', '.join(unknown)}; valid: {', '.join(params)}"
        )
    return entry.builder(**kwargs)


def trainable_parameters(model: nn.Module) -> int:
    """Parameters the optimizer updates: frozen layers (``requires_grad=False``) are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def total_parameters(model: nn.Module) -> int:
    """Every parameter of the model, frozen or not (what a parameter budget limits)."""
    return sum(p.numel() for p in model.parameters())
