"""What every dataset loader returns, where loaders look, and how files are verified."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..hashing import file_digest

DATASETS_ENV = "CNNLAB_DATASETS"


class DatasetError(RuntimeError):
    """A dataset that is missing, unknown or fails its checksum; the message says the fix."""


@dataclass
class RawDataset:
    """A dataset as in-memory uint8 NCHW tensors, before the train/val split."""

    name: str
    classes: list[str]
    x_train: torch.Tensor  # uint8 (N, C, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.provenance.get("source") or self.name  # the file or folder, where a loader knows it
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise DatasetError(f"{where}: x_{split} must be uint8 NCHW, got {x.dtype} {tuple(x.shape)}")
            if x.shape[1] not in (1, 3):
                raise DatasetError(f"{where}: x_{split} images have {x.shape[1]} channels (N×C×H×W "
                                   f"{tuple(x.shape)}). Fix: save greyscale (1 channel) or RGB (3 channels) images")
            if len(x) != len(y):
                raise DatasetError(f"{where}: {len(x)} {split} images (x_{split}) but {len(y)} labels (y_{split}). "
                                   "Fix: save exactly one label per image")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise DatasetError(
                    f"{where}: y_{split} labels span {int(y.min())}..{int(y.max())}, outside "
                    f"0..{len(self.classes) - 1} for the {len(self.classes)} classes. Fix: number the classes "
                    "0..K-1 (and list K names in `classes`, if given)"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DatasetError(
                f"{where}: train images are C×H×W {tuple(self.x_train.shape[1:])} but test images are "
                f"{tuple(self.x_test.shape[1:])}; a network trained on one cannot score the other. "
                "Fix: give both splits one image size and channel count (resize or convert one) before saving"
            )


@dataclass
class SourceContext:
    """Where a loader may look, in order: raw_dir, datasets_dir, then a download into raw_dir."""

    raw_dir: Path
    datasets_dir: Path | None
    download: bool
    fallback: str
    sha256: str = ""
    image_size: int = 0
    searched: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, data_config) -> "SourceContext":
        configured = data_config.datasets_dir or os.environ.get(DATASETS_ENV, "")
        return cls(
            raw_dir=Path(data_config.raw_dir),
            datasets_dir=Path(configured).expanduser() if configured else None,
            download=data_config.download,
            fallback=data_config.fallback,
            sha256=data_config.sha256,
            image_size=data_config.image_size,
        )

    def roots(self) -> list[Path]:
        if self.datasets_dir is not None and not self.datasets_dir.is_dir():
            # A typo here must not quietly fall through to a download or the embedded digits.
            raise DatasetError(
                f"the datasets directory {self.datasets_dir} (data.datasets_dir, or ${DATASETS_ENV} when that is "
                f"empty) {'is not a directory' if self.datasets_dir.exists() else 'does not exist'}. Fix: point it "
                "at the folder holding the datasets (e.g. ../shared/datasets), or leave both empty to use "
                "data.raw_dir, downloads and, for MNIST, the embedded 5,000 digits"
            )
        return [p for p in (self.raw_dir, self.datasets_dir) if p is not None]

    def find(self, *relative_candidates: str) -> Path | None:
        """First existing path among ``root/candidate``, recording every place looked at."""
        for root in self.roots():
            for rel in relative_candidates:
                path = root / rel
                self.searched.append(str(path))
                if path.exists():
                    return path
        return None

    def not_found(self, name: str, hint: str) -> DatasetError:
        looked = "\n  ".join(self.searched) or "(no directories configured)"
        where = (
            f"datasets_dir={self.datasets_dir}" if self.datasets_dir
            else f"no datasets directory set (set ${DATASETS_ENV} or data.datasets_dir)"
        )
        return DatasetError(
            f"dataset '{name}' not found. Looked in:\n  {looked}\n{where}; download "
            f"{'failed or unavailable' if self.download else 'disabled (data.download=false)'}.\n"
            f"Fix: {hint}"
        )


def manifest_checksum(path: Path) -> str | None:
    """sha256 listed for ``path`` in a SHA256SUMS file of any parent folder, if there is one."""
    path = path.resolve()
    for parent in path.parents:
        sums = parent / "SHA256SUMS"
        if sums.is_file():
            return _read_manifest(sums, sums.stat().st_mtime_ns).get(path.relative_to(parent).as_posix())
    return None


@functools.lru_cache(maxsize=8)
def _read_manifest(sums: Path, _mtime_ns: int) -> dict[str, str]:
    # Parsed once per file version: an image folder looks up every one of its files here
    # (Caltech-101: ~9,000 lookups in a ~9,000-line manifest).
    entries = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        entries[name.strip().lstrip("*")] = digest.strip()
    return entries


def verify_file(path: Path, expected: str | None, algorithm: str = "sha256") -> str:
    """Check ``path`` against ``expected`` (hex); returns the actual digest."""
    actual = file_digest(path, algorithm)
    if expected and actual.lower() != expected.lower():
        raise DatasetError(
            f"checksum mismatch for {path}: {algorithm} is {actual}, expected {expected}. "
            "The file is corrupt or not the published one; delete it and copy or download it again."
        )
    return actual
