"""Which preset and checkpoint kind a canonical state dict is, from its keys and shapes alone."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from ..models.config import CLASSIFIER, CLASSIFY, ENCODER, FULL, PRESETS, PRETRAIN, MAEConfig, checkpoint_shapes
from ..errors import MaeconvError

KINDS_OF_TASK = {PRETRAIN: (FULL, ENCODER), CLASSIFY: (CLASSIFIER,)}


@dataclass(frozen=True)
class Detected:
    preset: str
    kind: str
    config: MAEConfig
    unexpected: tuple[str, ...] = ()  # names outside the layout, left out (only when allowed)


def _config_for(preset_config: MAEConfig, shapes: Mapping[str, tuple]) -> MAEConfig:
    """The preset's config with what the file itself fixes: image size, classes, pooling."""
    changes = {}
    if "pos_embed" in shapes and len(shapes["pos_embed"]) == 3:
        grid = math.isqrt(max(shapes["pos_embed"][1] - 1, 0))
        changes["img_size"] = grid * preset_config.patch_size
    if "head.weight" in shapes:
        changes["num_classes"] = shapes["head.weight"][0]
        changes["global_pool"] = "fc_norm.weight" in shapes
    return preset_config.replace(**changes)


def _difference(expected: Mapping[str, tuple], actual: Mapping[str, tuple]) -> list[str]:
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    reshaped = [f"{k} {tuple(actual[k])} != {tuple(expected[k])}" for k in expected
                if k in actual and tuple(actual[k]) != tuple(expected[k])]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped)):
        if items:
            problems.append(f"{len(items)} {label} (e.g. {items[0]})")
    return problems


def detect(shapes: Mapping[str, tuple], source: str = "checkpoint", allow_unexpected: bool = False) -> Detected:
    """The (preset, kind) whose canonical layout equals `shapes`; an error naming the closest
    candidate otherwise. With `allow_unexpected`, names outside the layout are tolerated (and
    listed) as long as nothing is missing or misshapen; the candidate leaving out least wins."""
    shapes = {name: tuple(shape) for name, shape in shapes.items()}
    closest, tolerated = None, None
    for preset in PRESETS.values():
        config = _config_for(preset.config, shapes)
        for kind in KINDS_OF_TASK[preset.task]:
            expected = checkpoint_shapes(config, kind)
            problems = _difference(expected, shapes)
            if not problems:
                return Detected(preset.name, kind, config)
            only_unexpected = len(problems) == 1 and problems[0].split()[1] == "unexpected"
            if allow_unexpected and only_unexpected:
                extra = tuple(k for k in shapes if k not in expected)
                if tolerated is None or len(extra) < len(tolerated.unexpected):
                    tolerated = Detected(preset.name, kind, config, extra)
            score = sum(int(p.split()[0]) for p in problems)
            if closest is None or score < closest[0]:
                closest = (score, f"{preset.name} ({kind})", problems)
    if tolerated is not None:
        return tolerated
    _, name, problems = closest
    raise MaeconvError(f"{source}: keys and shapes match no preset; closest is {name}: {'; '.join(problems)}")
