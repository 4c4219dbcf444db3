"""The twins by framework name: the one place where a framework is chosen.

Each twin has one adapter (`models/<framework>/twin.py`) that does, in its framework, what the
rest of maeconv asks of a model: create it, give and take its state in canonical names (strictly,
or leaving named parts fresh), run it with NumPy in and out, take gradients, and wrap it as the
graph of a task. Everything above `models/` holds a `Twin` and never branches on the framework.

A twin's own parameter names may differ from the canonical ones (MindSpore's LayerNorm says
gamma/beta); that difference is data in the mapping layer (convert/schemes.py). The adapter is
handed the renaming when it is made (`convert.twins.get_twin`), so models/ imports nothing above it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from .config import CLASSIFIER, CLASSIFY, PRETRAIN, MAEConfig, decoder_shapes

TORCH, MINDSPORE = "torch", "mindspore"
FRAMEWORKS = (TORCH, MINDSPORE)
GRAPH, PYNATIVE = "graph", "pynative"  # MindSpore's execution modes; the torch twin has one
MODES = (GRAPH, PYNATIVE)
_ADAPTERS = {TORCH: "maeconv.models.torch.twin", MINDSPORE: "maeconv.models.mindspore.twin"}


class TwinError(ValueError):
    """A state that does not fit the model (names, shapes); the caller names the file."""


@dataclass(frozen=True)
class LoadReport:
    missing: tuple[str, ...] = ()  # model parameters the state did not provide (left as initialised)
    unused: tuple[str, ...] = ()   # state tensors the model has no place for (only when allowed)

    @property
    def decoder_absent(self) -> bool:
        return bool(self.missing)


def task_of(kind: str) -> str:
    """The model a checkpoint kind loads into: the classifier, or the pretraining model."""
    return CLASSIFY if kind == CLASSIFIER else PRETRAIN


def twin_class(framework: str) -> type["Twin"]:
    if framework not in _ADAPTERS:
        raise TwinError(f"unknown framework {framework!r}; expected {' or '.join(FRAMEWORKS)}")
    return importlib.import_module(_ADAPTERS[framework]).ADAPTER


class Twin:
    """What maeconv does with a model, framework-free; subclasses fill in the framework hooks."""

    name: str    # the framework
    naming: str  # the naming scheme of its parameters (a table in convert/schemes.py)
    label: str   # how it runs, in reports

    def __init__(self, to_canonical: Callable[[Iterable[str]], dict[str, str]]):
        self.to_canonical = to_canonical  # own parameter names -> canonical names

    # --- framework hooks ---

    def model_class(self, task: str):
        raise NotImplementedError

    def parameters(self, model) -> dict[str, object]:
        """Own name -> the framework's parameter, in the model's order."""
        raise NotImplementedError

    def to_numpy(self, value) -> np.ndarray:
        raise NotImplementedError

    def assign(self, model, own: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def run(self, model, method: str, *args):
        """`model.<method>(*args)` in inference, NumPy arrays in and out (others passed as they are)."""
        raise NotImplementedError

    def loss_gradients(self, model, images: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
        """d loss / d parameter of the pretraining model, by own name, trainable parameters only."""
        raise NotImplementedError

    def graph(self, model, task: str):
        """The model wrapped as the graph of an export task (runtimes/tasks.py)."""
        raise NotImplementedError

    def inference(self, model, mode: str = GRAPH):
        """The model switched to inference (and MindSpore to `mode`)."""
        raise NotImplementedError

    def initialise_head(self, model, std: float) -> None:
        """A fresh classifier head, trunc-normal as the reference fine-tuning starts it."""
        raise NotImplementedError

    # --- the same for every framework ---

    def create(self, config: MAEConfig, task: str, mode: str | None = None):
        """A freshly initialised model (the reference initialisation)."""
        if mode is not None:
            self.set_mode(mode)
        return self.model_class(task)(config)

    def set_mode(self, mode: str) -> None:
        """Only MindSpore has execution modes."""

    def build(self, state: Mapping[str, np.ndarray], config: MAEConfig, task: str, mode: str = GRAPH):
        """A model in inference with `state` loaded strictly."""
        model = self.create(config, task, mode)
        self.load_state(model, state)
        return self.inference(model, mode)

    def state(self, model) -> dict[str, np.ndarray]:
        """The model's parameters as a canonical state dict of NumPy arrays."""
        own = self.parameters(model)
        names = self.to_canonical(own)
        return {names[name]: self.to_numpy(value) for name, value in own.items()}

    def shapes(self, model) -> dict[str, tuple[int, ...]]:
        own = self.parameters(model)
        names = self.to_canonical(own)
        return {names[name]: tuple(value.shape) for name, value in own.items()}

    def load_state(self, model, state: Mapping[str, np.ndarray], *, fresh: tuple[str, ...] = (),
                   unused_ok: bool = False) -> LoadReport:
        """Copies a canonical state into the model. Strict by default: a name the model lacks, a
        wrong shape and a missing name are errors, except the whole decoder of an encoder-only
        checkpoint, reported in LoadReport.missing rather than silently left random. Parameters
        under the `fresh` prefixes are not taken from the state (they keep their initialisation);
        with `unused_ok`, names the model lacks are left out and reported instead."""
        expected = self.shapes(model)
        taken = {k: v for k, v in state.items() if not k.startswith(fresh)}
        unused = tuple(k for k in taken if k not in expected)
        if unused and not unused_ok:
            raise TwinError(f"{len(unused)} keys the model does not have (e.g. {unused[0]})")
        taken = {k: v for k, v in taken.items() if k in expected}
        wrong = [k for k in taken if tuple(taken[k].shape) != expected[k]]
        if wrong:
            raise TwinError(f"{wrong[0]} has shape {tuple(taken[wrong[0]].shape)}, the model expects {expected[wrong[0]]}")
        missing = tuple(k for k in expected if k not in taken and not k.startswith(fresh))
        if missing and set(missing) != set(dict(decoder_shapes(model.config))):
            raise TwinError(f"{len(missing)} keys missing (e.g. {missing[0]})")
        own_of = {canonical: own for own, canonical in self.to_canonical(self.parameters(model)).items()}
        self.assign(model, {own_of[name]: value for name, value in taken.items()})
        return LoadReport(missing, unused)

    def gradients(self, model, images: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
        """d loss / d parameter for every trainable parameter, by canonical name."""
        own = self.loss_gradients(model, images, noise)
        names = self.to_canonical(own)
        return {names[name]: grad for name, grad in own.items()}
