"""The pickles inside PyTorch checkpoints, interpreted without running anything from the file.

Both torch layouts (the zip that torch.save writes and the legacy stream of pickles) describe their
object tree in a pickle whose tensors are calls of `torch._utils._rebuild_tensor_v2` on storages
named by persistent ids. `unpickle` runs that pickle with:
- exactly the opcodes `torch.load(weights_only=True)` runs (a dict memo, so no index can make it
  allocate), read through a budget, so a pickle cannot build more than MAX_PICKLE_COST of objects;
- a handful of known globals; any other one is `Unsupported` (`unknown_global` is the one place a
  later reader could instead stand in an inert object for it);
- storages resolved by the layout (`StorageTable`) into immutable `Storage` objects, and a tensor's
  offset, shape and strides checked against its storage on their final values, once they can no
  longer change, before a TensorRef exists. Nothing outside a checked storage is ever read.
"""
from __future__ import annotations

import argparse
import collections
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..tensors import TensorRef, checked_shape, dtype_by_name, read_file_array

STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}
# A checkpoint's object tree, pickled, takes some 100 bytes per tensor: a zip's data.pkl may not
# declare more than this.
MAX_PICKLE_BYTES = 16 << 20
# What unpickling may build, in bytes of Python objects: every read of the pickle is charged its
# length plus READ_COST, at least what the largest object one opcode can make costs (an empty set,
# 216 bytes, and its stack slot), so a flood of one-byte opcodes is stopped near this much memory.
# A tensor with its name, rebuild call and optimizer state is charged some 11 KiB: this leaves room
# for over 10,000.
MAX_PICKLE_COST = 128 << 20
READ_COST = 224
# A view that repeats its storage's bytes (stride 0) is expanded to a dense array when read; beyond
# this size and its storage's own, it is refused rather than allocated.
MAX_EXPANSION_BYTES = 1 << 30
FLOATING = ("float16", "float32", "float64", "bfloat16")


class Unsupported(Exception):
    """Something this reader does not interpret and torch.load(weights_only=True) might (a global,
    a byte order): the caller may hand the file to torch's own loader."""


class UnknownGlobal(Unsupported):
    """A global this reader does not know: a lenient read may stand an inert Opaque in for it."""


class Invalid(Exception):
    """The file is malformed, or what it declares does not hold: a final refusal."""


@dataclass(frozen=True, slots=True)
class StorageType:
    """What `torch.FloatStorage` and its kind unpickle to: the element type of a persistent id."""

    dtype: np.dtype


@dataclass(frozen=True, slots=True)
class Storage:
    """`numel` elements of `dtype`: `read_bytes(start, count)` returns `count` of its bytes from
    byte `start`; `offset` is where they lie in `path`, stored as they are, if they do. Frozen and
    without a __dict__, so nothing in a pickle can move or resize it once it is checked."""

    path: Path
    dtype: np.dtype
    numel: int
    read_bytes: Callable[[int, int], np.ndarray]
    offset: int | None = None

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def file_storage(path: Path, dtype: np.dtype, numel: int, offset: int) -> Storage:
    """A storage whose bytes lie uncompressed at `offset` of `path`."""
    def read_bytes(start: int, count: int) -> np.ndarray:
        return read_file_array(path, np.dtype(np.uint8), (count,), offset + start)
    return Storage(path, dtype, numel, read_bytes, offset)


def storage_id(pid, fields: int) -> tuple[np.dtype, str, int, tuple]:
    """(dtype, key, numel, the fields after numel) of a persistent id ('storage', torch.<Type>Storage,
    key, location, numel, ...) of `fields` fields, the count the layout writes."""
    if type(pid) is not tuple or len(pid) != fields or pid[0] != "storage":
        raise Invalid(f"a persistent id that is not a {fields}-field storage id: {pid!r:.80}")
    _, storage_type, key, _location, numel, *rest = pid
    if not isinstance(storage_type, StorageType):
        raise Invalid("a storage id without a storage type")
    if type(key) is not str:
        raise Invalid(f"a storage key {key!r:.40} that is not a string")
    if type(numel) is not int or numel < 0:
        raise Invalid(f"storage {key} declares {numel!r:.40} elements")
    return storage_type.dtype, key, numel, tuple(rest)


class StorageTable:
    """The storages of one file. The first persistent id naming a key (and view) decides its storage,
    as in torch.load; `locate(key, dtype, numel, rest)` makes it after checking the file holds it."""

    def __init__(self, fields: int, locate: Callable[[str, np.dtype, int, tuple], Storage]):
        self.fields, self.locate = fields, locate
        self.storages: dict[tuple, Storage] = {}

    def __call__(self, pid) -> Storage:
        dtype, key, numel, rest = storage_id(pid, self.fields)
        if (key, rest) not in self.storages:
            self.storages[key, rest] = self.locate(key, dtype, numel, rest)
        return self.storages[key, rest]


