"""Checkpoint in, canonical state in the middle, checkpoint out: the conversion steps as functions.

    read (any format) -> scheme detected -> plan to canonical -> preset and kind detected
        -> [dtype, image size, kind changes] -> plan to the target scheme -> write -> read back
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from . import hub
from .detect import Detected, detect
from ..errors import MaeconvError
from .formats import FORMATS, Checkpoint, Format, format_of_output, read_checkpoint
from .outputs import Target, check_target
from .schemes import (HF, REFUSED_KINDS, SCHEMES, MappingError, Scheme, Step, apply_from_canonical,
                      apply_to_canonical, get_scheme, is_training_state, scheme_of_format)
from .settings import BY_NAME, Resolved, recorded_settings, resolve_settings, settings_record
from .tensors import TensorRef

# What torch training checkpoints hold beside 'model' that is optimizer state, not model (mmengine's
# runner keeps its schedulers and message hub at the top level too).
TORCH_TRAINING_EXTRAS = ("optimizer", "scaler", "lr_scheduler", "param_schedulers", "message_hub")


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
        return FORMATS[self.checkpoint.format].framework or self.scheme.framework

    def settings(self, **flags) -> Resolved:
        """The config to run this checkpoint with: flags (None: not given) > the file > the preset."""
        return resolve_settings(self.detected.config, self.recorded, str(self.checkpoint.path), **flags)


def resolve(source: str | os.PathLike, log: Callable[[str], None] | None = None) -> Path:
    """A path as given, or the cached file of an official checkpoint name (downloaded if needed)."""
    path = Path(source)
    if path.exists():
        return path
    if str(source) in hub.CHECKPOINTS:
        return fetch_official(str(source), log=log)
    suggestion = hub.did_you_mean(str(source))
    if suggestion:
        raise MaeconvError(f"{source}: no such file or official checkpoint name{suggestion}")
    return path  # the reader reports the missing file


def fetch_official(name: str, log: Callable[[str], None] | None = None, progress=None, force: bool = False) -> Path:
    """An official checkpoint's cached file, downloaded if needed and only kept when it reads as
    the preset and kind of its name."""
    def preset_and_kind(path: Path) -> tuple[str, str]:
        detected = load_canonical(path).detected
        return detected.preset, detected.kind

    return hub.fetch(name, preset_and_kind, log=log, progress=progress, force=force)


def load_canonical(source: str | os.PathLike, scheme: str | None = None, allow_unmapped: bool = False,
                   log: Callable[[str], None] | None = None) -> Loaded:
    """Reads a checkpoint (path or official name) into canonical names, detecting its naming
    scheme (unless given), preset and kind. Unknown names are an error, or with `allow_unmapped`
    left out and listed in `Loaded.unmapped`."""
    path = resolve(source, log)
    checkpoint = read_checkpoint(path)
    skipped = [name for name in checkpoint.tensors if is_training_state(name)]
    skipped += [str(key) for key in checkpoint.extras if key in TORCH_TRAINING_EXTRAS]
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
    best = _best_failure(failures, names)
    raise MaeconvError(f"{path}: names fit no naming scheme as a whole; as {best[0].name}: {best[1]}")


def _best_failure(failures: list[tuple[Scheme, str]], names: list[str]) -> tuple[Scheme, str]:
    """The failure that explains best what is wrong: that of the scheme whose own rules recognise
    most of the names as its own spelling of another canonical name (passing names through, or
    spelling them as the canonical scheme does, tells nothing), then of one that mapped every name
    and got as far as the presets; the earlier candidate among equals."""
    def own(scheme: Scheme, name: str) -> bool:
        found = scheme.match_foreign(name)
        return found is not None and found[1] != name

    def score(failure: tuple[Scheme, str]) -> tuple[int, bool]:
        scheme, message = failure
        return sum(own(scheme, n) for n in names), "match no preset" in message
    return max(failures, key=score)


def _candidate_schemes(fmt: str) -> list[Scheme]:
    first = scheme_of_format(fmt)
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


def default_output(src: str | os.PathLike, fmt: Format) -> Path:
    return Path(src).with_suffix(fmt.suffixes[0] if fmt.suffixes else "")


@dataclass
class Conversion:
    """What a conversion did (or, dry, would do): one result, with its notes and warnings."""

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


@dataclass(frozen=True)
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
            options: Options = Options(), log: Callable[[str], None] | None = None,
            progress: Callable[[int], Callable[[int], None] | None] | None = None) -> Conversion:
    """Converts `src` into `dst`; `fmt` forces the output format (else from `dst`'s suffix; without
    `dst`, the input's name with the format's suffix). `progress(total_bytes)` may return a callback
    that is told the bytes of each tensor handled."""
    from . import transforms, writers

    output_format = FORMATS[fmt] if fmt else format_of_output(Path(dst), options.scheme)
    dst = Path(dst) if dst is not None else default_output(src, output_format)
    if not options.dry_run:  # before the (possibly long) read
        check_target(Target(dst, output_format.folder_members), options.force, inputs=[src])
    loaded = load_canonical(src, options.source_scheme, options.allow_unmapped, log)
    target = get_scheme(options.scheme) if options.scheme else scheme_of_format(output_format.name)
    if output_format.folder_members is not None and target is not HF:
        raise MaeconvError(f"{dst}: a Hugging Face directory holds hf names, not {target.name}")
    changed = transforms.apply(loaded, options, target)
    refused = REFUSED_KINDS.get((options.scheme, changed.detected.kind))
    if refused:
        raise MaeconvError(f"{dst}: --to {options.scheme}: {refused}")
    recorded = {k: v for k, v in loaded.recorded.items() if k != "img_size"}  # the weights fix it
    settings = resolve_settings(changed.detected.config, recorded, str(loaded.checkpoint.path), **options.settings)
    try:
        plan = target.plan_from_canonical(changed.refs)
    except MappingError as error:
        raise MaeconvError(f"{dst}: {error}") from None
    tensors = apply_from_canonical(plan, changed.refs)
    carried = writers.carry_optimizer(loaded, target, output_format, changed.refs) if options.keep_optimizer else {}
    tensors.update(carried)
    detected = changed.detected
    shown = options.scheme if options.scheme in target.aliases else target.name  # --to mindcv: as asked
    done = Conversion(Path(src), dst, output_format.name, shown, detected.preset, detected.kind, len(tensors),
                      len(loaded.skipped), _notes(loaded, options, changed, carried),
                      mapping=mapping_table(loaded, plan, changed.refs))
    if options.dry_run:
        return done
    update = progress(2 * sum(ref.nbytes for ref in tensors.values())) if progress else None
    output = writers.Output(dst, output_format, target, settings.config, detected.kind)
    nonfinite = writers.write(output, tensors, options.force, [loaded.checkpoint.path], update)
    if nonfinite:
        done.warnings.append(f"{len(nonfinite)} tensors hold NaN or Inf values (written as they are): "
                             f"{', '.join(nonfinite[:5])}")
    return done


def _notes(loaded: Loaded, options: Options, changed, carried: dict) -> list[str]:
    notes = list(loaded.checkpoint.notes)
    if loaded.skipped and not options.keep_optimizer:
        notes.append(f"skipped {len(loaded.skipped)} optimizer/training-state entries (not part of the model)")
    if loaded.unmapped:
        notes.append(f"left out {len(loaded.unmapped)} names that map nowhere: {', '.join(loaded.unmapped[:5])}")
    notes += changed.notes
    if options.keep_optimizer:
        notes.append(f"kept {len(carried)} optimizer/training-state entries")
    return notes


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
        "same_names_as": list(loaded.scheme.aliases),  # other libraries whose files use these names
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
