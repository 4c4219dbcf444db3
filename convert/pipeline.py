"""Checkpoint in, canonical state in the middle, checkpoint out: the conversion steps as functions.

    read (any format) -> scheme detected -> plan to canonical -> preset and kind detected
        -> [dtype, image size, kind changes] -> plan to the target scheme -> write -> read back
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoints import HF_DIR, MINDSPORE, SAFETENSORS, SUFFIX_FORMATS, TORCH, Checkpoint, output_target, read_checkpoint
from .detect import Detected, detect
from .errors import MaeconvError
from .outputs import check_target
from .settings import BY_NAME, Resolved, recorded_settings, resolve_settings, settings_record
from .schemes import (FACEBOOK, HF, MINDSPORE as MINDSPORE_SCHEME, SCHEMES, MappingError, Scheme, Step,
                      apply_from_canonical, apply_to_canonical, get_scheme)
from .tensors import TensorRef

# The scheme a format's files use unless told otherwise.
SCHEME_OF_FORMAT = {TORCH: FACEBOOK, SAFETENSORS: FACEBOOK, MINDSPORE: MINDSPORE_SCHEME, HF_DIR: HF}
SUFFIX_OF_FORMAT = {TORCH: ".pth", MINDSPORE: ".ckpt", SAFETENSORS: ".safetensors", HF_DIR: ""}

# Optimizer moments and bookkeeping that training checkpoints hold beside the model: MindFormers
# and MindSpore's Adam write adam_m./adam_v.; maeconv's trainer writes train.*.
MOMENT_PREFIXES = ("adam_m.", "adam_v.")
TRAINING_STATE_PREFIXES = (*MOMENT_PREFIXES, "train.")
TRAINING_STATE_NAMES = frozenset({"global_step", "epoch_num", "step_num", "learning_rate", "current_iterator_step",
                                  "scale_sense", "loss_scale", "beta1_power", "beta2_power"})
# What torch training checkpoints hold beside 'model' that is optimizer state, not model.
TORCH_TRAINING_EXTRAS = ("optimizer", "scaler", "lr_scheduler")


def is_training_state(name: str) -> bool:
    return name.startswith(TRAINING_STATE_PREFIXES) or name in TRAINING_STATE_NAMES


@dataclass
class Loaded:
    checkpoint: Checkpoint
    scheme: Scheme
    plan: list[Step]
    refs: dict[str, TensorRef]  # canonical names, read lazily
    detected: Detected
    skipped: list[str]          # optimizer and training state, not part of the model
    unmapped: list[str] = field(default_factory=list)  # left out on request (--allow-unmapped)
    recorded: dict = field(default_factory=dict)       # the settings the file records

    @cached_property
    def state(self) -> dict[str, np.ndarray]:
        """Every canonical tensor, read into memory."""
        return {name: ref.load() for name, ref in self.refs.items()}

    @property
    def framework(self) -> str:
        """The framework whose files these are: MindSpore's for .ckpt and MindSpore-family names."""
        mindspore_family = self.scheme.name in ("mindspore", "mindformers")
        return MINDSPORE if self.checkpoint.format == MINDSPORE or mindspore_family else TORCH

    def settings(self, **flags) -> Resolved:
        """The config to run this checkpoint with: flags (None: not given) > the file > the preset."""
        return resolve_settings(self.detected.config, self.recorded, str(self.checkpoint.path), **flags)


def resolve(source: str | os.PathLike, log: Callable[[str], None] | None = None) -> Path:
    """A path as given, or the cached file of an official checkpoint name (downloaded if needed)."""
    path = Path(source)
    if path.exists():
        return path
    from .hub import CHECKPOINTS, did_you_mean, fetch

    if str(source) in CHECKPOINTS:
        return fetch(str(source), log=log)
    suggestion = did_you_mean(str(source))
    if suggestion:
        raise MaeconvError(f"{source}: no such file or official checkpoint name{suggestion}")
    return path  # the reader reports the missing file


