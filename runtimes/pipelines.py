"""`maeconv.pipeline`: images in, answers out, on any of the four runtimes, as MindFormers' and
transformers' pipelines are called:

    task = pipeline("masked_image_modeling", model="mae_visualize_vit_base")   # or a file, HF dir, .onnx, .mindir
    result = task("dog.jpg")          # a path, a URL, a PIL image, an (H, W, 3) uint8 array, or a list of them

Every runtime gets the same preprocessing (the reference eval transform) and the answers are
computed from the graph's outputs in NumPy, so a pipeline over an exported ONNX graph imports
neither torch nor MindSpore.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import MaeconvError
from ..models.config import CLASSIFIER, CLASSIFY, ENCODER, FULL, PRETRAIN, get_preset
from ..models.reference import patchify
from .images import prepare_image, reconstruction_panels
from .registry import get_runtime, open_graph, runtime_of
from .runners import Runner
from .tasks import FEATURES, get_task

MASKED_IMAGE_MODELING, IMAGE_CLASSIFICATION, FEATURE_EXTRACTION = (
    "masked_image_modeling", "image_classification", "feature_extraction")
GRAPH_TASKS = {MASKED_IMAGE_MODELING: PRETRAIN, IMAGE_CLASSIFICATION: CLASSIFY, FEATURE_EXTRACTION: FEATURES}
PIPELINE_TASKS = {graph: name for name, graph in GRAPH_TASKS.items()}
BATCH = 8
IMAGENET_CLASSES = Path(__file__).with_name("imagenet_classes.tsv")  # WordNet names, as timm ships them


@dataclass
class Reconstruction:
    """What masked image modeling gives for one image; its pictures are drawn when first asked for."""

    loss: float                # the masked-patch loss of this image
    mask: np.ndarray           # (L,) 0 kept, 1 removed, in patch order
    image: np.ndarray          # the preprocessed input (3, S, S)
    pred: np.ndarray           # the model's prediction per patch (L, p*p*3)
    config: Any

    @cached_property
    def panels(self) -> list[np.ndarray]:
        """original, masked, reconstruction, reconstruction + visible: (S, S, 3) uint8 each."""
        return reconstruction_panels(self.image, self.pred, self.mask, self.config, self.config.norm_pix_loss)

    @property
    def reconstruction(self):
        """The model's prediction of every patch, as a PIL image."""
        return _pil(self.panels[2])

    @property
    def pasted(self):
        """The prediction with the visible patches pasted back, as a PIL image."""
        return _pil(self.panels[3])

    @property
    def picture(self):
        """The 4 panels original | masked | reconstruction | pasted, as the MAE demo shows them."""
        return _pil(np.concatenate(self.panels, axis=1))


