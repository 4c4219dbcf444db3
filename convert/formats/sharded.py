"""Sharded checkpoints, as transformers' save_pretrained writes a model over its max_shard_size:
`model.safetensors.index.json` (or `pytorch_model.bin.index.json`) naming, for every tensor, the
shard file beside it that holds it.

Read strictly: every shard the index names is a plain file in the index's folder, read by its
format's own strict reader; every tensor is in exactly one shard, the one the index names; no
shard holds a tensor the index does not name. Written as safetensors shards, each at most
`max_shard_size` bytes of tensor data (a larger tensor alone in its shard), with the index.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable, Mapping

from ...errors import MaeconvError
from ..jsontext import strict_json
from ..tensors import MAX_TENSORS, TensorRef, Verdict
from . import pytorch, safetensors
from .base import Checkpoint, member_of

SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"
INDEXES = {SAFETENSORS_INDEX: safetensors.read_file, TORCH_INDEX: pytorch.read}
SHARD_NAME = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")
MAX_INDEX_BYTES = 64 << 20  # a few thousand entries take a few hundred kB
DEFAULT_MAX_SHARD_SIZE = "5GB"  # transformers' save_pretrained default
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def is_index(path: Path) -> bool:
    return path.name.endswith(".index.json")


def parse_size(text: str | int) -> int:
    """'5GB' (10^9, as transformers counts), '2GiB' (2^30), '500MB', or a number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match[2].upper() if match else None
    if unit not in SIZE_UNITS:
        raise MaeconvError(f"--max-shard-size: expected a size such as 5GB, 500MB, 2GiB or a number of bytes, "
                           f"got {text!r}")
    size = int(float(match[1]) * SIZE_UNITS[unit])
    if size < 1:
        raise MaeconvError(f"--max-shard-size: must be at least 1 byte, got {text!r}")
    return size


def read_index(path: Path) -> Checkpoint:
    """A sharded checkpoint from its index file; its tensors stay in their shard files, read lazily."""
    weight_map, reader = _weight_map(path)
    tensors: dict[str, TensorRef] = {}
    extras: dict = {}
    metadata: dict = {}
    for shard in dict.fromkeys(weight_map.values()):
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise MaeconvError(f"{path}: names shard {shard!r}, which is not beside it (the files of a sharded "
                               "checkpoint are copied and moved together)")
        if not member_of(shard_path, path.parent):
            raise MaeconvError(f"{path}: its shard {shard!r} is a link to {shard_path.resolve()}, outside its folder")
        inner = reader(shard_path)
        for name, ref in inner.tensors.items():
            if name in tensors:
                raise MaeconvError(f"{shard_path}: tensor {name!r} is also in another shard")
            if name not in weight_map:
                raise MaeconvError(f"{shard_path}: holds tensor {name!r}, which {path.name} does not name")
            if weight_map[name] != shard:
                raise MaeconvError(f"{shard_path}: holds tensor {name!r}, which {path.name} puts in "
                                   f"{weight_map[name]!r}")
            tensors[name] = ref
        extras.update(inner.extras)
        metadata.update(inner.metadata)
    missing = [name for name in weight_map if name not in tensors]
    if missing:
        raise MaeconvError(f"{path}: tensor {missing[0]!r} is not in its shard {weight_map[missing[0]]!r}"
                           + (f" ({len(missing)} tensors missing)" if len(missing) > 1 else ""))
    fmt = pytorch.NAME if reader is pytorch.read else safetensors.NAME
    return Checkpoint(path, fmt, {name: tensors[name] for name in weight_map}, extras, metadata)


def _weight_map(path: Path) -> tuple[dict[str, str], Callable[[Path], Checkpoint]]:
    """The index's tensor -> shard map, checked, and the reader its shards need."""
    reader = INDEXES.get(path.name) or (pytorch.read if path.name.endswith(".bin.index.json")
                                        else safetensors.read_file)  # any <weights>.index.json
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise MaeconvError(f"{path}: index file over {MAX_INDEX_BYTES >> 20} MiB; not a checkpoint index")
    try:
        index = strict_json(path.read_bytes())
    except ValueError as error:
        raise MaeconvError(f"{path}: not valid JSON ({str(error):.200})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise MaeconvError(f"{path}: not a sharded checkpoint index (no \"weight_map\" of tensor names to shards)")
    if len(weight_map) > MAX_TENSORS:
        raise MaeconvError(f"{path}: names more than {MAX_TENSORS} tensors")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not _plain_name(shard):
            raise MaeconvError(f"{path}: tensor {name!r:.80} is mapped to {shard!r:.80}, not a file name beside "
                               "the index")
    return weight_map, reader


def _plain_name(name: str) -> bool:
    """A file name in the index's own folder: no folder part, no way out of it."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name


# --- writing ---

def shard_plan(tensors: Mapping[str, TensorRef], max_shard_size: int) -> list[list[str]]:
    """Tensor names grouped into shards in order, each shard's data at most `max_shard_size` bytes
    unless one tensor alone is larger (as transformers splits them)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, ref in tensors.items():
        if shards[-1] and size + ref.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += ref.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def index_json(tensors: Mapping[str, TensorRef], shards: list[list[str]]) -> str:
    """The index as transformers writes it: totals in "metadata", then tensor -> shard by name."""
    names = shard_names(len(shards))
    weight_map = {name: file for file, members in zip(names, shards) for name in members}
    metadata = {"total_parameters": sum(math.prod(ref.shape) for ref in tensors.values()),
                "total_size": sum(ref.nbytes for ref in tensors.values())}
    return json.dumps({"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n"


def write_shards(folder: Path, tensors: Mapping[str, TensorRef], max_shard_size: int, metadata: Mapping[str, str],
                 verify: Callable[[Path, str, Mapping, Mapping[str, TensorRef]], None]) -> dict[str, Verdict]:
    """The shards, each written and proven by `verify(path, format, extras, tensors)`, then the index."""
    shards = shard_plan(tensors, max_shard_size)
    for file, members in zip(shard_names(len(shards)), shards):
        verify(folder / file, safetensors.NAME, {"metadata": dict(metadata)}, {n: tensors[n] for n in members})
    (folder / SAFETENSORS_INDEX).write_text(index_json(tensors, shards))
    return {}
