"""PyTorch's legacy checkpoints (torch.save(..., _use_new_zipfile_serialization=False), the default
before torch 1.6), read lazily without executing anything in the file.

The layout (torch/serialization.py, _legacy_save and _legacy_load): a pickle of the magic number, one
of the protocol version, one of sys_info, the object's pickle, whose storages are persistent ids
('storage', torch.<Type>Storage, key, location, numel, view_metadata), then a pickle of the list of
storage keys, then per key in that order an 8-byte little-endian element count and the raw bytes.
A storage's bytes start only after every earlier storage, whose element size its first tensor
names: the object's pickle is read once to learn the storages, the file's storage records are then
walked and checked against them, and the pickle is read again with every storage placed. Nothing
is read outside a checked record and nothing is allocated from a declared size. Refusals are final:
torch.load would allocate every declared storage before reading a byte of it.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ...errors import MaeconvError
from .torchpickle import (Invalid, Storage, StorageTable, UnknownGlobal, Unsupported, file_storage, no_storages,
                          unpickle)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
SMALL_PICKLE = 1 << 20  # the budget of the magic number, protocol version and sys_info pickles


def read(path: Path) -> tuple[object, list[str]]:
    """The unpickled object, with TensorRef in place of every tensor, and what stood in for globals
    this reader does not know (read leniently, as inert Opaque objects, once the strict read found
    one: the caller decides whether they lie where it may skip them); MaeconvError if it cannot be."""
    try:
        with open(path, "rb") as f:
            try:
                return _read(f, path), []
            except UnknownGlobal:
                f.seek(0)
                stand_ins: list[str] = []
                return _read(f, path, stand_ins), stand_ins
    except (Invalid, Unsupported) as error:
        raise MaeconvError(f"{path}: not a readable PyTorch checkpoint ({error})") from None


def _read(f, path: Path, stand_ins: list[str] | None = None):
    """Strict, or with `stand_ins` lenient (what stood in is appended to it)."""
    lenient = stand_ins is not None
    _check_header(f)
    size = path.stat().st_size
    start = f.tell()
    declared = _Declared(size)
    unpickle(f, StorageTable(6, declared.storage), lenient=lenient)
    keys = unpickle(f, no_storages)
    placed = _place(f, declared, keys, size)
    f.seek(start)
    storages = StorageTable(6, lambda key, dtype, numel, rest: placed.storage(path, key, rest))
    return unpickle(f, storages, lenient=lenient, stand_ins=stand_ins)


def _check_header(f) -> None:
    if unpickle(f, no_storages, SMALL_PICKLE) != MAGIC_NUMBER:
        raise Invalid("a pickle without torch's magic number")
    if unpickle(f, no_storages, SMALL_PICKLE) != PROTOCOL_VERSION:
        raise Invalid("an unknown legacy protocol version")
    sys_info = unpickle(f, no_storages, SMALL_PICKLE)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise Unsupported("a big-endian legacy checkpoint, which maeconv does not read")


class _Declared:
    """The first pass: each root storage as its first persistent id declares it (dtype, numel),
    checked to fit the file; all of them together must fit it too, as each is stored once."""

    def __init__(self, file_size: int):
        self.room = file_size
        self.roots: dict[str, tuple[np.dtype, int]] = {}

    def storage(self, key: str, dtype: np.dtype, numel: int, rest: tuple) -> Storage:
        if key not in self.roots:
            self.roots[key] = dtype, numel
            self.room -= numel * dtype.itemsize
            if self.room < 0:
                raise Invalid(f"storage {key} declares {numel} elements; the file holds fewer")
        dtype, numel = self.roots[key]
        return _view(key, Storage(Path(), dtype, numel, _unplaced), rest)


def _unplaced(start: int, count: int) -> np.ndarray:
    raise AssertionError("the first pass reads no tensor")


class _Placed:
    """The second pass: each root storage at the file offset its record gave."""

    def __init__(self, roots: dict[str, tuple[np.dtype, int]], offsets: dict[str, int]):
        self.roots, self.offsets = roots, offsets

    def storage(self, path: Path, key: str, rest: tuple) -> Storage:
        dtype, numel = self.roots[key]
        return _view(key, file_storage(path, dtype, numel, self.offsets[key]), rest)


def _view(key: str, root: Storage, rest: tuple) -> Storage:
    """The storage a persistent id names: its root, or with view_metadata (view_key, offset, numel)
    a range of it (files from torch versions that saved storage views)."""
    (view,) = rest
    if view is None:
        return root
    if type(view) is not tuple or len(view) != 3 or not all(type(v) is int for v in view[1:]):
        raise Invalid(f"storage {key} has view metadata {view!r:.80}")
    _, offset, numel = view
    if offset < 0 or numel < 0 or offset + numel > root.numel:
        raise Invalid(f"a view of {numel} elements at {offset} of storage {key}, which has {root.numel}")
    start = offset * root.dtype.itemsize
    return Storage(root.path, root.dtype, numel, lambda s, n: root.read_bytes(start + s, n),
                   None if root.offset is None else root.offset + start)


def _place(f, declared: _Declared, keys, file_size: int) -> _Placed:
    """Walks the storage records in the order of `keys`, each checked to be the storage declared."""
    if type(keys) is not list or not all(type(k) is str for k in keys) or len(set(keys)) != len(keys):
        raise Invalid("the storage key list is not a list of distinct keys")
    if set(keys) != set(declared.roots):
        raise Invalid("the storage key list does not match the storages the tensors use")
    offsets, position = {}, f.tell()
    for key in keys:
        dtype, numel = declared.roots[key]
        f.seek(position)
        record = f.read(8)
        if len(record) != 8 or struct.unpack("<q", record)[0] != numel:
            raise Invalid(f"the record of storage {key} does not hold the {numel} elements declared")
        offsets[key], position = position + 8, position + 8 + numel * dtype.itemsize
        if position > file_size:
            raise Invalid(f"storage {key} runs past the end of the file (truncated)")
    return _Placed(declared.roots, offsets)
