"""The safetensors format, read lazily and written streaming, without loading a framework.

Layout: 8-byte little-endian header size, a JSON header {name: {dtype, shape, data_offsets}},
then the raw little-endian tensor bytes. Used for plain .safetensors files, MindSpore's
safetensors checkpoints, and the model.safetensors of Hugging Face directories.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import MaeconvError
from ..tensors import TensorRef, Verdict, dtype_by_name, write_stream

CODES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
         "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
         "U64": "uint64", "BOOL": "bool"}
CODE_OF = {name: code for code, name in CODES.items()}
MAX_HEADER = 100 * 1024 * 1024


def read(path: Path) -> tuple[dict[str, TensorRef], dict]:
    """Tensor references and the header's __metadata__."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise MaeconvError(f"{path}: not a safetensors file (too short)")
        (header_size,) = struct.unpack("<Q", head)
        if not 2 <= header_size <= min(MAX_HEADER, size - 8):
            raise MaeconvError(f"{path}: not a safetensors file (header size {header_size} out of range)")
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MaeconvError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise MaeconvError(f"{path}: not a safetensors file (header is not an object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_size
    refs = {}
    for name, info in header.items():
        try:
            dtype = dtype_by_name(CODES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise MaeconvError(f"{path}: malformed header entry for {name!r}") from None
        count = int(np.prod(shape, dtype=np.int64))
        if min(shape, default=0) < 0 or end - begin != count * dtype.itemsize or begin < 0 \
                or data_start + end > size:
            raise MaeconvError(f"{path}: tensor {name!r} does not fit the file (truncated or corrupt)")
        refs[name] = TensorRef.in_file(path, dtype, shape, data_start + begin)
    return refs, metadata


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
