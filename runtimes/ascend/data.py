"""ImageNet-layout folders through mindspore.dataset, the reference augmentations, mixup/cutmix,
and a small synthetic dataset for tests and the quick start.

Every random choice is a function of (seed, epoch) for the data pipeline and of (seed, step) for
the host-side draws (mask noise, mixup), so a resumed run sees exactly the batches and masks of
an uninterrupted one.
"""
from __future__ import annotations

import functools
import io
import math
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import MaeconvError
from ..images import IMAGENET_MEAN, IMAGENET_STD, eval_transform

PRETRAIN, FINETUNE, EVAL, NONE = "pretrain", "finetune", "eval", "none"
AUGMENTATIONS = (PRETRAIN, FINETUNE, EVAL, NONE)


# --- synthetic data ---

def synthetic_image(label: int, classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A class colour at a random brightness, with faint stripes whose orientation also depends on
    the class: separable for a classifier, and mostly predictable from a quarter of the patches
    (the colour and the brightness are global), so a small masked autoencoder learns it quickly."""
    hue = 2 * math.pi * label / classes
    colour = 0.5 + 0.45 * np.array([math.cos(hue), math.cos(hue - 2.1), math.cos(hue + 2.1)])
    brightness = rng.uniform(0.35, 1.0)
    angle = math.pi * label / classes + rng.normal(0, 0.05)
    frequency = 2 * math.pi * rng.uniform(1.5, 3.0) / size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    wave = np.sin(frequency * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
    image = brightness * colour + 0.1 * wave[..., None] + rng.normal(0, 0.02, (size, size, 3))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def make_synthetic_imagenet(root: str | Path, classes: int = 4, train_per_class: int = 64,
                            val_per_class: int = 16, size: int = 48, seed: int = 0) -> Path:
    """Writes `root/train/<class>/*.JPEG` and `root/val/<class>/*.JPEG`, as ImageNet is laid out."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = root / split / f"class_{label:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = Image.fromarray(synthetic_image(label, classes, size, rng))
                image.save(folder / f"{split}_{label:03d}_{i:05d}.JPEG", quality=95)
    return root


def ensure_dataset(path: str, synthetic: dict | None, runtime) -> None:
    """The dataset at `path` on every rank, made once where a recipe asks for a synthetic one and
    the folder is absent: by rank 0, then (node-local storage) by the first worker of each machine
    that still lacks it, each time with every rank waiting (cluster.barrier_timeout). A relative
    path must mean the same folder on every machine."""
    root = Path(path)
    mine = str(root.resolve())
    ranks0 = runtime.decide("data.path", lambda: mine)
    if mine != ranks0:
        raise MaeconvError(f"data.path {path!r} resolves to {ranks0} on rank 0 but to {mine} on rank "
                           f"{runtime.rank}: give an absolute path, the same on every machine")
    if runtime.is_main and synthetic and not root.exists():
        print(f"data folder {root} is absent: making a synthetic ImageNet-layout dataset there ({synthetic})",
              flush=True)
        _make_synthetic_once(root, synthetic)
    waited = runtime.barrier("data made by rank 0")
    if runtime.world > 1 and runtime.local_rank == 0 and synthetic and not root.exists():
        print(f"rank {runtime.rank}: data folder {root} is absent on this machine: making the synthetic dataset "
              "there too", flush=True)
        _make_synthetic_once(root, synthetic)
    waited += runtime.barrier("data made on every machine")
    if runtime.world > 1:
        print(f"rank {runtime.rank}: data ready on every machine; waited {waited:.1f} s for the other ranks",
              flush=True)


def _make_synthetic_once(root: Path, synthetic: dict) -> None:
    """Written aside, then renamed into place; a copy another process finished first is kept."""
    tmp = root.with_name(root.name + f".partial-{os.getpid()}")
    make_synthetic_imagenet(tmp, **synthetic)
    (tmp / ".complete").touch()
    try:
        os.replace(tmp, root)
    except OSError:
        if not (root / ".complete").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


# --- decoding that survives corrupt files ---

class CorruptCounter:
    """Counts images that could not be decoded; the dataset drops them instead of failing."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


def safe_decoder(counter: CorruptCounter):
    def decode(raw: np.ndarray):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(raw.tobytes())) as image:
                return np.asarray(image.convert("RGB")), np.array(True)
        except Exception:  # PIL raises many types for a broken file; all mean "skip it"
            counter.add()
            return np.zeros((1, 1, 3), np.uint8), np.array(False)
    return decode


# --- transforms ---

def eval_array(pixels: np.ndarray, img_size: int) -> np.ndarray:
    """The reference eval transform of a decoded (H, W, 3) uint8 image: (3, S, S) float32."""
    from PIL import Image

    return eval_transform(Image.fromarray(pixels), img_size)


def image_transforms(augment: str, size: int, finetune: dict | None = None) -> list:
    """The reference transforms (torchvision/timm as MAE uses them), as mindspore.dataset ops."""
    import mindspore.dataset.vision as vision
    from mindspore.dataset.vision import Inter

    mean = [255 * float(m) for m in IMAGENET_MEAN]
    std = [255 * float(s) for s in IMAGENET_STD]
    tail = [vision.Normalize(mean, std), vision.HWC2CHW()]
    if augment == PRETRAIN:
        return [vision.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=Inter.BICUBIC),
                vision.RandomHorizontalFlip(), *tail]
    if augment == FINETUNE:
        finetune = finetune or {}
        ops = [vision.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=Inter.BICUBIC),
               vision.RandomHorizontalFlip()]
        if finetune.get("randaug_magnitude"):
            ops.append(vision.RandAugment(num_ops=finetune.get("randaug_ops", 2),
                                          magnitude=finetune["randaug_magnitude"], num_magnitude_bins=31))
        ops += tail
        if finetune.get("reprob", 0) > 0:  # after normalisation, per-pixel normal noise, as timm's 'pixel' mode
            ops.append(vision.RandomErasing(prob=finetune["reprob"], value="random", max_attempts=10))
        return ops
    if augment == EVAL:
        # The very transform `maeconv predict` uses: mindspore.dataset's CenterCrop rounds an odd
        # margin down where torchvision (and the reference) round it half to even.
        return [functools.partial(eval_array, img_size=size)]
    if augment == NONE:  # deterministic: resize straight to the input size
        return [vision.Resize((size, size), interpolation=Inter.BICUBIC), *tail]
    raise ValueError(f"unknown augmentation {augment!r}; expected one of {AUGMENTATIONS}")


@dataclass
class Split:
    """A batched pipeline over one split, plus what the trainer needs to know about it."""

    dataset: object          # mindspore.dataset pipeline of (image float32 NCHW, label int32) batches
    steps: int               # batches to take from it in this epoch (the same on every rank)
    steps_per_epoch: int     # batches in a whole epoch
    images: int              # images this rank reads per epoch
    corrupt: CorruptCounter
    classes: int


def folder_split(root: str | Path, split: str) -> Path:
    path = Path(root) / split
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder (expected an ImageNet layout: {split}/<class>/<image>)")
    return path


def build_split(root: str | Path, split: str, augment: str, size: int, batch_size: int, *, seed: int = 0,
                epoch: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True, training: bool = True,
                workers: int = 2, skip_batches: int = 0, finetune: dict | None = None) -> Split:
    """One epoch of `root/split` for this rank; `skip_batches` resumes inside the epoch.

    The shuffle and the random augmentations are seeded by (seed, epoch); ranks read interleaved
    shards of one common shuffled order, so rank r holds rows r, r + world, ... of each global batch.
    Corrupt images are dropped and counted. While training, the epoch is a fixed number of full
    batches on every rank, topped up from the next pass over the shard if images were dropped, so
    no rank runs out of data before the others (which would stall the gradient all-reduce).
    """
    import mindspore.dataset as ds

    path = folder_split(root, split)
    ds.config.set_seed(seed * 1000 + epoch)
    counter = CorruptCounter()
    folder = ds.ImageFolderDataset(str(path), decode=False, shuffle=shuffle, num_shards=world, shard_id=rank)
    rows = folder.get_dataset_size()
    classes = len(folder.get_class_indexing())
    data = folder.map(safe_decoder(counter), input_columns=["image"], output_columns=["image", "ok"],
                      num_parallel_workers=workers)
    data = data.filter(lambda image, ok: bool(ok), input_columns=["image", "ok"], num_parallel_workers=1)
    data = data.project(["image", "label"])
    data = data.map(image_transforms(augment, size, finetune), input_columns=["image"], num_parallel_workers=workers)
    data = data.batch(batch_size, drop_remainder=training)
    steps_per_epoch = rows // batch_size if training else math.ceil(rows / batch_size)
    if training:
        data = data.repeat(2)
    if skip_batches:
        data = data.skip(skip_batches)
    return Split(data, max(steps_per_epoch - skip_batches, 0), steps_per_epoch, rows, counter, classes)


# --- mixup / cutmix / label smoothing (timm's Mixup in 'batch' mode) ---

@dataclass(frozen=True)
class Mixup:
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.1
    num_classes: int = 1000

    def soft_targets(self, labels: np.ndarray, lam: float) -> np.ndarray:
        off = self.smoothing / self.num_classes
        on = 1.0 - self.smoothing + off
        one_hot = np.full((len(labels), self.num_classes), off, np.float32)
        one_hot[np.arange(len(labels)), labels] = on
        return (one_hot * lam + one_hot[::-1] * (1.0 - lam)).astype(np.float32)

    def __call__(self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        """Mixes the batch with its reverse; returns images and soft targets."""
        lam = 1.0
        use_mix = (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and rng.random() < self.prob
        if use_mix:
            use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            lam = float(rng.beta(alpha, alpha))
            images = images.copy()
            if use_cutmix:
                h, w = images.shape[-2:]
                cut = math.sqrt(1.0 - lam)
                ch, cw = int(h * cut), int(w * cut)
                cy, cx = rng.integers(h), rng.integers(w)
                y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
                x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
                images[..., y0:y1, x0:x1] = images[::-1][..., y0:y1, x0:x1]
                lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
            else:
                images = images * lam + images[::-1] * (1.0 - lam)
        return images.astype(np.float32), self.soft_targets(labels, lam)