def load_canonical(source: str | os.PathLike, scheme: str | None = None, allow_unmapped: bool = False,
                   log: Callable[[str], None] | None = None) -> Loaded:
    """Reads a checkpoint (path or official name) into canonical names, detecting its naming
    scheme (unless given), preset and kind. Unknown names are an error, or with `allow_unmapped`
    left out and listed in `Loaded.unmapped`."""
    path = resolve(source, log)
    checkpoint = read_checkpoint(path)
    skipped = [name for name in checkpoint.tensors if is_training_state(name)]
    skipped += [key for key in TORCH_TRAINING_EXTRAS if key in checkpoint.extras]
    names = [name for name in checkpoint.tensors if not is_training_state(name)]
    candidates = [get_scheme(scheme)] if scheme else _candidate_schemes(checkpoint.format)
    failures = []
    for candidate in candidates:
        try:
            loaded = _load_with(candidate, checkpoint, names, skipped, allow_unmapped, path)
        except (MappingError, MaeconvError) as error:
            failures.append((candidate, str(error).removeprefix(f"{path}: ")))
            continue
        loaded.recorded = recorded_settings(checkpoint, loaded.detected.config)
        return loaded
    if len(failures) == 1:
        raise MaeconvError(f"{path}: {failures[0][1]}")
    # The scheme that got furthest (mapped every name) explains best what is wrong.
    mapped = [f for f in failures if "match no preset" in f[1]]
    best = (mapped or failures)[0]
    raise MaeconvError(f"{path}: names fit no naming scheme as a whole; as {best[0].name}: {best[1]}")


def _candidate_schemes(fmt: str) -> list[Scheme]:
    first = SCHEME_OF_FORMAT[fmt]
    return [first, *(s for s in SCHEMES.values() if s is not first)]


def _load_with(scheme: Scheme, checkpoint: Checkpoint, names: list[str], skipped: list[str],
               allow_unmapped: bool, path: Path) -> Loaded:
    unmapped = []
    if allow_unmapped and not scheme.passthrough:
        unmapped = [n for n in names if scheme.match_foreign(n) is None]
        names = [n for n in names if n not in set(unmapped)]
    plan = scheme.plan_to_canonical(names)
    refs = apply_to_canonical(plan, checkpoint.tensors)
    detected = detect({name: ref.shape for name, ref in refs.items()}, str(path), allow_unmapped)
    if detected.unexpected:
        by_canonical = {step.canonical: step.foreign for step in plan}
        unmapped += [f for name in detected.unexpected for f in by_canonical[name]]
        refs = {name: ref for name, ref in refs.items() if name not in set(detected.unexpected)}
        plan = [step for step in plan if step.canonical in refs]
    return Loaded(checkpoint, scheme, plan, refs, detected, skipped, unmapped)


def default_output(src: str | os.PathLike, fmt: str) -> Path:
    return Path(src).with_suffix(SUFFIX_OF_FORMAT[fmt])


def format_of_output(path: Path, scheme: str | None) -> str:
    """The format a new file gets: from its suffix; a suffix-less path or --to hf is an HF directory."""
    suffix = path.suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    if suffix == "" or scheme == "hf":
        return HF_DIR
    raise MaeconvError(f"{path}: unknown output format {suffix!r} (use .pth, .bin, .safetensors, .ckpt, "
                       "or a directory name for a Hugging Face model)")


@dataclass
class Conversion:
    source: Path
    output: Path
    format: str
    scheme: str
    preset: str
    kind: str
    tensors: int
    skipped: int                    # optimizer / training-state entries left out
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mapping: list[dict] = field(default_factory=list)  # the full name mapping, for --dry-run

    def to_dict(self) -> dict:
        return {"source": str(self.source), "output": str(self.output), "format": self.format,
                "scheme": self.scheme, "preset": self.preset, "kind": self.kind, "tensors": self.tensors,
                "skipped_training_state": self.skipped, "notes": self.notes, "warnings": self.warnings}


@dataclass
class Options:
    """What `maeconv convert` may change on the way; the defaults change nothing."""

    scheme: str | None = None          # target naming scheme (default: the output format's)
    source_scheme: str | None = None   # override detection
    dtype: str | None = None           # fp32 | fp16 | bf16
    img_size: int | None = None
    kind: str | None = None            # "classifier": a fine-tuning initialisation
    fc_norm_from_norm: bool = False
    settings: dict = field(default_factory=dict)  # MAEConfig field -> value; None or absent: the source's
    allow_unmapped: bool = False
    keep_optimizer: bool = False
    dry_run: bool = False
    force: bool = False


