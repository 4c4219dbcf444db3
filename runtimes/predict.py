"""`maeconv predict`: images through any runtime; reconstruction pictures or top-5 classes."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MaeconvError
from ..convert.outputs import check_target, staged
from ..models.config import ENCODER
from .images import save_png
from .registry import is_exported
from .pipelines import FEATURE_EXTRACTION, IMAGE_CLASSIFICATION, MASKED_IMAGE_MODELING, Pipeline, pipeline

PICTURE_SUFFIX = "_mae.png"


@dataclass
class Prediction:
    task: str
    runtime: str
    written: list[Path] = field(default_factory=list)                        # pretrain
    top5: list[list[tuple[int, float]]] = field(default_factory=list)        # classify: (class, probability)
    notes: list[str] = field(default_factory=list)


def predict(model: str | os.PathLike, images: Sequence[str | os.PathLike], runtime: str | None = None,
            out_dir: str | os.PathLike = ".", noise: np.ndarray | None = None, noise_source: str = "--noise",
            seed: int | None = None, settings: dict | None = None, force: bool = False,
            labels: Sequence[str] | None = None, labels_source: str = "--labels") -> Prediction:
    """Runs `images` through the model: a pretraining model's pictures go to `out_dir` (created if
    needed), a classifier's top-5 come back (`labels`, if given, must name every class)."""
    if not images:
        raise MaeconvError(f"{model}: no images given")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    task = pipeline(None, model, runtime=runtime, **(settings or {}))
    if task.task == FEATURE_EXTRACTION:
        raise MaeconvError(f"{model}: is a features graph; predict needs a pretrain or classify graph"
                           if task.runner.info.kind != ENCODER or is_exported(model) else
                           f"{model}: holds the encoder only (no decoder), so there is nothing to reconstruct; for "
                           "embeddings export it with --task features, or use maeconv.pipeline('feature_extraction')")
    _check_labels(labels, labels_source, task.task, task.config.num_classes, model)
    task.labels = list(labels) if labels is not None else None
    result = Prediction(task.runner.info.task.name, task.runner.name)
    outputs = _picture_names(task, out_dir, images)
    for path in outputs if out_dir.is_dir() else []:  # before any work: nothing is written unless all can be
        check_target(path, force, inputs=[model, *images])
    batch = task.preprocess(images)  # every image is read before anything runs or is written
    result.notes += [f"note: {note}" for note in task.notes]
    config = task.config
    answers = task.postprocess(batch, task.run(batch, _noise(len(batch), config.num_patches, noise, seed,
                                                               noise_source)), top_k=5)
    if task.task == IMAGE_CLASSIFICATION:
        result.top5 = answers
        return result
    result.notes.append("note: " + ("norm-pix model: each predicted patch is shown un-normalised with the "
                                    "original patch's mean and variance" if config.norm_pix_loss else
                                    "raw-pixel model: predictions are shown as they are (--norm-pix-loss for "
                                    "*_full.pth checkpoints)"))
    write_pictures({path: np.asarray(answer.picture) for path, answer in zip(outputs, answers)}, force,
                   inputs=[model, *images])
    result.written = outputs
    return result


def _picture_names(task: Pipeline, out_dir: Path, images: Sequence) -> list[Path]:
    if task.task != MASKED_IMAGE_MODELING:
        return []
    outputs = [out_dir / f"{Path(image).stem}{PICTURE_SUFFIX}" for image in images]
    clash = [o for o in outputs if outputs.count(o) > 1]
    if clash:
        raise MaeconvError(f"{clash[0]}: two input images would write the same picture")
    return outputs


def _noise(count: int, length: int, noise: np.ndarray | None, seed: int | None, source: str) -> np.ndarray:
    if noise is None:
        return np.random.default_rng(seed).random((count, length), dtype=np.float32)
    noise = np.asarray(noise, np.float32)
    if noise.ndim == 1:
        noise = noise[None]
    if noise.shape[-1] != length or noise.shape[0] not in (1, count) or noise.ndim != 2:
        raise MaeconvError(f"{source}: noise of shape {noise.shape}; expected ({count}, {length}) or ({length},)")
    return np.ascontiguousarray(np.broadcast_to(noise, (count, length)))


def _check_out_dir(out_dir: Path) -> None:
    """The pictures' folder, or the nearest folder above it that would hold it, must be writable."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise MaeconvError(f"{out_dir}: is not a directory")
        return
    existing = next(parent for parent in out_dir.absolute().parents if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise MaeconvError(f"{out_dir}: cannot be created ({existing} is not a writable directory)")


def _check_labels(labels: Sequence[str] | None, source: str, task: str, classes: int, model) -> None:
    if labels is None:
        return
    if task != IMAGE_CLASSIFICATION:
        raise MaeconvError(f"{source}: class names are for a classifier; {model} is a {task} model")
    if len(labels) != classes:
        raise MaeconvError(f"{source}: {len(labels)} class names, but the model has {classes} classes")


def write_pictures(pictures: dict[Path, np.ndarray], force: bool, inputs: Sequence) -> None:
    """Every picture staged first; the names appear only once all are written. Their folder is
    made here, once there is something to put in it."""
    folder = next(iter(pictures)).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MaeconvError(f"{folder}: cannot create ({error.strerror or error})") from None
    with staged(*pictures, force=force, inputs=inputs) as stage:
        for index, (path, pixels) in enumerate(pictures.items()):
            try:
                save_png(pixels, stage.path(index))
            except OSError as error:
                raise MaeconvError(f"{path}: cannot write ({error.strerror or error})") from None


def read_labels(path: str | os.PathLike | None) -> list[str] | None:
    if path is None:
        return None
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise MaeconvError(f"{path}: cannot read class names ({error})") from None
