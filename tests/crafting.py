"""Hand-made torch checkpoints: any storage size, offset, shape and stride, in the zip layout (stored
or deflated) or the legacy layout, so tests can hold maeconv's readers against torch.load."""
import collections
import io
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # the legacy layout's first pickle (torch/serialization.py)
PROTOCOL_VERSION = 1001


@dataclass(frozen=True)
class Storage:
    """A persistent id: ('storage', torch.<type>, key, 'cpu', numel[, view_metadata])."""

    storage_type: str
    key: str
    numel: int
    view_metadata: tuple | None = None
    legacy: bool = False  # the legacy layout has six fields, the zip layout five


@dataclass
class Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""

    storage: object
    offset: object
    size: object
    stride: object
    requires_grad: object = False
    hooks: object = field(default_factory=collections.OrderedDict)

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride,
                                                  self.requires_grad, self.hooks)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            pid = ("storage", getattr(torch, obj.storage_type), obj.key, "cpu", obj.numel)
            return pid + (obj.view_metadata,) if obj.legacy else pid
        return None


def torch_pickle(obj, protocol: int = 2) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=protocol).dump(obj)
    return out.getvalue()


def torch_zip(path, data_pkl: bytes, storages: dict, compression: int = zipfile.ZIP_STORED,
              prefix: str = "archive", pickle_compression: int | None = None):
    """A zip in torch.save's layout; `storages` maps keys to their bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        pkl_compression = compression if pickle_compression is None else pickle_compression
        archive.writestr(zipfile.ZipInfo(f"{prefix}/data.pkl"), data_pkl, compress_type=pkl_compression)
        archive.writestr(f"{prefix}/byteorder", b"little")
        for key, data in storages.items():
            archive.writestr(zipfile.ZipInfo(f"{prefix}/data/{key}"), bytes(data), compress_type=compression)
        archive.writestr(f"{prefix}/version", b"3\n")
    return path


def torch_legacy(path, obj, storages: dict, counts: dict | None = None, keys: list | None = None):
    """The layout of torch.save(..., _use_new_zipfile_serialization=False): magic number, protocol
    version and sys_info pickles, the object's pickle, the sorted storage keys' pickle, then per key
    an 8-byte little-endian element count and the bytes. `storages` maps keys to (itemsize, bytes);
    `counts` overrides the counts written, `keys` the key list."""
    sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    keys = sorted(storages) if keys is None else keys
    out = io.BytesIO()
    for part in (MAGIC_NUMBER, PROTOCOL_VERSION, sys_info):
        pickle.dump(part, out, protocol=2)
    out.write(torch_pickle(obj))
    pickle.dump(keys, out, protocol=2)
    for key in storages:
        itemsize, data = storages[key]
        count = (counts or {}).get(key, len(data) // itemsize)
        out.write(struct.pack("<q", count) + bytes(data))
    path.write_bytes(out.getvalue())
    return path


ITEMSIZE = {"FloatStorage": 4, "LongStorage": 8, "BoolStorage": 1, "BFloat16Storage": 2, "HalfStorage": 2}


def crafted(folder, layout, offset, size, stride, numel=12, requires_grad=False, storage_type="FloatStorage"):
    """A checkpoint {'model': {'t': tensor}} in `layout` ('stored' or 'deflated' zip, or 'legacy'),
    the tensor rebuilt from storage '0' of `numel` elements with these arguments, whatever they are."""
    legacy = layout == "legacy"
    tensor = Tensor(Storage(storage_type, "0", numel, legacy=legacy), offset, size, stride, requires_grad)
    data = storage_bytes(max(numel, 0) * ITEMSIZE[storage_type], np.uint8)
    if storage_type == "BoolStorage":
        data = bytes(b & 1 for b in data)
    path = folder / f"{layout}.pth"
    if legacy:
        return torch_legacy(path, {"model": {"t": tensor}}, {"0": (ITEMSIZE[storage_type], data)})
    compression = zipfile.ZIP_DEFLATED if layout == "deflated" else zipfile.ZIP_STORED
    return torch_zip(path, torch_pickle({"model": {"t": tensor}}), {"0": data}, compression)


def as_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()


def storage_bytes(numel: int, dtype=np.float32, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).standard_normal(numel).astype(dtype).tobytes()


# --- pickles written opcode by opcode, for what no Pickler writes ---

def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_text(value: str) -> bytes:
    encoded = value.encode()
    return b"X" + struct.pack("<I", len(encoded)) + encoded


def op_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(encoded)]) + encoded


def op_tuple(values) -> bytes:
    return b"(" + b"".join(op_int(v) for v in values) + b"t"


def op_storage(storage_type: str, key: str, numel: int) -> bytes:
    """Pushes the storage of a zip-layout persistent id."""
    return (b"(" + op_text("storage") + op_global("torch", storage_type) + op_text(key) + op_text("cpu")
            + op_int(numel) + b"tQ")


def op_rebuild(storage: bytes, offset: int, size, stride) -> bytes:
    """Pushes _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    return (op_global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + op_int(offset) + op_tuple(size)
            + op_tuple(stride) + b"\x89" + op_global("collections", "OrderedDict") + b")RtR")


