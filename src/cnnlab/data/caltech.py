"""Caltech-101: 101 object categories of 31-800 images each, colour and grayscale JPEGs.

    from cnnlab.data import SourceContext, load_raw, prepare
    raw = load_raw("caltech101", SourceContext(raw_dir=Path("data/raw"), datasets_dir=None,
                                               download=True, fallback="error", image_size=224))
    data = prepare(raw, val_fraction=0.5, seed=0)  # E7: stratified 1:1 train/val of the train split

Two layouts are read, under ``caltech101/`` in ``data.raw_dir`` and then the datasets directory:

1. split folders ``caltech101/train/<class>/*.jpg`` + ``caltech101/{validation,val,test}/<class>/*.jpg``:
   the given split is used as it is;
2. torchvision's ``caltech101/101_ObjectCategories/<class>/*.jpg`` (what
   ``torchvision.datasets.Caltech101(root, download=True)`` leaves in ``root/caltech101``): the
   dataset has no official split, so ``HELD_OUT_TEST_FRACTION`` of every class is held out as the
   test split with the fixed seed ``HELD_OUT_SEED``.

When neither is found and ``data.download`` is true, torchvision downloads layout 2 into raw_dir.
``BACKGROUND_Google`` (clutter, not a category) is dropped; the remaining folder names, sorted,
are the classes. Images go through the image-folder reader: RGB, shorter side resized and centre
cropped to ``data.image_size`` (default 224), files listed in a ``SHA256SUMS`` manifest verified.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from .base import DatasetError, RawDataset, SourceContext
from .folders import DEFAULT_FOLDER_IMAGE_SIZE, find_split_dirs, list_class_folders, list_images, read_images

NAME = "caltech101"
TORCHVISION_FOLDER = "101_ObjectCategories"
NOT_A_CATEGORY = ("BACKGROUND_Google",)  # random Google images: torchvision drops it too
HELD_OUT_TEST_FRACTION = 0.2
HELD_OUT_SEED = 0

LAYOUT_HINT = (
    f"use either (1) split folders <datasets_dir>/{NAME}/train/<class>/*.jpg and "
    f"<datasets_dir>/{NAME}/test/<class>/*.jpg (or validation/), or (2) torchvision's layout "
    f"<datasets_dir>/{NAME}/{TORCHVISION_FOLDER}/<class>/*.jpg, e.g. unpack 101_ObjectCategories.tar.gz "
    f"from caltech-101.zip (data.caltech.edu) there; data.raw_dir works in place of <datasets_dir>, "
    "or set data.download=true to let torchvision download layout (2) into data.raw_dir"
)


def split_categories(folder_names: list[str]) -> tuple[list[str], list[str]]:
    """(classes, dropped): the category folders sorted, and the non-category ones present."""
    classes = sorted(n for n in folder_names if n not in NOT_A_CATEGORY)
    dropped = sorted(n for n in folder_names if n in NOT_A_CATEGORY)
    return classes, dropped


def hold_out_per_class(files: list[Path], fraction: float, seed: int, class_name: str) -> tuple[list[Path], list[Path]]:
    """(kept, held_out): ``round(fraction * n)`` files held out, at least one on each side."""
    if len(files) < 2:
        raise DatasetError(f"{NAME}: class '{class_name}' has {len(files)} image(s); holding out a test "
                           "split needs at least 2 per class")
    n_held = min(len(files) - 1, max(1, round(fraction * len(files))))
    # Seeded per class (by name), so adding or removing one class leaves every other class's split as it was.
    rng = np.random.default_rng([seed, zlib.crc32(class_name.encode())])
    order = rng.permutation(len(files))
    held = set(order[:n_held].tolist())
    return ([f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held])


def labelled_files(per_class: list[list[Path]]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for label, class_files in enumerate(per_class):
        files += class_files
        labels += [label] * len(class_files)
    return files, labels


def read_split_layout(root: Path, size: int) -> RawDataset:
    """Layout 1: the train and test folders as given."""
    train_dir, test_dir = find_split_dirs(root)
    classes, dropped = split_categories(list_class_folders(train_dir))
    unknown = sorted(set(split_categories(list_class_folders(test_dir))[0]) - set(classes))
    if unknown:  # their images would otherwise vanish without a word
        raise DatasetError(f"{NAME}: {test_dir} has classes missing from {train_dir}: {unknown}")
    splits = []
    for split_dir in (train_dir, test_dir):
        files, labels = labelled_files([list_images(split_dir / c) for c in classes])
        if not files:
            raise DatasetError(f"{split_dir} holds no images in {classes}")
        splits.append(read_images(files, labels, size))
    (x_train, y_train), (x_test, y_test) = splits
    provenance = {"source": str(root), "layout": "split folders", "test_split": test_dir.name,
                  "dropped_classes": dropped}
    return RawDataset(NAME, classes, x_train, y_train, x_test, y_test, provenance=provenance)


def read_torchvision_layout(categories_dir: Path, size: int) -> RawDataset:
    """Layout 2: one folder per category; a stratified test split is held out with a fixed seed."""
    classes, dropped = split_categories(list_class_folders(categories_dir))
    kept, held_out = [], []
    for name in classes:
        train_files, test_files = hold_out_per_class(list_images(categories_dir / name), HELD_OUT_TEST_FRACTION,
                                                     HELD_OUT_SEED, name)
        kept.append(train_files)
        held_out.append(test_files)
    x_train, y_train = read_images(*labelled_files(kept), size)
    x_test, y_test = read_images(*labelled_files(held_out), size)
    provenance = {"source": str(categories_dir), "layout": f"torchvision {TORCHVISION_FOLDER}",
                  "test_split": {"held_out_fraction": HELD_OUT_TEST_FRACTION, "seed": HELD_OUT_SEED,
                                 "method": "per class, round(fraction * n), at least 1 image each side"},
                  "dropped_classes": dropped}
    return RawDataset(NAME, classes, x_train, y_train, x_test, y_test, provenance=provenance)


def find_caltech(ctx: SourceContext) -> Path | None:
    """``caltech101/train`` or ``caltech101/101_ObjectCategories``: raw_dir first, then the datasets directory."""
    return ctx.find(f"{NAME}/train", f"{NAME}/{TORCHVISION_FOLDER}")


def download_caltech(ctx: SourceContext) -> Path | None:
    import torchvision

    try:
        torchvision.datasets.Caltech101(root=str(ctx.raw_dir), target_type="category", download=True)
    except Exception as err:  # offline, or gdown/zip trouble: reported with the places searched
        ctx.searched.append(f"torchvision download into {ctx.raw_dir / NAME} ({type(err).__name__}: {err})")
        return None
    return ctx.find(f"{NAME}/{TORCHVISION_FOLDER}")


def load_caltech101(ctx: SourceContext) -> RawDataset:
    found = find_caltech(ctx)
    if found is None and ctx.download:
        found = download_caltech(ctx)
    if found is None:
        raise ctx.not_found(NAME, LAYOUT_HINT)
    size = ctx.image_size or DEFAULT_FOLDER_IMAGE_SIZE
    if found.name == TORCHVISION_FOLDER:
        raw = read_torchvision_layout(found, size)
    else:
        raw = read_split_layout(found.parent, size)
    raw.provenance.update(verified="SHA256SUMS where listed", image_size=size)
    return raw