def no_storages(pid) -> Storage:
    raise Invalid("a persistent id where no tensor belongs")


# --- tensors ---

def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None) -> TensorRef:
    """torch._utils._rebuild_tensor_v2, as a TensorRef once the geometry is proven inside the storage."""
    if not isinstance(storage, Storage):
        raise Invalid("a tensor without a storage")
    if metadata:
        raise Unsupported("tensor metadata (conjugate or negative bits)")
    _check_requires_grad(requires_grad, storage.dtype)
    shape, strides = _checked_geometry(storage, storage_offset, size, stride)
    return _tensor(storage, storage_offset, shape, strides)


def rebuild_parameter(data, requires_grad, backward_hooks, state=None) -> TensorRef:
    """torch._utils._rebuild_parameter (and _with_state): a Parameter is its tensor here."""
    if not isinstance(data, TensorRef):
        raise Invalid("a parameter without a tensor")
    _check_requires_grad(requires_grad, data.dtype)
    return data


def _check_requires_grad(requires_grad, dtype: np.dtype) -> None:
    """torch refuses a requires_grad that is not a bool, and gradients on non-floating tensors."""
    if type(requires_grad) is not bool:
        raise Invalid(f"requires_grad {requires_grad!r:.40} is not a bool")
    if requires_grad and dtype.name not in FLOATING:
        raise Invalid(f"a {dtype} tensor that requires gradients")


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))


def _checked_geometry(storage: Storage, offset, size, stride) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape, strides) once every element the tensor names is proven to lie inside `storage`: all
    are Python ints (no int64 wrap-around), non-negative, and the farthest element is in range."""
    try:
        shape = checked_shape(size, storage.dtype)
    except ValueError as error:
        raise Invalid(f"a tensor has {error}") from None
    if not _int64_index(offset):
        raise Invalid(f"storage offset {offset!r:.40} is not a non-negative 64-bit integer")
    implicit = stride is None or (isinstance(stride, (tuple, list)) and not stride)
    if implicit:  # torch's Tensor.set_ makes contiguous strides, and checks its byte extent in int64
        stride = contiguous_strides(shape)
        if (offset + math.prod(shape)) * storage.dtype.itemsize >= 1 << 63:
            raise Invalid(f"storage offset {offset} overflows a 64-bit byte offset")
    if not isinstance(stride, (tuple, list)) or len(stride) != len(shape):
        raise Invalid(f"strides {stride!r:.80} do not match shape {list(shape)}")
    if not all(_int64_index(s) for s in stride):  # torch accepts a negative one where it multiplies 0
        raise Invalid(f"strides {stride!r:.80} are not non-negative 64-bit integers")
    if 0 in shape:
        return shape, tuple(stride)  # reads nothing: torch accepts any offset here
    last = offset + sum(s * (n - 1) for n, s in zip(shape, stride))
    if last >= storage.numel:
        raise Invalid(f"a tensor reaches element {last} of a storage of {storage.numel}")
    dense = math.prod(shape) * storage.dtype.itemsize
    if dense > max(storage.nbytes, MAX_EXPANSION_BYTES):
        raise Invalid(f"a tensor repeats its storage's {storage.nbytes} bytes into {dense} bytes")
    return shape, tuple(stride)


def _int64_index(value) -> bool:
    return type(value) is int and 0 <= value < 1 << 63


def _tensor(storage: Storage, offset: int, shape: tuple, strides: tuple) -> TensorRef:
    dtype = storage.dtype
    if 0 in shape:
        return TensorRef(dtype, shape, lambda: np.empty(shape, dtype))
    contiguous = all(s == c for n, s, c in zip(shape, strides, contiguous_strides(shape)) if n > 1)
    start = offset * dtype.itemsize
    if contiguous and storage.offset is not None:
        return TensorRef.in_file(storage.path, dtype, shape, storage.offset + start)
    extent = 1 + sum(s * (n - 1) for n, s in zip(shape, strides))

    def read() -> np.ndarray:
        flat = storage.read_bytes(start, extent * dtype.itemsize).view(dtype)
        if contiguous:
            return flat.reshape(shape)
        byte_strides = [s * dtype.itemsize for s in strides]
        return np.lib.stride_tricks.as_strided(flat, shape, byte_strides, writeable=False).copy()

    return TensorRef(dtype, shape, read)


# --- the other globals a checkpoint's pickle names ---

def _ordered_dict(*args) -> collections.OrderedDict:
    """collections.OrderedDict(): empty (how Python 3 pickles it), or from pairs (Python 2)."""
    if not args:
        return collections.OrderedDict()
    pairs = args[0]
    if len(args) != 1 or type(pairs) is not list or not all(_is_pair(p) and _plain_key(p[0]) for p in pairs):
        raise Invalid("OrderedDict built from something other than key-value pairs")
    return collections.OrderedDict(pairs)


def _is_pair(item) -> bool:
    return type(item) in (list, tuple) and len(item) == 2


def _namespace(*args) -> argparse.Namespace:
    if args:
        raise Invalid("argparse.Namespace called with arguments")
    return argparse.Namespace()


def _encode(text, encoding) -> bytes:
    """_codecs.encode, which protocol 2 uses to pickle bytes: only as pickle uses it."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise Invalid("_codecs.encode used for something other than bytes")
    return text.encode("latin-1")


