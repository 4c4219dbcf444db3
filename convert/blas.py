"""Matrix transposes by the OpenBLAS that NumPy's wheels ship (`cblas_somatcopy`), used only where
they give exactly NumPy's bytes.

Measured on ViT-H's Linear weights (this project's 2-core development machine): 3.5-7 GB/s, against
1.3-2.3 GB/s for NumPy's blocked strided copy. OpenBLAS scales by alpha = 1 as it copies, which keeps
every finite float's bits but quiets a signalling NaN, and loses subnormals where the thread flushes
them to zero (FTZ/DAZ, which some native libraries switch on): so a matrix holding NaN or Inf goes
to NumPy, and each call first checks, on the calling thread, that a subnormal and -0 survive.
Without a bundled OpenBLAS (another NumPy build), every transpose is NumPy's.
"""
from __future__ import annotations

import ctypes
import functools
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .tensors import all_finite

ROW_MAJOR, TRANSPOSE = 101, 112
# The 64-bit-integer OpenBLAS of NumPy 1.x wheels and of NumPy 2.x wheels; other builds (32-bit
# integers, or another BLAS) are left alone rather than called with the wrong integer width.
SYMBOLS = ("cblas_{kind}omatcopy64_", "scipy_cblas_{kind}omatcopy64_")
THREAD_SYMBOLS = ("openblas_{verb}_num_threads64_", "scipy_openblas_{verb}_num_threads64_")
KINDS = {np.dtype(np.float32): ("s", ctypes.c_float), np.dtype(np.float64): ("d", ctypes.c_double)}


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
    if not all_finite(array.reshape(-1)) or not _keeps_bits(kernel, array.dtype):
        return None
    out = np.empty(array.shape[::-1], array.dtype)
    _transpose_into(kernel, array, out)
    return out


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
