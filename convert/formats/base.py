"""What every format module produces and declares: a Checkpoint read from a file, and the Format
entry the registry (convert/formats/__init__.py) keeps for it."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..tensors import TensorRef, Verdict


@dataclass
class Checkpoint:
    path: Path
    format: str
    tensors: dict[str, TensorRef]
    extras: dict = field(default_factory=dict)    # non-model content: 'args', 'epoch', optimizer state...
    metadata: dict = field(default_factory=dict)  # safetensors __metadata__, or an HF directory's config.json
    notes: list[str] = field(default_factory=list)  # what reading left out, for the conversion's notes


@dataclass(frozen=True)
class Format:
    """One file format: how its files are named and start, how they are read and written, and how
    they keep a model's settings beside the tensors."""

    name: str
    label: str                       # in messages: "PyTorch checkpoint"
    suffixes: tuple[str, ...]        # the first is what maeconv writes; () for a folder
    read: Callable[[Path], Checkpoint]
    # write(path, tensors, extras, check_finite=..., progress=...) -> read-back verdicts of the
    # tensors it streamed; a folder format's takes `verify` instead, to write its weights file with.
    write: Callable[..., dict[str, Verdict]]
    # extras_for(config, kind, tag): what `write` takes beside the tensors to keep the model's
    # settings, `tag` being the target scheme's framework tag ('pt' or 'ms').
    extras_for: Callable[[object, str, str], dict]
    starts: Callable[[bytes, int | None], bool] | None = None  # whether first bytes (and size) are this format's
    # a folder format: the names of the files maeconv writes into it (a set, or a pattern they match)
    folder_members: frozenset[str] | re.Pattern | None = None
    holds_training_state: bool = False  # flat files that can keep optimizer state by name beside the model
    framework: str | None = None  # the framework whose own format this is (None: shared by several)


def member_of(path: Path, folder: Path) -> bool:
    """Whether `path`, its links followed, lies inside `folder`: a folder format's files are its own,
    copied and moved together, not links to elsewhere. In a Hugging Face cache snapshot (a folder
    in `snapshots/`) they are links to the repo's blobs two levels up: inside the repo's folder."""
    root = folder.resolve()
    if root.parent.name == "snapshots":
        root = root.parent.parent
    return path.resolve().is_relative_to(root)
