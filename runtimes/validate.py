"""An exported graph against its source twin, on fresh random inputs at two batch sizes.

The source twin runs first on every validation batch and its outputs are kept: the twin can then
be freed (or cast to half precision for the export) before the exported graph is opened, so the
two never hold their weights in memory at the same time."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..parity.compare import COSINE, EXACT, REL, TOP1, Report, Tolerance, compare
from .runners import Runner
from .tasks import random_inputs, tolerances

BATCHES = (1, 4)  # the export traces batch 2: both differ from it, one is the single-image case
MIN_COSINE = 0.99
MIN_TOP1 = 0.75
HALF_LOSS_REL = 1e-2  # a half-precision pretrain graph's scalar loss: cosine says nothing of a scalar


@dataclass
class Expected:
    """The source twin's outputs on the validation inputs."""

    source: str
    seed: int
    inputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    outputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def lossy_tolerances(outputs: Sequence[str], min_cosine: float = MIN_COSINE) -> dict[str, Tolerance]:
    """int8 and half precision drift: cosine per output; a mask must stay identical (the noise
    stays float32) and a scalar loss within HALF_LOSS_REL of the twin's."""
    special = {"mask": Tolerance(EXACT), "loss": Tolerance(REL, HALF_LOSS_REL)}
    return {name: special.get(name, Tolerance(COSINE, min_cosine)) for name in outputs}


def lossy_top1(outputs: Sequence[str], min_top1: float = MIN_TOP1) -> dict[str, Tolerance]:
    return {"logits": Tolerance(TOP1, min_top1)} if "logits" in outputs else {}


def run_source(source: Runner, batches: Sequence[int] = BATCHES, seed: int | None = None) -> Expected:
    """The twin's outputs on fresh random inputs, one batch per size in `batches`."""
    task, config = source.info.task, source.info.config
    seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else seed
    rng = np.random.default_rng(seed)
    expected = Expected(source.name, seed)
    for batch in batches:
        inputs = random_inputs(task, config, batch, rng)
        start = time.perf_counter()
        expected.outputs.append(source(inputs))
        expected.timings[f"{source.name}, batch {batch}"] = time.perf_counter() - start
        expected.inputs.append(inputs)
    return expected


def check(exported: Runner, expected: Expected, per_batch: Mapping[str, Tolerance] | None = None,
          overall: Mapping[str, Tolerance] | None = None, atol: float = 1e-4) -> Report:
    """Runs the exported graph on the inputs of `expected` and compares every output: `per_batch`
    tolerances (default: `atol` on every output, the mask identical) on each batch, `overall`
    ones (top-1 agreement) once on all the images together."""
    task = exported.info.task
    per_batch = per_batch or tolerances(task, atol)
    report = Report(f"{task.name} validation: {exported.name} vs {expected.source}, random inputs, "
                    f"seed {expected.seed}")
    actual_runs = []
    for inputs, wanted in zip(expected.inputs, expected.outputs):
        batch = len(inputs["images"])
        start = time.perf_counter()
        actual = exported(inputs)
        report.timings[f"{exported.name}, batch {batch}"] = time.perf_counter() - start
        report.rows += compare(f"batch {batch}", actual, wanted, per_batch)
        actual_runs.append(actual)
    report.timings.update(expected.timings)
    if overall:
        joined = {side: {name: np.concatenate([run[name] for run in runs]) for name in overall}
                  for side, runs in (("actual", actual_runs), ("expected", expected.outputs))}
        count = sum(len(inputs["images"]) for inputs in expected.inputs)
        report.rows += compare(f"all {count} images", joined["actual"], joined["expected"], overall)
    return report


def validate(exported: Runner, source: Runner, per_batch: Mapping[str, Tolerance] | None = None,
             overall: Mapping[str, Tolerance] | None = None, atol: float = 1e-4,
             batches: Sequence[int] = BATCHES, seed: int | None = None) -> Report:
    """Both runners on the same fresh inputs (for callers that hold both anyway)."""
    return check(exported, run_source(source, batches, seed), per_batch, overall, atol)
