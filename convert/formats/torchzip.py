"""PyTorch's zip checkpoints (.pth/.bin), read lazily without executing anything in the file.

The pickle inside (data.pkl) is interpreted by an unpickler that knows a handful of globals
(tensor rebuilding, OrderedDict, argparse.Namespace) and refuses every other one, so no code
from the file can run. Tensor bytes stay in the zip's stored entries until a tensor is read.
Anything this reader does not know is handed to `torch.load(weights_only=True)`, which is
equally safe, only slower and eager.
"""
from __future__ import annotations

import argparse
import collections
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from ..tensors import TensorRef, dtype_by_name, read_file_array

STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}


class Unsupported(Exception):
    """The file uses something this reader does not interpret (a global, compression, byte order)."""


class _StorageType:
    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _Storage:
    def __init__(self, offset: int, dtype: np.dtype, numel: int):
        self.offset, self.dtype, self.numel = offset, dtype, numel


class _Refused(Exception):
    pass


def _entries(archive: zipfile.ZipFile, path: Path) -> dict[str, tuple[int, int]]:
    """Name -> (absolute offset, size) of each stored entry's data."""
    offsets = {}
    with open(path, "rb") as f:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise Unsupported(f"compressed entry {info.filename}")
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise Unsupported("bad local header")
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            offsets[info.filename] = (info.header_offset + 30 + name_length + extra_length, info.file_size)
    return offsets


def _rebuild_tensor(path: Path):
    def rebuild(storage, storage_offset, size, stride, *_ignored):
        if not isinstance(storage, _Storage):
            raise _Refused("tensor without storage")
        shape, stride = tuple(size), tuple(stride)
        contiguous = tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))
        dtype = storage.dtype
        extent = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
        if storage_offset + extent > storage.numel:
            raise _Refused("tensor outside its storage")
        start = storage.offset + storage_offset * dtype.itemsize
        if stride == contiguous or not all(shape):
            return TensorRef.in_file(path, dtype, shape, start)

        def read_strided():
            flat = read_file_array(path, dtype, (extent,), start)
            return np.lib.stride_tricks.as_strided(flat, shape, [s * dtype.itemsize for s in stride]).copy()

        return TensorRef(dtype, shape, read_strided)

    return rebuild


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path: Path, prefix: str, offsets: dict[str, tuple[int, int]]):
        super().__init__(file)
        self.path, self.prefix, self.offsets = path, prefix, offsets
        rebuild = _rebuild_tensor(path)
        self.allowed = {
            ("torch._utils", "_rebuild_tensor_v2"): rebuild,
            ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("argparse", "Namespace"): argparse.Namespace,
        }

    def find_class(self, module, name):
        if (module, name) in self.allowed:
            return self.allowed[module, name]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(dtype_by_name(STORAGE_DTYPES[name]))
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused("unknown persistent id")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _Refused("untyped storage")
        name = f"{self.prefix}/data/{key}"
        if name not in self.offsets:
            raise _Refused(f"missing storage {key}")
        offset, size = self.offsets[name]
        if not 0 <= int(numel) * storage_type.dtype.itemsize <= size:
            raise _Refused(f"storage {key} larger than its entry")
        return _Storage(offset, storage_type.dtype, int(numel))


def read(path: Path):
    """The unpickled object, with TensorRef in place of every tensor.

    Raises Unsupported when the file needs torch's own loader, and pickle.UnpicklingError when the
    pickle asks for a global that no safe loader would run."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise Unsupported("no data.pkl")
        prefix = pickles[0].split("/")[0]
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise Unsupported("big-endian storages")
        offsets = _entries(archive, path)
        with archive.open(pickles[0]) as data:
            try:
                return _Unpickler(data, path, prefix, offsets).load()
            except _Refused as refused:
                raise Unsupported(str(refused)) from None
