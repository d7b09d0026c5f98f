"""Checkpoints that rebuild their model alone: config, model name and arguments, weights.

Evaluation and export never re-read ``params.yaml`` to guess how a model was built
(nanoGPT's ``checkpoint['model_args']`` pattern).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import create_model


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write atomically, so a crash mid-save never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; train first (`cnnlab train` or `dvc repro train`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({err}); retrain to recreate it") from err
    missing = {"model_name", "model_kwargs", "state_dict"} - set(payload)
    if missing:
        raise CheckpointError(f"{path} lacks {sorted(missing)}; it was not written by cnnlab")
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