CALLABLES = {
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
    ("argparse", "Namespace"): _namespace,
    ("_codecs", "encode"): _encode,
}
# Classes NEWOBJ may instantiate (as cls.__new__(cls), without running __init__) and BUILD may fill.
CLASSES = {_ordered_dict: collections.OrderedDict, _namespace: argparse.Namespace}
BUILDABLE = (collections.OrderedDict, argparse.Namespace)
# Dict keys must hash without recursion: hashing a tuple nested a million deep crashes CPython.
PLAIN_KEYS = (str, int, float, bool, bytes, type(None))


def _plain_key(key) -> bool:
    return type(key) in PLAIN_KEYS or (type(key) is tuple and all(type(k) in PLAIN_KEYS for k in key))


# --- the unpickler ---

# The opcodes torch's weights_only unpickler runs (torch/_weights_only_unpickler.py); a pickle that
# needs any other one is refused by torch.load(weights_only=True), so it is refused here too.
OPCODES = (pickle.GLOBAL + pickle.NEWOBJ + pickle.REDUCE + pickle.BUILD + pickle.APPEND + pickle.APPENDS
           + pickle.SETITEM + pickle.SETITEMS + pickle.MARK + pickle.TUPLE + pickle.TUPLE1 + pickle.TUPLE2
           + pickle.TUPLE3 + pickle.NONE + pickle.NEWFALSE + pickle.NEWTRUE + pickle.EMPTY_TUPLE
           + pickle.EMPTY_LIST + pickle.EMPTY_DICT + pickle.EMPTY_SET + pickle.BININT + pickle.BININT1
           + pickle.BININT2 + pickle.BINFLOAT + pickle.BINUNICODE + pickle.SHORT_BINSTRING + pickle.BINPERSID
           + pickle.BINGET + pickle.LONG_BINGET + pickle.BINPUT + pickle.LONG_BINPUT + pickle.LONG1
           + pickle.PROTO + pickle.STOP)


class _Dispatch(dict):
    def __missing__(self, opcode: int):
        raise Invalid(f"the pickle uses opcode {bytes([opcode])!r}, which a safe load refuses")


class _Budget:
    """A file's read and readline for the unpickler, each charged its length plus READ_COST against
    `limit`: no length in the pickle can make it read or allocate more, nor a flood of opcodes build
    more objects."""

    def __init__(self, file, limit: int):
        self.file, self.left, self.limit = file, limit, limit

    def read(self, n: int) -> bytes:
        self._charge(n)
        return self.file.read(n)

    def readline(self) -> bytes:
        line = self.file.readline(max(self.left - READ_COST, 0) + 1)
        self._charge(len(line))
        return line

    def _charge(self, n: int) -> None:
        self.left -= n + READ_COST
        if self.left < 0:
            raise Invalid(f"the pickle would build more than {self.limit >> 10} KiB of objects")


