"""Run the twins and the float64 reference on the same inputs and compare them.

This is what the tests, `maeconv parity`, `maeconv demo` and later export validation use.
"""
from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from ..convert.twins import FRAMEWORKS, MINDSPORE, TORCH, get_twin
from ..models import reference
from ..models.config import CLASSIFY, PRETRAIN, MAEConfig
from ..models.twins import GRAPH
from .compare import ABS, EXACT, REL, Report, Tolerance, compare

PRETRAIN_OUTPUTS = ("loss", "pred", "mask", "ids_restore", "latent")
ENCODER_OUTPUTS = ("latent", "mask", "ids_restore")

PRETRAIN_TOLERANCES = {
    "loss": Tolerance(REL, 1e-6),
    "pred": Tolerance(ABS, 1e-5),
    "mask": Tolerance(EXACT),
    "ids_restore": Tolerance(EXACT),
    "latent": Tolerance(ABS, 1e-5),
}
CLASSIFY_TOLERANCES = {"logits": Tolerance(ABS, 1e-5)}
GRADIENT_TOLERANCE = 1e-4  # per tensor: ||g_ms - g_torch|| / ||g_torch||


def permutation_noise(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """Mask noise whose rows are permutations of 0..length-1 over length: no two values tie, so
    every argsort implementation keeps the same patches."""
    return np.stack([rng.permutation(length) for _ in range(batch)]).astype(np.float32) / length


def parity_inputs(config: MAEConfig, batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded images and permutation noise."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, config.in_chans, config.img_size, config.img_size)).astype(np.float32)
    return images, permutation_noise(rng, batch, config.num_patches)


def run_pretrain(model, framework: str, images: np.ndarray, noise: np.ndarray,
                 mask_ratio: float | None = None) -> dict[str, np.ndarray]:
    """loss, pred, mask, ids_restore, latent of the pretraining model."""
    outputs = get_twin(framework).run(model, "__call__", images, _ratio(model, mask_ratio), noise)
    return dict(zip(PRETRAIN_OUTPUTS, outputs))


def run_encoder(model, framework: str, images: np.ndarray, noise: np.ndarray,
                mask_ratio: float | None = None) -> dict[str, np.ndarray]:
    """latent, mask, ids_restore of the pretraining model's encoder."""
    outputs = get_twin(framework).run(model, "forward_encoder", images, _ratio(model, mask_ratio), noise)
    return dict(zip(ENCODER_OUTPUTS, outputs))


def _ratio(model, mask_ratio: float | None) -> float:
    return model.config.mask_ratio if mask_ratio is None else mask_ratio


def run_classifier(model, framework: str, images: np.ndarray) -> dict[str, np.ndarray]:
    return {"logits": get_twin(framework).run(model, "__call__", images)}


def pretrain_gradients(model, framework: str, images: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
    """d loss / d parameter for every trainable parameter, by canonical name."""
    return get_twin(framework).gradients(model, images, noise)


def gradient_errors(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-tensor relative error ||a - e|| / ||e||."""
    if set(actual) != set(expected):
        raise ValueError(f"gradient sets differ: {sorted(set(actual) ^ set(expected))[:5]}")
    out = {}
    for name, e in expected.items():
        e64, a64 = np.asarray(e, np.float64), np.asarray(actual[name], np.float64)
        norm = np.linalg.norm(e64)
        out[name] = float(np.linalg.norm(a64 - e64) / norm) if norm else float(np.linalg.norm(a64))
    return out


def _timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def build_model(state: Mapping[str, np.ndarray], config: MAEConfig, framework: str, mode: str = GRAPH,
                task: str = PRETRAIN):
    """A twin in inference mode with `state` loaded."""
    return get_twin(framework).build(state, config, task, mode)


def build_twins(state: Mapping[str, np.ndarray], config: MAEConfig, task: str, mode: str = GRAPH):
    return {framework: build_model(state, config, framework, mode, task) for framework in FRAMEWORKS}


def check_pretrain(state: Mapping[str, np.ndarray], config: MAEConfig, batch: int = 2, seed: int = 0,
                   mode: str = GRAPH, encoder_only: bool = False) -> Report:
    """Both twins and the float64 reference on the same seeded inputs, every pair compared.
    With `encoder_only` (a checkpoint without decoder) only the encoder's outputs are compared."""
    images, noise = parity_inputs(config, batch, seed)
    twins = build_twins(state, config, PRETRAIN, mode)
    run, tolerances = run_pretrain, PRETRAIN_TOLERANCES
    if encoder_only:
        run = run_encoder
        tolerances = {k: v for k, v in PRETRAIN_TOLERANCES.items() if k in ENCODER_OUTPUTS}
    what = "encoder" if encoder_only else "pretraining forward"
    report = Report(f"MAE {what} parity, batch {batch}, seed {seed}, MindSpore {mode} mode")
    results = {}
    for framework, model in twins.items():
        _, first = _timed(run, model, framework, images, noise)
        results[framework], again = _timed(run, model, framework, images, noise)
        report.timings[f"{framework} forward (first call)"] = first
        report.timings[f"{framework} forward"] = again
    results["reference"], report.timings["float64 reference forward"] = _timed(
        reference.mae_forward, images, state, config, noise, encoder_only)
    for framework in (TORCH, MINDSPORE):
        report.rows += compare(f"{framework} vs reference", results[framework], results["reference"], tolerances)
    report.rows += compare("mindspore vs torch", results[MINDSPORE], results[TORCH], tolerances)
    return report


def check_classifier(state: Mapping[str, np.ndarray], config: MAEConfig, batch: int = 2, seed: int = 0,
                     mode: str = GRAPH) -> Report:
    images, _ = parity_inputs(config, batch, seed)
    twins = build_twins(state, config, CLASSIFY, mode)
    report = Report(f"ViT classifier logits parity, batch {batch}, seed {seed}, MindSpore {mode} mode")
    results = {}
    for framework, model in twins.items():
        results[framework], report.timings[f"{framework} forward"] = _timed(run_classifier, model, framework, images)
    results["reference"] = {"logits": reference.classifier_forward(images, state, config)}
    for framework in (TORCH, MINDSPORE):
        report.rows += compare(f"{framework} vs reference", results[framework], results["reference"],
                               CLASSIFY_TOLERANCES)
    report.rows += compare("mindspore vs torch", results[MINDSPORE], results[TORCH], CLASSIFY_TOLERANCES)
    return report
