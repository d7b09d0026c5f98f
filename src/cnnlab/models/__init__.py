"""Model registry; importing this package registers every model family."""

from . import alexnet, efficientnet, searchable, simple, svhn, torchvision_backbones  # noqa: F401  (registration side effect)
from .registry import (
    ModelEntry, ModelError, create_model, list_models, model_entry, register_model, total_parameters,
    trainable_parameters,
)

__all__ = ["ModelEntry", "ModelError", "create_model", "list_models", "model_entry", "register_model",
           "total_parameters", "trainable_parameters"]
