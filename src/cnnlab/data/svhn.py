"""SVHN cropped digits from torchvision's ``{train,test}_32x32.mat`` files.

Verified against torchvision's published md5, or a ``SHA256SUMS`` manifest beside the files
when present (how tests ship small real-format files). Label 10 means digit 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision

from .base import DatasetError, RawDataset, SourceContext, manifest_checksum, verify_file

SVHN_CLASSES = [str(d) for d in range(10)]


def read_svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as err:
        raise DatasetError(f"{path} is not a readable SVHN .mat file ({err})") from err
    images = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))  # H, W, C, N -> N, C, H, W
    labels = mat["y"].astype(np.int64).reshape(-1) % 10  # "10" is the digit 0
    return torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels)


def load_svhn(ctx: SourceContext) -> RawDataset:
    tv = torchvision.datasets.SVHN
    _, train_file, train_md5 = tv.split_list["train"]
    found = ctx.find(f"svhn/{train_file}", train_file)
    if found is None and ctx.download:
        try:
            for split in ("train", "test"):
                tv(root=str(ctx.raw_dir / "svhn"), split=split, download=True)
            found = ctx.find(f"svhn/{train_file}")
        except Exception as err:
            ctx.searched.append(f"torchvision download ({type(err).__name__}: {err})")
    if found is None:
        raise ctx.not_found("svhn", "put train_32x32.mat and test_32x32.mat in <datasets_dir>/svhn/ "
                            "or go online for the torchvision download")
    splits, checksums = {}, {}
    for split in ("train", "test"):
        _, filename, md5 = tv.split_list[split]
        path = found.parent / filename
        if not path.exists():
            raise DatasetError(f"svhn: {path} is missing beside {found.name}")
        manifest = manifest_checksum(path)
        checksums[filename] = verify_file(path, manifest, "sha256") if manifest else verify_file(path, md5, "md5")
        splits[split] = read_svhn_mat(path)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    return RawDataset(
        "svhn", SVHN_CLASSES, x_train, y_train, x_test, y_test,
        provenance={"source": str(found.parent), "verified": "checksums", "files": checksums},
    )
