"""The ``prepare`` stage: one dataset -> a hashed train/val/test artifact that training reads.

The validation split is carved from the training split, stratified, with a fixed seed, so
every training stage depends on the same versioned file rather than on a random draw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..hashing import content_sha256, tensor_digest
from .base import DatasetError, RawDataset
from .sampling import stratified_split

# The sha256 of everything else in the file, stored beside it at save time and checked on
# every load: a flipped pixel byte still unpickles, and would train and score without a word.
PAYLOAD_HASH = "payload_sha256"


@dataclass
class PreparedData:
    name: str
    classes: list[str]
    x_train: torch.Tensor  # uint8 NCHW
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: list[float]  # per channel, on [0, 1] pixels of the training split
    std: list[float]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    pixels = images.to(torch.float64).div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return pixels.mean(1).tolist(), pixels.std(1).clamp_min(1e-6).tolist()


def prepare(raw: RawDataset, val_fraction: float, seed: int, train_subset: int = 0) -> PreparedData:
    if not 0 < val_fraction < 1:
        raise DatasetError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    kept, rest = stratified_split(raw.y_train, 1 - val_fraction, seed)
    train_idx, val_idx = torch.from_numpy(kept), torch.from_numpy(rest)
    if train_subset:
        if train_subset >= len(train_idx):
            raise DatasetError(f"data.train_subset={train_subset} but only {len(train_idx)} training samples")
        sub, _ = stratified_split(raw.y_train[train_idx], train_subset, seed)
        train_idx = train_idx[torch.from_numpy(sub)]
    x_train, y_train = raw.x_train[train_idx], raw.y_train[train_idx]
    mean, std = channel_stats(x_train)
    provenance = dict(raw.provenance)
    provenance["content_sha256"] = tensor_digest(raw.x_train, raw.y_train, raw.x_test, raw.y_test)
    provenance["split"] = {"val_fraction": val_fraction, "seed": seed, "train_subset": train_subset}
    return PreparedData(
        raw.name, raw.classes, x_train, y_train, raw.x_train[val_idx], raw.y_train[val_idx],
        raw.x_test, raw.y_test, mean, std, provenance,
    )


def prepared_path(prepared_dir: str | Path, name: str, image_size: int = 0) -> Path:
    """``<dir>/<name>.pt``, or ``<name>_<size>px.pt`` when image folders are resized to a set size,
    so one dataset can be prepared at two sizes (E8: 128 px from scratch, 224 px pretrained)."""
    stem = name.replace(":", "_") + (f"_{image_size}px" if image_size else "")
    return Path(prepared_dir) / f"{stem}.pt"


def save_prepared(data: PreparedData, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = asdict(data)
    torch.save({**payload, PAYLOAD_HASH: content_sha256(payload)}, path)
    return path


def require_prepared(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"prepared dataset {path} not found; run `cnnlab prepare` (or `dvc repro prepare`)")
    return path


def load_prepared(path: str | Path) -> PreparedData:
    """The dataset ``save_prepared`` wrote, its hash verified (a file saved before prepared files
    stored one loads unverified)."""
    path = require_prepared(path)
    fix = "delete it and run `cnnlab prepare` again"
    try:
        payload = torch.load(path, weights_only=True)
        stored = payload.pop(PAYLOAD_HASH, None)
        data = PreparedData(**payload)
    except Exception as err:
        raise DatasetError(f"{path} is not a readable prepared dataset ({err}); {fix}") from err
    if stored is not None and content_sha256(payload) != stored:
        raise DatasetError(f"{path}: its content no longer matches the {PAYLOAD_HASH} stored when it was prepared; "
                           f"the file is corrupt; {fix}")
    # The file's identity travels with the data: runs record it as their input's digest.
    return replace(data, provenance={**data.provenance, PAYLOAD_HASH: stored or ""})


def select_view(data: PreparedData, classes: list[str], train_subset: int = 0, seed: int = 0,
                labelled_budget: int = 0, budget_val_fraction: float = 0.2) -> PreparedData:
    """The classes named (relabelled 0.. in the order given) and a stratified training subset,
    or, with ``labelled_budget``, that many labelled images in all, split (stratified) into
    training and a validation split that replaces the prepared one.

    Normalisation statistics stay those of the whole prepared training split, so a network
    pre-trained on one view of a dataset sees the next view on the same scale.
    """
    if not classes and not train_subset and not labelled_budget:
        return data
    if train_subset and labelled_budget:
        raise DatasetError(f"data.labelled_budget={labelled_budget} and data.train_subset={train_subset} both set "
                           "how many labelled images a run sees; set one (the other to 0)")
    view = data
    if classes:
        unknown = [c for c in classes if c not in data.classes]
        if unknown or len(set(classes)) != len(classes):
            raise DatasetError(f"data.classes {classes}: {'unknown ' + str(unknown) if unknown else 'repeated names'}; "
                               f"{data.name} has classes {data.classes}")
        old_labels = torch.tensor([data.classes.index(c) for c in classes])

        def keep(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mask = (y[:, None] == old_labels[None, :])
            return mask.any(1), mask.float().argmax(1)

        splits = {}
        for split in ("train", "val", "test"):
            x, y = data.split(split)
            kept, new_labels = keep(y)
            splits[f"x_{split}"], splits[f"y_{split}"] = x[kept], new_labels[kept]
        view = replace(data, classes=list(classes), **splits)
    if train_subset:
        if train_subset >= len(view.y_train):
            raise DatasetError(f"data.train_subset={train_subset} but the view has only {len(view.y_train)} "
                               "training samples; lower it or set 0 to keep all")
        kept = torch.from_numpy(stratified_split(view.y_train, train_subset, seed)[0])
        view = replace(view, x_train=view.x_train[kept], y_train=view.y_train[kept])
    details = {"classes": list(classes), "train_subset": train_subset, "seed": seed}
    if labelled_budget:
        view = budget_view(view, labelled_budget, budget_val_fraction, seed)
        details.update(labelled_budget=labelled_budget, budget_val_fraction=budget_val_fraction,
                       train=len(view.y_train), val=len(view.y_val))
    return replace(view, provenance=dict(view.provenance, view=details))


def budget_view(view: PreparedData, budget: int, val_fraction: float, seed: int) -> PreparedData:
    """``budget`` labelled images drawn (stratified) from the view's training split, then split
    (stratified) into training and validation; the prepared validation split is dropped, so
    nothing outside the budget chooses the model."""
    classes = view.num_classes
    n_val = round(budget * val_fraction)
    n_train = budget - n_val
    if budget > len(view.y_train):
        raise DatasetError(f"data.labelled_budget={budget} but the view has only {len(view.y_train)} training "
                           "samples; lower it")
    if min(n_train, n_val) < classes:
        raise DatasetError(f"data.labelled_budget={budget} with data.budget_val_fraction={val_fraction} gives "
                           f"{n_train} training and {n_val} validation images; each needs at least one per class "
                           f"({classes}); raise the budget or change the fraction")
    drawn = (torch.from_numpy(stratified_split(view.y_train, budget, seed)[0]) if budget < len(view.y_train)
             else torch.arange(len(view.y_train)))
    train_part, val_part = stratified_split(view.y_train[drawn], n_train, seed)
    train_idx, val_idx = drawn[torch.from_numpy(train_part)], drawn[torch.from_numpy(val_part)]
    return replace(view, x_train=view.x_train[train_idx], y_train=view.y_train[train_idx],
                   x_val=view.x_train[val_idx], y_val=view.y_train[val_idx])


def load_view(path: str | Path, data_config) -> PreparedData:
    """The prepared dataset at ``path`` seen through ``data.classes``, ``data.train_subset`` and
    ``data.labelled_budget``: what every stage of an experiment trains and evaluates on."""
    return select_view(load_prepared(path), list(data_config.classes), data_config.train_subset,
                       data_config.split_seed, data_config.labelled_budget, data_config.budget_val_fraction)


def summarize(data: PreparedData) -> dict[str, Any]:
    """Shape, samples per split and per-class counts: the dataset summary table's row."""
    channels, height, width = data.input_shape
    per_class = {
        split: dict(zip(data.classes, torch.bincount(data.split(split)[1], minlength=data.num_classes).tolist()))
        for split in ("train", "val", "test")
    }
    return {
        "dataset": data.name, "height": height, "width": width, "channels": channels,
        "classes": data.num_classes, "train": len(data.y_train), "val": len(data.y_val),
        "test": len(data.y_test), "mean": data.mean, "std": data.std,
        "per_class": per_class, "provenance": data.provenance,
    }
