"""safetensors and .ckpt files built to break the readers, files that are not checkpoints at all, and
memory bombs in every format: clean one-line errors, bounded memory, nothing read outside what was
checked."""
import gzip
import json
import struct
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from maeconv.convert.formats import read_checkpoint
from maeconv.cli import cli
from maeconv.errors import MaeconvError
from maeconv.convert.formats import ckpt, safetensors as st_format

from crafting import (Storage, Tensor, as_bytes, op_rebuild, op_storage, op_text, patch_entry, state_pickle,
                      storage_bytes, torch_legacy, torch_zip)


# --- safetensors, held against the safetensors library ---

def _safetensors(path, header, data: bytes = b""):
    text = header if isinstance(header, (str, bytes)) else json.dumps(header)
    text = text.encode() if isinstance(text, str) else text
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _entry(shape, begin, end, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _library_reads(path):
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
    except Exception as error:  # the library raises several types
        return error, None


T = json.dumps(_entry([2], 0, 8))
SAFETENSORS = {  # name: (header, data bytes, whether maeconv knowingly refuses what the library reads)
    "valid": ({"a": _entry([2], 0, 8), "b": _entry([], 8, 12)}, 12, False),
    "metadata": ({"__metadata__": {"format": "pt"}, "a": _entry([2], 0, 8)}, 8, False),
    "metadata null": ({"__metadata__": None, "a": _entry([2], 0, 8)}, 8, False),
    "padded with spaces": (json.dumps({"a": _entry([2], 0, 8)}) + "    ", 8, False),
    "leading newline": ("\n" + T.join(['{"a":', "}"]), 8, False),
    "empty and zero-size tensors share offsets": ({"e": _entry([0], 0, 0), "a": _entry([2], 0, 8),
                                                   "z": _entry([3, 0], 8, 8)}, 8, False),
    "tensors out of order": ({"b": _entry([1], 8, 12), "a": _entry([2], 0, 8)}, 12, False),
    "unknown field ignored": ({"a": {**_entry([2], 0, 8), "note": -1}}, 8, False),
    "bool and bf16": ({"a": _entry([2], 0, 2, "BOOL"), "b": _entry([3], 2, 8, "BF16")}, 8, False),
    "hole": ({"a": _entry([2], 0, 8), "b": _entry([1], 12, 16)}, 16, False),
    "overlap": ({"a": _entry([2], 0, 8), "b": _entry([2], 4, 12)}, 12, False),
    "same range twice": ({"a": _entry([2], 0, 8), "b": _entry([2], 0, 8)}, 8, False),
    "not starting at 0": ({"a": _entry([2], 4, 12)}, 12, False),
    "bytes after the tensors": ({"a": _entry([2], 0, 8)}, 12, False),
    "truncated": ({"a": _entry([4], 0, 16)}, 8, False),
    "offsets reversed": ({"a": _entry([0], 8, 0)}, 8, False),
    "size disagrees with offsets": ({"a": _entry([2], 0, 12)}, 12, False),
    "dim 3.5": ({"a": _entry([3.5], 0, 12)}, 12, False),
    "dim 3.0": ({"a": _entry([3.0], 0, 12)}, 12, False),
    "dim 2e0": ('{"a":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}', 8, False),
    "dim -1": ({"a": _entry([-1], 0, 0)}, 0, False),
    "dim -0": ('{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}', 0, False),
    "dim true": ({"a": _entry([True], 0, 4)}, 4, False),
    "dim as text": ({"a": _entry(["3"], 0, 12)}, 12, False),
    "dim NaN": ('{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}', 8, False),
    "product overflows u64": ({"a": _entry([1 << 32, 1 << 32, 1 << 32], 0, 0)}, 0, False),
    "dim 2**64": ({"a": _entry([1 << 64], 0, 0)}, 0, False),
    "offset 2**64-1": ({"a": _entry([0], (1 << 64) - 1, (1 << 64) - 1)}, 0, False),
    "float offset": ({"a": _entry([2], 0.0, 8)}, 8, False),
    "three offsets": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}, 8, False),
    "missing offsets": ({"a": {"dtype": "F32", "shape": [2]}}, 8, False),
    "unknown dtype": ({"a": _entry([2], 0, 8, "F33")}, 8, False),
    "dtype not a string": ({"a": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}}, 8, False),
    "metadata a list": ({"__metadata__": [1], "a": _entry([2], 0, 8)}, 8, False),
    "metadata value an int": ({"__metadata__": {"epoch": 1}, "a": _entry([2], 0, 8)}, 8, False),
    "metadata value nested": ({"__metadata__": {"x": {"y": "z"}}, "a": _entry([2], 0, 8)}, 8, False),
    "header a list": ("[]", 0, False),
    "header padded with NULs": (json.dumps({"a": _entry([2], 0, 8)}).encode() + b"\0\0", 8, False),
    "header not UTF-8": (b'{"\xff":' + json.dumps(_entry([0], 0, 0)).encode() + b"}", 0, False),
    "lone surrogate in a name": ('{"\\ud800":%s}' % T, 8, False),
    "deep nesting": ('{"a":' + "[" * 100_000 + "]" * 100_000 + "}", 0, False),
    "deep nesting in an ignored field": (T[:-1] + ',"x":' + "[" * 200 + "]" * 200 + "}", 8, False),
    # the library reads these; maeconv refuses them on purpose:
    "key twice (the library keeps the last)": ('{"a":%s,"a":%s}' % (T, T), 8, True),
    "metadata key twice": ('{"__metadata__":{"x":"1","x":"2"},"a":%s}' % T, 8, True),
    "empty, too large for NumPy": ({"a": _entry([0, 1 << 40, 1 << 40], 0, 0)}, 0, True),
    "33 dims": ({"a": _entry([1] * 33, 0, 4)}, 4, True),
}


