"""What `maeconv inspect` shows: of a checkpoint, its format, names and kind (convert.pipeline);
of an exported graph, the metadata maeconv recorded in it and the files it is made of, read
without loading its weights."""
from __future__ import annotations

import os
from pathlib import Path

from ..convert.pipeline import describe as describe_checkpoint
from ..convert.settings import settings_record
from ..errors import MaeconvError
from ..convert.jsontext import strict_json
from .registry import EXPORTED, check_weight_files, get_runtime, runtime_of
from .tasks import read_metadata


def describe(source: str | os.PathLike, scheme: str | None = None) -> dict:
    """`scheme`: the naming scheme of a checkpoint, when detection should not decide. A graph
    maeconv did not export is described by the checkpoint reader, which says what the file is."""
    if _is_maeconv_graph(Path(source)):
        return describe_graph(source)
    return describe_checkpoint(source, scheme)


def _is_maeconv_graph(path: Path) -> bool:
    runtime = get_runtime(runtime_of(path))
    if not runtime.exported or not path.is_file():
        return False
    try:
        return "maeconv.task" in runtime.hooks.file_metadata(path)
    except MaeconvError:
        return False


def describe_graph(source: str | os.PathLike) -> dict:
    path = Path(source)
    runtime = get_runtime(runtime_of(path))
    if not runtime.exported:
        raise MaeconvError(f"{path}: not an exported graph ({' or '.join(get_runtime(name).suffix for name in EXPORTED)})")
    if not path.is_file():
        raise MaeconvError(f"{path}: no such file")
    meta = runtime.hooks.file_metadata(path)
    info = read_metadata(meta, str(path))
    files = [path, *check_weight_files(path, runtime.name)]
    declared = runtime.hooks.signature(path, info.task.outputs)
    described = {
        "file": str(path),
        "format": runtime.name,
        "task": info.task.name,
        "preset": info.preset,
        "kind": info.kind,
        "precision": meta.get("maeconv.precision", "fp32"),
        "settings": settings_record(info.config),
        "opset": declared["opset"],
        "producer": declared["producer"],
        "inputs": declared["inputs"],
        "outputs": declared["outputs"],
        "img_size": info.config.img_size,
        "config": strict_json(meta["maeconv.config"]),
        "files": {str(f): f.stat().st_size for f in files},
        "bytes": sum(f.stat().st_size for f in files),
    }
    if described["opset"] is None:
        del described["opset"]  # MindIR has none
    return described
