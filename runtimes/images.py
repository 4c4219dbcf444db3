"""Image files in, normalised arrays out (the reference evaluation transform), and the MAE
demo's reconstruction picture back to pixels."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..convert.errors import MaeconvError
from ..models.config import MAEConfig
from ..models.reference import patchify, unpatchify

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CROP_PCT = 224 / 256  # evaluation: resize the shorter side to 256, center crop 224
NORM_PIX_EPS = 1.0e-6  # the norm-pix loss's epsilon


def resize_size(img_size: int) -> int:
    return math.floor(img_size / CROP_PCT)


def read_image(path: str | os.PathLike):
    """The file as an RGB PIL image; a clear error when it is not an image PIL can read."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise MaeconvError(f"{path}: no such file")
    if not path.is_file():
        raise MaeconvError(f"{path}: not a file")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        reason = "not an image file" if isinstance(error, UnidentifiedImageError) else f"unreadable image ({error})"
        raise MaeconvError(f"{path}: {reason}") from None


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


def load_image(path: str | os.PathLike, img_size: int) -> tuple[np.ndarray, str | None]:
    """The preprocessed image, and a note when its size is not the model's."""
    image = read_image(path)
    note = None
    if image.size != (img_size, img_size):
        note = (f"{path}: {image.size[0]}x{image.size[1]} image resized (shorter side {resize_size(img_size)}, "
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


def reconstruction_picture(image: np.ndarray, pred: np.ndarray, mask: np.ndarray, config: MAEConfig,
                           norm_pix: bool) -> np.ndarray:
    """original | masked | reconstruction | reconstruction with the visible patches pasted,
    side by side as (S, 4S, 3) uint8: the MAE demo's four panels. Masked-out patches show the
    ImageNet mean colour (zero after normalisation), as in the demo."""
    p = config.patch_size
    pred = np.asarray(pred, np.float64)
    if norm_pix:
        pred = unnormalize_pred(pred, image, p)
    reconstruction = unpatchify(pred[None], p, config.in_chans)[0]
    removed = unpatchify(np.repeat(np.asarray(mask, np.float64)[None, :, None], pred.shape[-1], axis=2),
                         p, config.in_chans)[0]
    masked = image * (1 - removed)
    pasted = masked + reconstruction * removed
    return np.concatenate([to_pixels(x) for x in (image, masked, reconstruction, pasted)], axis=1)


def save_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG")
