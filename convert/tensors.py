"""Tensors known by dtype and shape before their bytes are read: conversions stream one at a time."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import MaeconvError


@dataclass(frozen=True)
class TensorRef:
    """A tensor whose data is produced on demand by `read` (from a file, a transform, or memory)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]

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
