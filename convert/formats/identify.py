"""What a file is when it is not a checkpoint, so that a user who passes an image, an exported model
or a web page hears that, rather than a parser's complaint about its bytes."""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

READS = "maeconv reads .pth/.bin/.safetensors/.ckpt files and Hugging Face directories"

MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"), (b"%PDF-", "a PDF document"), (b"\x1f\x8b", "a gzip file"),
    (b"BZh", "a bzip2 file"), (b"\xfd7zXZ\x00", "an xz file"), (b"\x28\xb5\x2f\xfd", "a zstd file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"), (b"\x7fELF", "an executable"), (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras or h5py)"), (b"PK\x05\x06", "an empty zip archive"),
)
HEAD = 4096


def describe(path: Path) -> str | None:
    """What the file is, if it is recognisably something other than a checkpoint; else None."""
    with open(path, "rb") as f:
        head = f.read(HEAD)
        for magic, what in MAGIC:
            if head.startswith(magic):
                return what
        if head[257:262] == b"ustar":
            return "a tar archive"
        return _protobuf_model(f, path.stat().st_size) or _text(head)


def describe_zip(names: list[str]) -> str:
    """What a zip archive that is not a torch checkpoint holds."""
    if is_torchscript(names):
        return "a TorchScript archive (torch.jit.save)"
    if names and all(name.endswith(".npy") for name in names):
        return "a NumPy .npz archive"
    return "a zip archive without data.pkl"


def is_torchscript(names: list[str]) -> bool:
    return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in names) and \
        any("/code/" in name for name in names)


# ONNX's ModelProto opens with ir_version (field 1, a varint); MindIR's opens with ir_version as a
# string (field 1) then producer_name (2); both hold the graph in field 7. A MindSpore checkpoint
# holds nothing but field-1 messages at its top level.
ONNX_FIELDS = {(1, 0), (7, 2)}
MINDIR_FIELDS = {(1, 2), (2, 2), (7, 2)}


def _protobuf_model(f: BinaryIO, size: int) -> str | None:
    fields = _top_level_fields(f, size)
    if ONNX_FIELDS <= fields:
        return "an ONNX model"
    if MINDIR_FIELDS <= fields:
        return "a MindIR model (mindspore.export)"
    return None


def _top_level_fields(f: BinaryIO, size: int, most: int = 16) -> set[tuple[int, int]]:
    """(field number, wire type) of the first `most` top-level fields of a protobuf message, read
    until anything does not parse."""
    found: set[tuple[int, int]] = set()
    f.seek(0)
    for _ in range(most):
        key = _varint(f)
        if key is None or f.tell() >= size:
            break
        field, wire = key >> 3, key & 7
        if wire == 0 and _varint(f) is None:
            break
        if wire == 2:
            length = _varint(f)
            if length is None or f.tell() + length > size:
                break
            f.seek(length, 1)
        elif wire not in (0, 2) or field == 0:
            break
        found.add((field, wire))
    return found


def _varint(f: BinaryIO) -> int | None:
    value = 0
    for shift in range(0, 70, 7):
        byte = f.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    return None


def _text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a character cut at the end of the head is still text
        if error.start < len(head) - 3:
            return None
        text = head[:error.start].decode("utf-8")
    text = text.removeprefix("\ufeff")  # a byte-order mark, as some editors write
    if not text or not all(c.isprintable() or c in "\t\r\n\f" for c in text):
        return None
    start = text.lstrip().lower()
    if start.startswith("version https://git-lfs.github.com/spec/"):
        return "a Git LFS pointer, not the file it points to (fetch it with git lfs pull)"
    if start.startswith(("<!doctype html", "<html")):
        return "an HTML page (a download that returned a web page?)"
    if start.startswith(("{", "[")):
        return "a JSON file"
    return "a text file"
