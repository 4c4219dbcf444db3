"""What each exported graph computes: its inputs, outputs, the checkpoints it accepts, the
inputs that validate it and the tolerances it is held to. Shared by every runtime."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import MaeconvError
from ..convert.jsontext import strict_json
from ..models.config import CLASSIFIER, CLASSIFY, ENCODER, FULL, PRETRAIN, MAEConfig, get_preset
from ..parity.compare import ABS, EXACT, Tolerance
from ..parity.twins import permutation_noise

FEATURES = "features"


@dataclass(frozen=True)
class Task:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    kinds: tuple[str, ...]  # checkpoint kinds that hold what the task needs


TASKS: dict[str, Task] = {
    PRETRAIN: Task(PRETRAIN, ("images", "noise"), ("loss", "pred", "mask"), (FULL,)),
    FEATURES: Task(FEATURES, ("images",), ("tokens", "pooled"), (ENCODER, FULL, CLASSIFIER)),
    CLASSIFY: Task(CLASSIFY, ("images",), ("logits",), (CLASSIFIER,)),
}

KIND_NAMES = {ENCODER: "an encoder-only checkpoint", FULL: "a full (encoder + decoder) pretraining checkpoint",
              CLASSIFIER: "a fine-tuned classifier checkpoint"}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise MaeconvError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


def check_kind(task: Task, kind: str, source: str) -> None:
    """A clear error when the checkpoint lacks what the task needs (e.g. classify on an encoder)."""
    if kind not in task.kinds:
        needs = " or ".join(KIND_NAMES[k] for k in task.kinds)
        raise MaeconvError(f"{source}: is {KIND_NAMES[kind]}; task {task.name!r} needs {needs}")


def input_shapes(task: Task, config: MAEConfig) -> dict[str, tuple]:
    """Shapes with the batch as 'N': images (N, C, H, W), then noise (N, L) where the task masks."""
    shapes = {"images": ("N", config.in_chans, config.img_size, config.img_size), "noise": ("N", config.num_patches)}
    return {name: shapes[name] for name in task.inputs}


def random_inputs(task: Task, config: MAEConfig, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard-normal images and, where the task masks, permutation noise."""
    size = config.img_size
    inputs = {"images": rng.standard_normal((batch, config.in_chans, size, size)).astype(np.float32)}
    if "noise" in task.inputs:
        inputs["noise"] = permutation_noise(rng, batch, config.num_patches)
    return inputs


def tolerances(task: Task, atol: float) -> dict[str, Tolerance]:
    return {name: Tolerance(EXACT) if name == "mask" else Tolerance(ABS, atol) for name in task.outputs}


def metadata(task: Task, preset: str, kind: str, config: MAEConfig) -> dict[str, str]:
    """What an exported file records about itself, so `maeconv predict` can run it alone."""
    return {"maeconv.task": task.name, "maeconv.preset": preset, "maeconv.kind": kind,
            "maeconv.config": json.dumps(dataclasses.asdict(config)),
            "maeconv.inputs": ", ".join(task.inputs), "maeconv.outputs": ", ".join(task.outputs)}


@dataclass(frozen=True)
class GraphInfo:
    task: Task
    preset: str
    kind: str
    config: MAEConfig


# What a preset fixes; an export records them as its preset has them (its settings may differ).
ARCHITECTURE = ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
                "decoder_num_heads", "mlp_ratio")


def read_metadata(values: Mapping[str, str], source: str) -> GraphInfo:
    try:
        task, preset, kind, recorded = (get_task(values["maeconv.task"]), values["maeconv.preset"],
                                        values["maeconv.kind"], values["maeconv.config"])
    except (KeyError, TypeError, ValueError, MaeconvError):
        raise MaeconvError(f"{source}: was not exported by maeconv (no task metadata); "
                           "export it with `maeconv export`") from None
    try:
        return GraphInfo(task, preset, kind, _recorded_config(recorded, preset))
    except (KeyError, TypeError, ValueError) as error:
        raise MaeconvError(f"{source}: its maeconv metadata does not describe a model the twins run "
                           f"({str(error).strip(chr(39)):.200})") from None


def _recorded_config(recorded: str, preset: str) -> MAEConfig:
    config = MAEConfig(**strict_json(recorded)).check()
    expected = get_preset(preset).config
    for field in ARCHITECTURE:
        if getattr(config, field) != getattr(expected, field):
            raise ValueError(f"{field} {getattr(config, field)!r:.40}, where {preset} has {getattr(expected, field)!r}")
    if type(config.num_classes) is not int or config.num_classes < 1:
        raise ValueError(f"num_classes {config.num_classes!r:.40}, not a positive count")
    return config