@pytest.mark.parametrize("case", SAFETENSORS)
def test_safetensors_headers_are_as_strict_as_the_library(tmp_path, case):
    header, size, stricter = SAFETENSORS[case]
    path = _safetensors(tmp_path / "x.safetensors", header, storage_bytes(size, np.uint8))
    expected, metadata = _library_reads(path)
    try:
        refs, our_metadata = st_format.read(path)
        ours = {name: ref.load() for name, ref in refs.items()}
    except MaeconvError as error:
        assert "\n" not in str(error) and str(error).startswith(f"{path}: ")
        assert isinstance(expected, Exception) or stricter, f"the library reads it; maeconv: {error}"
        return
    assert not stricter, "maeconv reads what it should refuse"
    assert not isinstance(expected, Exception), f"the library refuses it ({expected}); maeconv read it"
    assert our_metadata == metadata and sorted(ours) == sorted(expected)
    for name, tensor in expected.items():
        assert ours[name].shape == tuple(tensor.shape) and ours[name].tobytes() == as_bytes(tensor), name


def test_safetensors_header_size_limits(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 100_000_001) + b"{" + bytes(100))
    with pytest.raises(MaeconvError, match="header size 100000001 out of range"):
        st_format.read(path)


# --- MindSpore .ckpt ---

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers as protobuf writes int64s: ten bytes
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _ckpt_record(tag: str, dims, type_name: str, content: bytes, packed: bool = False) -> bytes:
    if packed:
        dims_bytes = _field(1, b"".join(_varint(d) for d in dims))
    else:
        dims_bytes = b"".join(_varint(1 << 3) + _varint(d) for d in dims)
    tensor = dims_bytes + _field(2, type_name.encode()) + _field(3, content)
    return _field(1, _field(1, tag.encode()) + _field(2, tensor))


@pytest.mark.parametrize("record, reason", [
    (_ckpt_record("w", [1 << 62, 8], "Float32", bytes(8)), "too large for any array"),
    (_ckpt_record("w", [1 << 30, 1 << 30], "Float32", bytes(16)), "does not match its dims"),
    (_ckpt_record("w", [1 << 40, 1 << 40], "Float32", bytes(16)), "too large for any array"),
    (_ckpt_record("w", [-1], "Float32", bytes(4)), "dimension -1"),
    (_ckpt_record("w", [-(1 << 63), 0], "Float32", b""), "dimension -9223372036854775808"),
    (_ckpt_record("w", [1] * 33, "Float32", bytes(4)), "more than 32 dimensions"),
    (_ckpt_record("w", list(range(1, 1000)), "Float32", bytes(4), packed=True), "a field of"),
    (_ckpt_record("w", [4], "Float32", bytes(12)), "does not match its dims"),
    (_ckpt_record("w", [4], "Float32" * 100, bytes(16)), "a field of 700 bytes"),
    (_ckpt_record("w" * 70_000, [4], "Float32", bytes(16)), "a field of 70000 bytes"),
    (_ckpt_record("w", [4], "Complex64", bytes(32)), "unsupported type"),
    (_ckpt_record("w", [4], "Float32", bytes(16))[:-3], "field runs past|ends inside"),
    (_field(2, b"x"), "unexpected top-level field 2"),
])
def test_hostile_ckpt_records(tmp_path, record, reason):
    path = tmp_path / "x.ckpt"
    path.write_bytes(record)
    with pytest.raises(MaeconvError, match=reason) as error:
        read_checkpoint(path)
    assert "\n" not in str(error.value)