def convert(src: str | os.PathLike, dst: str | os.PathLike | None, fmt: str | None = None,
            force: bool = False, options: Options | None = None, log: Callable[[str], None] | None = None,
            progress: Callable[[int], Callable[[int], None] | None] | None = None) -> Conversion:
    """Converts `src` into `dst`; `fmt` forces the output format (else from `dst`'s suffix).
    `progress(total_bytes)` may return a callback that is told the bytes of each tensor handled."""
    from . import transforms, writers

    options = options or Options(force=force)
    options.force = options.force or force
    if dst is None:
        dst = default_output(src, fmt or MINDSPORE)
    dst = Path(dst)
    fmt = fmt or format_of_output(dst, options.scheme)
    if not options.dry_run:
        check_target(output_target(dst, fmt), options.force, inputs=[src])  # before the (possibly long) read
    loaded = load_canonical(src, options.source_scheme, options.allow_unmapped, log)
    target = get_scheme(options.scheme) if options.scheme else SCHEME_OF_FORMAT[fmt]
    if fmt == HF_DIR and target is not HF:
        raise MaeconvError(f"{dst}: a Hugging Face directory holds hf names, not {target.name}")
    notes = []
    if loaded.skipped and not options.keep_optimizer:
        notes.append(f"skipped {len(loaded.skipped)} optimizer/training-state entries (not part of the model)")
    if loaded.unmapped:
        notes.append(f"left out {len(loaded.unmapped)} names that map nowhere: {', '.join(loaded.unmapped[:5])}")
    refs, detected = transforms.apply(loaded, options, notes)
    recorded = {k: v for k, v in loaded.recorded.items() if k != "img_size"}  # the weights fix it
    settings = resolve_settings(detected.config, recorded, str(loaded.checkpoint.path), **options.settings)
    detected = replace(detected, config=settings.config)
    try:
        plan = target.plan_from_canonical(refs)
    except MappingError as error:
        raise MaeconvError(f"{dst}: {error}") from None
    tensors = apply_from_canonical(plan, refs)
    if options.keep_optimizer:
        tensors.update(writers.carry_optimizer(loaded, target, fmt, refs, notes))
    done = Conversion(Path(src), dst, fmt, target.name, detected.preset, detected.kind, len(tensors),
                      len(loaded.skipped), notes, mapping=mapping_table(loaded, plan, refs))
    if options.dry_run:
        return done
    update = progress(2 * sum(ref.nbytes for ref in tensors.values())) if progress else None
    nonfinite = writers.write(dst, tensors, fmt, target, detected, loaded, options, update)
    if nonfinite:
        done.warnings.append(f"{len(nonfinite)} tensors hold NaN or Inf values (written as they are): "
                             f"{', '.join(nonfinite[:5])}")
    return done


def mapping_table(loaded: Loaded, target_plan: list[Step], refs: dict[str, TensorRef]) -> list[dict]:
    """source name(s) -> target name(s), shape, transforms: what --dry-run prints."""
    source = {step.canonical: step for step in loaded.plan}
    rows = []
    for step in target_plan:
        origin = source.get(step.canonical)
        transforms = [t for t in ((origin.transform.name if origin else "created"), step.transform.name)
                      if t != "rename"]
        rows.append({"source": list(origin.foreign) if origin else [], "canonical": step.canonical,
                     "target": list(step.foreign), "shape": list(refs[step.canonical].shape),
                     "dtype": refs[step.canonical].dtype.name, "transform": "+".join(transforms) or "rename"})
    return rows


def describe(source: str | os.PathLike, scheme: str | None = None) -> dict:
    """What `maeconv inspect` prints: format, scheme, kind, preset, settings, counts and dtypes."""
    loaded = load_canonical(source, scheme)
    refs = loaded.refs
    settings = loaded.settings()
    return {
        "file": str(loaded.checkpoint.path),
        "format": loaded.checkpoint.format,
        "scheme": loaded.scheme.name,
        "kind": loaded.detected.kind,
        "preset": loaded.detected.preset,
        "img_size": loaded.detected.config.img_size,
        "keys": len(refs),
        "parameters": int(sum(ref.size for ref in refs.values())),
        "bytes": int(sum(ref.nbytes for ref in refs.values())),
        "dtypes": dict(Counter(ref.dtype.name for ref in refs.values())),
        "norm_pix_loss": settings.config.norm_pix_loss,
        "settings": {name: {"value": value, "from": settings.sources[BY_NAME[name].field]}
                     for name, value in settings_record(settings.config).items()},
        "extras": sorted(map(str, loaded.checkpoint.extras)),
        "training_state": len(loaded.skipped),
    }
