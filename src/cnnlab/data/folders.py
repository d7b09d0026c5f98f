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

from .base import DatasetError, RawDataset, SourceContext, manifest_checksum, verify_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
TRAIN_SPLITS = ("train",)
TEST_SPLITS = ("validation", "val", "test")
DEFAULT_FOLDER_IMAGE_SIZE = 224  # ImageNet-pretrained backbones expect about this


def load_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = size / min(img.size)
            resized = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                                 Image.Resampling.BILINEAR)
            left, top = (resized.width - size) // 2, (resized.height - size) // 2
            return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"cannot decode image {path} ({err}); remove or replace the file") from err


def list_class_folders(split_dir: Path) -> list[str]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{split_dir} has no class sub-folders (expected {split_dir}/<class>/<image>)")
    return classes


def read_split(split_dir: Path, classes: list[str], size: int, verify: bool = True):
    images, labels = [], []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        files = sorted(p for p in class_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if class_dir.exists() else []
        for path in files:
            if verify:
                expected = manifest_checksum(path)
                if expected:
                    verify_file(path, expected)
            images.append(load_image(path, size))
            labels.append(label)
    if not images:
        raise DatasetError(f"{split_dir} holds no images in {classes}")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def load_image_folder(ctx: SourceContext, name: str) -> RawDataset:
    root = ctx.find(name)
    if root is None:
        raise ctx.not_found(name, f"arrange images as <datasets_dir>/{name}/train/<class>/*.jpg and "
                            f"<datasets_dir>/{name}/validation/<class>/*.jpg")
    train_dir = next((root / s for s in TRAIN_SPLITS if (root / s).is_dir()), None)
    test_dir = next((root / s for s in TEST_SPLITS if (root / s).is_dir()), None)
    if train_dir is None or test_dir is None:
        raise DatasetError(f"{root} needs a train/ folder and one of {TEST_SPLITS}; found "
                           f"{sorted(p.name for p in root.iterdir())}")
    classes = list_class_folders(train_dir)
    size = ctx.image_size or DEFAULT_FOLDER_IMAGE_SIZE
    x_train, y_train = read_split(train_dir, classes, size)
    x_test, y_test = read_split(test_dir, classes, size)
    return RawDataset(
        name, classes, x_train, y_train, x_test, y_test,
        provenance={"source": str(root), "verified": "SHA256SUMS where listed", "image_size": size,
                    "test_split": test_dir.name},
    )
