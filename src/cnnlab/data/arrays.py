"""CIFAR-10 (and any user dataset) from a plain ``.npz`` of arrays, or torchvision's batches.

An ``.npz`` holds ``x_train``, ``y_train``, ``x_test``, ``y_test`` (uint8 images, HWC or
NHW, integer labels) and optionally ``classes``. Whole-number pixels 0..255 and whole-number
float labels are converted; other values, and splits of different image shapes, are errors at
load (so at ``cnnlab prepare``) naming the file. It is verified by sha256: the value built
in for the shared CIFAR-10 file, a ``SHA256SUMS`` manifest beside it, or ``data.sha256``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torchvision

from .base import DatasetError, RawDataset, SourceContext, manifest_checksum, verify_file

log = logging.getLogger(__name__)

# sha256 of the verified CIFAR-10 archive (see shared/datasets/cifar10/README.txt).
KNOWN_NPZ_SHA256 = {
    "cifar10.npz": "48e659df2854aa5d299405c1f307b8a6c7d61c218d8919165083f153911d635e",
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _to_nchw(images: np.ndarray, name: str) -> torch.Tensor:
    """N×H×W, N×H×W×C or N×C×H×W pixels as uint8 NCHW; errors name the array (``<file>: x_train``)."""
    images = _as_uint8(images, name)
    if images.ndim == 3:  # N, H, W greyscale
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif images.ndim != 4:
        raise DatasetError(f"{name} must be N×H×W or N×H×W×C, got shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images))


def _as_uint8(images: np.ndarray, name: str) -> np.ndarray:
    """Pixels as uint8: integer or whole-number float values 0..255 convert; anything else is an error."""
    if images.dtype == np.uint8:
        return images
    fix = "Fix: save pixels as uint8 0..255 (e.g. np.round(x * 255).astype(np.uint8) for images scaled to 0..1)"
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise DatasetError(f"{name} holds {images.dtype} values, not pixels. {fix}")
    if images.size and np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise DatasetError(f"{name} holds NaN or infinite pixel values. {fix}")
    if images.size and (images.min() < 0 or images.max() > 255):
        raise DatasetError(f"{name} pixel values span {images.min()}..{images.max()}, outside 0..255. {fix}")
    if np.issubdtype(images.dtype, np.floating) and not (images == np.round(images)).all():
        raise DatasetError(f"{name} holds fractional pixel values ({images.dtype}, "
                           f"{images.min()}..{images.max()}). {fix}")
    return images.astype(np.uint8)


def _labels(values: np.ndarray, name: str) -> torch.Tensor:
    """Class indices as int64: integers, or floats that are whole numbers; (N, 1) columns are flattened."""
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    fix = "Fix: save one integer class index 0..K-1 per image (e.g. y.astype(np.int64))"
    if values.ndim != 1:
        raise DatasetError(f"{name} must hold one label per image (shape (N,)), got shape {values.shape}. {fix}")
    if np.issubdtype(values.dtype, np.floating):
        whole = np.isfinite(values) & (values == np.round(values))
        if not whole.all():
            raise DatasetError(f"{name} holds {int((~whole).sum())} labels that are not whole numbers "
                               f"(e.g. {values[~whole][:3].tolist()}). {fix}")
    elif not np.issubdtype(values.dtype, np.integer):
        raise DatasetError(f"{name} holds {values.dtype} labels. {fix}")
    return torch.from_numpy(values.astype(np.int64))


def load_npz(path: Path, name: str, expected_sha256: str = "", classes: list[str] | None = None) -> RawDataset:
    expected = expected_sha256 or KNOWN_NPZ_SHA256.get(path.name) or manifest_checksum(path)
    actual = verify_file(path, expected)
    if not expected:
        log.warning("%s has no known sha256; recorded %s. Set data.sha256 to pin it.", path, actual)
    with np.load(path, allow_pickle=False) as arrays:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
        if missing:
            raise DatasetError(f"{path} lacks arrays {sorted(missing)}; it holds {arrays.files}")
        x_train, x_test = (_to_nchw(arrays[k], f"{path}: {k}") for k in ("x_train", "x_test"))
        y_train, y_test = (_labels(arrays[k], f"{path}: {k}") for k in ("y_train", "y_test"))
        if "classes" in arrays.files:
            classes = [str(c) for c in arrays["classes"]]
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    classes = classes or [str(i) for i in range(n_classes)]
    return RawDataset(
        name, classes, x_train, y_train, x_test, y_test,
        provenance={"source": str(path), "verified": "sha256" if expected else "unverified",
                    "file_sha256": actual},
    )


def load_cifar10(ctx: SourceContext) -> RawDataset:
    npz = ctx.find("cifar10/cifar10.npz", "cifar10.npz")
    if npz is not None:
        return load_npz(npz, "cifar10", ctx.sha256, CIFAR10_CLASSES)
    tv = torchvision.datasets.CIFAR10
    batches = ctx.find(tv.base_folder)
    root = batches.parent if batches is not None else None
    if root is None and ctx.download:
        try:
            tv(root=str(ctx.raw_dir), train=True, download=True)
            root = ctx.raw_dir
        except Exception as err:
            ctx.searched.append(f"torchvision download ({type(err).__name__}: {err})")
    if root is None:
        raise ctx.not_found("cifar10", "point data.datasets_dir (or $CNNLAB_DATASETS) at a folder "
                            "with cifar10/cifar10.npz or cifar-10-batches-py/, or go online")
    # torchvision checks every batch's md5 and raises on a mismatch.
    train, test = tv(root=str(root), train=True), tv(root=str(root), train=False)
    return RawDataset(
        "cifar10", CIFAR10_CLASSES,
        _to_nchw(train.data, "train"), torch.tensor(train.targets), _to_nchw(test.data, "test"),
        torch.tensor(test.targets),
        provenance={"source": str(root / tv.base_folder), "verified": "md5 (torchvision)"},
    )


def load_user_npz(ctx: SourceContext, name: str) -> RawDataset:
    path = ctx.find(f"{name}.npz", f"{name}/{name}.npz")
    if path is None:
        raise ctx.not_found(name, f"save x_train/y_train/x_test/y_test as {name}.npz in data.raw_dir "
                            "or the datasets directory")
    return load_npz(path, name, ctx.sha256)
