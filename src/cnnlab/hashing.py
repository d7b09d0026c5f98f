"""Content hashes: of files (dataset archives, weight files, ONNX), of tensors (a dataset's
provenance) and of checkpoint payloads (their integrity).

    file_digest(Path("resnet18-f37072fd.pth"))        # sha256 hex
    file_digest(Path("train-images-idx3-ubyte.gz"), "md5")  # torchvision publishes MNIST's md5
    tensor_digest(data.x_train, data.y_train)
    content_sha256(model.state_dict())
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CHUNK = 1 << 20  # bytes read at a time, so a multi-GB archive never sits in memory whole


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 over tensor bytes: the content hash recorded as the data's provenance."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _feed(digest, value: Any) -> None:
    """Add ``value`` to ``digest`` unambiguously: mappings in sorted key order, tensors as dtype,
    shape and raw bytes in row-major order (so the memory layout, e.g. channels_last, and the
    device do not change the hash)."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        digest.update(f"tensor {data.dtype} {tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())  # a view of the bytes: no copy
    elif isinstance(value, Mapping):
        digest.update(f"dict {len(value)};".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"list {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def content_sha256(value: Any) -> str:
    """sha256 of a state dict (or any payload of tensors, containers and plain values)."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()
