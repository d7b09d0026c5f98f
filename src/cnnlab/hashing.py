"""Content hashes: of files (dataset archives, weight files) and of tensors (a dataset's provenance).

    file_digest(Path("resnet18-f37072fd.pth"))        # sha256 hex
    file_digest(Path("train-images-idx3-ubyte.gz"), "md5")  # torchvision publishes MNIST's md5
    tensor_digest(data.x_train, data.y_train)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

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
