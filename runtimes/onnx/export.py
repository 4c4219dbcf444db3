"""The PyTorch twin to ONNX (torch.onnx's dynamo exporter), optional offline fusion with
onnxruntime's transformer optimizer, and dynamic int8 quantisation."""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

from ...errors import MaeconvError, first_line
from .. import runners
from ..tasks import Task, random_inputs

# Pinned: every op the twins need is in opset 18 (LayerNormalization since 17), and onnxruntime,
# MindSpore Lite's converter and TensorRT all read it.
OPSET = 18
INT8 = "int8"
QUANTIZED_OPS = ("MatMul",)  # the Linear layers: almost all of ViT's arithmetic


def weights_bytes(model) -> int:
    """The initializers' bytes of an onnx_ir model."""
    return sum(value.const_value.nbytes for value in model.graph.initializers.values()
               if value.const_value is not None)


def read_onnx(path: str | os.PathLike):
    """The file's ModelProto without its initializers' bytes (inline or external): what the file
    says about itself, at the memory cost of its graph."""
    import onnx

    from ..inline import read_skeleton

    return read_skeleton(path, onnx.ModelProto, "initializer")


def external_data(path: str | os.PathLike) -> list[str]:
    """The files, relative to the graph's folder, that hold an ONNX file's external weights."""
    model = read_onnx(path)
    return sorted({entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                   if entry.key == "location"})


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter warns about torchvision ops it cannot register and deprecated tree
    specs; none of that concerns these graphs."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(graph, task: Task, config, path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Writes `graph` (a module of models/torch/graphs.py) to `path`, batch axis dynamic; weights
    over runners.SPLIT_BYTES to `<path>.data`, which the graph names without a folder."""
    import torch

    example = random_inputs(task, config, batch=2, rng=np.random.default_rng(0))
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        try:
            program = torch.onnx.export(
                graph.eval(), tuple(torch.from_numpy(example[name]) for name in task.inputs), None,
                input_names=list(task.inputs), output_names=list(task.outputs), opset_version=OPSET,
                dynamo=True, dynamic_shapes=tuple({0: batch} for _ in task.inputs), verbose=False)
        except Exception as error:  # the exporter raises many types; the message is what counts
            raise MaeconvError(f"{path}: ONNX export failed ({first_line(error)})") from None
    program.model.metadata_props.update(metadata)
    program.model.metadata_props["maeconv.opset"] = str(OPSET)
    # Saved with external data always: that streams the weights, one tensor at a time, from the
    # twin's parameters. A single-file save builds the whole protobuf and then its serialised copy
    # (measured on ViT-B: 2.2 GB peak for 0.45 GB of weights).
    large = weights_bytes(program.model) > runners.SPLIT_BYTES
    program.save(str(path), external_data=True)
    del program
    if not large:
        inline_weights(path)


def inline_weights(path: str | os.PathLike) -> None:
    """Rewrites an ONNX file whose initializers are in `<path>.data` as one file, streaming."""
    import onnx

    from ..inline import inline

    def locate(tensor):
        where = {entry.key: entry.value for entry in tensor.external_data}
        return (where["location"], int(where.get("offset", 0)), int(where["length"])) if where else None

    def strip(tensor):
        tensor.ClearField("external_data")
        tensor.ClearField("data_location")

    path = Path(path)
    for data in inline(path, onnx.load(str(path), load_external_data=False), "initializer", locate, strip):
        (path.parent / data).unlink()


def fuse_transformer(src: str | os.PathLike, dst: str | os.PathLike, config) -> dict[str, int]:
    """onnxruntime's transformer optimizer: LayerNorm + residual -> SkipLayerNormalization,
    bias + erf GELU -> BiasGelu (attention stays unfused: the twin's fused-qkv pattern is not
    one the optimizer recognises). Returns the fused operator counts."""
    import onnx
    from onnxruntime.transformers import optimizer

    with _quiet_exporter(), contextlib.redirect_stdout(None):
        model = optimizer.optimize_model(str(src), model_type="vit", num_heads=config.num_heads,
                                         hidden_size=config.embed_dim, opt_level=0, use_gpu=False)
    counts = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    onnx.helper.set_model_props(model.model, {p.key: p.value for p in read_onnx(src).metadata_props})
    large = sum(t.ByteSize() for t in model.model.graph.initializer) > runners.SPLIT_BYTES
    model.save_model_to_file(str(dst), use_external_data_format=large)
    return counts


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = False) -> None:
    """Dynamic int8: weights quantised once (symmetric int8), activations per call (uint8). The
    result is a quarter of the float32 weights: one file up to 4 GiB of float32 weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a 'consider pre-processing' hint on every call
    try:
        # 7-bit weights: on x86 without VNNI (AVX2 only) the u8 x s8 integer kernels saturate their
        # 16-bit pair sums with full-range weights; measured on a tiny ViT, cosine 0.84 -> 0.9998.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                         reduce_range=True, op_types_to_quantize=list(QUANTIZED_OPS),
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    model = onnx.load(str(dst))
    props = {p.key: p.value for p in model.metadata_props}
    props["maeconv.precision"] = INT8
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))
