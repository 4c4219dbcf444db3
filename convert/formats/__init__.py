"""The file formats, one registry entry each (name, suffixes, how its files start, reader, writer,
how it keeps a model's settings), and `read_checkpoint`, the one way in.

Modules: pytorch (zip and legacy pickles; torchzip, torchlegacy and the restricted unpickler
torchpickle do the work), safetensors, ckpt (MindSpore's protobuf), hfdir (Hugging Face
directories), identify (naming the files that are no checkpoint at all). Nothing in a file is ever
executed; dtypes pass through untouched (bfloat16 as ml_dtypes.bfloat16).
"""
from __future__ import annotations

import os
from pathlib import Path

from ...errors import MaeconvError
from . import ckpt, hfdir, identify, pytorch, safetensors, sharded
from .base import Checkpoint, Format

TORCH, SAFETENSORS, MINDSPORE, HF_DIR = pytorch.NAME, safetensors.NAME, ckpt.NAME, hfdir.NAME

FORMATS: dict[str, Format] = {fmt.name: fmt for fmt in (
    Format(TORCH, "PyTorch checkpoint", (".pth", ".pt", ".bin", ".tar"), pytorch.read, pytorch.write,
           pytorch.extras_for, pytorch.starts, framework="torch"),
    Format(SAFETENSORS, "safetensors file", (".safetensors",), safetensors.read_file, safetensors.write_file,
           safetensors.extras_for, safetensors.starts, holds_training_state=True),
    Format(MINDSPORE, "MindSpore checkpoint", (".ckpt",), ckpt.read_file, ckpt.write_file, ckpt.extras_for,
           ckpt.starts, holds_training_state=True, framework="mindspore"),
    Format(HF_DIR, "Hugging Face directory", (), hfdir.read, hfdir.write, hfdir.extras_for,
           folder_members=hfdir.WRITTEN),
)}
SUFFIX_FORMATS = {suffix: fmt.name for fmt in FORMATS.values() for suffix in fmt.suffixes}
# Checked in this order: a safetensors header length may well start with 0x80, a pickle's first byte.
BY_MAGIC = (FORMATS[SAFETENSORS], FORMATS[TORCH])
HEAD_BYTES = 16

__all__ = ["FORMATS", "HF_DIR", "MINDSPORE", "SAFETENSORS", "SUFFIX_FORMATS", "TORCH", "Checkpoint", "Format",
           "format_of_output", "read_checkpoint"]


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Any checkpoint file, sharded checkpoint's index (`*.index.json`) or Hugging Face directory, its
    tensors read lazily."""
    path = Path(path)
    if not path.exists():
        raise MaeconvError(f"{path}: no such file")
    if path.is_dir():
        return FORMATS[HF_DIR].read(path)
    if not path.is_file():
        raise MaeconvError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise MaeconvError(f"{path}: empty file")
    try:
        if sharded.is_index(path):
            return sharded.read_index(path)
        return _format_of_file(path).read(path)
    except OSError as error:
        raise MaeconvError(f"{path}: cannot read ({error.strerror or error})") from None


def _format_of_file(path: Path) -> Format:
    """The format from the first bytes; without a magic of ours, what else the file is (an error),
    or the format its suffix names (.ckpt has no magic)."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    size = path.stat().st_size
    for fmt in BY_MAGIC:
        if fmt.starts(head, size):
            return fmt
    foreign = identify.describe(path)
    if foreign:
        raise MaeconvError(f"{path}: {foreign}, not a checkpoint ({identify.READS})")
    return FORMATS[SUFFIX_FORMATS.get(path.suffix.lower(), MINDSPORE)]


def format_of_output(path: Path, scheme: str | None = None) -> Format:
    """The format a new file gets: from its suffix; a suffix-less path or hf names make a directory."""
    suffix = path.suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return FORMATS[SUFFIX_FORMATS[suffix]]
    if suffix == "" or scheme == "hf":
        return FORMATS[HF_DIR]
    raise MaeconvError(f"{path}: unknown output format {suffix!r} (use .pth, .bin, .safetensors, .ckpt, "
                       "or a directory name for a Hugging Face model)")