class Opaque:
    """What a lenient unpickler puts where a pickle names something this reader does not interpret:
    the global itself, and whatever calling it, instantiating it or rebuilding from it would make.
    It runs nothing and hashes by identity."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class RestrictedUnpickler(pickle._Unpickler):
    """Python's own unpickler (its memo is a dict) with the opcodes, globals, calls and mutations
    limited to what a checkpoint needs; `storages` resolves each persistent id. A lenient one puts
    an Opaque where a strict one raises Unsupported, so the rest of the pickle is still checked."""

    dispatch = _Dispatch({op: pickle._Unpickler.dispatch[op] for op in OPCODES})

    def __init__(self, file, storages: Callable[[object], Storage], lenient: bool = False,
                 stand_ins: list | None = None):
        super().__init__(file, encoding="utf-8")  # what torch.load passes for SHORT_BINSTRING
        self.storages, self.lenient = storages, lenient
        # What a lenient read stood in for: 'global <module.name>', or 'tensor state' where it left
        # out a tensor's BUILD (which torch would apply), or 'call' where a known call was unsupported.
        self.stand_ins = [] if stand_ins is None else stand_ins

    def find_class(self, module: str, name: str):
        if (module, name) in CALLABLES:
            return CALLABLES[module, name]
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(dtype_by_name(STORAGE_DTYPES[name]))
        return self.unknown_global(module, name)

    def unknown_global(self, module: str, name: str):
        """A global this reader does not know: the strict reader refuses it; the lenient one stands an
        Opaque in, which a reader may skip where it lies outside the state dict (mmengine's objects
        in OpenMMLab checkpoints: message hub, schedulers, meta)."""
        if self.lenient:
            self.stand_ins.append(f"global {module}.{name}")
            return Opaque(f"{module}.{name}")
        raise UnknownGlobal(f"the pickle refers to {module}.{name}, code that a safe load refuses to run")

    def persistent_load(self, pid) -> Storage | Opaque:
        if self.lenient and type(pid) is tuple and len(pid) > 1 and isinstance(pid[1], Opaque):
            return Opaque(pid[1].name)
        return self.storages(pid)

    def load_reduce(self):
        args = self.stack.pop()
        function = self.stack[-1]
        if self.lenient and _involves_opaque(function, args):
            self.stack[-1] = Opaque("a call")
            return
        if not any(function is allowed for allowed in CALLABLES.values()) or type(args) is not tuple:
            raise Invalid("the pickle calls something that is not an allowed function")
        try:
            self.stack[-1] = function(*args)
        except Unsupported:
            if not self.lenient:
                raise
            self.stand_ins.append("call")
            self.stack[-1] = Opaque("a call")

    def load_newobj(self):
        args = self.stack.pop()
        factory = self.stack.pop()
        if self.lenient and _involves_opaque(factory, args):
            self.append(Opaque("an instance"))
            return
        cls = next((cls for allowed, cls in CLASSES.items() if factory is allowed), None)
        if cls is None or args != ():
            raise Invalid("the pickle creates an object of a class it may not")
        self.append(cls.__new__(cls))

    def load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if self.lenient and isinstance(target, (Opaque, TensorRef)):
            if isinstance(target, TensorRef):
                self.stand_ins.append("tensor state")
            return  # torch sets a tensor's state through its own checks (Tensor.set_)
        if isinstance(target, TensorRef):
            raise Unsupported("a tensor rebuilt from state (legacy BUILD)")
        if type(target) not in BUILDABLE or type(state) is not dict or not all(type(k) is str for k in state):
            raise Invalid(f"the pickle sets the state of a {type(target).__name__}, which it may not")
        target.__dict__.update(state)

    def load_append(self):
        value = self.stack.pop()
        self._list().append(value)

    def load_appends(self):
        items = self.pop_mark()
        self._list().extend(items)

    def _list(self) -> list:
        if type(self.stack[-1]) is not list:
            raise Invalid("the pickle appends to something that is not a list")
        return self.stack[-1]

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._dict(key)[key] = value

    def load_setitems(self):
        items = self.pop_mark()
        if len(items) % 2:
            raise Invalid("the pickle sets a key without a value")
        for key, value in zip(items[::2], items[1::2]):
            self._dict(key)[key] = value

    def _dict(self, key) -> dict:
        if type(self.stack[-1]) not in (dict, collections.OrderedDict):
            raise Invalid("the pickle sets items of something that is not a dict")
        if not _plain_key(key):
            raise Invalid(f"a dict key of type {type(key).__name__}")
        return self.stack[-1]

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems


def _involves_opaque(function, args) -> bool:
    return isinstance(function, Opaque) or (type(args) is tuple and any(isinstance(a, Opaque) for a in args))


# What a malformed pickle raises from inside Python's unpickler.
MALFORMED = (pickle.UnpicklingError, EOFError, struct.error, IndexError, KeyError, TypeError, ValueError,
             AttributeError, UnicodeDecodeError, OverflowError, RecursionError)


def unpickle(file, storages: Callable[[object], Storage], limit: int = MAX_PICKLE_COST, lenient: bool = False,
             stand_ins: list | None = None):
    """The object of the pickle starting at `file`'s position (left just after its STOP opcode).
    A lenient read appends to `stand_ins` what it stood an Opaque in for."""
    try:
        return RestrictedUnpickler(_Budget(file, limit), storages, lenient, stand_ins).load()
    except MALFORMED as error:
        raise Invalid(f"the pickle is malformed ({type(error).__name__}: {str(error)[:80]})") from None
