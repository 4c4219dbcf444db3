"""One calling convention for every runtime: `runner(inputs) -> outputs`, NumPy in and out,
named as the task names them. Validation, `maeconv predict` and the benchmark use it."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..convert.outputs import Companion, Target
from ..convert.twins import MINDSPORE, TORCH
from ..errors import MaeconvError
from .tasks import GraphInfo

ONNX, MINDIR = "onnx", "mindir"
RUNTIMES = (TORCH, MINDSPORE, ONNX, MINDIR)
SUFFIX_OF_RUNTIME = {ONNX: ".onnx", MINDIR: ".mindir"}
MINDIR_VARIABLES = re.compile(r"data_\d+")  # what mindspore.export writes in <name>_variables/
# Weights over this go beside the graph, in both runtimes: protobuf cannot hold a file of 2 GiB,
# and 1 GiB is where MindSpore itself splits a MindIR (serialization.TOTAL_SAVE).
SPLIT_BYTES = 1 << 30


def mindir_prefix(path: str | os.PathLike) -> str:
    """The name MindSpore gives a split model's files: `h.mindir` -> `h_graph.mindir`, `h_variables/`."""
    name = Path(path).name
    return name[:-len(".mindir")] if name.endswith(".mindir") else name


def graph_target(path: str | os.PathLike, runtime: str) -> Target:
    """An exported graph and the files its weights go to when they are large: ONNX external data
    `h.onnx.data`, MindIR variables `h_variables/data_0...` (the graph keeps the name the user
    gave: MindSpore finds the variables by the relative path recorded in it). They exist only
    for large models, move together, and `--force` replaces them together."""
    path = Path(path)
    if runtime == ONNX:
        return Target(path, companions=(Companion(f"{path.name}.data"),))
    return Target(path, companions=(Companion(f"{mindir_prefix(path)}_variables", MINDIR_VARIABLES),))


def graph_files(path: str | os.PathLike, runtime: str) -> list[Path]:
    """The files that make up an exported graph as it is on disk, its main file first."""
    target = graph_target(path, runtime)
    found = [target.path]
    for member in target.members[:-1]:
        if member.is_dir():
            found += sorted(entry for entry in member.iterdir() if entry.is_file())
        elif member.exists():
            found.append(member)
    return found


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

    def __init__(self, info: GraphInfo, twin, graph, name: str | None = None):
        super().__init__(info, name or twin.label)
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


def twin_runner(loaded, task, framework: str, config=None, mode: str | None = None) -> Runner:
    """The source twin of `task` with the canonical state of `loaded` (see load_canonical);
    MindSpore's in `mode` (graph unless told)."""
    from ..convert.twins import get_twin, task_of
    from ..models.twins import GRAPH

    detected = loaded.detected
    config = config or detected.config
    twin = get_twin(framework)
    # The references, not `loaded.state`: each tensor is read as it is copied into the twin, so
    # the checkpoint's weights are never in memory twice.
    model = twin.build(loaded.refs, config, task_of(detected.kind), mode or GRAPH)
    name = None if (mode or GRAPH) == GRAPH else f"{twin.name} {mode} mode"
    return TwinRunner(GraphInfo(task, detected.preset, detected.kind, config), twin, twin.graph(model, task.name),
                      name)


def runtime_of(path: str | os.PathLike) -> str:
    """The runtime a file implies: .onnx and .mindir are exported graphs, anything else a checkpoint."""
    suffix = Path(path).suffix.lower()
    return {".onnx": ONNX, ".mindir": MINDIR}.get(suffix, TORCH)


def open_graph(path: str | os.PathLike, runtime: str, threads: int = 0) -> Runner:
    """A runner for an exported file; the file's own metadata says its task and config."""
    path = Path(path)
    if not path.is_file():
        raise MaeconvError(f"{path}: no such file")
    if runtime in (ONNX, MINDIR):
        from .describe import check_weight_files

        check_weight_files(path, runtime)
    if runtime == ONNX:
        from .onnx.session import OnnxRunner

        return OnnxRunner.open(path, threads=threads)
    if runtime == MINDIR:
        from .ascend.mindir import MindIRRunner

        return MindIRRunner.open(path)
    raise MaeconvError(f"{path}: runtime {runtime!r} runs checkpoints, not exported graphs")
