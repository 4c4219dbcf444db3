"""Pictures a run writes: the loss and lr curves, and MAE reconstructions. Pillow only."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import IMAGENET_MEAN, IMAGENET_STD


def reconstruction_picture(image: np.ndarray, pred: np.ndarray, mask: np.ndarray, config) -> np.ndarray:
    """One row as the MAE demo shows it: original | masked | reconstruction | reconstruction with
    the visible patches pasted back. `image` (3, H, W) normalised, `pred` (L, p*p*3), `mask` (L,)
    1 for removed patches. With norm-pix targets the prediction is put back into each patch's own
    mean and spread, as the reference visualisation does. Returns (H, 4W, 3) uint8."""
    p, g, c = config.patch_size, config.grid_size, config.in_chans
    patches = image.reshape(c, g, p, g, p).transpose(1, 3, 2, 4, 0).reshape(g * g, p * p * c)
    if config.norm_pix_loss:
        mean = patches.mean(-1, keepdims=True)
        std = np.sqrt(patches.var(-1, ddof=1, keepdims=True) + 1e-6)
        pred = pred * std + mean

    def to_image(x):
        return x.reshape(g, g, p, p, c).transpose(0, 2, 1, 3, 4).reshape(g * p, g * p, c)

    removed = mask.astype(bool)[:, None]
    hidden = np.full_like(patches, -9.0)  # black after de-normalisation
    panels = [to_image(patches), to_image(np.where(removed, hidden, patches)),
              to_image(pred), to_image(np.where(removed, pred, patches))]
    pixels = np.concatenate(panels, axis=1) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)


def plot_curves(records: list[dict], path: Path, width: int = 720, panel_height: int = 220) -> None:
    """Loss and learning rate against the step, one panel each, as a PNG."""
    from PIL import Image, ImageDraw

    steps = np.array([r["step"] for r in records], np.float64)
    image = Image.new("RGB", (width, 2 * panel_height), "white")
    draw = ImageDraw.Draw(image)
    for row, (key, colour) in enumerate((("loss", (31, 119, 180)), ("lr", (214, 39, 40)))):
        values = np.array([r[key] for r in records], np.float64)
        top = row * panel_height
        left, right, upper, lower = 70, width - 15, top + 25, top + panel_height - 30
        draw.rectangle([left, upper, right, lower], outline=(80, 80, 80))
        low, high = float(values.min()), float(values.max())
        span = high - low or abs(high) or 1.0
        first, last = float(steps.min()), float(steps.max())
        xs = left + (steps - first) / ((last - first) or 1.0) * (right - left)
        ys = lower - (values - low) / span * (lower - upper)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=2) if len(xs) > 1 else \
            draw.ellipse([xs[0] - 2, ys[0] - 2, xs[0] + 2, ys[0] + 2], fill=colour)
        draw.text((left, top + 6), f"{key} (last {values[-1]:.4g})", fill=(0, 0, 0))
        draw.text((4, upper), f"{high:.3g}", fill=(0, 0, 0))
        draw.text((4, lower - 10), f"{low:.3g}", fill=(0, 0, 0))
        draw.text((left, lower + 6), f"step {int(first)}", fill=(0, 0, 0))
        draw.text((right - 70, lower + 6), f"step {int(last)}", fill=(0, 0, 0))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    image.save(tmp, format="PNG")
    tmp.replace(path)
