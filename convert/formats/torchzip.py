"""PyTorch's zip checkpoints (.pth/.bin), read lazily without executing anything in the file, and
written streaming in torch.save's layout.

The pickle inside (data.pkl) is interpreted by torchpickle's restricted unpickler, so no code from
the file can run. Each storage is one zip entry: a stored entry is a file region that tensors map
straight from; a deflated one (a checkpoint re-zipped by a zip tool) is inflated when a tensor is
read, exactly its declared size, CRC-checked. Every declared size is checked against the file before
anything is allocated. A global this reader does not interpret raises `Unsupported`, once the rest
of the pickle is checked, for `torch.load(weights_only=True)`, which reads it eagerly; what is
malformed raises MaeconvError.
"""
from __future__ import annotations

import io
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ...errors import MaeconvError
from ..tensors import COPY_CHUNK, MAX_TENSORS, TensorRef, Verdict, read_file_array, write_all, write_stream
from . import identify
from .torchpickle import (MAX_PICKLE_BYTES, STORAGE_DTYPES, Invalid, Storage, StorageTable, Unsupported,
                          contiguous_strides, file_storage, unpickle)

# Deflate codes a 258-byte match in 2 bits at best: no stream inflates more than 1032 times its size.
MAX_DEFLATE_RATIO = 1032


@dataclass(frozen=True)
class Entry:
    """One zip entry's data: `compressed_size` bytes at `offset`, `size` bytes once inflated."""

    name: str
    offset: int
    size: int
    compressed_size: int
    deflated: bool
    crc: int


def read(path: Path):
    """The unpickled object, with TensorRef in place of every tensor.

    Raises Unsupported when the file needs torch's own loader, MaeconvError when it is malformed."""
    if _central_directory_size(path) > CENTRAL_BYTES_PER_ENTRY * MAX_TENSORS:
        raise _unreadable(path, f"a zip index larger than {MAX_TENSORS} tensors need")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as error:
        raise _unreadable(path, f"not a complete zip archive: {error}") from None
    except NotImplementedError as error:  # zipfile refuses a "version needed to extract" above its own
        raise _unreadable(path, f"a zip archive Python's zipfile cannot read ({error})") from None
    try:
        return _read_archive(path, infos)
    except Invalid as error:
        raise _unreadable(path, str(error)) from None


# A central directory record is 46 bytes, the name (some 20 in torch's layout) and extra fields.
CENTRAL_BYTES_PER_ENTRY = 128


def _central_directory_size(path: Path) -> int:
    """The central directory's size, as the end record (or its zip64 form, where a locator points to
    one) gives it: zipfile reads and indexes all of it, some ten times its size in memory, before any
    entry can be checked. 0 if there is no end record (zipfile says what is wrong)."""
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        f.seek(max(0, end - (1 << 16) - 22))  # the end record, then a comment of at most 64 KiB
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) < at + 22:
            return 0
        size = struct.unpack_from("<I", tail, at + 12)[0]
        if at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":
            f.seek(struct.unpack_from("<Q", tail, at - 12)[0])
            record = f.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                size = struct.unpack_from("<Q", record, 40)[0]
    return size


def _unreadable(path: Path, reason: str) -> MaeconvError:
    return MaeconvError(f"{path}: not a readable PyTorch checkpoint ({reason})")


def _read_archive(path: Path, infos: list[zipfile.ZipInfo]):
    prefix = _record_prefix(path, [info.filename for info in infos])
    entries = _entries(path, infos)
    _check_records(path, entries, prefix)
    pickled = _entry_bytes(path, entries[f"{prefix}/data.pkl"])

    def storages() -> StorageTable:
        return StorageTable(5, lambda key, dtype, numel, _: _storage(path, prefix, entries, key, dtype, numel))

    try:
        return unpickle(io.BytesIO(pickled), storages())
    except Unsupported as error:
        # Every part of the pickle this reader does interpret must hold before torch.load is trusted
        # with the file (torch's own unpickler crashes on some that do not). The lenient read goes
        # with the error, as `survey` (object, stand-ins): the caller may use it instead.
        stand_ins: list[str] = []
        error.survey = unpickle(io.BytesIO(pickled), storages(), lenient=True, stand_ins=stand_ins), stand_ins
        raise


