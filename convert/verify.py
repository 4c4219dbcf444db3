"""Proof that a written file holds what was meant: read back and compared, tensor by tensor.

Tensors a writer streams are compared chunk by chunk as they go out (`tensors.write_stream`); the
file is then parsed again and every tensor checked to stand where it was compared. Tensors written
otherwise (a torch zip's CRC'd entries) are compared afterwards, file region against file region.
"""
from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..errors import MaeconvError
from .formats import FORMATS, Format, read_checkpoint
from .tensors import TensorRef, as_ref, spans_equal


@dataclass
class Written:
    """What the read-back found besides equality: tensors holding NaN or Inf (written as they are)."""

    nonfinite: list[str] = field(default_factory=list)


def write_verified(path: Path, tensors: Mapping[str, TensorRef], fmt: Format, extras: Mapping | None = None,
                   progress: Callable[[int], None] | None = None, shown_as: str | os.PathLike | None = None) -> Written:
    """Writes `path` in `fmt` and proves it: raises if anything differs, naming the file `shown_as`
    (the final name of a staged file)."""
    progress = _thread_safe(progress) if progress else None
    written = Written()
    if fmt.folder_members is not None:  # a folder: its weights file is the one to prove
        def verify(file: Path, inner: str, inner_extras: Mapping) -> None:
            written.nonfinite += write_verified(file, tensors, FORMATS[inner], inner_extras, progress,
                                                shown_as).nonfinite
        fmt.write(path, tensors, extras or {}, verify=verify)
        return written
    verdicts = fmt.write(path, tensors, extras or {}, check_finite=True, progress=progress)
    try:
        readback = read_checkpoint(path).tensors
    except MaeconvError as error:
        reason = str(error).removeprefix(f"{path}: ")
        raise MaeconvError(f"{shown_as or path}: read-back check failed: the written file does not parse ({reason})") \
            from None
    differ = sorted(set(tensors) ^ set(readback))
    rest = {}
    for name, ref in tensors.items():
        back, verdict = readback.get(name), verdicts.get(name)
        if back is None:
            continue
        if verdict is None:
            rest[name] = ref
            continue
        in_place = back.span is not None and back.span.offset == verdict.offset
        if not (verdict.equal and in_place and back.dtype == ref.dtype and back.shape == ref.shape):
            differ.append(name)
        elif not verdict.finite:
            written.nonfinite.append(name)
    if progress and rest:
        progress(sum(ref.nbytes for ref in rest.values()))  # written without per-tensor reports
    compared = compare_tensors(rest, {name: readback[name] for name in rest}, progress)
    differ += compared.differ
    written.nonfinite += compared.nonfinite
    if differ:
        raise MaeconvError(f"{shown_as or path}: read-back check failed for {len(differ)} tensors (e.g. {differ[0]})")
    return written


def _thread_safe(callback: Callable[[int], None]) -> Callable[[int], None]:
    """The callback, called by one thread at a time (the writer and the read-back both report)."""
    lock = threading.Lock()

    @functools.wraps(callback)
    def locked(value: int) -> None:
        with lock:
            callback(value)
    return locked


@dataclass
class Comparison:
    differ: list[str]     # names whose dtype, shape or bytes differ, or that only one side has
    nonfinite: list[str]  # names of `actual` tensors holding NaN or Inf


def compare_tensors(expected: Mapping[str, TensorRef | np.ndarray], actual: Mapping[str, TensorRef | np.ndarray],
                    progress: Callable[[int], None] | None = None) -> Comparison:
    """Compared one at a time, file region against file region where both are stored as they are."""
    result = Comparison(sorted(set(expected) ^ set(actual)), [])
    for name in expected:
        if name not in actual:
            continue
        e, a = as_ref(expected[name]), as_ref(actual[name])
        if e.dtype != a.dtype or e.shape != a.shape:
            result.differ.append(name)
            continue
        if e.span and a.span:
            equal, finite = spans_equal(e.span, a.span, e.nbytes, e.dtype)
        else:
            x, y = e.load(), a.load()
            equal = np.array_equal(_bytes(x), _bytes(y))
            finite = not (y.dtype.kind == "f" or y.dtype.name == "bfloat16") or bool(np.isfinite(y).all())
        if not equal:
            result.differ.append(name)
        elif not finite:
            result.nonfinite.append(name)
        if progress:
            progress(e.nbytes)
    return result


def same_tensors(expected: Mapping[str, TensorRef | np.ndarray], actual: Mapping[str, TensorRef | np.ndarray]) -> list[str]:
    """Names whose dtype, shape or bytes differ, or that only one side has."""
    return compare_tensors(expected, actual).differ


def _bytes(array: np.ndarray) -> np.ndarray:
    """The raw bytes, as wide integers where the size allows: NaN compares equal to itself here."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return flat.view(np.uint64) if flat.size % 8 == 0 else flat
