"""`maeconv demo --train`: the whole hub on real photographs, offline.

scikit-image ships four colour photographs free of copyright (CC0 or public domain). A tiny MAE is
pretrained on random crops of them with the MindSpore trainer, its checkpoint converted to the
official torch layout and exported to ONNX (and MindIR), and every runtime then reconstructs the
same held-out crops under the same masks: the centre square of each photograph, which no training
crop touches. The pictures and the masked-patch loss per runtime are written into one folder, kept.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import MaeconvError
from ..models.config import get_preset
from .images import resize_size

PRESET = "mae_vit_tiny_patch8"
# scikit-image's sample photographs and their licences, as skimage.data documents them.
PHOTOS = {
    "coffee": "CC0, by Rachel Michetti (courtesy of Pikolo Espresso Bar)",
    "chelsea": "CC0, by Stefan van der Walt",
    "astronaut": "public domain, NASA (Eileen Collins)",
    "rocket": "public domain, SpaceX (DSCOVR launch on Falcon 9)",
}
HELD_OUT = 0.4          # the centre square held out of training, as a fraction of the shorter side
CROP_SIDES = (0.12, 0.4)  # training crops' sides, as fractions of the shorter side
COMPLETE = ".complete"  # marks a finished dataset folder, so a second run reuses it
RUNTIMES = ("torch", "mindspore", "onnx", "mindir")


@dataclass(frozen=True)
class DemoSize:
    """How much the demo does: the default takes about two minutes of training on 2 CPU cores."""

    img_size: int = 64
    crops: int = 8192         # training crops, in total over the photographs
    epochs: int = 4
    batch_size: int = 32
    blr: float = 3.2e-2       # lr = blr x 32 / 256 = 4e-3: a tiny model takes a large lr
    mindir: bool = True
    seed: int = 0


@dataclass
class PhotoDemo:
    workdir: Path
    picture: Path                                  # every runtime side by side
    losses: dict[str, float]                       # runtime (and "untrained") -> mean masked-patch loss
    pictures: dict[str, list[Path]]                # runtime -> its 4-panel picture of each held-out crop
    files: dict[str, Path]                         # checkpoint, torch, onnx, mindir, results
    seconds: dict[str, float] = field(default_factory=dict)


# --- the photographs and their crops ---

def sample_photos() -> dict[str, np.ndarray]:
    """The photographs as (H, W, 3) uint8 arrays, read from the scikit-image package (no network)."""
    try:
        import skimage.data
    except ImportError:
        raise MaeconvError("the photo demo reads scikit-image's sample photographs: pip install scikit-image") from None
    return {name: np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in PHOTOS}


def held_out_box(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the centre square no training crop touches."""
    height, width = shape[:2]
    side = int(round(HELD_OUT * min(height, width)))
    x0, y0 = (width - side) // 2, (height - side) // 2
    return x0, y0, x0 + side, y0 + side


def training_crop(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int, int]:
    """(x, y, side) of a random square crop outside the held-out square."""
    height, width = shape[:2]
    hx0, hy0, hx1, hy1 = held_out_box(shape)
    low, high = (int(f * min(height, width)) for f in CROP_SIDES)
    while True:
        side = int(rng.integers(low, high + 1))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        if x + side <= hx0 or x >= hx1 or y + side <= hy0 or y >= hy1:
            return x, y, side


