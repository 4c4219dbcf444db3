"""Image files in, normalised arrays out (the reference evaluation transform), and the MAE
demo's reconstruction picture back to pixels."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import MaeconvError
from ..models.config import MAEConfig
from ..models.reference import patchify, unpatchify

if TYPE_CHECKING:  # PIL is imported where an image is made
    from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CROP_PCT = 224 / 256  # evaluation: resize the shorter side to 256, center crop 224
NORM_PIX_EPS = 1.0e-6  # the norm-pix loss's epsilon


def resize_size(img_size: int) -> int:
    return math.floor(img_size / CROP_PCT)


# Images fetched from a URL: how long to wait, and the most bytes to take.
URL_TIMEOUT_S = 20.0
URL_MAX_BYTES = 64 << 20


def load_image(source) -> Image.Image:
    """An RGB PIL image from a path, an http(s) URL (with a timeout; a clear error offline), a PIL
    image, or an (H, W, 3) uint8 array."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[-1] != 3 or source.dtype != np.uint8:
            raise MaeconvError(f"array of shape {source.shape} and dtype {source.dtype}: expected (H, W, 3) uint8 RGB")
        return Image.fromarray(source)
    text = os.fspath(source) if isinstance(source, os.PathLike) else source
    if isinstance(text, str) and text.split("://", 1)[0].lower() in ("http", "https"):
        return _decoded(_fetch(text), text)
    return read_image(text)


def read_image(path: str | os.PathLike):
    """The file as an RGB PIL image; a clear error when it is not an image PIL can read."""
    path = Path(path)
    if not path.exists():
        raise MaeconvError(f"{path}: no such file")
    if not path.is_file():
        raise MaeconvError(f"{path}: not a file")
    with open(path, "rb") as f:
        return _decoded(f, path)


def _decoded(stream, source) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(stream) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        reason = "not an image file" if isinstance(error, UnidentifiedImageError) else f"unreadable image ({error})"
        raise MaeconvError(f"{source}: {reason}") from None


def _fetch(url: str):
    import io
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            data = response.read(URL_MAX_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise MaeconvError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise MaeconvError(f"{url}: cannot fetch ({getattr(error, 'reason', error)}); offline? "
                           "give a local file instead") from None
    if len(data) > URL_MAX_BYTES:
        raise MaeconvError(f"{url}: more than {URL_MAX_BYTES >> 20} MiB, not an image to fetch")
    return io.BytesIO(data)


def eval_transform(image, img_size: int) -> np.ndarray:
    """Bicubic resize of the shorter side to img_size / 0.875, center crop, ImageNet mean/std:
    (3, S, S) float32, as torchvision's Resize + CenterCrop + ToTensor + Normalize."""
    from PIL import Image

    short = resize_size(img_size)
    width, height = image.size
    if width <= height:
        size = (short, int(short * height / width))
    else:
        size = (int(short * width / height), short)
    image = image.resize(size, Image.Resampling.BICUBIC)
    left = int(round((size[0] - img_size) / 2.0))
    top = int(round((size[1] - img_size) / 2.0))
    image = image.crop((left, top, left + img_size, top + img_size))
    pixels = np.asarray(image, np.float32) / 255.0
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).astype(np.float32)


def prepare_image(source, img_size: int) -> tuple[np.ndarray, str | None]:
    """The preprocessed image (see `load_image` for what `source` may be), and a note when its
    size is not the model's."""
    image = load_image(source)
    note = None
    if image.size != (img_size, img_size):
        shown = source if isinstance(source, (str, os.PathLike)) else "image"
        note = (f"{shown}: {image.size[0]}x{image.size[1]} image resized (shorter side {resize_size(img_size)}, "
                f"bicubic) and center-cropped to {img_size}x{img_size}")
    return eval_transform(image, img_size), note


def to_pixels(image: np.ndarray) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) uint8, as the demo's show_image."""
    pixels = image.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)


def unnormalize_pred(pred: np.ndarray, image: np.ndarray, patch_size: int) -> np.ndarray:
    """A norm-pix model predicts each patch as (t - mean) / sqrt(var + eps). To show it, undo
    that with the true patch's mean and (unbiased) variance: the usual way to visualise such
    checkpoints, which borrows two numbers per patch from the original image."""
    target = patchify(image[None].astype(np.float64), patch_size)[0]
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, ddof=1, keepdims=True)
    return pred * np.sqrt(var + NORM_PIX_EPS) + mean


def reconstruction_panels(image: np.ndarray, pred: np.ndarray, mask: np.ndarray, config: MAEConfig,
                          norm_pix: bool) -> list[np.ndarray]:
    """original, masked, reconstruction, reconstruction with the visible patches pasted: the MAE
    demo's four panels, each (S, S, 3) uint8. Masked-out patches show the ImageNet mean colour
    (zero after normalisation), as in the demo."""
    p = config.patch_size
    pred = np.asarray(pred, np.float64)
    if norm_pix:
        pred = unnormalize_pred(pred, image, p)
    reconstruction = unpatchify(pred[None], p, config.in_chans)[0]
    removed = unpatchify(np.repeat(np.asarray(mask, np.float64)[None, :, None], pred.shape[-1], axis=2),
                         p, config.in_chans)[0]
    masked = image * (1 - removed)
    pasted = masked + reconstruction * removed
    return [to_pixels(x) for x in (image, masked, reconstruction, pasted)]


def reconstruction_picture(image: np.ndarray, pred: np.ndarray, mask: np.ndarray, config: MAEConfig,
                           norm_pix: bool) -> np.ndarray:
    """The four panels side by side, as (S, 4S, 3) uint8."""
    return np.concatenate(reconstruction_panels(image, pred, mask, config, norm_pix), axis=1)


def save_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG")
