"""What an exported graph itself declares, read from its protobuf without its weights: the inputs
and outputs with their dtypes and shapes (the batch axis as 'N'), the ONNX opset, the producer.
`maeconv inspect` shows it beside the metadata maeconv recorded, so a graph whose recorded task
and actual signature disagree shows it. The runtimes' hooks (`signature`) call these."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..errors import MaeconvError

BATCH = "N"
# The element types of both protobufs (ONNX TensorProto.DataType; MindIR's numbers the same ones alike).
ELEMENT_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}


def readable(path: Path, what: str, read: Callable[[], dict]) -> dict:
    """`read()`, with a file it cannot parse refused in one line."""
    try:
        return read()
    except Exception as error:  # protobuf's DecodeError and friends
        raise MaeconvError(f"{path}: not a readable {what} ({str(error).strip() or type(error).__name__})") from None


def onnx_signature(model) -> dict:
    """`model`: an ONNX ModelProto."""

    def values(entries) -> dict:
        shown = {}
        for value in entries:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else BATCH for d in tensor.shape.dim]
            shown[value.name] = {"dtype": ELEMENT_TYPES.get(tensor.elem_type, str(tensor.elem_type)), "shape": dims}
        return shown

    opsets = [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")]
    return {"opset": opsets[0] if opsets else None,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "inputs": values(model.graph.input), "outputs": values(model.graph.output)}


def mindir_signature(model, output_names: Sequence[str]) -> dict:
    """`model`: a MindIR ModelProto. MindIR names its inputs `<graph>:<argument>` and its outputs
    one tuple of tensors, given here the names the task records, in order."""

    def shown(tensor) -> dict:
        return {"dtype": ELEMENT_TYPES.get(tensor.data_type, str(tensor.data_type)),
                "shape": [BATCH if d < 0 else d for d in tensor.dims]}

    inputs = {value.name.rpartition(":")[2]: shown(value.tensor[0]) for value in model.graph.input if value.tensor}
    tensors = []
    for value in model.graph.output:
        if value.tensor:
            tensors += list(value.tensor)
        else:  # a tuple of outputs
            tensors += [t for item in value.attr_info.values for t in item.tensors]
    outputs = dict(zip(output_names, map(shown, tensors)))
    version = model.producer_version or model.model_version  # MindSpore records its version in the latter
    return {"opset": None, "producer": f"{model.producer_name} {version}".strip(),
            "inputs": inputs, "outputs": outputs}
