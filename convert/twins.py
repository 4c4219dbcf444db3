"""Canonical state dicts in and out of the twin models, strictly: every key accounted for."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..models.config import CLASSIFIER, CLASSIFY, PRETRAIN, MAEConfig, decoder_shapes
from .checkpoints import MINDSPORE, TORCH, numpy_to_torch, torch_to_numpy
from .errors import MaeconvError
from .tensors import TensorRef, as_ref
from .schemes import MINDSPORE as MINDSPORE_SCHEME, apply_from_canonical, apply_to_canonical


@dataclass(frozen=True)
class LoadReport:
    missing: tuple[str, ...] = ()  # model parameters the state did not provide (left as initialised)

    @property
    def decoder_absent(self) -> bool:
        return bool(self.missing)


def create_model(config: MAEConfig, task: str, framework: str):
    if framework == TORCH:
        from ..models.torch import MODEL_CLASSES
    elif framework == MINDSPORE:
        from ..models.mindspore import MODEL_CLASSES
    else:
        raise MaeconvError(f"unknown framework {framework!r}; expected {TORCH} or {MINDSPORE}")
    return MODEL_CLASSES[task](config)


def task_of(kind: str) -> str:
    return CLASSIFY if kind == CLASSIFIER else PRETRAIN


def model_state(model, framework: str) -> dict[str, np.ndarray]:
    """The model's parameters as a canonical state dict of NumPy arrays."""
    if framework == TORCH:
        return {name: torch_to_numpy(t) for name, t in model.state_dict().items()}
    own = {name: p.asnumpy() for name, p in model.parameters_and_names()}
    return {name: ref.load() for name, ref in apply_to_canonical(MINDSPORE_SCHEME.plan_to_canonical(own), own).items()}


def load_state(model, state: Mapping[str, np.ndarray | TensorRef], framework: str,
               source: str = "checkpoint") -> LoadReport:
    """Copies a canonical state into the model. Unexpected keys and wrong shapes are errors;
    a missing key is an error too, except the whole decoder of an encoder-only checkpoint,
    which is reported (LoadReport.missing) rather than silently left random."""
    expected = _canonical_shapes(model, framework)
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise MaeconvError(f"{source}: {len(unexpected)} keys the model does not have (e.g. {unexpected[0]})")
    reshaped = [k for k, shape in expected.items() if k in state and tuple(state[k].shape) != shape]
    if reshaped:
        k = reshaped[0]
        raise MaeconvError(f"{source}: {k} has shape {tuple(state[k].shape)}, the model expects {expected[k]}")
    missing = tuple(k for k in expected if k not in state)
    if missing and set(missing) != set(dict(decoder_shapes(model.config))):
        raise MaeconvError(f"{source}: {len(missing)} keys missing (e.g. {missing[0]})")
    if framework == TORCH:
        import torch

        with torch.no_grad():
            for name, tensor in model.state_dict(keep_vars=True).items():
                if name in state:
                    tensor.copy_(numpy_to_torch(as_ref(state[name]).load()))
    else:
        import mindspore as ms

        own = apply_from_canonical(MINDSPORE_SCHEME.plan_from_canonical(state), state)
        for name, param in model.parameters_and_names():
            if name in own:
                dtype = ms.dtype_to_nptype(param.dtype)
                param.set_data(ms.Tensor(np.ascontiguousarray(own[name].load(), dtype=dtype)))
    return LoadReport(missing)


def _canonical_shapes(model, framework: str) -> dict[str, tuple[int, ...]]:
    if framework == TORCH:
        return {name: tuple(t.shape) for name, t in model.state_dict().items()}
    own = [name for name, _ in model.parameters_and_names()]
    shapes = {name: tuple(p.shape) for name, p in model.parameters_and_names()}
    return {step.canonical: shapes[step.foreign[0]] for step in MINDSPORE_SCHEME.plan_to_canonical(own)}
