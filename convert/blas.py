"""Matrix transposes by the OpenBLAS that NumPy's wheels ship (`cblas_somatcopy`), used only where
they give exactly NumPy's bytes.

Measured on ViT-H's Linear weights (this project's 2-core development machine): 3.5-7 GB/s, against
1.3-2.3 GB/s for NumPy's blocked strided copy. OpenBLAS scales by alpha = 1 as it copies, which keeps
every finite float's bits but quiets a signalling NaN, and loses subnormals where the thread flushes
them to zero (FTZ/DAZ, which some native libraries switch on): so a matrix holding NaN or Inf goes
to NumPy, and each call first checks, on the calling thread, that a subnormal and -0 survive.
Without a bundled OpenBLAS (another NumPy build), every transpose is NumPy's.

Also here: the NaN/Inf check by BLAS's dot (`all_finite`), and OpenBLAS held to one thread while a
file is written (`one_thread`).
"""
from __future__ import annotations

import ctypes
import functools
from contextlib import contextmanager
from pathlib import Path

import numpy as np


ROW_MAJOR, TRANSPOSE = 101, 112
# The 64-bit-integer OpenBLAS of NumPy 1.x wheels and of NumPy 2.x wheels; other builds (32-bit
# integers, or another BLAS) are left alone rather than called with the wrong integer width.
SYMBOLS = ("cblas_{kind}omatcopy64_", "scipy_cblas_{kind}omatcopy64_")
THREAD_SYMBOLS = ("openblas_{verb}_num_threads64_", "scipy_openblas_{verb}_num_threads64_")
KINDS = {np.dtype(np.float32): ("s", ctypes.c_float), np.dtype(np.float64): ("d", ctypes.c_double)}
BLAS_FLOATS = tuple(KINDS)
# Bytes of an unaligned vector copied at a time for the NaN/Inf check: stays in the CPU cache.
ALIGNED_PIECE = 1 << 20


@functools.cache
def _libraries() -> tuple[ctypes.CDLL, ...]:
    package = Path(np.__file__).parent
    found = []
    for folder in (package.parent / "numpy.libs", package / ".dylibs"):
        for path in sorted(folder.glob("*openblas*")) if folder.is_dir() else ():
            try:
                found.append(ctypes.CDLL(str(path)))
            except OSError:
                continue
    return tuple(found)


@functools.cache
def omatcopy(dtype: np.dtype):
    """OpenBLAS's out-of-place scaled transpose for `dtype`, or None."""
    if dtype not in KINDS:
        return None
    kind, scalar = KINDS[dtype]
    for library in _libraries():
        for symbol in SYMBOLS:
            function = getattr(library, symbol.format(kind=kind), None)
            if function is not None:
                function.restype = None
                function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, scalar,
                                     ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
                return function
    return None


def _transpose_into(kernel, array: np.ndarray, out: np.ndarray) -> None:
    rows, columns = array.shape
    kernel(ROW_MAJOR, TRANSPOSE, rows, columns, 1.0, array.ctypes.data, columns, out.ctypes.data, rows)


def _keeps_bits(kernel, dtype: np.dtype) -> bool:
    """Whether the kernel, on this thread now, copies the smallest subnormal and -0 unchanged."""
    probe = np.array([[np.finfo(dtype).smallest_subnormal, -0.0]], dtype)
    out = np.empty((2, 1), dtype)
    _transpose_into(kernel, probe, out)
    return out.tobytes() == probe.T.tobytes()


def transposed_exactly(array: np.ndarray) -> np.ndarray | None:
    """`array.T` in C order, the same bytes as NumPy's, or None where OpenBLAS cannot promise them
    (no kernel for the dtype, not a C-ordered matrix, a NaN or Inf in it, flushed subnormals)."""
    kernel = omatcopy(array.dtype)
    if kernel is None or array.ndim != 2 or not array.flags.c_contiguous or array.size == 0:
        return None
    if not _keeps_bits(kernel, array.dtype):
        return None
    out = np.empty(array.shape[::-1], array.dtype)
    _transpose_into(kernel, array, out)
    # The result holds the source's values, aligned wherever the source lies: a matrix at an odd
    # offset in a .ckpt was 0.7-0.9 ms (of 6) slower to check per 26 MB (ViT-H's 120: 0.35 s).
    return out if all_finite(out.reshape(-1)) else None


@functools.cache
def _thread_controls():
    """OpenBLAS's (get, set) of its thread count, or None."""
    for library in _libraries():
        for symbol in THREAD_SYMBOLS:
            get = getattr(library, symbol.format(verb="get"), None)
            set_ = getattr(library, symbol.format(verb="set"), None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                return get, set_
    return None


@contextmanager
def one_thread():
    """NumPy's OpenBLAS on one thread meanwhile (its setting is the process's): a conversion keeps
    every core busy with its own threads, and OpenBLAS's, spinning as they wait for work, took CPU
    from them (ViT-H `mindformers` ckpt -> facebook, 5 warm runs: median 4.55 -> 3.39 s, CPU
    4.8-9.6 -> 4.1-5.3 s)."""
    controls = _thread_controls()
    if controls is None:
        yield
        return
    get, set_ = controls
    before = get()
    set_(1)
    try:
        yield
    finally:
        set_(before)


def all_finite(values: np.ndarray) -> bool:
    """Whether no value of a vector is NaN or Inf. A sum of squares (BLAS's dot, 40 GB/s here against
    15 for NumPy's sum) or a sum is NaN or Inf whenever a term is, and needs no mask as np.isfinite
    would; only an overflowing total needs the exact check."""
    if values.dtype.kind != "f":  # bfloat16 has no fast sum
        return bool(np.isfinite(values).all())
    if not values.flags.aligned:  # a tensor at an odd offset in its file: BLAS and NumPy's fast loops
        # need aligned items (26 MB took 16.6 ms as it lies, 3.0 ms copied in cache-sized pieces first)
        step = max(1, ALIGNED_PIECE // values.itemsize)
        return all(all_finite(values[start:start + step].copy()) for start in range(0, values.size, step))
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.dot(values, values) if values.dtype in BLAS_FLOATS else np.add.reduce(values, dtype=values.dtype)
    return bool(np.isfinite(total)) or bool(np.isfinite(values).all())