def test_ckpt_dims_read_packed_or_not(tmp_path):
    path = tmp_path / "x.ckpt"
    content = np.arange(6, dtype=np.float32).tobytes()
    path.write_bytes(_ckpt_record("a", [2, 3], "Float32", content, packed=True)
                     + _ckpt_record("b", [3, 0], "Float32", b"") + _ckpt_record("c", [0], "Int64", bytes(8)))
    refs, _ = ckpt.read(path)
    assert refs["a"].load().tobytes() == content and refs["a"].shape == (2, 3)
    assert refs["b"].shape == (3, 0) and refs["c"].shape == ()


# --- files that are not checkpoints ---

def _onnx(path):
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [value("x", TensorProto.FLOAT, [2])],
                              [value("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph), str(path))


def _mindir(path):
    import mindspore as ms

    ms.export(ms.nn.Dense(3, 2), ms.Tensor(np.ones((1, 3), np.float32)), file_name=str(path.with_suffix("")),
              file_format="MINDIR")


def _image(path, fmt):
    from PIL import Image

    Image.new("RGB", (4, 4), (200, 10, 10)).save(path, fmt)


def _torchscript(path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))


def _tar(path):
    (path.parent / "member.txt").write_text("hello")
    with tarfile.open(path, "w") as archive:
        archive.add(path.parent / "member.txt", "member.txt")
    (path.parent / "member.txt").unlink()


def _zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights/readme.txt", "no pickle here")


NOT_CHECKPOINTS = {
    "model.onnx": (_onnx, "an ONNX model"),
    "model.mindir": (_mindir, "a MindIR model (mindspore.export)"),
    "photo.jpg": (lambda p: _image(p, "JPEG"), "a JPEG image"),
    "image.pth": (lambda p: _image(p, "PNG"), "a PNG image"),
    "anim.ckpt": (lambda p: _image(p, "GIF"), "a GIF image"),
    "notes.txt": (lambda p: p.write_text("learning rate 1e-3\nepochs 800\n"), "a text file"),
    "page.pth": (lambda p: p.write_text("<!DOCTYPE html>\n<html><body>Sign in</body></html>"),
                 "an HTML page (a download that returned a web page?)"),
    "config.ckpt": (lambda p: p.write_text('{"model_type": "vit_mae"}'), "a JSON file"),
    "saved.bin": (lambda p: p.write_text("\ufeff<html><body>404</body></html>", encoding="utf-8"),
                  "an HTML page (a download that returned a web page?)"),
    "model.safetensors": (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n"),
                          "a Git LFS pointer, not the file it points to (fetch it with git lfs pull)"),
    "weights.pth.gz": (lambda p: p.write_bytes(gzip.compress(b"x" * 100)), "a gzip file"),
    "weights.tar": (_tar, "a tar archive"),
    "weights.zip": (_zip, "a zip archive without data.pkl"),
    "arrays.npz": (lambda p: np.savez(p, a=np.ones(2)), "a NumPy .npz archive"),
    "array.bin": (lambda p: np.save(p.open("wb"), np.ones(2)), "a NumPy .npy array"),
    "scripted.pt": (_torchscript, "a TorchScript archive (torch.jit.save)"),
    "empty.zip": (lambda p: zipfile.ZipFile(p, "w").close(), "an empty zip archive"),
}
READS = "(maeconv reads .pth/.bin/.safetensors/.ckpt files and Hugging Face directories)"


@pytest.mark.parametrize("name", NOT_CHECKPOINTS)
def test_inspect_says_what_a_file_is_when_it_is_not_a_checkpoint(tmp_path, name):
    make, what = NOT_CHECKPOINTS[name]
    path = tmp_path / name
    make(path)
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == f"Error: {path}: {what}, not a checkpoint {READS}"


def test_converting_a_non_checkpoint_leaves_nothing_behind(tmp_path):
    _onnx(tmp_path / "m.onnx")
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "m.onnx"), str(tmp_path / "out.pth")])
    assert result.exit_code == 1 and "an ONNX model, not a checkpoint" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_mindir_is_told_from_a_ckpt_by_its_fields_not_its_name(tmp_path):
    _mindir(tmp_path / "model.mindir")
    renamed = tmp_path / "model.ckpt"
    renamed.write_bytes((tmp_path / "model.mindir").read_bytes())
    assert renamed.read_bytes()[:1] == b"\n"  # field 1, length-delimited: the way a .ckpt starts too
    with pytest.raises(MaeconvError, match="a MindIR model"):
        read_checkpoint(renamed)