def held_out_crops(photo: np.ndarray, img_size: int) -> list[np.ndarray]:
    """The held-out square whole and its centre at twice the scale, each cut to the size the
    evaluation transform takes exactly (its centre crop is then the model's input, unresampled)."""
    from PIL import Image

    x0, y0, x1, y1 = held_out_box(photo.shape)
    side, size = x1 - x0, resize_size(img_size)
    zoom = (x0 + side // 4, y0 + side // 4, x1 - side // 4, y1 - side // 4)
    return [np.asarray(Image.fromarray(photo).crop(box).resize((size, size), Image.BICUBIC))
            for box in ((x0, y0, x1, y1), zoom)]


def make_dataset(root: Path, photos: dict[str, np.ndarray], size: DemoSize,
                 log: Callable[[str], None]) -> list[Path]:
    """`root/train/<photo>/NNNNN.jpg` (random crops at the model's size, randomly flipped) and
    `root/held_out/<photo>_N.png`; returns the held-out files. Reused when already complete."""
    from PIL import Image

    held = sorted((root / "held_out").glob("*.png"))
    if (root / COMPLETE).exists() and held:
        log(f"reusing the crops in {root}")
        return held
    rng = np.random.default_rng(size.seed)
    per_photo = size.crops // len(photos)
    log(f"cutting {per_photo * len(photos)} training crops and {2 * len(photos)} held-out crops into {root}")
    (root / "held_out").mkdir(parents=True, exist_ok=True)
    for name, photo in photos.items():
        folder = root / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(photo)
        for i in range(per_photo):
            x, y, side = training_crop(photo.shape, rng)
            crop = image.crop((x, y, x + side, y + side)).resize((size.img_size, size.img_size), Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(folder / f"{i:05d}.jpg", quality=95)
        for k, crop in enumerate(held_out_crops(photo, size.img_size)):
            Image.fromarray(crop).save(root / "held_out" / f"{name}_{k}.png")
    (root / COMPLETE).touch()
    return sorted((root / "held_out").glob("*.png"))


# --- the run ---

def train_photos(data: Path, out: Path, size: DemoSize):
    """Pretrains the tiny MAE on the crops with maeconv.Trainer (resumes, or says it is done, when
    `out` already holds the run); returns its TrainResult."""
    from .ascend.api import Trainer

    trainer = Trainer(task="masked_image_modeling", model=PRESET, train_dataset=str(data), output_dir=str(out),
                      seed=size.seed, model__img_size=size.img_size, model__norm_pix_loss=False,
                      data__augment="none", data__synthetic=None, data__num_workers=2,
                      train__epochs=size.epochs, train__warmup_epochs=0.5, train__batch_size=size.batch_size,
                      train__blr=size.blr, train__min_lr=1.0e-5, checkpoint__save_steps=256,
                      checkpoint__keep=1, log__log_steps=32)
    return trainer.train()


def export_runtimes(checkpoint: Path, workdir: Path, size: DemoSize, log: Callable[[str], None]) -> dict[str, Path]:
    """The MindSpore training checkpoint as the official torch file, and that exported to ONNX
    (and MindIR), each validated against its source twin; returns runtime -> model file."""
    from ..convert.pipeline import Options, convert
    from .export import export

    files = {"mindspore": checkpoint}
    torch_file = workdir / "mae_photos.pth"
    done = convert(checkpoint, torch_file, options=Options(force=True))
    log(f"converted {checkpoint} -> {torch_file} ({done.tensors} tensors, read back and verified)")
    files["torch"] = torch_file
    for runtime in ("onnx", "mindir") if size.mindir else ("onnx",):
        path = workdir / f"mae_photos.{runtime}"
        exported = export(torch_file, path, runtime, "pretrain", force=True)
        worst = max((row.max_abs for row in exported.report.rows), default=0.0)
        log(f"exported {path} (validated against the {'torch' if runtime == 'onnx' else 'MindSpore'} twin, "
            f"max abs difference {worst:.1e})")
        files[runtime] = path
    return files


def reconstruct(models: dict[str, str | Path], crops: list[Path], size: DemoSize) -> dict[str, list]:
    """Each model's Reconstruction of every crop, all under the same masks."""
    from .pipelines import pipeline

    patches = (size.img_size // get_preset(PRESET).config.patch_size) ** 2
    noise = np.random.default_rng(size.seed).random((len(crops), patches), dtype=np.float32)
    results = {}
    for name, model in models.items():
        if name == "untrained":
            import torch

            torch.manual_seed(size.seed)
            task = pipeline("masked_image_modeling", PRESET, runtime="torch", img_size=size.img_size,
                            norm_pix_loss=False)
        else:
            task = pipeline("masked_image_modeling", model, runtime=name)
        results[name] = task([str(c) for c in crops], noise=noise)
    return results


SCALE = 3  # the comparison picture shows each 64-pixel panel 3x, pixel for pixel


def comparison_picture(results: dict[str, list], losses: dict[str, float]) -> np.ndarray:
    """One row per held-out crop: original | masked | each model's reconstruction with the
    visible patches pasted back (the untrained model first), as the MAE paper shows them; a
    header names each column and its mean masked-patch loss."""
    from PIL import Image, ImageDraw, ImageFont

    first = next(iter(results.values()))
    side = np.asarray(first[0].pasted).shape[0]
    rows = []
    for i in range(len(first)):
        panels = np.asarray(first[i].picture)  # original | masked | reconstruction | pasted
        cells = [panels[:, :side], panels[:, side:2 * side]] + [np.asarray(results[name][i].pasted)
                                                               for name in results]
        rows.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(rows, axis=0).repeat(SCALE, 0).repeat(SCALE, 1)
    labels = ["original", "masked (75%)"] + [f"{name}\nloss {losses[name]:.3f}" for name in results]
    header = Image.new("RGB", (grid.shape[1], 44), "white")
    draw = ImageDraw.Draw(header)
    font = ImageFont.load_default(size=16)
    for k, label in enumerate(labels):
        draw.multiline_text((k * side * SCALE + 6, 3), label, fill="black", font=font, spacing=2)
    return np.concatenate([np.asarray(header), grid], axis=0)


def run_photo_demo(workdir: str | os.PathLike, size: DemoSize = DemoSize(),
                   log: Callable[[str], None] = print) -> PhotoDemo:
    """Crops, training, conversion, exports, then every runtime's reconstructions of the held-out
    crops; everything stays in `workdir` (a second run reuses the crops and the finished training)."""
    from .images import save_png

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start, seconds = time.perf_counter(), {}

    def stage(name: str) -> None:
        seconds[name] = round(time.perf_counter() - start - sum(seconds.values()), 1)

    held = make_dataset(workdir / "photos", sample_photos(), size, log)
    stage("crops")
    done = train_photos(workdir / "photos", workdir / "train", size)
    if not done.checkpoint:
        raise MaeconvError(f"{workdir / 'train'}: the training wrote no checkpoint")
    stage("training")
    files = export_runtimes(Path(done.checkpoint), workdir, size, log)
    stage("conversion and exports")
    log(f"reconstructing {len(held)} held-out crops with every runtime, under the same masks")
    results = reconstruct({"untrained": PRESET, **{r: files[r] for r in RUNTIMES if r in files}}, held, size)
    losses = {name: float(np.mean([r.loss for r in rs])) for name, rs in results.items()}
    pictures = {}
    for name, recs in results.items():
        folder = workdir / "pictures" / name
        folder.mkdir(parents=True, exist_ok=True)
        pictures[name] = [folder / f"{crop.stem}_mae.png" for crop in held]
        for rec, path in zip(recs, pictures[name]):
            rec.picture.save(path)
    picture = workdir / "photo_demo.png"
    save_png(comparison_picture(results, losses), picture)
    stage("pictures")
    summary = {"losses": losses, "seconds": seconds, "held_out": [str(p) for p in held],
               "files": {k: str(v) for k, v in files.items()}, "picture": str(picture)}
    files["results"] = workdir / "photo_demo.json"
    files["results"].write_text(json.dumps(summary, indent=2) + "\n")
    return PhotoDemo(workdir, picture, losses, pictures, files, seconds)