def _pil(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(pixels)


@dataclass
class Features:
    tokens: np.ndarray         # (1 + L, D)
    pooled: np.ndarray         # (D,)


@dataclass
class Pipeline:
    task: str
    runner: Runner
    labels: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def config(self):
        return self.runner.info.config

    def __call__(self, images, *, seed: int | None = None, noise: np.ndarray | None = None, top_k: int = 5):
        """One answer per image; one answer alone for one image given alone."""
        single = not isinstance(images, (list, tuple))
        batch = self.preprocess([images] if single else list(images))
        outputs = self.run(batch, noise if noise is not None else
                           np.random.default_rng(seed).random((len(batch), self.config.num_patches), dtype=np.float32))
        answers = self.postprocess(batch, outputs, top_k)
        return answers[0] if single else answers

    def preprocess(self, images: Sequence) -> np.ndarray:
        if not images:
            raise MaeconvError("no images given")
        arrays = []
        for image in images:
            array, note = prepare_image(image, self.config.img_size)
            arrays.append(array)
            self.notes += [note] if note else []
        return np.stack(arrays)

    def run(self, batch: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
        """The runner over the batch, BATCH images at a time (the noise only where the task masks)."""
        results: dict[str, list] = {}
        for start in range(0, len(batch), BATCH):
            inputs = {"images": batch[start:start + BATCH], "noise": noise[start:start + BATCH]}
            for name, value in self.runner({k: inputs[k] for k in self.runner.info.task.inputs}).items():
                results.setdefault(name, []).append(value if value.ndim else value[None])
        return {name: np.concatenate(parts) for name, parts in results.items()}

    def postprocess(self, batch: np.ndarray, outputs: dict[str, np.ndarray], top_k: int) -> list:
        if self.task == IMAGE_CLASSIFICATION:
            return [self._ranked(row, top_k) for row in outputs["logits"]]
        if self.task == FEATURE_EXTRACTION:
            return [Features(tokens, pooled) for tokens, pooled in zip(outputs["tokens"], outputs["pooled"])]
        return [self._reconstruction(image, pred, mask) for image, pred, mask in
                zip(batch, outputs["pred"], outputs["mask"])]

    def _ranked(self, logits: np.ndarray, top_k: int) -> list[tuple[str | int, float]]:
        logits = logits.astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        top = np.argsort(-probabilities, kind="stable")[:top_k]
        return [(self.labels[k] if self.labels else int(k), float(probabilities[k])) for k in top]

    def _reconstruction(self, image: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> Reconstruction:
        return Reconstruction(sample_loss(image, pred, mask, self.config), mask, image, pred, self.config)


def sample_loss(image: np.ndarray, pred: np.ndarray, mask: np.ndarray, config) -> float:
    """The reference's loss for one image: per-patch MSE (against normalised patches for a
    norm-pix model) averaged over the removed patches."""
    target = patchify(image[None].astype(np.float64), config.patch_size)[0]
    if config.norm_pix_loss:
        target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    per_patch = ((pred.astype(np.float64) - target) ** 2).mean(-1)
    return float((per_patch * mask).sum() / mask.sum())


def pipeline(task: str | None, model: str | os.PathLike, framework: str | None = None, runtime: str | None = None,
             labels: Sequence[str] | None = None, **settings) -> Pipeline:
    """A pipeline for `task` ("masked_image_modeling", "image_classification" or
    "feature_extraction"; None: what the model does) over `model`: an official name, a checkpoint
    file or Hugging Face directory, an exported .onnx/.mindir, or a preset name (freshly
    initialised weights). `runtime` (or its synonym `framework`) is torch, mindspore, onnx or
    mindir; the default is the one the model implies. `settings` override the model's
    (norm_pix_loss, mask_ratio, ...)."""
    if task is not None and task not in GRAPH_TASKS:
        raise MaeconvError(f"unknown task {task!r}; expected one of {', '.join(GRAPH_TASKS)}")
    if framework and runtime and framework != runtime:
        raise MaeconvError(f"framework {framework!r} and runtime {runtime!r} disagree; give one")
    runner = open_runner(model, GRAPH_TASKS.get(task), runtime or framework, settings)
    task = PIPELINE_TASKS[runner.info.task.name]
    return Pipeline(task, runner, _labels(labels, runner.info.config.num_classes, task))


def open_runner(model, task: str | None, runtime: str | None, settings: dict | None = None) -> Runner:
    """A checkpoint (run by a twin), an exported graph (run by its runtime), or a preset's fresh
    weights, ready to run graph task `task` (None: what the model does: reconstruct a full
    pretraining model, classify with a classifier, give an encoder's features)."""
    given = {name: value for name, value in (settings or {}).items() if value is not None}
    implied = runtime_of(model)
    runtime = runtime or implied
    if get_runtime(runtime).exported or get_runtime(implied).exported:
        return _graph_runner(Path(model), task, runtime, implied, given)
    if _is_preset(model):
        return _fresh_runner(str(model), task, runtime, given)
    from ..convert.pipeline import load_canonical
    from .runners import twin_runner

    loaded = load_canonical(model)
    kind = loaded.detected.kind
    graph_task = get_task(task or NATURAL_TASKS[kind])
    _check_kind(model, graph_task, kind)
    return twin_runner(loaded, graph_task, runtime, loaded.settings(**given).config)


NATURAL_TASKS = {FULL: PRETRAIN, CLASSIFIER: CLASSIFY, ENCODER: FEATURES}


def _graph_runner(model: Path, task: str | None, runtime: str, implied: str, given: dict) -> Runner:
    if implied != runtime:
        raise MaeconvError(f"{model}: is an exported graph; run it with runtime {implied}" if get_runtime(implied).exported
                           else f"{model}: runtime {runtime} runs an exported .{runtime} file; export the checkpoint "
                                f"first: maeconv export {runtime} {model} OUT.{runtime} --task {task or PRETRAIN}")
    if given:
        raise MaeconvError(f"{model}: an exported graph has its settings built in ({', '.join(given)} given); "
                           "export again with them instead")
    runner = open_graph(model, runtime)
    if task is not None and runner.info.task.name != task:
        raise MaeconvError(f"{model}: is a {runner.info.task.name} graph; {PIPELINE_TASKS[task]} needs a "
                           f"{task} graph")
    return runner


def _is_preset(model) -> bool:
    if not isinstance(model, str) or Path(model).exists():
        return False
    try:
        get_preset(model)
    except KeyError:
        return False
    from ..convert.hub import CHECKPOINTS

    return model not in CHECKPOINTS  # an official name means its published weights


def _fresh_runner(name: str, task: str | None, runtime: str, given: dict) -> Runner:
    """A preset with freshly initialised weights: pictures of noise, but every step runs."""
    from ..convert.settings import resolve_settings
    from ..convert.twins import get_twin
    from .runners import TwinRunner
    from .tasks import GraphInfo

    preset = get_preset(name)
    kind = CLASSIFIER if preset.task == CLASSIFY else FULL
    graph_task = get_task(task or NATURAL_TASKS[kind])
    _check_kind(name, graph_task, kind)
    config = resolve_settings(preset.config, {}, name, **given).config
    twin = get_twin(runtime)
    model = twin.inference(twin.create(config, preset.task))
    return TwinRunner(GraphInfo(graph_task, preset.name, kind, config), twin, twin.graph(model, graph_task.name))


def _check_kind(model, task, kind: str) -> None:
    if kind not in task.kinds:
        raise MaeconvError(f"{model}: is {'an encoder-only' if kind == ENCODER else 'a ' + kind} checkpoint; "
                           f"{PIPELINE_TASKS[task.name]} needs {' or '.join(task.kinds)}")


def _labels(labels: Sequence[str] | None, classes: int, task: str) -> list[str] | None:
    if task != IMAGE_CLASSIFICATION:
        return None
    if labels is not None:
        if len(labels) != classes:
            raise MaeconvError(f"{len(labels)} class names, but the model has {classes} classes")
        return list(labels)
    return imagenet_labels() if classes == 1000 else None


def imagenet_labels() -> list[str]:
    """ImageNet-1k's class names in class order, each its first WordNet lemma ('tench', 'goldfish')."""
    return [line.split("\t", 1)[1].split(",")[0] for line in IMAGENET_CLASSES.read_text().splitlines()]
