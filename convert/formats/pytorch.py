"""PyTorch checkpoints: zip (torch.save's layout since 1.6) and legacy files read without running
anything, the few zips with globals maeconv does not know handed to torch.load(weights_only=True),
and zips written as torch.save lays them out."""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Mapping

from ...errors import MaeconvError, first_line
from ..settings import args_record
from ..tensors import TensorRef, Verdict
from . import torchlegacy, torchpickle, torchzip
from .base import Checkpoint

NAME = "torch"
# Keys under which training scripts nest the model's state dict.
STATE_KEYS = ("model", "state_dict", "module", "model_state_dict")


def starts(head: bytes, size: int = 0) -> bool:
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def read(path: Path) -> Checkpoint:
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # as torch tells; an end record may hide in a pickle's tensor bytes
    if not zipped:
        obj = torchlegacy.read(path)
    else:
        try:
            obj = torchzip.read(path)
        except torchpickle.Unsupported:
            obj = _torch_load(path)
    state, extras = _unwrap_state(obj, path)
    return Checkpoint(path, NAME, state, extras)


def write(path: Path, tensors: Mapping[str, TensorRef], extras: Mapping, **read_back) -> dict[str, Verdict]:
    return torchzip.write(path, tensors, extras.get("args"), read_back.get("progress"))


def extras_for(config, kind: str, tag: str) -> dict:
    """The settings as a plain 'args' dict beside 'model', under the reference's argparse names (its
    argparse.Namespace itself would need weights_only=False to load)."""
    return {"args": args_record(config)}


def _torch_load(path: Path):
    """torch's own loader, in its safe mode, for zip files that torchzip leaves to it (it has checked
    their entries' sizes first). Without mmap: torch.load(mmap=True) maps deflated entries as raw
    bytes, and storages beyond their entries' ends."""
    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on odd pickle protocols; failures are reported below
            return _torch_to_refs(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # torch raises many types for bad files; all mean the same here
        reason = first_line(error)
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "the pickle refers to code that a safe load refuses to run"
        raise MaeconvError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None


def _torch_to_refs(obj):
    """The loaded object with TensorRefs in place of tensors, in dicts at any depth."""
    import torch

    if isinstance(obj, torch.Tensor):
        from ...models.torch.twin import torch_to_numpy

        return TensorRef.of(torch_to_numpy(obj))
    if isinstance(obj, dict):
        return type(obj)((k, _torch_to_refs(v)) for k, v in obj.items())
    return obj


def _unwrap_state(obj, path: Path):
    extras = {}
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                extras = {k: v for k, v in obj.items() if k != key}
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise MaeconvError(f"{path}: holds no state dict (expected a mapping of names to tensors)")
    bad = [str(name) for name, value in obj.items() if not isinstance(value, TensorRef)]
    if bad:
        raise MaeconvError(f"{path}: entries that are not tensors: {', '.join(bad[:5])}")
    return dict(obj), extras
