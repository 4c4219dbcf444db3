"""Tensors known by dtype and shape before their bytes are read: conversions stream one at a time."""
from __future__ import annotations

import errno
import mmap
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import MaeconvError


# Bytes handled per step when tensors are copied or compared file to file.
CHUNK = 8 << 20


@dataclass(frozen=True)
class Span:
    """Where a tensor's exact bytes lie in a file, stored as they are (little-endian, C order)."""

    path: str
    offset: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor whose data is produced on demand by `read` (from a file, a transform, or memory).
    `span` is set when the bytes can be copied straight from a file, without being interpreted."""

    dtype: np.dtype
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]
    span: Span | None = None

    @classmethod
    def in_file(cls, path, dtype: np.dtype, shape: tuple, offset: int) -> "TensorRef":
        return cls(dtype, shape, lambda: read_file_array(path, dtype, shape, offset), Span(str(path), offset))

    @classmethod
    def of(cls, array: np.ndarray) -> "TensorRef":
        array = np.asarray(array)
        return cls(array.dtype, tuple(array.shape), lambda: array)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def load(self) -> np.ndarray:
        array = self.read()
        if array.dtype != self.dtype or tuple(array.shape) != self.shape:
            raise MaeconvError(f"tensor data is {array.dtype}{array.shape}, its header says {self.dtype}{self.shape}")
        return array

    def cast(self, dtype: np.dtype) -> "TensorRef":
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        return TensorRef(dtype, self.shape, lambda: self.read().astype(dtype))


def read_file_array(path, dtype: np.dtype, shape: tuple, offset: int) -> np.ndarray:
    """Reads one tensor's bytes with plain file reads: memory stays near the tensor's size."""
    array = np.empty(shape, dtype)
    with open(path, "rb") as f:
        f.seek(offset)
        if f.readinto(array.reshape(-1).view(np.uint8)) != array.nbytes:
            raise MaeconvError(f"{path}: file ends inside a tensor (truncated)")
    return array


def dtype_by_name(name: str) -> np.dtype:
    """NumPy dtype for a name, including bfloat16 (from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def append_tensor(out, name: str, ref: TensorRef, on_written: Callable[[str, int], None] | None) -> None:
    """Appends the tensor's bytes to the unbuffered file `out` and tells `on_written(name, offset)`."""
    offset = out.tell()
    if ref.span:
        copy_span(out, ref.span, ref.nbytes)
    else:
        out.write(np.ascontiguousarray(ref.load()).reshape(-1).view(np.uint8).data)
    if on_written:
        on_written(name, offset)


def copy_span(out, span: Span, nbytes: int) -> None:
    """Appends a tensor's bytes from its file to the unbuffered file `out`, inside the kernel
    where it can (as cp does), else through a buffer."""
    with open(span.path, "rb", buffering=0) as source:
        offset, remaining = span.offset, nbytes
        try:
            while remaining:
                copied = os.copy_file_range(source.fileno(), out.fileno(), min(remaining, 1 << 30), offset)
                if copied == 0:
                    raise MaeconvError(f"{span.path}: file ends inside a tensor (truncated)")
                offset, remaining = offset + copied, remaining - copied
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            source.seek(offset)
            while remaining:
                chunk = source.read(min(remaining, CHUNK))
                if not chunk:
                    raise MaeconvError(f"{span.path}: file ends inside a tensor (truncated)") from None
                out.write(chunk)
                remaining -= len(chunk)


def _mapped(fd: int, offset: int, nbytes: int):
    """A read-only mapping of a file region (pages loaded up front), and the region's start in it."""
    start = offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, nbytes + start, flags=flags, prot=mmap.PROT_READ, offset=offset - start), start


def spans_equal(a: Span, b: Span, nbytes: int, dtype: np.dtype, nonfinite: Callable[[], None] | None) -> bool:
    """Compares two files' regions in place, through memory maps of one tensor at a time (so memory
    stays near one tensor); calls `nonfinite` if `b` holds NaN or Inf."""
    if nbytes == 0:
        return True
    with open(a.path, "rb", buffering=0) as fa, open(b.path, "rb", buffering=0) as fb:
        if a.offset + nbytes > os.fstat(fa.fileno()).st_size or b.offset + nbytes > os.fstat(fb.fileno()).st_size:
            return False
        map_a, start_a = _mapped(fa.fileno(), a.offset, nbytes)
        map_b, start_b = _mapped(fb.fileno(), b.offset, nbytes)
        with map_a, map_b:
            wide = np.uint64 if nbytes % 8 == 0 else np.uint8
            x = np.frombuffer(map_a, np.uint8, nbytes, start_a).view(wide)
            y = np.frombuffer(map_b, np.uint8, nbytes, start_b).view(wide)
            equal = bool(np.array_equal(x, y))
            floating = dtype.kind == "f" or dtype.name == "bfloat16"
            if equal and floating and nonfinite and not np.isfinite(y.view(dtype)).all():
                nonfinite()
            del x, y  # the maps close only once no array views them
    return equal
