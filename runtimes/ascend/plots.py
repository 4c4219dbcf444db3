"""The picture of a run's loss and lr curves, drawn with Pillow only."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...convert.outputs import staged


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
    with staged(path, force=True) as stage:
        image.save(stage.path(), format="PNG")
