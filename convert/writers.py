"""The last step of a conversion: the target file (or Hugging Face directory) written through a
staging folder, with the model's settings recorded as its format can, and proven by its read-back."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..models.config import MAEConfig
from ..errors import MaeconvError
from .formats import Format
from .outputs import Target, staged
from .schemes import Scheme, apply_from_canonical, apply_to_canonical
from .tensors import TensorRef
from .verify import write_verified


@dataclass(frozen=True)
class Output:
    """Where and how a model is written."""

    path: Path
    format: Format
    scheme: Scheme
    config: MAEConfig  # its settings are recorded in the file
    kind: str

    @property
    def target(self) -> Target:
        return Target(self.path, self.format.folder_members)


def write(output: Output, tensors: Mapping[str, TensorRef], force: bool = False,
          inputs: Sequence[str | os.PathLike] = (), progress: Callable[[int], None] | None = None) -> list[str]:
    """Writes, proves and renames into place; returns the names of tensors holding NaN or Inf
    (written as they are)."""
    extras = {**output.format.extras_for(output.config, output.kind, output.scheme.metadata_tag),
              "torch_keys": output.scheme.torch_keys}
    with staged(output.target, force=force, inputs=inputs) as stage:
        written = write_verified(stage.path(), tensors, output.format, extras, progress, shown_as=output.path)
    return written.nonfinite


def carry_optimizer(loaded, target: Scheme, fmt: Format, refs: Mapping[str, TensorRef]) -> dict[str, TensorRef]:
    """Optimizer moments renamed like their parameters, for targets that store them by name."""
    if not target.optimizer_prefixes or not fmt.holds_training_state:
        raise MaeconvError(f"--keep-optimizer needs a MindSpore-family target (.ckpt, or safetensors with "
                           f"--to mindspore/mindformers); {target.name} {fmt.name} files keep no optimizer "
                           "state by name")
    if not loaded.scheme.optimizer_prefixes:
        raise MaeconvError(f"{loaded.checkpoint.path}: its optimizer state is not stored by parameter name; "
                           "only MindSpore/MindFormers training checkpoints carry over")
    out = {}
    tensors = loaded.checkpoint.tensors
    for prefix in loaded.scheme.optimizer_prefixes:
        moments = {n[len(prefix):]: ref for n, ref in tensors.items() if n.startswith(prefix)}
        if not moments:
            continue
        canonical = apply_to_canonical(loaded.scheme.plan_to_canonical(moments), moments)
        canonical = {n: r for n, r in canonical.items() if n in refs}
        foreign = apply_from_canonical(target.plan_from_canonical(canonical), canonical)
        out.update({prefix + n: ref for n, ref in foreign.items()})
    moments = loaded.scheme.optimizer_prefixes
    out.update({n: ref for n, ref in tensors.items() if n in loaded.skipped and not n.startswith(moments)})
    return out
