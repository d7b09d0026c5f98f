"""Model registry; importing this package registers every model family."""

from . import alexnet, efficientnet, searchable, simple, svhn, torchvision_backbones  # noqa: F401  (registration side effect)
from .registry import (
    ModelEntry, ModelError, count_parameters, create_model, list_models, model_entry, register_model,
)

__all__ = ["ModelEntry", "ModelError", "count_parameters", "create_model", "list_models", "model_entry",
           "register_model"]
