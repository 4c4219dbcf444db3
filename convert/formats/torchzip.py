"""PyTorch's zip checkpoints (.pth/.bin), read lazily without executing anything in the file, and
written streaming in torch.save's layout.

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
from typing import Mapping

import numpy as np

from ..tensors import COPY_CHUNK, TensorRef, dtype_by_name, read_file_array, reserve, tensor_bytes

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


# The storage class torch.save names for each dtype.
STORAGE_OF_DTYPE = {dtype: storage for storage, dtype in STORAGE_DTYPES.items()}
ARCHIVE = "archive"  # the record prefix torch.save uses for file objects
ALIGNMENT = 64       # torch.save aligns each storage's data, so torch.load(mmap=True) can map it
RECORDS_BEFORE = {".format_version": b"1", ".storage_alignment": str(ALIGNMENT).encode(), "byteorder": b"little"}
RECORDS_AFTER = {"version": b"3\n"}


def write(path: Path, tensors: Mapping[str, TensorRef], args: Mapping[str, object] | None = None) -> None:
    """Writes {'model': state_dict, 'args': {...}} as torch.save lays it out: a zip of data.pkl and
    one stored, aligned entry per tensor. `args` is a plain dict of strings, numbers and booleans
    (not the reference's argparse.Namespace, which torch.load(weights_only=True) refuses). Tensor
    bytes stream in from their source files, one chunk at a time, so memory stays near one chunk.
    Nothing is read back while writing: the caller compares the whole file afterwards."""
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
        reserve(f, sum(ref.nbytes for ref in tensors.values()))
        _add(archive, "data.pkl", _state_dict_pickle(tensors, args))
        for name, data in RECORDS_BEFORE.items():
            _add(archive, name, data)
        for key, ref in enumerate(tensors.values()):
            data = tensor_bytes(ref)
            with archive.open(_aligned_entry(archive, f"data/{key}", ref.nbytes), "w") as entry:
                for start in range(0, ref.nbytes, COPY_CHUNK):
                    entry.write(data[start:start + COPY_CHUNK])
            del data
        for name, data in RECORDS_AFTER.items():
            _add(archive, name, data)


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    archive.writestr(_aligned_entry(archive, name, len(data)), data)


def _aligned_entry(archive: zipfile.ZipFile, name: str, size: int) -> zipfile.ZipInfo:
    """An entry whose data will start on an ALIGNMENT boundary: its local header is padded with an
    extra field, as torch.save pads it."""
    info = zipfile.ZipInfo(f"{ARCHIVE}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type, info.file_size = zipfile.ZIP_STORED, size
    zip64_extra = 20 if size * 1.05 > zipfile.ZIP64_LIMIT else 0  # what zipfile adds to large entries
    header_end = archive.fp.tell() + 30 + len(info.filename.encode()) + 4 + zip64_extra
    padding = -header_end % ALIGNMENT
    info.extra = struct.pack("<HH", 0x4246, padding) + b"Z" * padding  # 'FB', torch's padding record
    return info


def _state_dict_pickle(tensors: Mapping[str, TensorRef], args: Mapping[str, object] | None = None) -> bytes:
    """The pickle torch.save writes for {'model': OrderedDict(name: tensor), 'args': {...}}, opcode
    by opcode (so writing needs no torch): each tensor is a _rebuild_tensor_v2 call on storage
    `data/<index>`."""
    out = bytearray(b"\x80\x02}")  # PROTO 2, EMPTY_DICT
    out += _text("model") + _global("collections", "OrderedDict") + b")R("  # OrderedDict(), MARK
    for key, (name, ref) in enumerate(tensors.items()):
        storage = _global("torch", STORAGE_OF_DTYPE[ref.dtype.name])
        persistent_id = b"(" + _text("storage") + storage + _text(str(key)) + _text("cpu") + _int(ref.size) + b"tQ"
        strides = [int(np.prod(ref.shape[i + 1:], dtype=np.int64)) for i in range(len(ref.shape))]
        arguments = (persistent_id + _int(0) + _tuple(ref.shape) + _tuple(strides) + b"\x89"  # requires_grad False
                     + _global("collections", "OrderedDict") + b")R")  # no backward hooks
        out += _text(name) + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + arguments + b"tR"
    out += b"us"  # SETITEMS into the OrderedDict, SETITEM into the dict
    if args:
        out += _text("args") + b"}(" + b"".join(_text(key) + _scalar(value) for key, value in args.items()) + b"us"
    return bytes(out + b".")


def _scalar(value) -> bytes:
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"  # NEWTRUE, NEWFALSE
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)  # BINFLOAT
    if isinstance(value, str):
        return _text(value)
    raise TypeError(f"cannot record {value!r} in a torch file's args")


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value: str) -> bytes:
    encoded = value.encode()
    return b"X" + struct.pack("<I", len(encoded)) + encoded


def _tuple(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _int(value: int) -> bytes:
    value = int(value)
    if 0 <= value < 1 << 8:
        return b"K" + bytes([value])
    if 0 <= value < 1 << 16:
        return b"M" + struct.pack("<H", value)
    if -(1 << 31) <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)
    encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(encoded)]) + encoded
