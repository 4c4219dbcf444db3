"""The twins with their parameter names bound to the mapping layer, and canonical state dicts in
and out of them, strictly: every key accounted for. `get_twin(framework)` is how every layer above
models/ reaches a framework."""
from __future__ import annotations

import functools
from typing import Mapping

import numpy as np

from ..models.config import MAEConfig
from ..models.twins import FRAMEWORKS, MINDSPORE, TORCH, LoadReport, Twin, TwinError, task_of, twin_class
from ..errors import MaeconvError
from .schemes import get_scheme

__all__ = ["FRAMEWORKS", "MINDSPORE", "TORCH", "LoadReport", "Twin", "create_model", "get_twin", "load_state",
           "model_state", "task_of"]


@functools.cache
def get_twin(framework: str) -> Twin:
    """The adapter of `framework`'s twin, its own names mapped by its scheme's table."""
    try:
        adapter = twin_class(framework)
    except TwinError as error:
        raise MaeconvError(str(error)) from None
    return adapter(get_scheme(adapter.naming).canonical_names)


def create_model(config: MAEConfig, task: str, framework: str):
    return get_twin(framework).create(config, task)


def model_state(model, framework: str) -> dict[str, np.ndarray]:
    """The model's parameters as a canonical state dict of NumPy arrays."""
    return get_twin(framework).state(model)


def load_state(model, state: Mapping[str, np.ndarray], framework: str, source: str = "checkpoint",
               **options) -> LoadReport:
    """Copies a canonical state into the model (see Twin.load_state for `options`); a state that
    does not fit is an error naming `source`."""
    try:
        return get_twin(framework).load_state(model, state, **options)
    except TwinError as error:
        raise MaeconvError(f"{source}: {error}") from None
