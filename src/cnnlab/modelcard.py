"""What an exported ONNX model needs beside its graph to score an image file: the model card.

``cnnlab export`` writes it into ``model.onnx`` as one metadata entry (``cnnlab.model_card``,
JSON), so ``cnnlab predict`` needs nothing but the ``.onnx`` file. It holds the class names, the
input shape, how pixels are scaled, the training normalisation (already applied inside the
graph: recorded, never applied again) and the resize the training images went through.
No torch here: predict imports it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .images import FOLDER_RESIZE

METADATA_KEY = "cnnlab.model_card"
NO_RESIZE = "none"  # the dataset's own fixed-size images (MNIST, CIFAR-10, ...): no resize at training
PIXEL_SCALE = 255.0  # uint8 pixels / 255: the graph takes [0, 1] (checkpoint.InferenceModel)


class ModelCardError(ValueError):
    """An ONNX file without a readable cnnlab model card."""


@dataclass(frozen=True)
class ModelCard:
    classes: list[str]
    input_shape: list[int]  # channels, height, width of one image (the graph takes N x C x H x W float32)
    normalization: dict[str, list[float]]  # mean and std per channel, applied inside the graph
    resize: str  # NO_RESIZE, or FOLDER_RESIZE: images.fit_square, as the image-folder reader did
    dataset: str
    pixel_scale: float = PIXEL_SCALE

    @classmethod
    def for_training(cls, payload: dict, dataset: str, resized_folders: bool) -> "ModelCard":
        """The card of a checkpoint (``load_checkpoint``) trained on ``dataset``; ``resized_folders``:
        its images came from image folders fitted to one size (the data's provenance records it)."""
        return cls(list(payload["classes"]), list(payload["input_shape"]), dict(payload["normalization"]),
                   FOLDER_RESIZE if resized_folders else NO_RESIZE, dataset)

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps(asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], path: Path) -> "ModelCard":
        fix = f"export it again with `cnnlab export` (which writes {METADATA_KEY} into model.onnx)"
        if METADATA_KEY not in metadata:
            raise ModelCardError(f"{path} has no {METADATA_KEY} metadata (exported by an older cnnlab, or not by "
                                 f"cnnlab): predict cannot know its classes and preprocessing; {fix}")
        try:
            card = cls(**json.loads(metadata[METADATA_KEY]))
        except (ValueError, TypeError) as err:
            raise ModelCardError(f"{path}: its {METADATA_KEY} metadata is not readable ({err}); {fix}") from err
        if card.resize not in (NO_RESIZE, FOLDER_RESIZE):
            raise ModelCardError(f"{path}: unknown resize {card.resize!r} in {METADATA_KEY}; {fix}")
        if len(card.input_shape) != 3 or card.channels not in (1, 3):  # cnnlab trains on grayscale or RGB only
            raise ModelCardError(f"{path}: input shape {card.input_shape} in {METADATA_KEY} is not channels (1 or "
                                 f"3), height, width; {fix}")
        return card

    @property
    def channels(self) -> int:
        return self.input_shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return self.input_shape[1], self.input_shape[2]