def test_a_directory_without_config_is_not_a_checkpoint(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"Error: {tmp_path}: not a Hugging Face model directory (needs config.json and "
                                      f"model.safetensors or pytorch_model.bin)")


# --- memory bombs, read in a child with an address-space limit ---

BOUNDED_READ = """
import resource, sys
from maeconv.convert.formats import read_checkpoint
from maeconv.errors import MaeconvError

def status(field):  # in bytes; VmHWM is this image's peak (ru_maxrss keeps the parent's across exec)
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024

limit = status("VmSize") + (2 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
before = status("VmHWM")
try:
    for ref in read_checkpoint(sys.argv[1]).tensors.values():
        ref.load()
    print("READ")
except MaeconvError as error:
    print("ERROR", error)
print(status("VmHWM") - before)
"""


def _read_bounded(path) -> tuple[str, int]:
    """What reading every tensor of `path` ends in, and the peak resident memory it added (MiB), in a
    child limited to 2 GiB of address space beyond what its imports take."""
    result = subprocess.run([sys.executable, "-c", BOUNDED_READ, str(path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome, peak = result.stdout.strip().splitlines()
    return outcome, int(peak) >> 20


def _zip_of(folder, name, pickled, storages=None, compression=zipfile.ZIP_STORED):
    return torch_zip(folder / name, pickled, storages or {}, compression)


def _one_tensor(numel, size, stride=(1,)):
    return state_pickle(op_text("t") + op_rebuild(op_storage("FloatStorage", "0", numel), 0, size, stride))


def _streamed_zip(path, name, chunks, pickled):
    """A torch zip whose entry `name` is deflated from `chunks`, written streaming."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickled, compress_type=zipfile.ZIP_STORED)
        with archive.open(name, "w") as entry:
            for chunk in chunks:
                entry.write(chunk)
        archive.writestr("archive/version", b"3\n")
    return path


def _bomb_pickle_flood(folder):
    """15 MB of EMPTY_SET (216 bytes each) in a deflated data.pkl of 15 KB."""
    return _zip_of(folder, "flood.pth", b"\x80\x02" + b"\x8f" * 15_000_000 + b".", compression=zipfile.ZIP_DEFLATED)


def _bomb_mark_flood(folder):
    return _zip_of(folder, "marks.pth", b"\x80\x02" + b"(" * 15_000_000 + b".", compression=zipfile.ZIP_DEFLATED)


def _bomb_memo_index(folder):
    """The C unpickler grows its memo array to the index: 2**32 slots, 32 GiB."""
    return _zip_of(folder, "memo.pth", b"\x80\x02}r\xff\xff\xff\xff" + op_text("model") + b"}s.")


def _bomb_long_string(folder):
    return _zip_of(folder, "string.pth", b"\x80\x02X\xff\xff\xff\xff.")


def _bomb_large_data_pkl(folder):
    """A data.pkl that really inflates to 40 MiB (it is refused before it is inflated)."""
    path = folder / "pkl.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w") as entry:
            entry.write(b"\x80\x02")
            for _ in range(40):
                entry.write(b"N" * (1 << 20))
        archive.writestr("archive/version", b"3\n")
    return path


def _bomb_ratio(folder):
    path = _zip_of(folder, "ratio.pth", _one_tensor(4, (4,)), {"0": storage_bytes(4)}, zipfile.ZIP_DEFLATED)
    return patch_entry(path, "archive/data/0", file_size=(1 << 32) - 1)


def _bomb_storage_stream(folder):
    """A storage declared 64 bytes whose stream inflates to 64 MiB of zeros."""
    zeros = bytes(1 << 20)
    path = _streamed_zip(folder / "stream.pth", "archive/data/0", (zeros for _ in range(64)), _one_tensor(16, (16,)))
    return patch_entry(path, "archive/data/0", file_size=64)


def _bomb_declared_storage(folder):
    return _zip_of(folder, "numel.pth", _one_tensor(1 << 40, (1 << 40,)), {"0": storage_bytes(4)})


def _bomb_broadcast(folder):
    return _zip_of(folder, "broadcast.pth", _one_tensor(1, (1 << 20, 1 << 16), (0, 0)), {"0": storage_bytes(1)})


def _bomb_legacy_numel(folder):
    obj = {"model": {"t": Tensor(Storage("FloatStorage", "0", 1 << 40, legacy=True), 0, (1 << 40,), (1,))}}
    return torch_legacy(folder / "legacy.pth", obj, {"0": (4, storage_bytes(4))}, counts={"0": 1 << 40})


def _bomb_safetensors_shape(folder):
    return _safetensors(folder / "shape.safetensors", {"a": _entry([1 << 30, 1 << 30], 0, 1 << 62)})


def _bomb_safetensors_nesting(folder):
    return _safetensors(folder / "nest.safetensors", "[" * 20_000_000)


def _bomb_safetensors_entries(folder):
    """100,000 empty tensors in 5 MB of header: 150 MB of Python objects once parsed."""
    entries = ",".join(f'"{i:x}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for i in range(100_000))
    return _safetensors(folder / "entries.safetensors", "{" + entries + "}")


def _bomb_ckpt_records(folder):
    path = folder / "records.ckpt"
    path.write_bytes(b"".join(_ckpt_record(f"{i:x}", [0], "UInt8", b"") for i in range(150_000)))
    return path


def _bomb_zip_index(folder):
    """A zip whose central directory lists 200,000 one-letter entries (zipfile indexes them all)."""
    count = 200_000
    record = struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0) + b"a"
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, count * len(record), 4, 0)
    path = folder / "index.pth"
    path.write_bytes(b"PK\x03\x04" + record * count + end)
    return path


def _bomb_ckpt_dims(folder):
    path = folder / "dims.ckpt"
    path.write_bytes(_ckpt_record("w", [1 << 30, 1 << 30], "Float32", bytes(16)))
    return path


BOMBS = {  # builder: (what the error says, the most memory reading may add, MiB)
    _bomb_pickle_flood: ("would build more than", 200),
    _bomb_mark_flood: ("would build more than", 200),
    _bomb_memo_index: ("holds no state dict", 64),
    _bomb_long_string: ("would build more than", 64),
    _bomb_large_data_pkl: ("data.pkl declares 41943042 bytes, more than", 64),
    _bomb_ratio: ("more than deflate can expand", 64),
    _bomb_storage_stream: ("does not inflate to its declared 64 bytes", 64),
    _bomb_declared_storage: ("storage 0 declares 4398046511104 bytes; its entry holds 16", 64),
    _bomb_broadcast: ("repeats its storage's 4 bytes into 274877906944 bytes", 64),
    _bomb_legacy_numel: ("the file holds fewer", 64),
    _bomb_safetensors_shape: ("truncated or corrupt", 64),
    _bomb_safetensors_nesting: ("header holds more entries than", 64),
    _bomb_safetensors_entries: ("header holds more entries than", 64),
    _bomb_ckpt_records: ("more than 65536 records", 64),  # indexed up to the limit: some 35 MB
    _bomb_zip_index: ("a zip index larger than 65536 tensors need", 64),
    _bomb_ckpt_dims: ("does not match its dims", 64),
}


@pytest.mark.parametrize("build", BOMBS, ids=[build.__name__.removeprefix("_bomb_") for build in BOMBS])
def test_memory_bombs_fail_fast_in_bounded_memory(tmp_path, build):
    reason, most_mib = BOMBS[build]
    path = build(tmp_path)
    outcome, added_mib = _read_bounded(path)
    assert outcome.startswith(f"ERROR {path}: ") and reason in outcome, outcome
    assert added_mib < most_mib, f"reading added {added_mib} MiB"
