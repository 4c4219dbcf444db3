"""PyTorch checkpoints: zip (torch.save's layout since 1.6) and legacy files read without running
anything, the few zips with globals maeconv does not know handed to torch.load(weights_only=True),
and zips written as torch.save lays them out."""
from __future__ import annotations

import _compat_pickle
import argparse
import json
import warnings
from pathlib import Path
from typing import Mapping

from ...errors import MaeconvError, first_line
from ..settings import RECORD_KEY, args_record, settings_record
from ..tensors import TensorRef, Verdict
from . import torchlegacy, torchpickle, torchzip
from .base import Checkpoint

NAME = "torch"
# Keys under which training scripts nest the model's state dict.
STATE_KEYS = ("model", "state_dict", "module", "model_state_dict")
DEFAULT_KEYS = ("model", "args")  # where maeconv writes the state dict and the settings


def starts(head: bytes, size: int = 0) -> bool:
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def read(path: Path) -> Checkpoint:
    """The state dict and what lies beside it. Objects of code maeconv does not run (mmengine's in
    OpenMMLab checkpoints) are left out, with a note, where they lie outside the state dict; a zip
    that needs them elsewhere goes to torch.load(weights_only=True), a legacy file is refused."""
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # as torch tells; an end record may hide in a pickle's tensor bytes
    if not zipped:
        obj, stand_ins = torchlegacy.read(path)
    else:
        try:
            obj, stand_ins = torchzip.read(path), []
        except torchpickle.Unsupported as error:
            obj, stand_ins = error.survey
            if not (_skippable(obj, stand_ins) and _torch_refuses(stand_ins)):
                obj, stand_ins = _torch_load(path), []
    if stand_ins and not _skippable(obj, stand_ins):
        code = next((s.removeprefix("global ") for s in stand_ins if s.startswith("global ")), "code")
        raise MaeconvError(f"{path}: not a readable PyTorch checkpoint (its state dict needs {code}, "
                           "code that a safe load refuses to run)")
    state, extras = _unwrap_state(obj, path)
    notes = []
    if stand_ins:
        names = sorted({s.removeprefix("global ") for s in stand_ins})
        notes.append(f"skipped the objects of {len(names)} kinds of code maeconv does not run, outside the state "
                     f"dict ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    return Checkpoint(path, NAME, state, extras, notes=notes)


def _torch_refuses(stand_ins: list[str]) -> bool:
    """Whether torch.load(weights_only=True) would refuse one of these globals (the rest it reads
    itself: a torch.Size, a set): then it cannot read the file, and skipping them is the way."""
    import torch
    from torch import _weights_only_unpickler

    try:
        allowed = set(_weights_only_unpickler._get_allowed_globals())
    except Exception:  # a private table: without it, leave every file to torch.load as before
        return False
    allowed |= {f"{g.__module__}.{g.__qualname__}" for g in torch.serialization.get_safe_globals()
                if hasattr(g, "__qualname__")}
    allowed.add("argparse.Namespace")  # what _torch_load allows
    return any(_python3_name(s.removeprefix("global ")) not in allowed for s in stand_ins)


def _python3_name(qualified: str) -> str:
    """A global as Python 3 names it: protocol 2 pickles say __builtin__.set for builtins.set."""
    module, _, name = qualified.rpartition(".")
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return ".".join(_compat_pickle.NAME_MAPPING[module, name])
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _skippable(obj, stand_ins: list[str]) -> bool:
    """Whether a lenient read stood in only for unknown globals, and only outside the state dict."""
    if not all(s.startswith("global ") for s in stand_ins):
        return False
    try:
        state, _ = _unwrap_state(obj, Path())
    except MaeconvError:
        return False
    return all(isinstance(value, TensorRef) for value in state.values())


def write(path: Path, tensors: Mapping[str, TensorRef], extras: Mapping, **read_back) -> dict[str, Verdict]:
    """{state_key: state dict, settings_key: settings}, the keys the target scheme's files use
    (extras['torch_keys']: ('model', 'args') by default, OpenMMLab's ('state_dict', 'meta')); each
    tensor is judged as it is written (see torchzip.write)."""
    state_key, settings_key = extras.get("torch_keys", DEFAULT_KEYS)
    return torchzip.write(path, tensors, extras.get(settings_key), state_key, settings_key, **read_back)


def extras_for(config, kind: str, tag: str) -> dict:
    """The settings as a plain 'args' dict under the reference's argparse names (its
    argparse.Namespace itself is refused by torch.load's weights-only unpickler), and as a
    'meta' dict holding one maeconv.settings string, for files that keep a meta dict instead
    (OpenMMLab's)."""
    return {"args": args_record(config), "meta": {RECORD_KEY: json.dumps(settings_record(config))}}


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
