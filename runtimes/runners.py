"""One calling convention for every runtime: `runner(inputs) -> outputs`, NumPy in and out,
named as the task names them. Validation, `maeconv predict` and the benchmark use it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..convert.twins import MINDSPORE, TORCH
from ..errors import MaeconvError
from .tasks import GraphInfo

ONNX, MINDIR = "onnx", "mindir"
RUNTIMES = (TORCH, MINDSPORE, ONNX, MINDIR)
SUFFIX_OF_RUNTIME = {ONNX: ".onnx", MINDIR: ".mindir"}


@dataclass
class Runner:
    """Base: `info` says what the graph computes; `name` what runs it (shown in reports)."""

    info: GraphInfo
    name: str

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _ordered(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.ascontiguousarray(inputs[name], np.float32) for name in self.info.task.inputs]

    def _named(self, outputs) -> dict[str, np.ndarray]:
        return dict(zip(self.info.task.outputs, outputs))


class TwinRunner(Runner):
    """A twin wrapped as a task's graph (models/<framework>/graphs.py), run by its adapter."""

    def __init__(self, info: GraphInfo, twin, graph):
        super().__init__(info, twin.label)
        self.twin, self.graph = twin, graph

    def __call__(self, inputs):
        outputs = self.twin.run(self.graph, "__call__", *self._ordered(inputs))
        return self._named(outputs if isinstance(outputs, tuple) else (outputs,))


class MindSporeRunner(Runner):
    """A GraphCell of a loaded MindIR file."""

    def __init__(self, info: GraphInfo, cell, name: str):
        super().__init__(info, name)
        self.cell = cell

    def __call__(self, inputs):
        import mindspore as ms

        outputs = self.cell(*map(ms.Tensor, self._ordered(inputs)))
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return self._named(t.asnumpy() for t in outputs)


def twin_runner(loaded, task, framework: str, config=None) -> Runner:
    """The source twin of `task` with the canonical state of `loaded` (see load_canonical)."""
    from ..convert.twins import get_twin, task_of

    detected = loaded.detected
    config = config or detected.config
    twin = get_twin(framework)
    model = twin.build(loaded.state, config, task_of(detected.kind))
    return TwinRunner(GraphInfo(task, detected.preset, detected.kind, config), twin, twin.graph(model, task.name))


def runtime_of(path: str | os.PathLike) -> str:
    """The runtime a file implies: .onnx and .mindir are exported graphs, anything else a checkpoint."""
    suffix = Path(path).suffix.lower()
    return {".onnx": ONNX, ".mindir": MINDIR}.get(suffix, TORCH)


def open_graph(path: str | os.PathLike, runtime: str, threads: int = 0) -> Runner:
    """A runner for an exported file; the file's own metadata says its task and config."""
    path = Path(path)
    if not path.is_file():
        raise MaeconvError(f"{path}: no such file")
    if runtime == ONNX:
        from .onnx.session import OnnxRunner

        return OnnxRunner.open(path, threads=threads)
    if runtime == MINDIR:
        from .ascend.mindir import MindIRRunner

        return MindIRRunner.open(path)
    raise MaeconvError(f"{path}: runtime {runtime!r} runs checkpoints, not exported graphs")
