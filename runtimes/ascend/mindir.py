"""The MindSpore twin to MindIR (`mindspore.export`), and MindIR files run as `nn.GraphCell`."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Mapping

from ...errors import MaeconvError, first_line
from ...convert.outputs import Companion, Target, remove_written
from ..runners import Runner
from ..tasks import Task, input_shapes, read_metadata


def export_mindir(cell, task: Task, config, path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Writes `cell` (a cell of models/mindspore/graphs.py) to `path`, which must end in .mindir
    (MindSpore appends the suffix otherwise). The batch axis is dynamic (-1 in the file).

    MindSpore saves a model whose weights total over 1 GiB apart (mindspore/train/serialization.py:
    `_save_together` against TOTAL_SAVE, then `_split_save`): `h_graph.mindir` and
    `h_variables/data_0`, the graph naming each tensor's file relative to its own folder; that
    save streams, one parameter at a time, while the one-file save holds the weights three times
    over. So it is made to split always; the graph is renamed to `h.mindir` (the user's name is
    the file to load, whatever the size) and weights up to SPLIT_BYTES are put back into it."""
    import mindspore as ms

    from .. import runners

    path = Path(path)
    if not str(path).endswith(".mindir"):
        raise ValueError(f"{path}: a MindIR path must end in .mindir")
    placeholders = [ms.Tensor(shape=[None, *shape[1:]], dtype=ms.float32)
                    for shape in input_shapes(task, config).values()]

    def record_metadata(model_proto):
        for key, value in metadata.items():
            model_proto.user_info[key] = value

    try:
        with _always_split():
            ms.export(cell, *placeholders, file_name=str(path), file_format="MINDIR", custom_func=record_metadata)
    except Exception as error:
        raise MaeconvError(f"{path}: MindIR export failed ({first_line(error)})") from None
    path.with_name(f"{mindir_prefix(path)}_graph.mindir").rename(path)
    if sum(param.nbytes for param in cell.get_parameters()) <= runners.SPLIT_BYTES:
        _inline_variables(path)


@contextlib.contextmanager
def _always_split():
    from mindspore.train import serialization

    limit = serialization.TOTAL_SAVE
    serialization.TOTAL_SAVE = -1  # `_save_together` compares the running total (KB) with it
    try:
        yield
    finally:
        serialization.TOTAL_SAVE = limit


def _inline_variables(path: Path) -> None:
    from ..inline import inline

    def locate(tensor):
        where = tensor.external_data
        return (where.location, where.offset, where.length) if where.location else None

    model = read_mindir(path, weights=True)
    for data in inline(path, model, "parameter", locate, lambda t: t.ClearField("external_data")):
        remove_written(path.parent / Path(data).parent)


class MindIRRunner(Runner):
    """A GraphCell of a loaded MindIR file."""

    def __init__(self, info, cell, name: str):
        super().__init__(info, name)
        self.cell = cell

    @classmethod
    def open(cls, path: str | os.PathLike) -> "MindIRRunner":
        import mindspore as ms

        path = Path(path)
        try:
            meta = mindir_metadata(path)
            info = read_metadata(meta, str(path))
            cell = ms.nn.GraphCell(ms.load(str(path)))
        except MaeconvError:
            raise
        except Exception as error:
            raise MaeconvError(f"{path}: not a readable MindIR file ({first_line(error)})") from None
        precision = meta.get("maeconv.precision", "fp32")
        return cls(info, cell, "MindIR GraphCell" + ("" if precision == "fp32" else f" {precision}"))

    def __call__(self, inputs):
        import mindspore as ms

        outputs = self.cell(*map(ms.Tensor, self._ordered(inputs)))
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return self._named(t.asnumpy() for t in outputs)


def read_mindir(path: str | os.PathLike, weights: bool = False):
    """The file's ModelProto, parsed as mindspore.load_mindir does (that function is deprecated since
    MindSpore 2.5 and says so on stderr at every call); without its parameters' bytes unless
    `weights` (a process about to run the graph would otherwise hold them twice more)."""
    from mindspore.train.mind_ir_pb2 import ModelProto

    from ..inline import read_skeleton

    if not weights:
        return read_skeleton(path, ModelProto, "parameter")
    model = ModelProto()
    with open(path, "rb") as f:
        model.ParseFromString(f.read())
    return model


def mindir_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `user_info` a MindIR file records (maeconv's `maeconv.*` keys)."""
    return dict(read_mindir(path).user_info)


def mindir_variables(path: str | os.PathLike) -> list[str]:
    """The files, relative to the graph's folder, that hold a split MindIR's weights."""
    graph = read_mindir(path).graph
    return sorted({param.external_data.location for param in graph.parameter if param.external_data.location})


# --- hooks for the runtime registry (runtimes/registry.py) ---

MINDIR_VARIABLES = re.compile(r"data_\d+")  # what mindspore.export writes in <name>_variables/


def mindir_prefix(path: str | os.PathLike) -> str:
    """The name MindSpore gives a split model's files: `h.mindir` -> `h_graph.mindir`, `h_variables/`."""
    name = Path(path).name
    return name[:-len(".mindir")] if name.endswith(".mindir") else name


def target(path: Path) -> Target:
    """`h.mindir` and, for large models, `h_variables/data_0...` (the graph keeps the name the user
    gave: MindSpore finds the variables by the relative path recorded in it)."""
    return Target(path, companions=(Companion(f"{mindir_prefix(path)}_variables", MINDIR_VARIABLES),))


def write(source, tmp: Path, job, log) -> list[str]:
    import mindspore as ms

    from ...models.mindspore.graphs import HalfGraph

    cell = source.graph if job.dtype == "fp32" else HalfGraph(source.graph, ms.float16)
    log(f"exporting MindIR ({job.dtype})")
    export_mindir(cell, source.info.task, source.info.config, tmp, job.info)
    return []


def load(path: Path, threads: int = 0) -> MindIRRunner:
    return MindIRRunner.open(path)


def file_metadata(path: Path) -> dict[str, str]:
    try:
        return mindir_metadata(path)
    except Exception as error:
        raise MaeconvError(f"{path}: not a readable MindIR file ({str(error).strip() or type(error).__name__})") \
            from None


weight_files = mindir_variables


def signature(path: Path, outputs) -> dict:
    from ..signature import mindir_signature, readable

    return readable(path, "MindIR file", lambda: mindir_signature(read_mindir(path), outputs))
