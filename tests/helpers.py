"""Checkpoints in the official layouts, with seeded random weights, for the tests."""
import argparse
import os

os.environ.setdefault("GLOG_v", "3")

import numpy as np
import torch
from click.testing import CliRunner

from maeconv.convert.twins import TORCH, create_model, model_state
from maeconv.models import ENCODER, get_config, get_preset

TINY = "mae_vit_tiny_patch8"
TINY_CLS = "vit_tiny_patch8"
BASE = "mae_vit_base_patch16"


def seeded_state(preset: str, seed: int = 0, **overrides) -> dict[str, np.ndarray]:
    """Canonical state of a freshly initialised torch twin, with every tensor non-trivial."""
    torch.manual_seed(seed)
    spec = get_preset(preset)
    model = create_model(spec.config.replace(**overrides), spec.task, TORCH)
    state = model_state(model, TORCH)
    # LayerNorms start at 1/0 and biases at 0: perturb them so a swapped or dropped tensor shows.
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, 0.02, v.shape).astype(v.dtype)) if v.ndim == 1 else v for k, v in state.items()}


def kind_state(preset: str, kind: str) -> dict[str, np.ndarray]:
    state = seeded_state(preset)
    if kind == ENCODER:
        from maeconv.models.config import checkpoint_shapes

        keep = checkpoint_shapes(get_config(preset), ENCODER)
        state = {k: v for k, v in state.items() if k in keep}
    return state


def save_official(path, state, with_args=True):
    """The layout facebookresearch/mae writes: {'model': sd, 'args': Namespace, ...}."""
    obj = {"model": {k: torch.from_numpy(np.array(v)) for k, v in state.items()}}
    if with_args:
        obj.update(args=argparse.Namespace(model="mae_vit_tiny_patch8", norm_pix_loss=True), epoch=3)
    torch.save(obj, path)
    return path


def run_cli(*args, catch_exceptions: bool = True):
    """`maeconv ARGS...` in this process, as click runs it (stdout and stderr apart)."""
    from maeconv.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=catch_exceptions)
