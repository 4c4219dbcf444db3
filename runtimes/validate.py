"""An exported graph against its source twin, on fresh random inputs at two batch sizes."""
from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from ..parity.compare import COSINE, TOP1, Report, Tolerance, compare
from .runners import Runner
from .tasks import random_inputs, tolerances

BATCHES = (1, 4)  # the export traces batch 2: both differ from it, one is the single-image case
DEFAULT_ATOL = {"onnx": 1e-4, "mindir": 1e-5}
MIN_COSINE = 0.99
MIN_TOP1 = 0.75


def int8_tolerances(outputs: Sequence[str], min_cosine: float = MIN_COSINE) -> dict[str, Tolerance]:
    return {name: Tolerance(COSINE, min_cosine) for name in outputs}


def validate(exported: Runner, source: Runner, per_batch: Mapping[str, Tolerance] | None = None,
             overall: Mapping[str, Tolerance] | None = None, atol: float = 1e-4,
             batches: Sequence[int] = BATCHES, seed: int | None = None) -> Report:
    """Runs both on the same fresh inputs and compares every output: `per_batch` tolerances
    (default: `atol` on every output, the mask identical) on each batch, `overall` ones (top-1
    agreement) once on all the images together."""
    task, config = exported.info.task, exported.info.config
    per_batch = per_batch or tolerances(task, atol)
    seen: dict[str, list] = {"actual": [], "expected": []}
    seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else seed
    rng = np.random.default_rng(seed)
    report = Report(f"{task.name} validation: {exported.name} vs {source.name}, random inputs, seed {seed}")
    for batch in batches:
        inputs = random_inputs(task, config, batch, rng)
        start = time.perf_counter()
        actual = exported(inputs)
        report.timings[f"{exported.name}, batch {batch}"] = time.perf_counter() - start
        start = time.perf_counter()
        expected = source(inputs)
        report.timings[f"{source.name}, batch {batch}"] = time.perf_counter() - start
        report.rows += compare(f"batch {batch}", actual, expected, per_batch)
        seen["actual"].append(actual)
        seen["expected"].append(expected)
    if overall:
        joined = {side: {name: np.concatenate([run[name] for run in runs]) for name in overall}
                  for side, runs in seen.items()}
        report.rows += compare(f"all {sum(batches)} images", joined["actual"], joined["expected"], overall)
    return report


def int8_top1(outputs: Sequence[str], min_top1: float = MIN_TOP1) -> dict[str, Tolerance]:
    return {"logits": Tolerance(TOP1, min_top1)} if "logits" in outputs else {}
