"""One calling convention for every runtime: `runner(inputs) -> outputs`, NumPy in and out,
named as the task names them. Validation, `maeconv predict` and the benchmark use it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .tasks import GraphInfo

# Weights over this go beside the graph, in both runtimes: protobuf cannot hold a file of 2 GiB,
# and 1 GiB is where MindSpore itself splits a MindIR (serialization.TOTAL_SAVE).
SPLIT_BYTES = 1 << 30


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
