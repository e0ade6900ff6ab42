"""Image -> tensor preprocessing described by an artifact's :class:`~edgeslim.artifact.Preprocessing`.

The same code serves training-time evaluation, the runtime predictor and the server, so a model sees the same
pixels everywhere. Only numpy and Pillow: no torch import on the serving path.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .artifact import Preprocessing
from .errors import InputError

ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}

# Refuse images that would decode to more than this many pixels (decompression bombs).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


def open_image(img: ImageLike) -> Image.Image:
    """Open a path, encoded bytes, PIL image or HxWx3 uint8 array as an RGB PIL image.

    Raises:
        InputError: unreadable, truncated, or oversized image; array of the wrong shape or dtype.
    """
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
            raise InputError(
                f"image arrays must be uint8 HxW or HxWxC (C in 1, 3, 4); got dtype {img.dtype}, shape {img.shape}"
            )
        return Image.fromarray(img.squeeze(-1) if img.ndim == 3 and img.shape[2] == 1 else img).convert("RGB")
    if isinstance(img, (bytes, bytearray, memoryview)):
        src: Any = io.BytesIO(bytes(img))
        where = "image bytes"
    elif isinstance(img, (str, os.PathLike)):
        src = Path(img)
        where = str(img)
        if not src.is_file():
            raise InputError(f"image file {img} does not exist")
    else:
        raise InputError(f"cannot read an image from {type(img).__name__}; pass a path, bytes, PIL image or uint8 array")
    try:
        with Image.open(src) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise InputError(f"{where}: {w}x{h} pixels exceeds the limit of {MAX_IMAGE_PIXELS} (decompression bomb?)")
            im.load()
            return im.convert("RGB")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{where}: not a readable image ({exc})") from exc


def resize_crop(im: Image.Image, pre: Preprocessing) -> Image.Image:
    """Resize the shorter side to ``pre.resize`` then centre-crop ``pre.crop`` x ``pre.crop``."""
    w, h = im.size
    scale = pre.resize / min(w, h)
    nw, nh = max(pre.crop, round(w * scale)), max(pre.crop, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), _RESAMPLE[pre.interpolation])
    left, top = (nw - pre.crop) // 2, (nh - pre.crop) // 2
    return im.crop((left, top, left + pre.crop, top + pre.crop))


def normalize(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """HxWx3 (or NxHxWx3) pixels in [0, 255] -> normalised float32 CHW (or NCHW)."""
    x = pixels.astype(np.float32)
    y = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(y, -1, -3).astype(np.float32, copy=False))


def preprocess(images: ImageLike | Iterable[ImageLike], pre: Preprocessing) -> np.ndarray:
    """One image or a list of images -> float32 NCHW batch."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image)) or (
        isinstance(images, np.ndarray) and images.ndim in (2, 3)
    ):
        images = [images]
    batch = [np.asarray(resize_crop(open_image(im), pre), dtype=np.uint8) for im in images]
    if not batch:
        raise InputError("no images given")
    return normalize(np.stack(batch), pre)
