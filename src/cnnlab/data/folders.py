"""Image-folder datasets (``<root>/<name>/<split>/<class>/*.jpg``), e.g. Alien vs Predator.

Images are decoded once with PIL, converted to RGB, resized (shorter side) and centre
cropped to ``data.image_size`` so the whole set sits in one uint8 tensor. Files listed in a
``SHA256SUMS`` manifest above them are verified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..images import fit_square
from .base import DatasetError, RawDataset, SourceContext, manifest_checksum, verify_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
TRAIN_SPLITS = ("train",)
TEST_SPLITS = ("validation", "val", "test")
DEFAULT_FOLDER_IMAGE_SIZE = 224  # ImageNet-pretrained backbones expect about this


def load_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(fit_square(img, size), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"cannot decode image {path} ({err}); remove or replace the file") from err


def list_class_folders(split_dir: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .git) are never classes.
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{split_dir} has no class sub-folders (expected {split_dir}/<class>/<image>)")
    return classes


def list_images(class_dir: Path) -> list[Path]:
    """Image files of one class folder, sorted by name so order and any split are reproducible."""
    if not class_dir.is_dir():
        return []
    return sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def find_split_dirs(root: Path) -> tuple[Path, Path]:
    """``root/train`` and the first of ``root/{validation,val,test}``; a clear error when either is missing."""
    train_dir = next((root / s for s in TRAIN_SPLITS if (root / s).is_dir()), None)
    test_dir = next((root / s for s in TEST_SPLITS if (root / s).is_dir()), None)
    if train_dir is None or test_dir is None:
        raise DatasetError(f"{root} needs a train/ folder and one of {TEST_SPLITS}; found "
                           f"{sorted(p.name for p in root.iterdir())}")
    return train_dir, test_dir


def matching_classes(train_dir: Path, test_dir: Path) -> list[str]:
    """The classes with images in both splits; a class in only one is an error naming it."""
    with_images = [{c for c in list_class_folders(d) if list_images(d / c)} for d in (train_dir, test_dir)]
    only_train, only_test = sorted(with_images[0] - with_images[1]), sorted(with_images[1] - with_images[0])
    if only_train or only_test:
        lines = [f"{names} only in {folder} ({why})" for names, folder, why in (
            (only_train, train_dir, "never tested"), (only_test, test_dir, "never trained on")) if names]
        raise DatasetError(f"class folders with images differ between the splits: {'; '.join(lines)}. "
                           f"Fix: give every class a folder with images under both {train_dir} and {test_dir}, "
                           "or remove the extra class folders")
    return sorted(with_images[0])


def read_images(files: list[Path], labels: list[int], size: int, verify: bool = True):
    """Decode ``files`` into one uint8 NCHW tensor, checking each against a SHA256SUMS manifest if listed."""
    # Filled in place rather than stacked from a list: a single copy of the images in memory.
    x = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    pixels = x.numpy()  # a view: numpy writes land in the tensor
    for i, path in enumerate(files):
        if verify:
            expected = manifest_checksum(path)
            if expected:
                verify_file(path, expected)
        pixels[i] = load_image(path, size).transpose(2, 0, 1)
    return x, torch.tensor(labels, dtype=torch.int64)


def read_split(split_dir: Path, classes: list[str], size: int, verify: bool = True):
    files, labels = [], []
    for label, name in enumerate(classes):
        class_files = list_images(split_dir / name)
        files += class_files
        labels += [label] * len(class_files)
    if not files:
        raise DatasetError(f"{split_dir} holds no images in {classes}")
    return read_images(files, labels, size, verify)


def load_image_folder(ctx: SourceContext, name: str) -> RawDataset:
    root = ctx.find(name)
    if root is None:
        raise ctx.not_found(name, f"arrange images as <datasets_dir>/{name}/train/<class>/*.jpg and "
                            f"<datasets_dir>/{name}/validation/<class>/*.jpg")
    train_dir, test_dir = find_split_dirs(root)
    classes = matching_classes(train_dir, test_dir)
    size = ctx.image_size or DEFAULT_FOLDER_IMAGE_SIZE
    x_train, y_train = read_split(train_dir, classes, size)
    x_test, y_test = read_split(test_dir, classes, size)
    return RawDataset(
        name, classes, x_train, y_train, x_test, y_test,
        provenance={"source": str(root), "verified": "SHA256SUMS where listed", "image_size": size,
                    "test_split": test_dir.name},
    )
