"""The MindSpore twin to MindIR (`mindspore.export`), and MindIR files run as `nn.GraphCell`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ...errors import MaeconvError
from ..runners import MindSporeRunner
from ..tasks import Task, input_shapes, read_metadata


def export_mindir(cell, task: Task, config, path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Writes `cell` (a cell of models/mindspore/graphs.py) to `path`, which must end in .mindir
    (MindSpore appends the suffix otherwise). The batch axis is dynamic (-1 in the file)."""
    import mindspore as ms

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


class MindIRRunner(MindSporeRunner):
    @classmethod
    def open(cls, path: str | os.PathLike) -> "MindIRRunner":
        import mindspore as ms

        path = Path(path)
        try:
            info = read_metadata(dict(ms.load_mindir(str(path)).user_info), str(path))
            cell = ms.nn.GraphCell(ms.load(str(path)))
        except MaeconvError:
            raise
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise MaeconvError(f"{path}: not a readable MindIR file ({first})") from None
        return cls(info, cell, "MindIR GraphCell")
