"""``cnnlab predict``: class probabilities for image files or an ``.npz`` of images, from the
exported ONNX model alone: onnxruntime, NumPy and Pillow, no torch, no mlflow, no params.yaml.

    cnnlab predict models/e1_mnist_simple_cnn/model.onnx digit.png 'more/*.png'
    cnnlab predict models/e1_mnist_simple_cnn/model.onnx test.npz   # the uint8 array under "images"

The model card inside the ``.onnx`` file (modelcard.py) says what training fed the network, and
predict applies exactly that: pixels / 255 (the normalisation is inside the graph), and for a
model trained on image folders the same RGB conversion, shorter-side resize and centre crop
(images.fit_square). A model trained on fixed-size images (MNIST, CIFAR-10) was never trained
on resized ones, so an image of another size is an error, as is one of other channels unless
``--convert-channels`` asks for PIL's conversion.
"""

from __future__ import annotations

import glob
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..images import FOLDER_RESIZE, fit_square
from ..modelcard import ModelCard

NPZ_KEY = "images"  # the array an .npz input holds its images under
BATCH_SIZE = 256  # images per onnxruntime call: bounds the float32 copy each call makes
MODES = {1: "L", 3: "RGB"}  # PIL's mode for a model's channel count
MODE_NAMES = {"L": "grayscale (1 channel)", "RGB": "RGB (3 channels)", "RGBA": "RGBA (4 channels)",
              "LA": "grayscale+alpha (2 channels)", "CMYK": "CMYK (4 channels)"}


class PredictError(ValueError):
    """An input or model predict cannot use; the message names the file and the fix."""


class OnnxClassifier:
    """An exported model and its card: uint8 images (N, C, H, W) in, class probabilities out."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise PredictError(f"model {self.path} not found; export one with `cnnlab export` "
                               "(it writes models/<run>/model.onnx)")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own classes for a corrupt or foreign file
            raise PredictError(f"{self.path} is not a readable ONNX model ({str(err).strip()}); restore it with "
                               "`dvc checkout` or export it again with `cnnlab export`") from err
        # a ModelCardError is a ValueError naming the file and the fix, as PredictError is
        self.card = ModelCard.from_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.input_name = self.session.get_inputs()[0].name

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax of the logits, in float64, for uint8 ``images`` (N, C, H, W)."""
        out = []
        for start in range(0, len(images), BATCH_SIZE):
            batch = images[start : start + BATCH_SIZE].astype(np.float32) / np.float32(self.card.pixel_scale)
            logits = self.session.run(None, {self.input_name: batch})[0].astype(np.float64)
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            out.append(exp / exp.sum(axis=1, keepdims=True))
        return np.concatenate(out)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Paths and globs (``'digits/*.png'``, quoted so the shell leaves them) as files, in order."""
    paths: list[Path] = []
    for item in inputs:
        if glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise PredictError(f"no file matches {item!r}")
            paths.extend(Path(m) for m in matches if Path(m).is_file())
        elif Path(item).is_dir():
            raise PredictError(f"{item} is a folder; pass its images as a glob, e.g. '{Path(item) / '*.png'}'")
        elif not Path(item).is_file():
            raise PredictError(f"input {item} not found")
        else:
            paths.append(Path(item))
    return paths


def describe(mode: str, bands: int) -> str:
    return MODE_NAMES.get(mode, f"{mode} ({bands} channels)")


def read_image(path: Path, card: ModelCard, convert_channels: bool = False) -> np.ndarray:
    """One image file as uint8 (C, H, W), preprocessed as the model's training images were."""
    height, width = card.size
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, named
            if card.resize == FOLDER_RESIZE:
                img = fit_square(img, height)  # converts to RGB as the image-folder reader did
            else:
                img = check_native(img, path, card, convert_channels)
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise PredictError(f"cannot decode image {path} ({err}); pass a PNG or JPEG file") from err
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def check_native(img: Image.Image, path: Path, card: ModelCard, convert_channels: bool) -> Image.Image:
    """``img`` unchanged when it has the model's size and channels (converted with PIL when
    ``convert_channels`` asks), else a PredictError saying what differs and the fix."""
    height, width = card.size
    if img.mode == "P":  # a palette is an encoding of colours, not a channel count
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":  # black-and-white: grayscale with two levels
        img = img.convert("L")
    wanted = MODES[card.channels]
    if img.mode not in MODE_NAMES:  # 16-bit, float, ...: training images were 8-bit
        raise PredictError(f"{path} is a {img.mode} image; predict reads 8-bit grayscale or RGB images. "
                           "Fix: save it as an 8-bit PNG or JPEG")
    if img.mode != wanted and convert_channels:
        img = img.convert(wanted)
    size_ok, mode_ok = img.size == (width, height), img.mode == wanted
    if size_ok and mode_ok:
        return img
    fixes = [] if mode_ok else [f"pass --convert-channels to convert it to {'grayscale' if wanted == 'L' else wanted} "
                                "with PIL"]
    if not size_ok:
        fixes.append(f"resize it to {width}x{height} first ({card.dataset} images were {width}x{height} "
                     "and were not resized in training, so predict does not guess how)")
    raise PredictError(f"{path} is {img.width}x{img.height} {describe(img.mode, len(img.getbands()))}; the model "
                       f"expects {width}x{height} {describe(wanted, card.channels)}. Fix: {'; '.join(fixes)}")


