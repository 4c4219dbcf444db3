"""`maeconv predict`: images through any runtime; reconstruction pictures or top-5 classes."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..convert.errors import MaeconvError
from ..convert.outputs import check_target, staged
from ..models.config import CLASSIFIER, CLASSIFY, ENCODER, PRETRAIN
from .images import load_image, reconstruction_picture, save_png
from .runners import MINDIR, ONNX, Runner, open_graph, runtime_of
from .tasks import get_task

BATCH = 8
PICTURE_SUFFIX = "_mae.png"


@dataclass
class Prediction:
    task: str
    runtime: str
    written: list[Path] = field(default_factory=list)                        # pretrain
    top5: list[list[tuple[int, float]]] = field(default_factory=list)        # classify: (class, probability)
    notes: list[str] = field(default_factory=list)


def open_runner(model: str | os.PathLike, runtime: str | None, settings: dict | None = None) -> Runner:
    """A checkpoint (torch or MindSpore twin) or an exported graph (onnx, mindir), ready to run
    its task: reconstruction for full pretraining models, classification for classifiers."""
    model = Path(model)
    implied = runtime_of(model)
    runtime = runtime or implied
    given = {name: value for name, value in (settings or {}).items() if value is not None}
    if runtime in (ONNX, MINDIR):
        if implied != runtime:
            raise MaeconvError(f"{model}: --runtime {runtime} runs an exported .{runtime} file; export the "
                               f"checkpoint first: maeconv export {runtime} {model} OUT.{runtime} --task pretrain")
        if given:
            raise MaeconvError(f"{model}: an exported graph has its settings built in "
                               f"({', '.join(given)} given); export again with them instead")
        runner = open_graph(model, runtime)
        if runner.info.task.name not in (PRETRAIN, CLASSIFY):
            raise MaeconvError(f"{model}: is a {runner.info.task.name} graph; predict needs a pretrain or "
                               "classify graph")
        return runner
    if implied in (ONNX, MINDIR):
        raise MaeconvError(f"{model}: is an exported graph; run it with --runtime {implied}")
    from ..convert.pipeline import load_canonical
    from .runners import twin_runner

    loaded = load_canonical(model)
    kind = loaded.detected.kind
    if kind == ENCODER:
        raise MaeconvError(f"{model}: holds the encoder only (no decoder), so there is nothing to reconstruct; "
                           "for embeddings export it with --task features")
    task = get_task(CLASSIFY if kind == CLASSIFIER else PRETRAIN)
    return twin_runner(loaded, task, runtime, loaded.settings(**given).config)


def _noise(count: int, length: int, noise: np.ndarray | None, seed: int | None, source: str) -> np.ndarray:
    if noise is None:
        return np.random.default_rng(seed).random((count, length), dtype=np.float32)
    noise = np.asarray(noise, np.float32)
    if noise.ndim == 1:
        noise = noise[None]
    if noise.shape[-1] != length or noise.shape[0] not in (1, count) or noise.ndim != 2:
        raise MaeconvError(f"{source}: noise of shape {noise.shape}; expected ({count}, {length}) or ({length},)")
    return np.ascontiguousarray(np.broadcast_to(noise, (count, length)))


def predict(model: str | os.PathLike, images: Sequence[str | os.PathLike], runtime: str | None = None,
            out_dir: str | os.PathLike = ".", noise: np.ndarray | None = None, noise_source: str = "--noise",
            seed: int | None = None, settings: dict | None = None, force: bool = False,
            labels: Sequence[str] | None = None, labels_source: str = "--labels",
            log: Callable[[str], None] = lambda _: None) -> Prediction:
    """Runs `images` through the model; a pretraining model's pictures go to `out_dir` (created if
    needed), a classifier's top-5 come back (`labels`, if given, must name every class)."""
    if not images:
        raise MaeconvError(f"{model}: no images given")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    runner = open_runner(model, runtime, settings)
    task, config = runner.info.task, runner.info.config
    _check_labels(labels, labels_source, task.name, config.num_classes, model)
    result = Prediction(task.name, runner.name)
    outputs = []
    if task.name == PRETRAIN:
        outputs = [out_dir / f"{Path(image).stem}{PICTURE_SUFFIX}" for image in images]
        clash = [o for o in outputs if outputs.count(o) > 1]
        if clash:
            raise MaeconvError(f"{clash[0]}: two input images would write the same picture")
        for path in outputs if out_dir.is_dir() else []:  # before any work: nothing is written unless all can be
            check_target(path, force, inputs=[model, *images])
    arrays = []
    for image in images:  # every image is read before anything runs or is written
        array, note = load_image(image, config.img_size)
        arrays.append(array)
        if note:
            result.notes.append(f"note: {note}")
            log(result.notes[-1])
    batch = np.stack(arrays)
    inputs = {"images": batch}
    if task.name == PRETRAIN:
        inputs["noise"] = _noise(len(batch), config.num_patches, noise, seed, noise_source)
    results: dict[str, list] = {}
    for start in range(0, len(batch), BATCH):
        log(f"{runner.name}: images {start + 1}-{min(start + BATCH, len(batch))} of {len(batch)}")
        chunk = runner({name: value[start:start + BATCH] for name, value in inputs.items()})
        for name, value in chunk.items():
            results.setdefault(name, []).append(value)
    if task.name == CLASSIFY:
        logits = np.concatenate(results["logits"]).astype(np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        for row in probs:
            top = np.argsort(-row, kind="stable")[:5]
            result.top5.append([(int(k), float(row[k])) for k in top])
        return result
    pred, mask = np.concatenate(results["pred"]), np.concatenate(results["mask"])
    norm_pix = config.norm_pix_loss
    result.notes.append("note: " + ("norm-pix model: each predicted patch is shown un-normalised with the "
                                    "original patch's mean and variance" if norm_pix else
                                    "raw-pixel model: predictions are shown as they are (--norm-pix-loss for "
                                    "*_full.pth checkpoints)"))
    log(result.notes[-1])
    pictures = [reconstruction_picture(batch[i], pred[i], mask[i], config, norm_pix) for i in range(len(batch))]
    write_pictures(dict(zip(outputs, pictures)), force, inputs=[model, *images])
    result.written = outputs
    return result


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
    if task != CLASSIFY:
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
