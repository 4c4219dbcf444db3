"""Compare named outputs of two runs against per-output tolerances; a report both prints and serialises."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

ABS = "abs"      # max |a - b| <= tolerance
REL = "rel"      # max |a - b| / max |b| <= tolerance
EXACT = "exact"  # identical values
# Drift bounds for lossy runtimes (int8): lower bounds on agreement rather than error bounds.
COSINE = "cosine"  # min over samples of cos(a, b) >= tolerance
TOP1 = "top1"      # fraction of samples whose argmax agrees >= tolerance
AGREEMENT = (COSINE, TOP1)


@dataclass(frozen=True)
class Tolerance:
    kind: str
    value: float = 0.0

    def __str__(self) -> str:
        if self.kind in AGREEMENT:
            return f"{self.kind} >= {self.value:g}"
        return "identical" if self.kind == EXACT else f"{self.kind} {self.value:.0e}"


@dataclass
class Row:
    pair: str        # e.g. "torch vs reference"
    output: str
    max_abs: float
    max_rel: float
    tolerance: str
    passed: bool


def errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """Max absolute error, and relative error against the largest magnitude of `expected`."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf"), float("inf")
    diff = float(np.max(np.abs(actual - expected), initial=0.0))
    scale = float(np.max(np.abs(expected), initial=0.0))
    return diff, diff / scale if scale else (0.0 if diff == 0 else float("inf"))


def agreement(kind: str, actual: np.ndarray, expected: np.ndarray) -> float:
    """Cosine similarity (the smallest over the samples of the leading axis) or top-1 agreement."""
    actual = np.asarray(actual, np.float64).reshape(len(actual), -1)
    expected = np.asarray(expected, np.float64).reshape(len(expected), -1)
    if actual.shape != expected.shape:
        return float("-inf")
    if kind == TOP1:
        return float(np.mean(actual.argmax(-1) == expected.argmax(-1)))
    norms = np.linalg.norm(actual, axis=-1) * np.linalg.norm(expected, axis=-1)
    return float(np.min((actual * expected).sum(-1) / np.maximum(norms, np.finfo(np.float64).tiny)))


def compare(pair: str, actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
            tolerances: Mapping[str, Tolerance]) -> list[Row]:
    rows = []
    for output, tol in tolerances.items():
        max_abs, max_rel = errors(actual[output], expected[output])
        if tol.kind in AGREEMENT:
            measured = agreement(tol.kind, actual[output], expected[output])
            rows.append(Row(pair, output, max_abs, max_rel, f"{tol} ({measured:.7g})", measured >= tol.value))
            continue
        measured = {ABS: max_abs, REL: max_rel, EXACT: max_abs}[tol.kind]
        rows.append(Row(pair, output, max_abs, max_rel, str(tol), measured <= tol.value))
    return rows


@dataclass
class Report:
    title: str
    rows: list[Row] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per run
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every comparison passed; a report that compared nothing proves nothing and fails."""
        return bool(self.rows) and all(row.passed for row in self.rows)

    def to_json(self) -> str:
        return json.dumps({"title": self.title, "passed": self.passed, "rows": [asdict(r) for r in self.rows],
                           "timings_s": self.timings, "notes": self.notes}, indent=2)

    def to_text(self) -> str:
        header = ("pair", "output", "max abs", "max rel", "tolerance", "result")
        body = [(r.pair, r.output, f"{r.max_abs:.3e}", f"{r.max_rel:.3e}", r.tolerance, "pass" if r.passed else "FAIL")
                for r in self.rows]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        lines = [self.title, ""]
        for line in [header, tuple("-" * w for w in widths), *body]:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        lines.append("")
        lines += [f"{name}: {seconds:.3f} s" for name, seconds in self.timings.items()]
        lines += self.notes
        lines.append(f"result: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)
