"""What `maeconv inspect` shows of an exported graph: the metadata maeconv recorded in it and the
files it is made of, read without loading its weights."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..convert.settings import settings_record
from ..errors import MaeconvError
from .runners import MINDIR, ONNX, runtime_of
from .tasks import read_metadata


def graph_metadata(path: Path, runtime: str) -> dict[str, str]:
    if runtime == ONNX:
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # protobuf's DecodeError and friends
            raise MaeconvError(f"{path}: not a readable ONNX model ({str(error).strip() or type(error).__name__})") \
                from None
        return {p.key: p.value for p in model.metadata_props}
    from .ascend.mindir import mindir_metadata

    try:
        return mindir_metadata(path)
    except Exception as error:
        raise MaeconvError(f"{path}: not a readable MindIR file ({str(error).strip() or type(error).__name__})") \
            from None


def weight_files(path: Path, runtime: str) -> list[str]:
    """The files beside the graph that it names as holding its weights (none when it holds them)."""
    if runtime == ONNX:
        from .onnx.export import external_data

        return external_data(path)
    from .ascend.mindir import mindir_variables

    return mindir_variables(path)


def check_weight_files(path: Path, runtime: str) -> list[Path]:
    """The files holding the graph's weights, by the names the graph records (so a renamed graph
    still finds them); one whose weights were not moved with it fails here, in one line, not
    deep inside a runtime."""
    named = [path.parent / name for name in weight_files(path, runtime)]
    missing = [f for f in named if not f.is_file()]
    if missing:
        raise MaeconvError(f"{path}: its weights are in {missing[0].relative_to(path.parent)}, which is not "
                           "beside it (the files of an export are copied and moved together)")
    return named


def describe_graph(source: str | os.PathLike) -> dict:
    path = Path(source)
    runtime = runtime_of(path)
    if runtime not in (ONNX, MINDIR):
        raise MaeconvError(f"{path}: not an exported graph (.onnx or .mindir)")
    if not path.is_file():
        raise MaeconvError(f"{path}: no such file")
    meta = graph_metadata(path, runtime)
    info = read_metadata(meta, str(path))
    files = [path, *check_weight_files(path, runtime)]
    declared = graph_signature(path, runtime, info.task.outputs)
    described = {
        "file": str(path),
        "format": runtime,
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
        "config": json.loads(meta["maeconv.config"]),
        "files": {str(f): f.stat().st_size for f in files},
        "bytes": sum(f.stat().st_size for f in files),
    }
    if described["opset"] is None:
        del described["opset"]  # MindIR has none
    return described


def graph_signature(path: Path, runtime: str, output_names) -> dict:
    """The inputs and outputs (dtype, shape), opset and producer the graph itself declares."""
    from .signature import mindir_signature, onnx_signature

    try:
        return onnx_signature(path) if runtime == ONNX else mindir_signature(path, output_names)
    except Exception as error:  # protobuf's DecodeError and friends
        raise MaeconvError(f"{path}: not a readable {runtime} graph ({str(error).strip() or type(error).__name__})") \
            from None
