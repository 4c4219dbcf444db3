"""The few C library calls maeconv makes (Linux and macOS), looked up once, on first use, each with
a fallback where the C library or the call is missing, so importing maeconv never needs libc."""
from __future__ import annotations

import ctypes
import errno
import functools
import os

import numpy as np

FALLOC_FL_KEEP_SIZE = 1
RENAME_NOREPLACE = 1
AT_FDCWD = -100
SIGNATURES = {
    "memcmp": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]),
    "fallocate": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
    "renameat2": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]),
}


@functools.cache
def _function(name: str):
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError, TypeError):
        return None
    function.restype, function.argtypes = SIGNATURES[name]
    return function


def bytes_equal(x: np.ndarray, y: np.ndarray, start: int, length: int) -> bool:
    """Whether `length` bytes from `start` agree; libc's memcmp is several times faster than
    NumPy's == and frees the GIL for the writer thread."""
    memcmp = _function("memcmp")
    if memcmp is None:
        return bool(np.array_equal(x[start:start + length], y[start:start + length]))
    return memcmp(x.ctypes.data + start, y.ctypes.data + start, length) == 0


def reserve(fd: int, offset: int, nbytes: int, name: str | None = None) -> None:
    """Allocates the disk blocks of `nbytes` from `offset` up front, the file's size unchanged; only
    a full disk (or quota) is an error, a file system without fallocate just skips it."""
    fallocate = _function("fallocate")
    if nbytes <= 0 or fallocate is None:
        return
    if fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, nbytes) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise OSError(code, os.strerror(code), name)


def rename_noreplace(source: str | os.PathLike, destination: str | os.PathLike) -> bool:
    """Renames without replacing (False where the kernel, file system or libc cannot); raises
    FileExistsError if `destination` exists."""
    renameat2 = _function("renameat2")
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(destination), RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL):  # old kernel, or a file system without the flag
        return False
    raise OSError(code, os.strerror(code), str(destination))
