"""Tensors known by dtype and shape before their bytes are read: conversions stream one at a time."""
from __future__ import annotations

import collections
import concurrent.futures
import math
import mmap
import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Union

import numpy as np

from . import libc
from .blas import all_finite, one_thread
from ..errors import MaeconvError

try:  # ISA-L's CRC-32: 12 GB/s here against zlib's 2.4-3.5 (both free the GIL for the writer thread)
    from isal.isal_zlib import crc32
except ImportError:  # a platform without its wheel: the same values, slower
    from zlib import crc32


# Bytes per step when tensors are copied file to file: small enough to stay in the CPU cache.
COPY_CHUNK = 1 << 20
# Bytes of tensors made ready ahead of the writer (computed, or mapped and loaded).
AHEAD_BYTES = 16 << 20
# The kernel copies between a file's pages and memory 3-6x slower when the destination lies 1-31
# bytes past the source within a page (its stores alias the loads just ahead: "4K aliasing").
# Measured for 2.6 GB: 0.4 s at 0 or 32-4095 bytes, 1.2-1.5 s at 1-31. A chunk that would land so is
# copied first to scratch memory placed at the file position's own offset in a page.
PAGE = mmap.PAGESIZE
ALIASING_BYTES = 64


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
    # Set for a concatenation along the first axis: the tensor's bytes are these tensors' bytes, one
    # after another, so a writer copies each from where it is instead of building the whole.
    pieces: tuple["TensorRef", ...] = ()

    @classmethod
    def in_file(cls, path, dtype: np.dtype, shape: tuple, offset: int) -> "TensorRef":
        return cls(dtype, shape, lambda: read_file_array(path, dtype, shape, offset), Span(str(path), offset))

    @classmethod
    def of(cls, array: np.ndarray) -> "TensorRef":
        array = np.asarray(array)
        return cls(array.dtype, tuple(array.shape), lambda: array)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # Python ints: np.prod(dtype=int64) wraps around silently

    def load(self) -> np.ndarray:
        array = self.read()
        if array.dtype != self.dtype or tuple(array.shape) != self.shape:
            raise MaeconvError(f"tensor data is {array.dtype}{array.shape}, its header says {self.dtype}{self.shape}")
        return array

    def mapped(self) -> np.ndarray:
        """The data to read, not to keep or change: where its bytes lie in a file as they are, a
        read-only map of them (a transform then reads the page cache itself, with no copy into
        fresh memory the kernel must first clear); else `load()`."""
        if self.span is None:
            return self.load()
        data = _map_region(self.span.path, self.span.offset, self.nbytes)
        if data is None:
            raise MaeconvError(f"{self.span.path}: file ends inside a tensor (truncated)")
        return data.view(self.dtype).reshape(self.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The data, read now: a model can be filled from references one tensor at a time."""
        array = self.load()
        return array if dtype is None else array.astype(dtype, copy=False)

    def cast(self, dtype: np.dtype) -> "TensorRef":
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        return TensorRef(dtype, self.shape, lambda: self.read().astype(dtype))


def as_ref(value: "TensorRef | np.ndarray") -> TensorRef:
    return value if isinstance(value, TensorRef) else TensorRef.of(value)


def read_file_array(path, dtype: np.dtype, shape: tuple, offset: int) -> np.ndarray:
    """Reads one tensor's bytes with plain file reads: memory stays near the tensor's size."""
    array = np.empty(shape, dtype)
    with open(path, "rb") as f:
        f.seek(offset)
        if f.readinto(array.reshape(-1).view(np.uint8)) != array.nbytes:
            raise MaeconvError(f"{path}: file ends inside a tensor (truncated)")
    return array


# NumPy's limit on dimensions (NPY_MAXDIMS in NumPy 1.x); a tensor with more has no array to read into.
MAX_DIMS = 32
# The most tensors a file may hold. A reader indexes every tensor before reading one, at up to 1.5 KB
# each (a safetensors entry parsed from JSON): a file of many empty entries would otherwise fill
# memory from a modest size. Some 100 MB at most; checkpoints hold a few thousand tensors.
MAX_TENSORS = 1 << 16


def checked_shape(dims, dtype: np.dtype) -> tuple[int, ...]:
    """`dims` as a shape, if NumPy can hold a `dtype` array of it; else ValueError saying why. Every
    reader passes the dims its file declares through here before anything is allocated."""
    if not isinstance(dims, (tuple, list)):
        raise ValueError(f"shape {dims!r:.80}, not a list of dimensions")
    if len(dims) > MAX_DIMS:
        raise ValueError(f"{len(dims)} dimensions, more than the {MAX_DIMS} an array can have")
    for dim in dims:
        if type(dim) is not int or dim < 0:  # bool and float are refused: int() would truncate 3.5
            raise ValueError(f"dimension {dim!r:.40} in shape {list(dims)!r:.120}, not a non-negative integer")
    # NumPy multiplies the non-zero dimensions and the item size, whatever other dimension is 0.
    if math.prod(dim for dim in dims if dim) * dtype.itemsize >= 1 << 63:
        raise ValueError(f"shape {list(dims)} of {dtype}, too large for any array")
    return tuple(dims)


def dtype_by_name(name: str) -> np.dtype:
    """NumPy dtype for a name, including bfloat16 (from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# What a file writer streams: bytes written as they are (headers, slices), or a named tensor to
# append whole, read back and judge.
Piece = Union[bytes, memoryview, tuple[str, TensorRef]]


@dataclass(frozen=True)
class Verdict:
    """What the read-back found for one streamed tensor."""

    offset: int   # where its bytes start in the file
    equal: bool   # the file holds exactly the bytes meant for it
    finite: bool  # no NaN or Inf among them (True unless asked to check)
    crc: int = 0  # their CRC-32, if asked for (zip entries need it)


def write_stream(path, pieces: Iterable[Piece], expected_size: int = 0, check_finite: bool = False,
                 progress: Callable[[int], None] | None = None, crc: bool = False) -> dict[str, Verdict]:
    """Writes `pieces` to a new file at `path`, `expected_size` bytes (no more than it will hold)
    reserved on disk first, and returns a verdict per named tensor. Each tensor goes out in
    cache-sized chunks (file spans straight from a memory map of their source, a joined tensor's
    parts one after another); a second thread reads every chunk back from the file right after it
    is written and compares it with the bytes meant for it, while both are still in the CPU
    cache, so the check adds little memory traffic to the copy; with `crc`, that
    thread also computes each tensor's CRC-32 from them. `progress` hears of each tensor's bytes
    once written and once verified."""
    scratch = PagePhased(COPY_CHUNK)
    with (one_thread(), open(path, "wb", buffering=0) as out,
          _ReadBack(path, check_finite, progress, crc) as read_back):
        reserve(out, expected_size)
        for piece, data in _bytes_ahead(pieces):
            if not isinstance(piece, tuple):
                write_all(out, data)
                continue
            name, ref = piece
            offset = position = out.tell()
            for part in data:
                for start in range(0, part.size, COPY_CHUNK):
                    chunk = part[start:start + COPY_CHUNK]
                    write_all(out, scratch.unaliased(chunk, position + start))
                    read_back.expect(position + start, chunk, ref.dtype)
                position += part.size
            del data, part  # the source maps close once the read-back is done with them too
            if progress:
                progress(ref.nbytes)
            read_back.judge(name, offset, ref.nbytes)
    return read_back.verdicts


def _bytes_ahead(pieces: Iterable[Piece]):
    """(piece, its bytes), in order; tensors' bytes (a transposed copy, or a map loaded up front)
    are made on another thread while the pieces before are written, so that work and the kernel's
    copy into the page cache run side by side. That thread keeps up to `AHEAD_BYTES` of tensors
    ahead, not a number of them: a tensor to transpose often follows a bias, and one tensor ahead
    left the writer waiting for each transpose (ViT-H into `mindformers`: 1.0 s of 2.4)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="maeconv-ahead") as ahead:
        waiting: collections.deque = collections.deque()
        ahead_bytes = 0
        for piece in pieces:
            is_tensor = isinstance(piece, tuple)
            waiting.append((piece, ahead.submit(tensor_bytes, piece[1]) if is_tensor else None,
                            piece[1].nbytes if is_tensor else 0))
            ahead_bytes += waiting[-1][2]
            while len(waiting) > 1 and ahead_bytes - waiting[0][2] >= AHEAD_BYTES:
                ready, future, nbytes = waiting.popleft()
                ahead_bytes -= nbytes
                yield _ready(ready, future)
        while waiting:
            ready, future, _ = waiting.popleft()
            yield _ready(ready, future)


def _ready(piece: Piece, future) -> tuple[Piece, object]:
    return piece, (future.result() if future is not None else piece)


def tensor_bytes(ref: TensorRef) -> list[np.ndarray]:
    """A tensor's bytes, in the order they are written: mapped from its file where it has one (or
    from its pieces' files), else computed."""
    if ref.pieces:
        return [part for piece in ref.pieces for part in tensor_bytes(piece)]
    return [np.ascontiguousarray(ref.mapped()).reshape(-1).view(np.uint8)]


class _ReadBack:
    """The second thread of `write_stream`: it compares chunks of the file, as written, with the
    bytes meant for them, and judges each tensor once its last chunk is compared."""

    # Chunks waiting at most: bounds the source maps and computed tensors kept alive (32 let ViT-H's
    # peak RSS reach 0.1x the file), and the lag that decides whether the bytes are still in cache.
    MAX_WAITING = 8

    def __init__(self, path, check_finite: bool, progress: Callable[[int], None] | None, crc: bool = False):
        self.file = open(path, "rb", buffering=0)
        self.check_finite, self.progress, self.crc = check_finite, progress, crc
        self.jobs: queue.Queue = queue.Queue(self.MAX_WAITING)
        self.verdicts: dict[str, Verdict] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="maeconv-read-back", daemon=True)

    def __enter__(self) -> "_ReadBack":
        self.thread.start()
        return self

    def expect(self, offset: int, chunk: np.ndarray, dtype: np.dtype) -> None:
        self.jobs.put((offset, chunk, dtype))

    def judge(self, name: str, offset: int, nbytes: int) -> None:
        self.jobs.put((name, offset, nbytes))

    def __exit__(self, *exc) -> None:
        self.jobs.put(None)
        self.thread.join()
        self.file.close()
        if self.error is not None and exc[0] is None:
            raise self.error

    def _run(self) -> None:
        buffer = PagePhased(COPY_CHUNK)
        equal = finite = True
        crc = 0
        try:
            while (job := self.jobs.get()) is not None:
                if isinstance(job[0], str):
                    name, offset, nbytes = job
                    self.verdicts[name] = Verdict(offset, equal, finite, crc)
                    equal = finite = True
                    crc = 0
                    if self.progress:
                        self.progress(nbytes)
                    continue
                offset, chunk, dtype = job
                del job
                if equal:
                    got = buffer.at(offset, chunk.size)
                    if os.preadv(self.file.fileno(), [got], offset) != chunk.size:
                        got = None
                    equal, chunk_finite = _arrays_equal(chunk, got, dtype, self.check_finite and finite)
                    finite = finite and chunk_finite
                    if self.crc and equal:
                        crc = crc32(got, crc)
                del chunk
        except BaseException as error:  # raised by the writing thread once it is done
            self.error = error
            while self.jobs.get() is not None:  # the writer must not block on a full queue
                pass


class PagePhased:
    """Scratch memory for `nbytes` that starts anywhere in a page: a copy between a file and memory
    at the same offset in a page never aliases (see `ALIASING_BYTES`)."""

    def __init__(self, nbytes: int):
        self.memory = np.frombuffer(mmap.mmap(-1, nbytes + PAGE), np.uint8)  # anonymous maps start on a page

    def at(self, position: int, nbytes: int) -> np.ndarray:
        """`nbytes` of scratch at the offset in a page of file position `position`."""
        start = position % PAGE
        return self.memory[start:start + nbytes]

    def unaliased(self, chunk: np.ndarray, position: int) -> np.ndarray:
        """`chunk`, or a copy of it that the kernel copies quickly into a file at `position`."""
        if not 0 < (position - chunk.ctypes.data) % PAGE < ALIASING_BYTES:
            return chunk
        copy = self.at(position, chunk.size)
        np.copyto(copy, chunk)
        return copy


def write_all(out, data) -> None:
    """Writes all of `data` to the unbuffered file `out`, which may take several short writes."""
    data = memoryview(data).cast("B")
    while data:
        data = data[out.write(data):]


def reserve(out, nbytes: int) -> None:
    """Allocates the disk blocks of the next `nbytes` of `out` up front (Linux fallocate): measured
    on ext4, writing 2.6 GB then takes 0.47 s instead of 0.64 s, and a full disk fails before
    anything is written."""
    libc.reserve(out.fileno(), out.tell(), nbytes, getattr(out, "name", None))


_MAP_LOADED = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def _map_region(path: str, offset: int, nbytes: int) -> np.ndarray | None:
    """A file region's bytes, read in place through a map of that region alone, its pages loaded up
    front; None if the file ends before the region. One map per tensor keeps resident memory near
    one tensor; the map is released with the last array that views it."""
    if nbytes == 0:
        return np.empty(0, np.uint8)
    with open(path, "rb", buffering=0) as f:
        if offset + nbytes > os.fstat(f.fileno()).st_size:
            return None
        start = offset % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(f.fileno(), nbytes + start, flags=_MAP_LOADED, prot=mmap.PROT_READ,
                            offset=offset - start)
    return np.frombuffer(mapping, np.uint8, nbytes, start)


def spans_equal(a: Span, b: Span, nbytes: int, dtype: np.dtype) -> tuple[bool, bool]:
    """(whether two files' regions are equal, whether `b`'s holds no NaN or Inf), compared in place
    through memory maps, so memory stays near one tensor."""
    return _arrays_equal(_map_region(a.path, a.offset, nbytes), _map_region(b.path, b.offset, nbytes), dtype,
                         check_finite=True)


def _arrays_equal(x: np.ndarray | None, y: np.ndarray | None, dtype: np.dtype, check_finite: bool) -> tuple[bool, bool]:
    """(whether two byte arrays are equal, whether `y` as `dtype` holds no NaN or Inf if asked)."""
    if x is None or y is None:
        return False, True
    check_finite = check_finite and (dtype.kind == "f" or dtype.name == "bfloat16")
    finite = True
    step = COPY_CHUNK - COPY_CHUNK % dtype.itemsize
    for start in range(0, x.size, step):  # the finite check reads each piece while it is in cache
        piece = min(step, x.size - start)
        if not libc.bytes_equal(x, y, start, piece):
            return False, finite
        if check_finite and finite:  # the two are equal here: either's values will do, an aligned one's faster
            finite = all_finite(_aligned_of(x[start:start + piece], y[start:start + piece], dtype).view(dtype))
    return True, finite


def _aligned_of(x: np.ndarray, y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Whichever of two byte arrays starts on a multiple of `dtype`'s size (`x` if neither does)."""
    return y if x.ctypes.data % dtype.itemsize and not y.ctypes.data % dtype.itemsize else x
