"""Checkpoint files: any supported format in, named lazy tensors out, and back, atomically.

Formats: torch zip pickles (.pth/.pt/.bin), safetensors (.safetensors, also MindSpore's),
MindSpore protobuf (.ckpt), and Hugging Face model directories (config.json +
model.safetensors). Nothing in a file is ever executed; dtypes pass through untouched
(bfloat16 as ml_dtypes.bfloat16).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import struct
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import MaeconvError
from .formats import ckpt, safetensors, torchzip
from .outputs import Target, staged
from .tensors import TensorRef, Verdict, as_ref, spans_equal

TORCH = "torch"
MINDSPORE = "mindspore"
FRAMEWORKS = (TORCH, MINDSPORE)

# file formats (TORCH and MINDSPORE double as format names: .pth and .ckpt)
SAFETENSORS = "safetensors"
HF_DIR = "hf-dir"
FORMATS = (TORCH, SAFETENSORS, MINDSPORE, HF_DIR)
SUFFIX_FORMATS = {".pth": TORCH, ".pt": TORCH, ".bin": TORCH, ".tar": TORCH, ".safetensors": SAFETENSORS,
                  ".ckpt": MINDSPORE}

# Keys under which training scripts nest the model's state dict.
STATE_KEYS = ("model", "state_dict", "module", "model_state_dict")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Checkpoint:
    path: Path
    format: str
    tensors: dict[str, TensorRef]
    extras: dict = field(default_factory=dict)    # non-model content: 'args', 'epoch', optimizer state...
    metadata: dict = field(default_factory=dict)  # safetensors __metadata__, or an HF directory's config.json


def sniff_format(path: Path) -> str:
    """The format from the first bytes, falling back to the extension."""
    if path.is_dir():
        return HF_DIR
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors first: its 8-byte header length may well start with 0x80, a pickle's first byte.
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return SAFETENSORS
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return TORCH
    return SUFFIX_FORMATS.get(path.suffix.lower(), MINDSPORE)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise MaeconvError(f"{path}: no such file")
    if path.is_dir():
        return _read_hf_dir(path)
    if not path.is_file():
        raise MaeconvError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise MaeconvError(f"{path}: empty file")
    fmt = sniff_format(path)
    try:
        if fmt == TORCH:
            return _read_torch(path)
        if fmt == SAFETENSORS:
            tensors, metadata = safetensors.read(path)
            return Checkpoint(path, SAFETENSORS, tensors, metadata=metadata)
        tensors, extras = ckpt.read(path)
        return Checkpoint(path, MINDSPORE, tensors, extras)
    except OSError as error:
        raise MaeconvError(f"{path}: cannot read ({error.strerror or error})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _read_torch(path: Path) -> Checkpoint:
    try:
        obj = torchzip.read(path)
    except (torchzip.Unsupported, zipfile.BadZipFile, EOFError, pickle.UnpicklingError, ValueError,
            TypeError, KeyError, IndexError, AttributeError, struct.error):
        obj = _torch_load(path)
    state, extras = _unwrap_state(obj, path)
    return Checkpoint(path, TORCH, state, extras)


def _torch_load(path: Path):
    """torch's own loader, in its safe mode: legacy pickles and anything torchzip leaves to it."""
    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on odd pickle protocols; failures are reported below
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # torch raises many types for bad files; all mean the same here
        reason = _first_line(error)
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "the pickle refers to code that a safe load refuses to run"
        raise MaeconvError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    return _torch_to_refs(obj)


def _torch_to_refs(obj):
    """The loaded object with TensorRefs in place of tensors, in dicts at any depth."""
    import torch

    if isinstance(obj, torch.Tensor):
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


def _read_hf_dir(path: Path) -> Checkpoint:
    config_path = path / "config.json"
    weights = [path / name for name in HF_WEIGHTS if (path / name).is_file()]
    if not config_path.is_file() or not weights:
        raise MaeconvError(f"{path}: not a Hugging Face model directory (needs config.json and "
                           f"{' or '.join(HF_WEIGHTS)})")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MaeconvError(f"{config_path}: not valid JSON ({error})") from None
    inner = read_checkpoint(weights[0])
    return Checkpoint(path, HF_DIR, inner.tensors, inner.extras, config if isinstance(config, dict) else {})