def read_npz(path: Path, card: ModelCard, key: str = NPZ_KEY) -> np.ndarray:
    """The uint8 images under ``key`` as (N, C, H, W); (N, H, W, C) and, for one channel,
    (N, H, W) are accepted too. Arrays are taken as they are: never resized."""
    channels, height, width = card.input_shape
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds one bare .npy array, not an archive")
        with archive:
            names = archive.files
            images = archive[key] if key in names else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise PredictError(f"{path} is not a readable .npz file ({err}); save it with np.savez") from err
    if images is None:
        raise PredictError(f"{path} has no array {key!r} (it has {names}); save the images with "
                           f"np.savez({path.name!r}, {key}=images) or pass --npz-key <name>")
    layouts = {(channels, height, width): lambda a: a, (height, width, channels): lambda a: a.transpose(0, 3, 1, 2)}
    if channels == 1:
        layouts[(height, width)] = lambda a: a[:, None]
    if images.shape[1:] not in layouts or len(images) == 0:
        accepted = " or ".join("N x " + " x ".join(map(str, shape)) for shape in layouts)
        raise PredictError(f"{path}[{key!r}] has shape {images.shape}; the model expects {accepted} images "
                           f"({width}x{height}, {card.channels} channel{'s' if channels > 1 else ''}, as "
                           f"{card.dataset} was trained). Fix: resize or convert them to that shape")
    if not np.issubdtype(images.dtype, np.integer) or images.min() < 0 or images.max() > 255:
        raise PredictError(f"{path}[{key!r}] holds {images.dtype} values in [{images.min()}, {images.max()}]; "
                           "pixels must be whole numbers 0..255, as in training. Fix: save "
                           "np.round(images * 255).astype(np.uint8) when they are scaled to [0, 1]")
    return np.ascontiguousarray(layouts[images.shape[1:]](images).astype(np.uint8))


def predict(model: str | Path, inputs: list[str], convert_channels: bool = False,
            npz_key: str = NPZ_KEY) -> dict[str, Any]:
    """``{"model", "classes", "predictions": [{"input", "class", "probabilities": {class: p}}]}``,
    one prediction per image file and per image of each ``.npz``, in the order given."""
    classifier = OnnxClassifier(model)
    card = classifier.card
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for path in expand_inputs(inputs):
        if path.suffix.lower() == ".npz":
            images = read_npz(path, card, npz_key)
            names.extend(f"{path}[{i}]" for i in range(len(images)))
            arrays.append(images)
        else:
            names.append(str(path))
            arrays.append(read_image(path, card, convert_channels)[None])
    if not arrays:
        raise PredictError(f"no image files among {inputs}")
    probabilities = classifier.probabilities(np.concatenate(arrays))
    return {"model": str(model), "classes": card.classes, "predictions": [
        {"input": name, "class": card.classes[int(p.argmax())],
         "probabilities": {c: float(v) for c, v in zip(card.classes, p)}}
        for name, p in zip(names, probabilities)]}
