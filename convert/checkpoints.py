"""Checkpoint files: read any supported format into named NumPy arrays, write them back atomically.

Readers never execute code from a file: torch pickles load with `weights_only=True`, and the
only global allowed beyond tensors is `argparse.Namespace`, which the reference training code
stores under 'args'. Dtypes pass through untouched (bfloat16 as ml_dtypes.bfloat16).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from .errors import MaeconvError

TORCH = "torch"
MINDSPORE = "mindspore"
FRAMEWORKS = (TORCH, MINDSPORE)

# Keys under which training scripts nest the model's state dict.
STATE_KEYS = ("model", "state_dict", "module", "model_state_dict")


@dataclass
class Checkpoint:
    path: Path
    format: str  # "torch" (.pth/.bin zip pickle) or "mindspore" (.ckpt protobuf)
    tensors: dict[str, np.ndarray]
    extras: dict = field(default_factory=dict)  # non-tensor content, e.g. 'args', 'epoch'


def sniff_format(path: Path) -> str:
    """The format from the first bytes, falling back to the extension."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04") or head[:2] == b"\x80\x02":
        return TORCH
    if path.suffix in (".pth", ".pt", ".bin"):
        return TORCH
    return MINDSPORE


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise MaeconvError(f"{path}: no such file")
    if not path.is_file():
        raise MaeconvError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise MaeconvError(f"{path}: empty file")
    fmt = sniff_format(path)
    return _read_torch(path) if fmt == TORCH else _read_mindspore(path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _read_torch(path: Path) -> Checkpoint:
    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # torch raises many types for bad files; all mean the same here
        reason = _first_line(error)
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "the pickle refers to code that a safe load refuses to run"
        raise MaeconvError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    state, extras = _unwrap_state(obj, path)
    return Checkpoint(path, TORCH, {name: torch_to_numpy(t) for name, t in state.items()}, extras)


def _unwrap_state(obj, path: Path):
    import torch

    extras = {}
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                extras = {k: v for k, v in obj.items() if k != key}
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise MaeconvError(f"{path}: holds no state dict (expected a mapping of names to tensors)")
    bad = [name for name, value in obj.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise MaeconvError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    return dict(obj), extras


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


def _read_mindspore(path: Path) -> Checkpoint:
    import mindspore as ms

    try:
        params = ms.load_checkpoint(str(path))
    except Exception as error:
        raise MaeconvError(f"{path}: not a readable MindSpore checkpoint ({_first_line(error)})") from None
    if not params:
        raise MaeconvError(f"{path}: holds no tensors")
    return Checkpoint(path, MINDSPORE, {name: _standard_dtype(p.asnumpy()) for name, p in params.items()})


def _standard_dtype(array: np.ndarray) -> np.ndarray:
    """MindSpore registers a bfloat16 NumPy type of its own; use ml_dtypes' everywhere."""
    if array.dtype.name == "bfloat16":
        import ml_dtypes

        return array.view(ml_dtypes.bfloat16)
    return array


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it to `path` only if the block succeeds."""
    path = Path(path)
    check_writable(path, force)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        raise MaeconvError(f"{path}: cannot write ({error.strerror or error})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def check_writable(path: str | os.PathLike, force: bool = False) -> None:
    """Fails early, before any work, if `path` cannot be written."""
    path = Path(path)
    if path.exists() and not force:
        raise MaeconvError(f"{path}: already exists (use --force to overwrite)")
    if not path.parent.is_dir():
        raise MaeconvError(f"{path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise MaeconvError(f"{path}: directory {path.parent} is not writable")


def _save_torch(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """The official layout: {'model': state_dict}."""
    import torch

    torch.save({"model": {name: numpy_to_torch(a) for name, a in tensors.items()}}, path)


def _save_mindspore(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    import mindspore as ms

    ms.save_checkpoint([{"name": name, "data": ms.Tensor(np.ascontiguousarray(a))} for name, a in tensors.items()],
                       str(path))


# format -> (saver, suffix of the temporary file; MindSpore appends .ckpt to a name without it)
SAVERS = {TORCH: (_save_torch, ""), MINDSPORE: (_save_mindspore, ".ckpt")}


def same_tensors(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> list[str]:
    """Names whose dtype, shape or bytes differ (or that only one side has)."""
    differ = sorted(set(a) ^ set(b))
    for name in set(a) & set(b):
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype != y.dtype or x.shape != y.shape or np.ascontiguousarray(x).tobytes() != np.ascontiguousarray(y).tobytes():
            differ.append(name)
    return differ


def write_checkpoint(path, tensors: Mapping[str, np.ndarray], fmt: str, force: bool = False) -> None:
    """Writes atomically, then reads the file back and compares every tensor before it is kept."""
    save, suffix = SAVERS[fmt]
    with atomic_output(path, force, suffix) as tmp:
        save(tmp, tensors)
        differ = same_tensors(tensors, read_checkpoint(tmp).tensors)
        if differ:
            raise MaeconvError(f"{path}: read-back check failed for {len(differ)} tensors (e.g. {differ[0]})")