def state_pickle(*items: bytes) -> bytes:
    """{'model': {name: value, ...}}, each item the opcodes of one name and value."""
    return b"\x80\x02}" + op_text("model") + b"}(" + b"".join(items) + b"us."


# --- the oracle ---

def torch_reads(path):
    """torch.load(path, weights_only=True)'s state dict (the 'model' entry if there is one), or the
    exception it raised; argparse.Namespace allowed, as maeconv allows it. Without mmap: with it torch
    maps deflated entries as raw bytes."""
    import argparse
    import warnings

    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises many types for bad files
        return error
    return obj.get("model", obj) if isinstance(obj, dict) else obj


def assert_agrees_with_torch(path, maeconv_may_be_stricter: bool = False):
    """maeconv reads `path` as torch.load(weights_only=True) does: it refuses it with a MaeconvError
    where torch raises, and reads the same dtypes, shapes and bytes where torch reads it. Where the
    case is one maeconv knowingly refuses though torch reads it, a refusal is also right."""
    from maeconv.convert.formats import read_checkpoint
    from maeconv.errors import MaeconvError

    expected = torch_reads(path)
    try:
        ours = {name: ref.load() for name, ref in read_checkpoint(path).tensors.items()}
    except MaeconvError as error:
        assert isinstance(expected, Exception) or maeconv_may_be_stricter, f"torch reads it; maeconv: {error}"
        return str(error)
    assert not isinstance(expected, Exception), f"torch refuses it ({expected!r:.200}); maeconv read it"
    assert sorted(ours) == sorted(expected)
    for name, tensor in expected.items():
        assert ours[name].shape == tuple(tensor.shape), name
        assert ours[name].tobytes() == as_bytes(tensor.detach()), name
    return None


# --- zips as zip tools (or hostile hands) make them ---

def rezip(source, target, compression: int = zipfile.ZIP_DEFLATED, names=None):
    """Copies a zip entry by entry as a zip tool would, compressing the entries in `names` (all if
    None) with `compression` and storing the others."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            chosen = names is None or info.filename in names
            dst.writestr(info.filename, src.read(info.filename),
                         compress_type=compression if chosen else zipfile.ZIP_STORED)
    return target


# Field offsets in a local header and in a central directory record (APPNOTE.TXT 4.3.7 and 4.3.12).
LOCAL_FIELDS = {"version": (4, "<H"), "flags": (6, "<H"), "method": (8, "<H"), "crc": (14, "<I"), "compress_size": (18, "<I"),
                "file_size": (22, "<I")}
CENTRAL_FIELDS = {"version": (6, "<H"), "flags": (8, "<H"), "method": (10, "<H"), "crc": (16, "<I"), "compress_size": (20, "<I"),
                  "file_size": (24, "<I")}


def patch_entry(path, name: str, **values):
    """Rewrites header fields (version needed, flags, method, crc, compress_size, file_size) of entry `name`, in its
    local header and in the central directory alike: a zip that lies consistently."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local, position = archive.getinfo(name).header_offset, archive.start_dir
    while data[position:position + 4] == b"PK\x01\x02":
        name_length, extra_length, comment_length = struct.unpack("<HHH", data[position + 28:position + 34])
        if data[position + 46:position + 46 + name_length].decode() == name:
            break
        position += 46 + name_length + extra_length + comment_length
    else:
        raise KeyError(name)
    for name_of_field, value in values.items():
        for base, (at, fmt) in ((local, LOCAL_FIELDS[name_of_field]), (position, CENTRAL_FIELDS[name_of_field])):
            struct.pack_into(fmt, data, base + at, value)
    path.write_bytes(bytes(data))
    return path


def deflated(data: bytes) -> bytes:
    """A raw deflate stream, as zip entries hold it."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()
