"""One-file models written streaming from a model saved with its weights beside it.

ONNX and MindIR are protobuf messages of the same shape: a model holding a graph holding tensors,
each with `raw_data` or a reference to bytes in another file. Serialising such a model whole
builds every tensor into the message and then a serialised copy of all of it (measured: ViT-B,
0.45 GB of weights, peaks at 2.2 GB through torch.onnx and 1.9 GB through mindspore.export).
Both can instead save their weights beside the graph one tensor at a time; this writes the
single file from that, field by field (a message's fields may come in any order), each tensor's
bytes copied from its data file in chunks, so memory stays near the graph without its weights.
What such a file says about itself is read back the same way, its tensors' bytes skipped
(`read_skeleton`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import MaeconvError

CHUNK = 64 << 20
# Where a tensor's bytes are: (file relative to the graph's folder, offset, length), or None.
Locate = Callable[[object], "tuple[str, int, int] | None"]


def inline(path: str | os.PathLike, model, tensors_field: str, locate: Locate,
           strip: Callable[[object], None]) -> list[str]:
    """Rewrites `path` (whose parsed `model` names external tensors in `model.graph.<tensors_field>`)
    as one file; returns the data files it read, for the caller to remove."""
    path = Path(path)
    graph = model.graph
    tensors = list(getattr(graph, tensors_field))
    graph.ClearField(tensors_field)
    tensor_number = graph.DESCRIPTOR.fields_by_name[tensors_field].number
    heads = [_head(tensor, tensor_number, locate, strip) for tensor in tensors]
    graph_rest = graph.SerializeToString()
    graph_number = model.DESCRIPTOR.fields_by_name["graph"].number
    model.ClearField("graph")
    graph_size = len(graph_rest) + sum(len(head) + length for head, _, _, length in heads)
    single = path.with_name(f"{path.name}.single")
    with open(single, "wb") as out:
        out.write(model.SerializeToString())
        out.write(_field(graph_number, graph_size) + graph_rest)
        for head, location, offset, length in heads:
            out.write(head)
            if length:
                _copy(path.parent / location, offset, length, out, path)
    os.replace(single, path)
    return sorted({location for _, location, _, length in heads if length})


def _copy(source: Path, offset: int, length: int, out, shown: Path) -> None:
    with open(source, "rb") as data:
        data.seek(offset)
        while length:
            chunk = data.read(min(length, CHUNK))
            if not chunk:
                raise MaeconvError(f"{shown}: {source.name} ends inside a tensor")
            out.write(chunk)
            length -= len(chunk)


def _head(tensor, tensor_number: int, locate: Locate, strip: Callable[[object], None]) -> tuple[bytes, str, int, int]:
    """An entry's bytes up to its raw data, and where that data is."""
    where = locate(tensor)
    stub = type(tensor)()
    stub.CopyFrom(tensor)
    strip(stub)
    body = stub.SerializeToString()
    if where is None:  # a tensor small enough to have stayed in the graph
        return _field(tensor_number, len(body)) + body, "", 0, 0
    location, offset, length = where
    raw_number = tensor.DESCRIPTOR.fields_by_name["raw_data"].number
    body += _field(raw_number, length)
    return _field(tensor_number, len(body) + length) + body, location, offset, length


def _field(number: int, length: int) -> bytes:
    """A length-delimited field's tag and length."""
    return _varint(number << 3 | 2) + _varint(length)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_skeleton(path: str | os.PathLike, model_type, tensors_field: str):
    """`path`'s model (a `model_type` protobuf) parsed without the bytes of the tensors in
    graph.<tensors_field>: what it says (metadata, signature, where external weights are) at the
    memory cost of its graph. The tensors' data is skipped in the file, never read: a MindIR or
    ONNX file parsed whole holds its weights twice (the bytes read and the message)."""
    model = model_type()
    graph_number = model.DESCRIPTOR.fields_by_name["graph"].number
    graph_fields = model.DESCRIPTOR.fields_by_name["graph"].message_type.fields_by_name
    tensor_number = graph_fields[tensors_field].number
    raw_number = graph_fields[tensors_field].message_type.fields_by_name["raw_data"].number
    with open(path, "rb") as f:
        walker = _Walker(f)
        model.ParseFromString(_kept(walker, 0, os.fstat(f.fileno()).st_size, (graph_number, tensor_number), raw_number))
    return model


def _kept(walker: "_Walker", start: int, end: int, descend: tuple[int, ...], drop: int) -> bytes:
    """The message in [start, end) with field `drop` removed from the messages `descend` leads to."""
    out = bytearray()
    for number, wire, head, value, field_end in walker.fields(start, end):
        if descend and number == descend[0] and wire == 2:
            inner = _kept(walker, value, field_end, descend[1:], drop)
            out += _field(number, len(inner)) + inner
        elif descend or number != drop:
            out += walker.read(head, field_end)
    return bytes(out)


class _Walker:
    """Protobuf fields of a file's byte range, found by their tags and lengths alone."""

    def __init__(self, file):
        self.file = file

    def read(self, start: int, end: int) -> bytes:
        self.file.seek(start)
        data = self.file.read(end - start)
        if len(data) != end - start:
            raise ValueError("the file ends inside a field")
        return data

    def fields(self, start: int, end: int):
        """(number, wire type, where its tag starts, where its value starts, where it ends)."""
        at = start
        while at < end:
            tag, value = self._varint(at, end)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                _, field_end = self._varint(value, end)
            elif wire == 1:
                field_end = value + 8
            elif wire == 5:
                field_end = value + 4
            elif wire == 2:
                length, value = self._varint(value, end)
                field_end = value + length
            else:
                raise ValueError(f"unsupported protobuf wire type {wire}")
            if number == 0 or field_end > end:
                raise ValueError("a field runs past its message")
            yield number, wire, at, value, field_end
            at = field_end

    def _varint(self, at: int, end: int) -> tuple[int, int]:
        """The varint at `at`, and where what follows it starts."""
        self.file.seek(at)
        data = self.file.read(min(10, end - at))
        result = 0
        for index, byte in enumerate(data):
            result |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                return result, at + index + 1
        raise ValueError("a varint runs past its message")
