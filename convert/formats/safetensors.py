"""The safetensors format, read lazily and written streaming, without loading a framework.

Layout: 8-byte little-endian header size, a JSON header {name: {dtype, shape, data_offsets}},
then the raw little-endian tensor bytes. Used for plain .safetensors files, MindSpore's
safetensors checkpoints, and the model.safetensors of Hugging Face directories.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Mapping

from ...errors import MaeconvError
from ..jsontext import DuplicateKey, strict_json
from ..settings import RECORD_KEY, settings_record
from ..tensors import MAX_TENSORS, TensorRef, Verdict, checked_shape, dtype_by_name, write_stream
from .base import Checkpoint

NAME = "safetensors"

CODES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
         "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
         "U64": "uint64", "BOOL": "bool"}
CODE_OF = {name: code for code, name in CODES.items()}
MAX_HEADER = 100_000_000  # the safetensors library's limit


def starts(head: bytes, size: int | None = None) -> bool:
    """An 8-byte header length (shorter than the file, where its size is known), then the JSON
    header's brace."""
    return len(head) >= 9 and head[8:9] == b"{" and (size is None or int.from_bytes(head[:8], "little") < size)


def read_file(path: Path) -> Checkpoint:
    tensors, metadata = read(path)
    return Checkpoint(path, NAME, tensors, metadata=metadata)


def write_file(path: Path, tensors: Mapping[str, TensorRef], extras: Mapping, **read_back) -> dict[str, Verdict]:
    return write(path, tensors, extras.get("metadata"), **read_back)


def extras_for(config, kind: str, tag: str) -> dict:
    """The settings as one JSON string in the header's __metadata__, beside the framework tag
    ('pt' or 'ms') that safetensors readers look for."""
    return {"metadata": {"format": tag, RECORD_KEY: json.dumps(settings_record(config))}}


def read(path: Path) -> tuple[dict[str, TensorRef], dict]:
    """Tensor references and the header's __metadata__, refused wherever the safetensors library
    refuses the file (and where its header is ambiguous: a key given twice)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise MaeconvError(f"{path}: not a safetensors file (too short)")
        (header_size,) = struct.unpack("<Q", head)
        if not 2 <= header_size <= min(MAX_HEADER, size - 8):
            raise MaeconvError(f"{path}: not a safetensors file (header size {header_size} out of range)")
        header = _parse_header(path, f.read(header_size))
    metadata = _metadata(path, header.pop("__metadata__", None))
    if len(header) > MAX_TENSORS:
        raise MaeconvError(f"{path}: not a safetensors file (more than {MAX_TENSORS} tensors)")
    refs, end = {}, 0
    for name, (dtype, shape, begin, stop) in sorted(_entries(path, header).items(), key=lambda item: item[1][2:]):
        if begin != end:  # the library's rule: the data is the tensors end to end, no gap, no overlap
            raise MaeconvError(f"{path}: tensor {name!r} overlaps another or leaves a gap before it (corrupt)")
        refs[name], end = TensorRef.in_file(path, dtype, shape, 8 + header_size + begin), stop
    if 8 + header_size + end != size:
        raise MaeconvError(f"{path}: the tensors cover {end} bytes of the {size - 8 - header_size} after the "
                           f"header (truncated or corrupt)")
    return {name: refs[name] for name in header}, metadata


# JSON values a header may hold per tensor (a value takes a separator or a bracket): an entry needs
# seven, and three more for a 4-D shape. Python builds up to ~170 bytes of objects for each.
VALUES_PER_TENSOR = 10


def _parse_header(path: Path, text: bytes) -> dict:
    values = text.count(b",") + text.count(b"{") + text.count(b"[")  # a bound on the values it parses to
    if values > VALUES_PER_TENSOR * MAX_TENSORS:
        raise MaeconvError(f"{path}: not a safetensors file (header holds more entries than {MAX_TENSORS} "
                           f"tensors have)")

    try:
        # A negative integer stays a float here, so a dimension or offset of -0 is refused like -1.
        header = strict_json(text, parse_int=lambda digits: float(digits) if digits.startswith("-") else int(digits))
    except DuplicateKey as error:
        raise MaeconvError(f"{path}: not a safetensors file (key {error.key!r:.60} appears twice in the header)") \
            from None
    except ValueError:
        raise MaeconvError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise MaeconvError(f"{path}: not a safetensors file (header is not an object)")
    return header


def _metadata(path: Path, metadata) -> dict:
    if metadata is None:
        return {}
    if type(metadata) is not dict or not all(type(value) is str for value in metadata.values()):
        raise MaeconvError(f"{path}: not a safetensors file (__metadata__ is not a map of strings)")
    return metadata


def _entries(path: Path, header: dict) -> dict[str, tuple]:
    """name -> (dtype, shape, begin, end) for each tensor, each checked on its own."""
    entries = {}
    for name, info in header.items():
        try:
            name.encode("utf-8")
            dtype = dtype_by_name(CODES[info["dtype"]])
            shape = checked_shape(info["shape"], dtype)
            begin, end = info["data_offsets"]
            if type(begin) is not int or type(end) is not int:
                raise ValueError(f"offsets {info['data_offsets']!r:.80}, not integers")
        except ValueError as error:
            raise MaeconvError(f"{path}: malformed header entry for {name!r:.80} ({error})") from None
        except (KeyError, TypeError, UnicodeEncodeError):
            raise MaeconvError(f"{path}: malformed header entry for {name!r:.80}") from None
        if not 0 <= begin <= end or end - begin != math.prod(shape) * dtype.itemsize:
            raise MaeconvError(f"{path}: tensor {name!r} does not fit the file (truncated or corrupt)")
        entries[name] = dtype, shape, begin, end
    return entries


def write(path: Path, tensors: Mapping[str, TensorRef], metadata: Mapping[str, str] | None = None,
          **read_back) -> dict[str, Verdict]:
    """Writes the tensors in order, each read back as it goes (see `write_stream`, which takes
    `read_back`'s options) and given a verdict."""
    header = {}
    offset = 0
    for name, ref in tensors.items():
        header[name] = {"dtype": CODE_OF[ref.dtype.name], "shape": list(ref.shape),
                        "data_offsets": [offset, offset + ref.nbytes]}
        offset += ref.nbytes
    if metadata:
        header = {"__metadata__": dict(metadata), **header}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # tensor data starts 8-byte aligned, as the reference writer does
    head = struct.pack("<Q", len(encoded)) + encoded
    return write_stream(path, [head, *tensors.items()], len(head) + offset, **read_back)
