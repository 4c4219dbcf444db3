"""Checkpoint in, canonical state in the middle, checkpoint out: the conversion steps as functions."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoints import MINDSPORE, TORCH, Checkpoint, check_writable, read_checkpoint, write_checkpoint
from .detect import Detected, detect
from .errors import MaeconvError
from .schemes import FACEBOOK, MINDSPORE as MINDSPORE_SCHEME, MappingError, Scheme, Step, apply_from_canonical, \
    apply_to_canonical

SCHEME_OF_FORMAT = {TORCH: FACEBOOK, MINDSPORE: MINDSPORE_SCHEME}
SUFFIX_OF_FORMAT = {TORCH: ".pth", MINDSPORE: ".ckpt"}


@dataclass
class Loaded:
    checkpoint: Checkpoint
    scheme: Scheme
    plan: list[Step]
    state: dict[str, np.ndarray]  # canonical names
    detected: Detected


def load_canonical(path: str | os.PathLike) -> Loaded:
    checkpoint = read_checkpoint(path)
    scheme = SCHEME_OF_FORMAT[checkpoint.format]
    try:
        plan = scheme.plan_to_canonical(checkpoint.tensors)
    except MappingError as error:
        raise MaeconvError(f"{path}: {error}") from None
    state = apply_to_canonical(plan, checkpoint.tensors)
    detected = detect({name: a.shape for name, a in state.items()}, source=str(path))
    return Loaded(checkpoint, scheme, plan, state, detected)


def default_output(src: str | os.PathLike, fmt: str) -> Path:
    return Path(src).with_suffix(SUFFIX_OF_FORMAT[fmt])


@dataclass
class Conversion:
    source: Path
    output: Path
    preset: str
    kind: str
    tensors: int


def convert(src: str | os.PathLike, dst: str | os.PathLike | None, fmt: str, force: bool = False) -> Conversion:
    dst = Path(dst) if dst is not None else default_output(src, fmt)
    if Path(src).resolve() == dst.resolve():
        raise MaeconvError(f"{dst}: output would overwrite the input")
    check_writable(dst, force)  # before the (possibly long) read
    loaded = load_canonical(src)
    state = loaded.state
    target = SCHEME_OF_FORMAT[fmt]
    tensors = apply_from_canonical(target.plan_from_canonical(state), state)
    write_checkpoint(dst, tensors, fmt, force)
    return Conversion(Path(src), dst, loaded.detected.preset, loaded.detected.kind, len(tensors))


def describe(path: str | os.PathLike) -> dict:
    """What `maeconv inspect` prints: format, scheme, kind, preset, counts and dtypes."""
    loaded = load_canonical(path)
    tensors = loaded.checkpoint.tensors
    return {
        "file": str(path),
        "format": loaded.checkpoint.format,
        "scheme": loaded.scheme.name,
        "kind": loaded.detected.kind,
        "preset": loaded.detected.preset,
        "img_size": loaded.detected.config.img_size,
        "keys": len(tensors),
        "parameters": int(sum(int(np.prod(a.shape)) for a in tensors.values())),
        "bytes": int(sum(a.nbytes for a in tensors.values())),
        "dtypes": dict(Counter(str(a.dtype) for a in tensors.values())),
        "extras": sorted(map(str, loaded.checkpoint.extras)),
    }
