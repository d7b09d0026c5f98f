"""Dataset registry: a name -> a loader returning in-memory uint8 tensors.

    from cnnlab.data import load_raw, list_datasets
    raw = load_raw("cifar10", SourceContext.from_config(cfg.data))

Sources, in order: ``data.raw_dir``, the datasets directory (``data.datasets_dir`` or
``$CNNLAB_DATASETS``; one that does not exist is an error), then torchvision's download; MNIST
alone falls back to an embedded 5,000-digit subset when no datasets directory is set, so the
demo runs offline.
"""

from __future__ import annotations

from typing import Callable

from .arrays import load_cifar10, load_user_npz
from .base import DATASETS_ENV, DatasetError, RawDataset, SourceContext
from .caltech import load_caltech101
from .digits import load_embedded_mnist, load_fashion_mnist, load_mnist
from .folders import load_image_folder
from .prepare import PreparedData, load_prepared, load_view, prepare, prepared_path, select_view, summarize
from .svhn import load_svhn

_LOADERS: dict[str, Callable[[SourceContext], RawDataset]] = {
    "mnist": load_mnist,
    "mnist_digits": lambda ctx: load_embedded_mnist(name="mnist_digits"),  # 5,000 digits, offline (make demo)
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "svhn": load_svhn,
    "caltech101": load_caltech101,
    "alien_vs_predator": lambda ctx: load_image_folder(ctx, "alien_vs_predator"),
}


def register_dataset(name: str, loader: Callable[[SourceContext], RawDataset]) -> None:
    _LOADERS[name] = loader


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_raw(name: str, ctx: SourceContext) -> RawDataset:
    """Load a registered dataset; ``npz:<name>`` and ``folder:<name>`` load user data by layout."""
    kind, _, user_name = name.partition(":")
    if user_name and kind == "npz":
        return load_user_npz(ctx, user_name)
    if user_name and kind == "folder":
        return load_image_folder(ctx, user_name)
    if name not in _LOADERS:
        raise DatasetError(
            f"unknown dataset '{name}'; registered: {', '.join(list_datasets())} "
            "(or npz:<name> / folder:<name> for your own data)"
        )
    return _LOADERS[name](ctx)


__all__ = [
    "DATASETS_ENV", "DatasetError", "PreparedData", "RawDataset", "SourceContext", "list_datasets",
    "load_prepared", "load_raw", "load_view", "select_view", "prepare", "prepared_path", "register_dataset", "summarize",
]