def _record_prefix(path: Path, names: list[str]) -> str:
    """The one folder all records are in, as torch.load requires: the first entry's."""
    if not any(name.endswith("/data.pkl") for name in names) or identify.is_torchscript(names):
        raise MaeconvError(f"{path}: {identify.describe_zip(names)}, not a checkpoint ({identify.READS})")
    prefix = names[0].split("/")[0] if "/" in names[0] else ""
    outside = next((name for name in names if not prefix or not name.startswith(f"{prefix}/")), None)
    if outside is not None:
        raise Invalid(f"entry {outside} lies outside the archive's folder {prefix or names[0]}")
    if f"{prefix}/data.pkl" not in names:
        raise Invalid(f"no {prefix}/data.pkl")
    return prefix


# The record format versions torch.load reads (caffe2/serialize/inline_container.h), and how torch
# parses the record: a leading integer, as strtoll does.
FILE_FORMAT_VERSIONS = range(1, 11)
LEADING_INTEGER = re.compile(rb"\s*([+-]?\d{1,19})")


def _check_records(path: Path, entries: dict[str, Entry], prefix: str) -> None:
    """The small records beside data.pkl, as torch.load checks them; data.pkl's declared size."""
    version = entries.get(f"{prefix}/version") or entries.get(f"{prefix}/.data/version")
    if version is None or version.size > 64:
        raise Invalid("no version record")
    number = LEADING_INTEGER.match(_entry_bytes(path, version))
    if number is None or int(number.group(1)) not in FILE_FORMAT_VERSIONS:
        raise Invalid("a record format version torch does not read")
    byteorder = entries.get(f"{prefix}/byteorder")
    if byteorder is not None and byteorder.size > len(b"little\n"):
        raise Invalid(f"a byteorder record of {byteorder.size} bytes")
    if byteorder is not None and _entry_bytes(path, byteorder).strip() != b"little":
        raise Unsupported("big-endian storages")
    if entries[f"{prefix}/data.pkl"].size > MAX_PICKLE_BYTES:
        raise Invalid(f"data.pkl declares {entries[f'{prefix}/data.pkl'].size} bytes, more than a checkpoint's "
                      f"object tree needs")


def _storage(path: Path, prefix: str, entries: dict[str, Entry], key: str, dtype: np.dtype, numel: int) -> Storage:
    entry = entries.get(f"{prefix}/data/{key}")
    if entry is None:
        raise Invalid(f"storage {key} has no entry in the archive")
    if numel * dtype.itemsize != entry.size:  # torch.load refuses this too (except with mmap=True)
        raise Invalid(f"storage {key} declares {numel * dtype.itemsize} bytes; its entry holds {entry.size}")
    if not entry.deflated:
        return file_storage(path, dtype, numel, entry.offset)
    return Storage(path, dtype, numel, lambda start, count: _inflate(path, entry, start, count))


def _entries(path: Path, infos: list[zipfile.ZipInfo]) -> dict[str, Entry]:
    """Every entry, once its local header, sizes and compression are checked against the file."""
    entries = {}
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        for info in infos:
            if info.filename in entries:
                raise Invalid(f"entry {info.filename} appears twice")
            entry = _entry(f, info)
            if entry.offset + entry.compressed_size > file_size:
                raise Invalid(f"entry {info.filename} runs past the end of the file (truncated)")
            entries[info.filename] = entry
    return entries


