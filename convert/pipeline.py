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

# Optimizer moments and bookkeeping that training checkpoints hold beside the model: MindFormers
# and MindSpore's Adam write adam_m./adam_v.; maeconv's trainer writes train.*.
TRAINING_STATE_PREFIXES = ("adam_m.", "adam_v.", "train.")
TRAINING_STATE_NAMES = frozenset({"global_step", "epoch_num", "step_num", "learning_rate", "current_iterator_step",
                                  "scale_sense", "loss_scale", "beta1_power", "beta2_power"})


def is_training_state(name: str) -> bool:
    return name.startswith(TRAINING_STATE_PREFIXES) or name in TRAINING_STATE_NAMES
SUFFIX_OF_FORMAT = {TORCH: ".pth", MINDSPORE: ".ckpt"}


@dataclass
class Loaded:
    checkpoint: Checkpoint
    scheme: Scheme
    plan: list[Step]
    state: dict[str, np.ndarray]  # canonical names
    detected: Detected
    skipped: list[str]  # optimizer and training state, not part of the model


def load_canonical(path: str | os.PathLike) -> Loaded:
    checkpoint = read_checkpoint(path)
    scheme = SCHEME_OF_FORMAT[checkpoint.format]
    skipped = [name for name in checkpoint.tensors if is_training_state(name)]
    model_names = [name for name in checkpoint.tensors if not is_training_state(name)]
    try:
        plan = scheme.plan_to_canonical(model_names)
    except MappingError as error:
        raise MaeconvError(f"{path}: {error}") from None
    state = apply_to_canonical(plan, checkpoint.tensors)
    detected = detect({name: a.shape for name, a in state.items()}, source=str(path))
    return Loaded(checkpoint, scheme, plan, state, detected, skipped)


def default_output(src: str | os.PathLike, fmt: str) -> Path:
    return Path(src).with_suffix(SUFFIX_OF_FORMAT[fmt])


@dataclass
class Conversion:
    source: Path
    output: Path
    preset: str
    kind: str
    tensors: int
    skipped: int  # optimizer / training-state entries left out


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
    return Conversion(Path(src), dst, loaded.detected.preset, loaded.detected.kind, len(tensors), len(loaded.skipped))


def describe(path: str | os.PathLike) -> dict:
    """What `maeconv inspect` prints: format, scheme, kind, preset, counts and dtypes."""
    loaded = load_canonical(path)
    state = loaded.state
    return {
        "file": str(path),
        "format": loaded.checkpoint.format,
        "scheme": loaded.scheme.name,
        "kind": loaded.detected.kind,
        "preset": loaded.detected.preset,
        "img_size": loaded.detected.config.img_size,
        "keys": len(state),
        "parameters": int(sum(int(np.prod(a.shape)) for a in state.values())),
        "bytes": int(sum(a.nbytes for a in state.values())),
        "dtypes": dict(Counter(str(a.dtype) for a in state.values())),
        "extras": sorted(map(str, loaded.checkpoint.extras)),
        "training_state": len(loaded.skipped),
    }
