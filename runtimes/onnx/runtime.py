"""The ONNX runtime's hooks for the registry (runtimes/registry.py): torch twin -> .onnx (+ .data
when large), run with onnxruntime."""
from __future__ import annotations

import contextlib
from pathlib import Path

from ...convert.outputs import Companion, Target
from ...errors import MaeconvError
from ...models.config import PRETRAIN

FP32 = "fp32"


def target(path: Path) -> Target:
    """`h.onnx` and, for large models, its external data `h.onnx.data`."""
    return Target(path, companions=(Companion(f"{path.name}.data"),))


def check_options(out: Path, task, dtype: str, options: dict) -> None:
    quantize = options.get("quantize")
    if quantize and dtype != FP32:
        raise MaeconvError(f"{out}: --quantize int8 starts from the float32 graph; give either it or --dtype")
    if quantize and task.name == PRETRAIN:
        raise MaeconvError(f"{out}: --quantize int8 is offered for the features and classify tasks "
                           "(reconstructions are pictures: export them in fp32)")


def load(path: Path, threads: int = 0):
    from .session import OnnxRunner

    return OnnxRunner.open(path, threads=threads)


def file_metadata(path: Path) -> dict[str, str]:
    from .export import read_onnx

    try:
        model = read_onnx(path)
    except Exception as error:  # protobuf's DecodeError and friends
        raise MaeconvError(f"{path}: not a readable ONNX model ({str(error).strip() or type(error).__name__})") \
            from None
    return {p.key: p.value for p in model.metadata_props}


def signature(path: Path, outputs) -> dict:
    from ..signature import onnx_signature, readable
    from .export import read_onnx

    return readable(path, "ONNX model", lambda: onnx_signature(read_onnx(path)))


def weight_files(path: Path) -> list[str]:
    from .export import external_data

    return external_data(path)


def write(source, tmp: Path, job, log) -> list[str]:
    """The torch twin's task graph to `tmp`: exported in `job.dtype`, then fused (--optimize) and
    quantised (--quantize int8) through intermediate files that never outlive the call."""
    import torch

    from ...models.torch.graphs import HalfGraph
    from .export import OPSET, export_onnx, fuse_transformer, quantize_int8

    task, config = source.info.task, source.info.config
    quantize, optimize = job.options.get("quantize"), job.options.get("optimize")
    stages = [tmp.with_name(f"{tmp.name}.{stage}.onnx") for stage in ("fp32", "fused")]
    notes = []
    try:
        current = stages[0] if (quantize or optimize) else tmp
        graph = source.graph if job.dtype == FP32 else HalfGraph(source.graph, torch.float16)
        log(f"exporting ONNX (opset {OPSET}, dynamic batch, {job.dtype}) from the torch twin")
        export_onnx(graph, task, config, current, job.info)
        del graph
        notes.append(f"ONNX opset {OPSET}, inputs {', '.join(task.inputs)} with a dynamic batch axis 'batch'")
        if job.dtype != FP32:
            notes.append(f"{job.dtype}: weights and arithmetic in {job.dtype}; inputs and outputs float32, "
                         "cast at the graph's boundary")
        if optimize:
            log("fusing with onnxruntime's transformer optimizer")
            target_path = stages[1] if quantize else tmp
            fused = fuse_transformer(current, target_path, config)
            notes.append("fused: " + (", ".join(f"{op} x{n}" for op, n in fused.items()) or "nothing"))
            current = target_path
        if quantize:
            log("quantising to int8 (dynamic, MatMul weights)")
            quantize_int8(current, tmp)
            notes.append("int8: dynamic quantisation of the MatMul weights; activations quantised per call")
    finally:
        for stage in stages:  # with the external data a large stage wrote beside it
            for leftover in (stage, stage.with_name(f"{stage.name}.data")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
    return notes