def _entry(f, info: zipfile.ZipInfo) -> Entry:
    name = info.filename
    if info.flag_bits & 0x1:
        raise Invalid(f"entry {name} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise Invalid(f"entry {name} uses compression method {info.compress_type}; torch reads stored or deflated")
    deflated = info.compress_type == zipfile.ZIP_DEFLATED
    if not deflated and info.compress_size != info.file_size:
        raise Invalid(f"stored entry {name} declares {info.file_size} bytes in {info.compress_size}")
    if deflated and info.file_size > MAX_DEFLATE_RATIO * info.compress_size:
        raise Invalid(f"entry {name} declares {info.file_size} bytes inflated from {info.compress_size}, "
                      f"more than deflate can expand")
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise Invalid(f"entry {name} has no local header")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    if f.read(name_length).decode(encoding, "replace") != info.orig_filename:
        raise Invalid(f"entry {name} is named differently in its local header")
    offset = info.header_offset + 30 + name_length + extra_length
    return Entry(name, offset, info.file_size, info.compress_size, deflated, info.CRC)


def _entry_bytes(path: Path, entry: Entry) -> bytes:
    if entry.deflated:
        return _inflate(path, entry, 0, entry.size).tobytes()
    return read_file_array(path, np.dtype(np.uint8), (entry.size,), entry.offset).tobytes()


def _inflate(path: Path, entry: Entry, start: int, count: int) -> np.ndarray:
    """Bytes [start, start + count) of a deflated entry. The whole entry is inflated, a chunk at a
    time, for its CRC covers all of it; only the bytes asked for are kept, and inflating stops at the
    declared size, so memory stays near `count` whatever the stream holds."""
    out = np.empty(count, np.uint8)
    crc = produced = 0
    try:
        with open(path, "rb") as f:
            f.seek(entry.offset)
            stream = _Inflater(f, entry.compressed_size)
            while produced < entry.size and (piece := stream.inflate(min(COPY_CHUNK, entry.size - produced))):
                crc = zlib.crc32(piece, crc)
                _keep(out, start, piece, produced)
                produced += len(piece)
            complete = produced == entry.size and not stream.inflate(1) and stream.ended
    except zlib.error as error:
        raise _unreadable(path, f"entry {entry.name} is corrupt: {error}") from None
    if not complete:
        raise _unreadable(path, f"entry {entry.name} does not inflate to its declared {entry.size} bytes")
    if crc != entry.crc:
        raise _unreadable(path, f"entry {entry.name} fails its CRC check")
    return out


class _Inflater:
    """A raw deflate stream read from a file region, inflated at most `limit` bytes per call."""

    def __init__(self, f, compressed_size: int):
        self.chunks = _chunks(f, compressed_size)
        self.zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self.pending = b""

    @property
    def ended(self) -> bool:
        return self.zlib.eof

    def inflate(self, limit: int) -> bytes:
        """Up to `limit` more bytes; empty once the stream ends or its input runs out."""
        while not self.zlib.eof:
            exhausted = False
            if not self.pending:
                self.pending = next(self.chunks, b"")
                exhausted = not self.pending
            piece = self.zlib.decompress(self.pending, limit)
            self.pending = self.zlib.unconsumed_tail
            if piece or exhausted:
                return piece
        return b""


def _chunks(f, size: int):
    while size > 0:
        chunk = f.read(min(COPY_CHUNK, size))
        if not chunk:
            return
        size -= len(chunk)
        yield chunk


def _keep(out: np.ndarray, start: int, piece: bytes, produced: int) -> None:
    """Copies the part of `piece` (entry bytes from `produced` on) that falls in `out`'s window."""
    low, high = max(start, produced), min(start + out.size, produced + len(piece))
    if low < high:
        out[low - start:high - start] = np.frombuffer(piece, np.uint8, high - low, low - produced)


# The storage class torch.save names for each dtype.
STORAGE_OF_DTYPE = {dtype: storage for storage, dtype in STORAGE_DTYPES.items()}
ARCHIVE = "archive"  # the record prefix torch.save uses for file objects
ALIGNMENT = 64       # torch.save aligns each storage's data, so torch.load(mmap=True) can map it
RECORDS_BEFORE = {".format_version": b"1", ".storage_alignment": str(ALIGNMENT).encode(), "byteorder": b"little"}
RECORDS_AFTER = {"version": b"3\n"}


def write(path: Path, tensors: Mapping[str, TensorRef], args: Mapping[str, object] | None = None,
          state_key: str = "model", args_key: str = "args", **read_back) -> dict[str, Verdict]:
    """Writes {'model': state_dict, 'args': {...}} (or under other keys) as torch.save lays it out: a
    zip of data.pkl and one stored, aligned entry per tensor. `args` is a plain dict of strings,
    numbers and booleans (not the reference's argparse.Namespace, which torch.load(weights_only=True)
    refuses). The tensors stream through `write_stream` (which takes `read_back`'s options): its
    second thread reads each chunk back, compares it and adds it to the entry's CRC-32, so the
    checksum zip needs costs the writing thread nothing; each local header gets its CRC once the
    entry is written, and the central directory follows."""
    archive = _ZipPlan()
    pieces = [archive.entry("data.pkl", _state_dict_pickle(tensors, args, state_key, args_key))]
    pieces += [archive.entry(name, data) for name, data in RECORDS_BEFORE.items()]
    for key, (name, ref) in enumerate(tensors.items()):
        pieces += [archive.header(f"data/{key}", ref.nbytes), (name, ref)]
    pieces += [archive.entry(name, data) for name, data in RECORDS_AFTER.items()]
    verdicts = write_stream(path, pieces, archive.size, crc=True, **read_back)
    with open(path, "r+b", buffering=0) as f:
        for verdict in verdicts.values():
            archive.set_crc(f, verdict.offset, verdict.crc)
        f.seek(archive.size)
        write_all(f, archive.central_directory())
    return verdicts


ZIP64_MARK = 0xFFFFFFFF  # a 32-bit field holding it says: the value is in the zip64 extra field
ZIP64_FROM = ZIP64_MARK  # sizes and offsets from here on go to zip64 fields (tests lower it)
DOS_DATE = 1 << 5 | 1    # 1980-01-01 00:00, the date torch.save gives every entry
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
CENTRAL_HEADER = struct.Struct("<4sHHHHHHIIIHHHHHII")
CRC_AT = 14              # where a local header holds the CRC-32


@dataclass
class _PlannedEntry:
    name: bytes
    header: int   # where its local header starts
    size: int
    crc: int


class _ZipPlan:
    """The zip structure around the entries' bytes, laid out as they are added: every entry
    stored, its data starting on an ALIGNMENT boundary (the local header padded with torch's 'FB'
    extra field), zip64 fields where a size or offset needs them."""

    def __init__(self):
        self.entries: dict[int, _PlannedEntry] = {}  # by where its data starts, in file order
        self.size = 0

    def entry(self, name: str, data: bytes) -> bytes:
        """A small record whole: its header and its bytes."""
        return self.header(name, len(data), zlib.crc32(data)) + data

    def header(self, name: str, size: int, crc: int = 0) -> bytes:
        encoded = f"{ARCHIVE}/{name}".encode()
        zip64 = size >= ZIP64_FROM
        extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        padding = -(self.size + LOCAL_HEADER.size + len(encoded) + len(extra) + 4) % ALIGNMENT
        extra += struct.pack("<HH", 0x4246, padding) + b"Z" * padding
        stated = ZIP64_MARK if zip64 else size
        head = LOCAL_HEADER.pack(b"PK\x03\x04", 45 if zip64 else 20, 0, zipfile.ZIP_STORED, 0, DOS_DATE, crc,
                                 stated, stated, len(encoded), len(extra)) + encoded + extra
        self.entries[self.size + len(head)] = _PlannedEntry(encoded, self.size, size, crc)
        self.size += len(head) + size
        return head

    def set_crc(self, f, data_offset: int, crc: int) -> None:
        """Fills in the CRC of the entry whose data starts at `data_offset`."""
        entry = self.entries[data_offset]
        entry.crc = crc
        os.pwrite(f.fileno(), struct.pack("<I", crc), entry.header + CRC_AT)

    def central_directory(self) -> bytes:
        records = []
        for entry in self.entries.values():
            name, offset, size = entry.name, entry.header, entry.size
            wide = ([size, size] if size >= ZIP64_FROM else []) + ([offset] if offset >= ZIP64_FROM else [])
            extra = struct.pack(f"<HH{len(wide)}Q", 1, 8 * len(wide), *wide) if wide else b""
            version = 45 if wide else 20
            stated_size = ZIP64_MARK if size >= ZIP64_FROM else size
            records.append(CENTRAL_HEADER.pack(
                b"PK\x01\x02", 3 << 8 | version, version, 0, zipfile.ZIP_STORED, 0, DOS_DATE, entry.crc,
                stated_size, stated_size, len(name), len(extra), 0, 0, 0, 0o600 << 16,
                ZIP64_MARK if offset >= ZIP64_FROM else offset) + name + extra)
        directory = b"".join(records)
        count, start, length = len(records), self.size, len(directory)
        if count < 0xFFFF and start < ZIP64_FROM and length < ZIP64_FROM:
            return directory + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, length, start, 0)
        zip64_end = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, length, start)
        locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, start + length, 1)
        end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, ZIP64_MARK, ZIP64_MARK, 0)
        return directory + zip64_end + locator + end


