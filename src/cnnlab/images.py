"""Image decoding shared by training's image-folder reader and ``cnnlab predict``.

PIL and NumPy only: ``cnnlab predict`` imports this module and must not import torch.
"""

from __future__ import annotations

from PIL import Image

# How data/folders.py fits an image folder's photos to ``data.image_size``: the name an exported
# model records (modelcard.py) so predict applies the very same resize.
FOLDER_RESIZE = "rgb_shorter_side_bilinear_centre_crop"


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """``img`` as RGB, its shorter side resized (bilinear) to ``size`` and centre cropped to a square."""
    img = img.convert("RGB")
    scale = size / min(img.size)
    resized = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))
