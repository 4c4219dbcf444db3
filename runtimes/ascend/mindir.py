"""The MindSpore twin to MindIR (`mindspore.export`), and MindIR files run as `nn.GraphCell`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ...convert.errors import MaeconvError
from ..runners import MindSporeRunner, mindir_prefix
from ..tasks import Task, input_shapes, read_metadata


def export_mindir(cell, task: Task, config, path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Writes `cell` (a cell of runtimes/ascend/graphs.py) to `path`, which must end in .mindir
    (MindSpore appends the suffix otherwise). The batch axis is dynamic (-1 in the file).

    Weights over 1 GiB MindSpore writes apart (mindspore/train/serialization.py: `_save_together`
    against TOTAL_SAVE, then `_split_save`): `h_graph.mindir` and `h_variables/data_0`, the graph
    naming each tensor's file relative to its own folder. The graph is renamed to `h.mindir`, so
    the user's name is the file to load, whatever the size."""
    import mindspore as ms

    path = Path(path)
    if not str(path).endswith(".mindir"):
        raise ValueError(f"{path}: a MindIR path must end in .mindir")
    placeholders = [ms.Tensor(shape=[None, *shape[1:]], dtype=ms.float32)
                    for shape in input_shapes(task, config).values()]

    def record_metadata(model_proto):
        for key, value in metadata.items():
            model_proto.user_info[key] = value

    try:
        ms.export(cell, *placeholders, file_name=str(path), file_format="MINDIR", custom_func=record_metadata)
    except Exception as error:
        raise MaeconvError(f"{path}: MindIR export failed ({str(error).strip().splitlines()[0]})") from None
    split = path.with_name(f"{mindir_prefix(path)}_graph.mindir")
    if split.exists() and not path.exists():
        split.rename(path)


class MindIRRunner(MindSporeRunner):
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
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise MaeconvError(f"{path}: not a readable MindIR file ({first})") from None
        precision = meta.get("maeconv.precision", "fp32")
        return cls(info, cell, "MindIR GraphCell" + ("" if precision == "fp32" else f" {precision}"))


def mindir_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `user_info` a MindIR file records (maeconv's `maeconv.*` keys)."""
    import mindspore as ms

    return dict(ms.load_mindir(str(path)).user_info)


def mindir_variables(path: str | os.PathLike) -> list[str]:
    """The files, relative to the graph's folder, that hold a split MindIR's weights."""
    import mindspore as ms

    graph = ms.load_mindir(str(path)).graph
    return sorted({param.external_data.location for param in graph.parameter if param.external_data.location})
