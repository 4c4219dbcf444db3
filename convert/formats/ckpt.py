"""MindSpore's .ckpt format (protobuf), read lazily and written streaming, without MindSpore.

The schema (mindspore/train/checkpoint.proto):
    Checkpoint  { repeated Value value = 1; }
    Value       { required string tag = 1; oneof { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
    TensorProto { repeated int64 dims = 1; required string tensor_type = 2; required bytes tensor_content = 3; }
A tensor over 512 MiB is stored as consecutive Values with the same tag, each holding a slice
of rows and the full dims; readers concatenate them. dims [0] marks a scalar.
"""
from __future__ import annotations

import io
import itertools
import json
import math
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping

import numpy as np

from ...errors import MaeconvError
from ..settings import RECORD_KEY, settings_record
from ..tensors import MAX_DIMS, MAX_TENSORS, Piece, TensorRef, Verdict, checked_shape, dtype_by_name, write_stream
from .base import Checkpoint

NAME = "mindspore"

TYPES = {"Float32": "float32", "Float16": "float16", "Float64": "float64", "BFloat16": "bfloat16",
         "Int8": "int8", "UInt8": "uint8", "Int16": "int16", "UInt16": "uint16", "Int32": "int32",
         "UInt32": "uint32", "Int64": "int64", "UInt64": "uint64", "Bool": "bool"}
TYPE_OF = {name: code for code, name in TYPES.items()}
SLICE_BYTES = 512 * 1024 * 1024


class _Corrupt(Exception):
    pass


def _varint(f: BinaryIO) -> int:
    result = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise _Corrupt("file ends inside a field")
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise _Corrupt("varint too long")


def _fields(f: BinaryIO, end: int):
    """(field number, wire type, value) up to file offset `end`; length-delimited values are
    returned as (offset, length) without being read."""
    while f.tell() < end:
        key = _varint(f)
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, wire, _varint(f)
        elif wire == 2:
            length = _varint(f)
            start = f.tell()
            if start + length > end:
                raise _Corrupt("field runs past its message")
            yield field, wire, (start, length)
            f.seek(start + length)
        elif wire == 1:
            f.seek(8, 1)
        elif wire == 5:
            f.seek(4, 1)
        else:
            raise _Corrupt(f"unknown wire type {wire}")
    if f.tell() != end:
        raise _Corrupt("message overruns its length")


def _read_bytes(f: BinaryIO, span, most: int) -> bytes:
    """A length-delimited field's bytes, refused when longer than any sane value of its kind."""
    if span[1] > most:
        raise _Corrupt(f"a field of {span[1]} bytes where at most {most} belong")
    f.seek(span[0])
    data = f.read(span[1])
    if len(data) != span[1]:
        raise _Corrupt("file ends inside a field")
    return data


# The longest tag (parameter name), type name and string entry read; a dimension takes at most 10
# varint bytes.
MAX_TAG_BYTES = 1 << 16
MAX_TYPE_BYTES = 64
MAX_TEXT_BYTES = 16 << 20
MAX_PACKED_DIMS_BYTES = 10 * (MAX_DIMS + 1)


def _packed_varints(data: bytes) -> list[int]:
    stream, values = io.BytesIO(data), []
    while stream.tell() < len(data):
        values.append(_varint(stream))
    return values


def _int64(value: int) -> int:
    """A varint as the int64 the schema declares (two's complement, so -1 takes ten bytes)."""
    if value >= 1 << 64:
        raise _Corrupt("a dimension beyond 64 bits")
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_tensor(f: BinaryIO, span) -> tuple[list[int], str, tuple[int, int]]:
    dims, type_name, content = [], None, None
    for field, wire, value in _fields(f, span[0] + span[1]):
        if field == 1:
            here = f.tell()
            dims += [value] if wire == 0 else _packed_varints(_read_bytes(f, value, MAX_PACKED_DIMS_BYTES))
            f.seek(here)
            if len(dims) > MAX_DIMS:
                raise _Corrupt(f"a tensor with more than {MAX_DIMS} dimensions")
        elif field == 2 and wire == 2:
            here = f.tell()
            type_name = _read_bytes(f, value, MAX_TYPE_BYTES).decode("utf-8", "replace")
            f.seek(here)
        elif field == 3 and wire == 2:
            content = value
    if type_name is None or content is None:
        raise _Corrupt("tensor without type or content")
    return [_int64(d) for d in dims], type_name, content


def _records(f: BinaryIO, size: int):
    """(tag, dims, tensor_type, content span) for each Value, in file order."""
    for field, wire, span in _fields(f, size):
        if field != 1 or wire != 2:
            raise _Corrupt(f"unexpected top-level field {field}")
        tag, tensor = None, None
        for sub, sub_wire, value in _fields(f, span[0] + span[1]):
            if sub == 1 and sub_wire == 2:
                here = f.tell()
                tag = _read_bytes(f, value, MAX_TAG_BYTES).decode("utf-8")
                f.seek(here)
            elif sub == 2 and sub_wire == 2:
                here = f.tell()
                tensor = _parse_tensor(f, value)
                f.seek(here)
            elif sub == 3:
                raise _Corrupt("map tensors are not supported")
        if tag is None or tensor is None:
            raise _Corrupt("value without tag or tensor")
        f.seek(span[0] + span[1])
        yield (tag, *tensor)


def _read_spans(path: Path, dtype: np.dtype, shape: tuple, spans: list) -> np.ndarray:
    array = np.empty(shape, dtype)
    out = array.reshape(-1).view(np.uint8)
    position = 0
    with open(path, "rb") as f:
        for start, length in spans:
            f.seek(start)
            if f.readinto(out[position:position + length]) != length:
                raise MaeconvError(f"{path}: file ends inside a tensor")
            position += length
    return array


