"""Checkpoints that rebuild their model alone: config, model name and arguments, weights.

Evaluation and export never re-read ``params.yaml`` to guess how a model was built
(nanoGPT's ``checkpoint['model_args']`` pattern). Every load verifies the sha256 hashes stored
at save time, so a corrupt file is an error, never a wrong accuracy.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .hashing import content_sha256
from .models import create_model

# The weights' identity (registry tag) and the check on everything else in the payload (config,
# classes, normalization, optimizer state), which evaluation trusts just as much.
WEIGHTS_HASH, METADATA_HASH = "weights_sha256", "metadata_sha256"
CORRUPT_FIX = "the file is corrupt; retrain with `cnnlab train`, or restore it with `dvc checkout`"


class CheckpointError(RuntimeError):
    pass


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint written before checkpoints stored hashes: it loads, but unverified."""


def _metadata(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in ("state_dict", WEIGHTS_HASH, METADATA_HASH)}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write atomically, so a crash mid-save never leaves a truncated checkpoint behind, with
    the hashes ``load_checkpoint`` verifies. They go first and last in the pickle: one burst of
    corrupt bytes cannot remove both and pass the file off as one written before hashes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({WEIGHTS_HASH: content_sha256(payload["state_dict"]), **_metadata(payload),
                "state_dict": payload["state_dict"], METADATA_HASH: content_sha256(_metadata(payload))}, tmp)
    tmp.replace(path)
    return path


def _verify(path: Path, payload: dict[str, Any], key: str, actual: str) -> None:
    if payload[key] != actual:
        raise CheckpointError(f"{path}: {key} is {actual} but {payload[key]} was stored at save time; "
                              + CORRUPT_FIX)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload ``save_checkpoint`` wrote, after checking both hashes: any mismatch, an
    unreadable file, or a file with only one of the hashes is a ``CheckpointError``.

    A checkpoint written before hashes were stored (neither hash) still loads, with one
    ``UnverifiedCheckpointWarning`` per file and process, since nothing can tell whether it is
    intact; its ``weights_sha256`` is then computed from the weights as loaded. Retraining (or
    loading and saving it again) gives it hashes.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; train first (`cnnlab train` or `dvc repro train`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({err}); {CORRUPT_FIX}") from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint; {CORRUPT_FIX}")
    missing = {"model_name", "model_kwargs", "state_dict"} - set(payload)
    if missing:
        raise CheckpointError(f"{path} lacks {sorted(missing)}; it was not written by cnnlab, or {CORRUPT_FIX}")
    weights = content_sha256(payload["state_dict"])
    stored = {WEIGHTS_HASH, METADATA_HASH} & set(payload)
    if not stored:
        warnings.warn(f"{path} was saved without hashes (before cnnlab stored them): its integrity "
                      "cannot be verified", UnverifiedCheckpointWarning)
        return {**payload, WEIGHTS_HASH: weights}
    if len(stored) == 1:
        raise CheckpointError(f"{path} stores {stored.pop()} but not the other hash; {CORRUPT_FIX}")
    _verify(path, payload, WEIGHTS_HASH, weights)
    _verify(path, payload, METADATA_HASH, content_sha256(_metadata(payload)))
    return payload


def model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    model = create_model(payload["model_name"], **payload["model_kwargs"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def with_tta(model: nn.Module, x: torch.Tensor, logits: torch.Tensor, tta: str) -> torch.Tensor:
    """``logits`` of ``model(x)`` after test-time augmentation: for ``"hflip"``, averaged (in
    fp32) with the logits of the mirror images. The one definition evaluation and export share."""
    if tta != "hflip":
        return logits
    return (logits.float() + model(x.flip(3))[0].float()) / 2


def checkpoint_tta(payload: dict[str, Any]) -> str:
    """The checkpoint's ``train.tta``: evaluation and export apply what validation used."""
    return payload.get("config", {}).get("train", {}).get("tta", "none")


class InferenceModel(nn.Module):
    """Pixels in [0, 1] (N, C, H, W) -> logits: normalisation (and flip TTA, when the model was
    trained with it) baked in, so a served or exported model needs nothing but the image and
    scores what evaluation reported."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], tta: str = "none"):
        super().__init__()
        self.model = model
        self.tta = tta
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        return with_tta(self.model, x, self.model(x)[0], self.tta)


def inference_model(payload: dict[str, Any]) -> InferenceModel:
    norm = payload["normalization"]
    return InferenceModel(model_from_checkpoint(payload), norm["mean"], norm["std"],
                          checkpoint_tta(payload)).eval()