def _state_dict_pickle(tensors: Mapping[str, TensorRef], args: Mapping[str, object] | None = None,
                       state_key: str = "model", args_key: str = "args") -> bytes:
    """The pickle torch.save writes for {'model': OrderedDict(name: tensor), 'args': {...}}, opcode
    by opcode (so writing needs no torch): each tensor is a _rebuild_tensor_v2 call on storage
    `data/<index>`."""
    out = bytearray(b"\x80\x02}")  # PROTO 2, EMPTY_DICT
    out += _text(state_key) + _global("collections", "OrderedDict") + b")R("  # OrderedDict(), MARK
    for key, (name, ref) in enumerate(tensors.items()):
        storage = _global("torch", STORAGE_OF_DTYPE[ref.dtype.name])
        persistent_id = b"(" + _text("storage") + storage + _text(str(key)) + _text("cpu") + _int(ref.size) + b"tQ"
        strides = contiguous_strides(ref.shape)
        arguments = (persistent_id + _int(0) + _tuple(ref.shape) + _tuple(strides) + b"\x89"  # requires_grad False
                     + _global("collections", "OrderedDict") + b")R")  # no backward hooks
        out += _text(name) + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + arguments + b"tR"
    out += b"us"  # SETITEMS into the OrderedDict, SETITEM into the dict
    if args:
        out += _text(args_key) + b"}(" + b"".join(_text(key) + _scalar(value) for key, value in args.items()) + b"us"
    return bytes(out + b".")


def _scalar(value) -> bytes:
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"  # NEWTRUE, NEWFALSE
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)  # BINFLOAT
    if isinstance(value, str):
        return _text(value)
    raise TypeError(f"cannot record {value!r} in a torch file's args")


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value: str) -> bytes:
    encoded = value.encode()
    return b"X" + struct.pack("<I", len(encoded)) + encoded


def _tuple(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _int(value: int) -> bytes:
    value = int(value)
    if 0 <= value < 1 << 8:
        return b"K" + bytes([value])
    if 0 <= value < 1 << 16:
        return b"M" + struct.pack("<H", value)
    if -(1 << 31) <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)
    encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(encoded)]) + encoded