def starts(head: bytes, size: int | None = None) -> bool:
    """A Value record (field 1, length-delimited): not a magic, as likely in any protobuf, so it only
    rules files out."""
    return head[:1] == b"\x0a"


def read_file(path: Path) -> Checkpoint:
    tensors, extras = read(path)
    return Checkpoint(path, NAME, tensors, extras)


def write_file(path: Path, tensors: Mapping[str, TensorRef], extras: Mapping, **read_back) -> dict[str, Verdict]:
    return write(path, tensors, extras.get("strings"), **read_back)


def extras_for(config, kind: str, tag: str) -> dict:
    """The settings as a string entry, as MindSpore stores strings (its loaders skip them)."""
    return {"strings": {RECORD_KEY: json.dumps(settings_record(config))}}


def read(path: Path) -> tuple[dict[str, TensorRef], dict]:
    """Tensor references, and the non-tensor entries (strings) MindSpore appends."""
    size = path.stat().st_size
    entries: dict[str, list] = {}
    try:
        with open(path, "rb") as f:
            previous = None
            for count, (tag, dims, type_name, span) in enumerate(_records(f, size)):
                if count == MAX_TENSORS:
                    raise _Corrupt(f"more than {MAX_TENSORS} records")
                if tag in entries and tag != previous:
                    raise _Corrupt(f"tag {tag!r} appears twice")
                entries.setdefault(tag, [dims, type_name, []])[2].append(span)
                previous = tag
    except (_Corrupt, UnicodeDecodeError) as error:
        raise MaeconvError(f"{path}: not a readable MindSpore checkpoint ({error})") from None
    refs, extras = {}, {}
    for tag, (dims, type_name, spans) in entries.items():
        if type_name == "str":
            extras[tag] = _text(path, spans)
            continue
        if type_name not in TYPES:
            raise MaeconvError(f"{path}: tensor {tag!r} has unsupported type {type_name!r}")
        dtype = dtype_by_name(TYPES[type_name])
        try:
            shape = checked_shape([] if dims == [0] else dims, dtype)
        except ValueError as error:
            raise MaeconvError(f"{path}: tensor {tag!r} has {error}") from None
        if sum(length for _, length in spans) != math.prod(shape) * dtype.itemsize:
            raise MaeconvError(f"{path}: tensor {tag!r} content does not match its dims {shape}")
        if len(spans) == 1:
            refs[tag] = TensorRef.in_file(path, dtype, shape, spans[0][0])
        else:
            refs[tag] = TensorRef(dtype, shape, lambda d=dtype, s=shape, sp=spans: _read_spans(path, d, s, sp))
    if not refs:
        raise MaeconvError(f"{path}: not a readable MindSpore checkpoint (no tensors)")
    return refs, extras


def _text(path: Path, spans: list) -> str:
    """A string entry (MindSpore stores them as UTF-32)."""
    with open(path, "rb") as f:
        try:
            return b"".join(_read_bytes(f, span, MAX_TEXT_BYTES) for span in spans).decode("utf-32-le", "replace")
        except _Corrupt as error:
            raise MaeconvError(f"{path}: not a readable MindSpore checkpoint ({error})") from None


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field: int, length: int) -> bytes:
    return _encode_varint(field << 3 | 2) + _encode_varint(length)


def _value_head(tag: str, shape: tuple, type_name: str, content_length: int) -> bytes:
    """Everything of one Value record before its tensor_content bytes."""
    dims = b"".join(_encode_varint(1 << 3) + _encode_varint(d & 0xFFFFFFFFFFFFFFFF) for d in (shape or (0,)))
    type_bytes = type_name.encode()
    tensor_head = dims + _length_delimited(2, len(type_bytes)) + type_bytes + _length_delimited(3, content_length)
    tensor_length = len(tensor_head) + content_length
    tag_bytes = tag.encode()
    value_head = _length_delimited(1, len(tag_bytes)) + tag_bytes + _length_delimited(2, tensor_length)
    return _length_delimited(1, len(value_head) + tensor_length) + value_head + tensor_head


def write(path: Path, tensors: Mapping[str, TensorRef], strings: Mapping[str, str] | None = None,
          **read_back) -> dict[str, Verdict]:
    """Writes the tensors in order, then `strings` as MindSpore writes its string entries (dims [0],
    type "str", UTF-32); each tensor stored in one piece is read back as it goes (see
    `write_stream`, which takes `read_back`'s options) and gets a verdict."""
    pieces = itertools.chain(_pieces(tensors), _string_pieces(strings or {}))
    return write_stream(path, pieces, sum(ref.nbytes for ref in tensors.values()), **read_back)


def _string_pieces(strings: Mapping[str, str]) -> Iterator[Piece]:
    for tag, text in strings.items():
        content = text.encode("utf-32-le")
        yield _value_head(tag, (), "str", len(content)) + content


def _pieces(tensors: Mapping[str, TensorRef]) -> Iterator[Piece]:
    for name, ref in tensors.items():
        type_name = TYPE_OF[ref.dtype.name]
        if ref.nbytes <= SLICE_BYTES:
            yield _value_head(name, ref.shape, type_name, ref.nbytes)
            yield name, ref
            continue
        array = np.ascontiguousarray(ref.load())
        for part in np.array_split(array, math.ceil(array.nbytes / SLICE_BYTES)):
            content = np.ascontiguousarray(part).reshape(-1).view(np.uint8).data
            yield _value_head(name, ref.shape, type_name, len(content))
            yield content