def torch_to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def numpy_to_torch(array: np.ndarray):
    import torch

    array = np.ascontiguousarray(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    if not array.flags.writeable:  # torch warns on read-only memory; the copy is one tensor at a time
        array = array.copy()
    return torch.from_numpy(array)


# --- writing ---

# What maeconv writes into a Hugging Face directory: all that --force may replace there.
HF_WRITTEN = frozenset({"config.json", "model.safetensors"})


def output_target(path: str | os.PathLike, fmt: str) -> Target:
    """The output as the outputs module stages it: an HF directory is a folder of known files."""
    return Target(Path(path), HF_WRITTEN if fmt == HF_DIR else None)


def _save_torch(path: Path, tensors: Mapping[str, TensorRef], extras: Mapping, **read_back) -> dict[str, Verdict]:
    torchzip.write(path, tensors, extras.get("args"))
    return {}  # nothing streamed is judged: write_verified compares the whole file afterwards


def _save_safetensors(path: Path, tensors: Mapping[str, TensorRef], extras: Mapping, **read_back) -> dict[str, Verdict]:
    return safetensors.write(path, tensors, extras.get("metadata"), **read_back)


def _save_mindspore(path: Path, tensors: Mapping[str, TensorRef], extras: Mapping, **read_back) -> dict[str, Verdict]:
    return ckpt.write(path, tensors, extras.get("strings"), **read_back)


# Each writes a file and returns the read-back verdicts of the tensors it streamed.
SAVERS: dict[str, Callable[..., dict[str, Verdict]]] = {
    TORCH: _save_torch, SAFETENSORS: _save_safetensors, MINDSPORE: _save_mindspore}


def write_verified(path: Path, tensors: Mapping[str, TensorRef], fmt: str, extras: Mapping | None = None,
                   progress: Callable[[int], None] | None = None, nonfinite: list[str] | None = None,
                   shown_as: str | os.PathLike | None = None) -> None:
    """Writes `path` and reads it back: streamed tensors are compared as they are written, then the
    file is parsed again and every tensor checked to stand where it was compared; tensors written
    otherwise are compared now. Raises if anything differs, naming the file `shown_as` (the final
    name of a temporary file). Names of tensors holding NaN or Inf go to `nonfinite` if given."""
    if progress:
        progress = _thread_safe(progress)
    verdicts = SAVERS[fmt](path, tensors, extras or {}, check_finite=nonfinite is not None, progress=progress)
    try:
        readback = read_checkpoint(path).tensors
    except MaeconvError as error:
        reason = str(error).removeprefix(f"{path}: ")
        raise MaeconvError(f"{shown_as or path}: read-back check failed: the written file does not parse ({reason})") \
            from None
    differ = sorted(set(tensors) ^ set(readback))
    rest = {}
    for name, ref in tensors.items():
        back, verdict = readback.get(name), verdicts.get(name)
        if back is None:
            continue
        if verdict is None:
            rest[name] = ref
            continue
        in_place = back.span is not None and back.span.offset == verdict.offset
        if not (verdict.equal and in_place and back.dtype == ref.dtype and back.shape == ref.shape):
            differ.append(name)
        elif not verdict.finite and nonfinite is not None:
            nonfinite.append(name)
    if progress and rest:
        progress(sum(ref.nbytes for ref in rest.values()))  # written without per-tensor reports
    differ += same_tensors(rest, {name: readback[name] for name in rest}, progress, nonfinite)
    if differ:
        raise MaeconvError(f"{shown_as or path}: read-back check failed for {len(differ)} tensors (e.g. {differ[0]})")


def _thread_safe(callback: Callable[[int], None]) -> Callable[[int], None]:
    """The callback, called by one thread at a time (the writer and the read-back both report)."""
    lock = threading.Lock()

    def locked(value: int) -> None:
        with lock:
            callback(value)
    return locked


def same_tensors(expected: Mapping[str, TensorRef | np.ndarray], actual: Mapping[str, TensorRef | np.ndarray],
                 progress: Callable[[int], None] | None = None, nonfinite: list[str] | None = None) -> list[str]:
    """Names whose dtype, shape or bytes differ (or that only one side has), compared one at a time,
    file region against file region where both are stored as they are. Names of `actual` tensors
    holding NaN or Inf are appended to `nonfinite` when it is given."""
    differ = sorted(set(expected) ^ set(actual))
    for name in expected:
        if name not in actual:
            continue
        e, a = as_ref(expected[name]), as_ref(actual[name])
        if e.dtype != a.dtype or e.shape != a.shape:
            differ.append(name)
            continue
        flag = (lambda n=name: nonfinite.append(n)) if nonfinite is not None else None
        if e.span and a.span:
            equal = spans_equal(e.span, a.span, e.nbytes, e.dtype, flag)
        else:
            x, y = e.load(), a.load()
            equal = np.array_equal(_bytes(x), _bytes(y))
            floating = y.dtype.kind == "f" or y.dtype.name == "bfloat16"
            if flag and floating and not np.isfinite(y).all():
                flag()
        if not equal:
            differ.append(name)
        if progress:
            progress(e.nbytes)
    return differ


def _bytes(array: np.ndarray) -> np.ndarray:
    """The raw bytes, as wide integers where the size allows: NaN compares equal to itself here."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return flat.view(np.uint64) if flat.size % 8 == 0 else flat


def write_checkpoint(path, tensors: Mapping[str, TensorRef], fmt: str, force: bool = False,
                     extras: Mapping | None = None, progress: Callable[[int], None] | None = None,
                     nonfinite: list[str] | None = None, inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Writes through a staging folder; the file is read back and compared tensor by tensor
    before it gets its name."""
    with staged(path, force=force, inputs=inputs) as stage:
        write_verified(stage.path(), tensors, fmt, extras, progress, nonfinite, shown_as=path)
