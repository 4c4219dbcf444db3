"""Torch checkpoints built to break the readers: every tensor's offset, shape and strides are checked
against its storage, compressed entries are inflated (never mapped), and maeconv reads a crafted file
exactly as torch.load(weights_only=True) does, or refuses it where torch does."""
import argparse
import collections
import io
import pickle
import re
import shutil
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from maeconv.convert.formats import read_checkpoint
from maeconv.cli import cli
from maeconv.errors import MaeconvError
from maeconv.convert.formats import torchpickle

from crafting import (Storage, Tensor, assert_agrees_with_torch, crafted, op_global, op_int, op_rebuild, op_storage,
                      op_text, op_tuple, patch_entry, rezip, state_pickle, storage_bytes, torch_legacy, torch_pickle,
                      torch_reads, torch_zip)

LAYOUTS = ("stored", "deflated", "legacy")
BIG = 1 << 63

Case = collections.namedtuple("Case", "offset size stride numel requires_grad storage_type stricter",
                              defaults=(12, False, "FloatStorage", False))
# (offset, size, stride[, storage elements, requires_grad, storage type, whether maeconv knowingly
# refuses what torch reads]). The storage holds 12 elements unless said otherwise.
GEOMETRY = {
    "contiguous": (0, (3, 4), (4, 1)),
    "transposed": (0, (4, 3), (1, 4)),
    "offset view": (5, (2, 3), (3, 1)),
    "view ending at the last element": (6, (2, 3), (3, 1)),
    "view one past the end": (7, (2, 3), (3, 1)),
    "whole storage": (0, (12,), (1,)),
    "offset pushes past the end": (1, (12,), (1,)),
    "overlapping strides": (0, (2, 2), (1, 1)),
    "broadcast row": (0, (3, 4), (0, 1)),
    "broadcast 4 MB from 4 bytes": (0, (1000, 1000), (0, 0)),
    "size-1 dim with a large stride": (0, (3, 1), (1, 99)),
    "scalar": (0, (), ()),
    "scalar at the last element": (11, (), ()),
    "scalar past the end": (12, (), ()),
    "strides None mean contiguous": (0, (3,), None),
    "no strides mean contiguous": (0, (3, 4), ()),
    "empty, byte offset just inside int64": ((1 << 61) - 1, (0,), None),
    "empty, byte offset overflowing int64": (1 << 61, (0,), ()),
    "size and stride as lists": (0, [3, 4], [4, 1]),
    "32 dims": (0, (1,) * 32, (1,) * 32),
    "empty": (0, (0,), (1,)),
    "empty at an offset past the end": (100, (0,), (1,)),
    "empty at the largest offset": (BIG - 1, (0,), (1,)),
    "empty storage": (0, (0,), (1,), 0),
    "negative offset": (-1, (3,), (1,)),
    "negative offset, empty": (-1, (0,), (1,)),
    "offset beyond int64": (BIG, (0,), (1,)),
    "offset reaching 2**62": (1 << 62, (1,), (1,)),
    "negative stride": (0, (3,), (-1,)),
    "negative stride at an offset": (2, (3,), (-1,)),
    "stride 2**62": (0, (2,), (1 << 62,)),
    "stride 2**63-1": (0, (2,), (BIG - 1,)),
    "strides shorter than the shape": (0, (3, 4), (1,)),
    "negative dim": (0, (-1,), (1,)),
    "negative dim beside another": (0, (-1, 2), (1, 1)),
    "numel overflows int64": (0, (1 << 40, 1 << 40), (0, 0)),
    "numel 2**63 with zero strides": (0, (1 << 62, 2), (0, 0)),
    "dim 2**63": (0, (BIG,), (0,)),
    "dim 2**64": (0, (1 << 64,), (0,)),
    "empty with a dim beyond int64": (0, (0, 1 << 70), (1, 1)),
    "bool dim": (0, (True, 2), (1, 1)),
    "float dim": (0, (3.0,), (1,)),
    "float offset": (0.0, (3,), (1,)),
    "bool offset": (True, (3,), (1,)),
    "None offset": (None, (3,), (1,)),
    "float stride": (0, (3,), (1.5,)),
    "requires_grad on floats": (0, (3,), (1,), 12, True),
    "requires_grad 1": (0, (3,), (1,), 12, 1),
    "requires_grad on int64": (0, (3,), (1,), 12, True, "LongStorage"),
    "requires_grad on bool": (0, (3,), (1,), 12, True, "BoolStorage"),
    "negative storage size": (0, (3,), (1,), -1),
    "bf16 view": (1, (2, 2), (1, 2), 12, False, "BFloat16Storage"),
    "bool view": (0, (2, 3), (1, 2), 12, False, "BoolStorage"),
    # torch reads these; maeconv refuses them on purpose:
    "negative stride on a size-1 dim": (0, (1,), (-5,), 12, False, "FloatStorage", True),
    "negative stride on a size-1 dim of two": (0, (1, 3), (-7, 1), 12, False, "FloatStorage", True),
    "negative stride, empty": (0, (0,), (-1,), 12, False, "FloatStorage", True),
    "negative dim, empty": (0, (0, -1), (1, 1), 12, False, "FloatStorage", True),
    "33 dims (NumPy holds 32)": (0, (1,) * 33, (1,) * 33, 12, False, "FloatStorage", True),
    "2**62 elements broadcast from one": (0, (1 << 31, 1 << 31), (0, 0), 12, False, "FloatStorage", True),
    "empty, too large for NumPy": (0, (0, 1 << 62), (1, 1), 12, False, "FloatStorage", True),
    "broadcast 4 GB from 48 bytes": (0, (100_000, 10_000), (0, 0), 12, False, "FloatStorage", True),
}
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", GEOMETRY)
def test_tensor_geometry_is_read_as_torch_reads_it_or_refused(tmp_path, layout, case):
    case = Case(*GEOMETRY[case])
    path = crafted(tmp_path, layout, *case[:-1])
    refusal = assert_agrees_with_torch(path, maeconv_may_be_stricter=case.stricter)
    if case.stricter:
        assert refusal is not None, "maeconv reads what it should refuse"
    if refusal is not None:
        assert refusal.startswith(f"{path}: not a readable PyTorch checkpoint (")


def test_geometry_checks_are_made_on_python_ints(tmp_path):
    """(2**62 + 1) * 2 + 2 wraps to a small number in int64: the extent check must not wrap."""
    path = crafted(tmp_path, "stored", 0, (3, 2), (1 << 62, 2))
    _refused_as_torch_would(path, "reaches element")
    assert isinstance(torch_reads(path), Exception)


def test_views_read_lazily_and_in_place(tmp_path):
    """Stored contiguous views map straight from the file; others read only their storage's range."""
    path = crafted(tmp_path, "stored", 6, (2, 3), (3, 1))
    ref = read_checkpoint(path).tensors["t"]
    assert ref.span is not None
    assert path.read_bytes()[ref.span.offset:ref.span.offset + 24] == storage_bytes(48, np.uint8)[24:]
    transposed = read_checkpoint(crafted(tmp_path, "stored", 0, (4, 3), (1, 4))).tensors["t"]
    deflated_view = read_checkpoint(crafted(tmp_path, "deflated", 6, (2, 3), (3, 1))).tensors["t"]
    assert transposed.span is None and deflated_view.span is None
    assert np.array_equal(deflated_view.load(), ref.load())


def _refused_as_torch_would(path, reason: str) -> None:
    """maeconv refuses `path` (reading every tensor) with an error matching `reason`; torch.load may
    refuse it too, or read it where maeconv refuses on purpose."""
    refusal = assert_agrees_with_torch(path, maeconv_may_be_stricter=True)
    assert refusal is not None and re.search(reason, refusal), refusal


# --- what a pickle may do after a check ---

BUILD_STATES = {"numel": op_text("numel") + op_int(1 << 40), "dtype": op_text("dtype") + op_global("torch", "float64")}


@pytest.mark.parametrize("state", BUILD_STATES.values(), ids=BUILD_STATES.keys())
def test_build_cannot_change_a_checked_storage(tmp_path, state):
    """A BUILD on the storage object, between its check and the tensor that uses it. torch.load lets
    it set the storage's attributes: {'dtype': torch.float64} makes it read float32 bytes as float64."""
    storage = op_storage("FloatStorage", "0", 4) + b"}" + state + b"sb"
    path = torch_zip(tmp_path / "x.pth", state_pickle(op_text("t") + op_rebuild(storage, 0, (2,), (1,))),
                     {"0": storage_bytes(4)})
    refusal = assert_agrees_with_torch(path, maeconv_may_be_stricter=True)
    assert "sets the state of a Storage" in refusal


@pytest.mark.parametrize("state, inside", [((0, (2, 2), (1, 2)), True), ((2, (4,), (1,)), False),
                                           ((0, (2, 2), (1, 1 << 62)), False)])
def test_build_on_a_tensor_is_checked(tmp_path, state, inside):
    """Legacy pickles set a tensor's state after rebuilding it (torch calls Tensor.set_ with it)."""
    storage = op_storage("FloatStorage", "0", 4)
    offset, size, stride = state
    build = b"(" + b"h\x00" + op_int(offset) + op_tuple(size) + op_tuple(stride) + b"tb"
    tensor = op_rebuild(storage + b"q\x00", 0, (4,), (1,)) + build
    path = torch_zip(tmp_path / "x.pth", state_pickle(op_text("t") + tensor), {"0": storage_bytes(4)})
    assert isinstance(torch_reads(path), Exception) != inside
    assert_agrees_with_torch(path)


def test_a_size_mutated_after_the_rebuild_changes_nothing(tmp_path):
    """The size list is memoised, the tensor rebuilt from it, then the list appended to."""
    size_list = b"]q\x01(" + op_int(3) + b"e"
    tensor = (op_global("torch._utils", "_rebuild_tensor_v2") + b"(" + op_storage("FloatStorage", "0", 4) + op_int(0)
              + size_list + op_tuple((1,)) + b"\x89" + op_global("collections", "OrderedDict") + b")RtR")
    pickled = (b"\x80\x02}" + op_text("model") + b"}" + op_text("t") + tensor + b"s" + b"s"
               + op_text("junk") + b"h\x01" + op_int(1000) + b"as.")
    path = torch_zip(tmp_path / "x.pth", pickled, {"0": storage_bytes(4)})
    assert_agrees_with_torch(path)
    assert read_checkpoint(path).tensors["t"].shape == (3,)


def test_a_storage_is_what_its_first_persistent_id_says(tmp_path):
    """torch keeps the first declaration of a key; a later one cannot resize it."""
    first = op_rebuild(op_storage("FloatStorage", "0", 4), 0, (4,), (1,))
    second = op_rebuild(op_storage("FloatStorage", "0", 1000), 0, (1000,), (1,))
    path = torch_zip(tmp_path / "x.pth", state_pickle(op_text("a") + first, op_text("b") + second),
                     {"0": storage_bytes(4)})
    assert isinstance(torch_reads(path), Exception)
    _refused_as_torch_would(path, "reaches element 999 of a storage of 4")


@pytest.mark.parametrize("entry_bytes", [8, 20])
def test_a_storage_entry_must_hold_exactly_its_declared_bytes(tmp_path, entry_bytes):
    """torch.load refuses this (only its mmap mode reads past the entry, or leaves bytes unused)."""
    path = torch_zip(tmp_path / "x.pth", torch_pickle({"t": Tensor(Storage("FloatStorage", "0", 4), 0, (2,), (1,))}),
                     {"0": storage_bytes(entry_bytes, np.uint8)})
    assert isinstance(torch_reads(path), Exception)
    _refused_as_torch_would(path, f"storage 0 declares 16 bytes; its entry holds {entry_bytes}")


# --- the pickle itself ---

def _run_reader(path, timeout=120):
    """maeconv's reader in a child process (a crash there fails the test instead of ending it)."""
    script = ("import sys; from maeconv.convert.formats import read_checkpoint\n"
              "from maeconv.errors import MaeconvError\n"
              "try:\n    read_checkpoint(sys.argv[1]); print('READ')\n"
              "except MaeconvError as error:\n    print('ERROR', error)\n")
    return subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=timeout)


TORCH_SIZE = op_text("shape") + op_global("torch", "Size") + op_int(3) + b"\x85\x85R"  # torch.Size((3,))


@pytest.mark.parametrize("before", [b"", TORCH_SIZE], ids=["alone", "after a global only torch reads"])
def test_a_deeply_nested_key_is_refused_not_hashed(tmp_path, before):
    """Hashing a tuple nested 300,000 deep overflows CPython's C stack (torch.load(weights_only=True)
    dies of it with SIGSEGV). After a global torch allows, the file would go to torch.load."""
    deep = op_int(0) + b"\x85" * 300_000
    tensor = op_rebuild(op_storage("FloatStorage", "0", 1), 0, (1,), (1,))
    pickled = (b"\x80\x02}(" + before + op_text("model") + b"}" + op_text("t") + tensor + b"s" + deep + op_int(1)
               + b"u.")
    path = torch_zip(tmp_path / "deep.pth", pickled, {"0": storage_bytes(1)})
    result = _run_reader(path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ERROR") and "a dict key of type tuple" in result.stdout


def test_a_global_torch_allows_goes_to_torch(tmp_path):
    """A checkpoint whose extras hold a torch.Size: maeconv does not interpret it, torch.load does."""
    path = tmp_path / "size.pth"
    torch.save({"model": {"w": torch.arange(6.0).reshape(2, 3)}, "shape": torch.Size([2, 3])}, path)
    assert_agrees_with_torch(path)
    assert read_checkpoint(path).extras["shape"] == (2, 3)


def test_a_global_nobody_allows_is_refused_in_the_state_dict(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"model": {"w": torch.ones(2), "when": __import__("datetime").date(2024, 1, 1)}}, path)
    _refused_as_torch_would(path, "refuses to run")


@pytest.mark.parametrize("legacy", [False, True])
def test_a_global_nobody_allows_is_skipped_beside_the_state_dict(tmp_path, legacy):
    """torch.load(weights_only=True) refuses the whole file; maeconv runs nothing of it, reads the
    state dict and leaves the object out, with a note (OpenMMLab's mmengine objects are such)."""
    path = tmp_path / "x.pth"
    torch.save({"model": {"w": torch.ones(2)}, "when": __import__("datetime").date(2024, 1, 1), "n": 3}, path,
               _use_new_zipfile_serialization=not legacy)
    assert isinstance(torch_reads(path), Exception)
    checkpoint = read_checkpoint(path)
    assert np.array_equal(checkpoint.tensors["w"].load(), np.ones(2, np.float32))
    assert isinstance(checkpoint.extras["when"], torchpickle.Opaque) and checkpoint.extras["n"] == 3
    assert len(checkpoint.notes) == 1 and "datetime.date" in checkpoint.notes[0]


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_pickle_protocols_torch_refuses_are_refused(tmp_path, protocol):
    """torch.load(weights_only=True) runs protocol 2's opcodes only (plus EMPTY_SET)."""
    path = tmp_path / "p.pth"
    torch.save({"model": {"w": torch.ones(2)}, "tag": b"raw bytes"}, path, pickle_protocol=protocol)
    assert isinstance(torch_reads(path), Exception)
    _refused_as_torch_would(path, "opcode")


def test_protocol_2_bytes_and_namespaces_read(tmp_path):
    path = tmp_path / "p.pth"
    torch.save({"model": {"w": torch.ones(2)}, "tag": b"raw \xff bytes", "args": argparse.Namespace(lr=0.5),
                "steps": [1, 2.5, None, True, "x"], "pair": (1, "a"), "empty": set()}, path)
    extras = read_checkpoint(path).extras
    assert extras["tag"] == b"raw \xff bytes" and extras["args"].lr == 0.5 and extras["pair"] == (1, "a")
    assert extras["steps"] == [1, 2.5, None, True, "x"] and extras["empty"] == set()


@pytest.mark.parametrize("pickled, reason", [
    (b"\x80\x02}r\xff\xff\xff\xffK\x00.", "holds no state dict"),  # LONG_BINPUT at index 2**32-1
    (b"\x80\x02X\xff\xff\xff\x7f", "would build more than"),  # a 2 GiB string in a tiny pickle
    (b"\x80\x02}" + op_int(1) + b"a.", "appends to something that is not a list"),
    (b"\x80\x02" + op_global("collections", "OrderedDict") + b"(]" + op_int(1) + b"\x85tR.", "OrderedDict built"),
    (b"\x80\x02" + op_global("argparse", "Namespace") + b")\x81" + b"}" + op_int(1) + op_int(2) + b"sb.",
     "sets the state of a Namespace"),
    (b"\x80\x02" + op_int(5) + b")R.", "calls something that is not an allowed function"),
    (b"\x80\x02" + op_text("storage") + b"Q.", "not a 5-field storage id"),
    (b"\x80\x02}(" + op_int(1) + b"u.", "a key without a value"),
    (b"\x80\x02(" + b"\x94.", "opcode"),  # MEMOIZE (protocol 4)
    (b"\x80\x02" + b"h\x07.", "malformed"),  # BINGET of nothing
    (b"\x80\x02}", "malformed"),  # no STOP
])
def test_malformed_pickles_are_refused_in_one_line(tmp_path, pickled, reason):
    path = torch_zip(tmp_path / "x.pth", pickled, {})
    with pytest.raises(MaeconvError, match=reason) as error:
        read_checkpoint(path)
    assert "\n" not in str(error.value)
    # torch reads two: an empty dict, and a Namespace whose attribute names are ints (its repr then fails)
    torch_reads_it = reason in ("holds no state dict", "sets the state of a Namespace")
    assert isinstance(torch_reads(path), Exception) != torch_reads_it


def test_a_storage_is_not_a_tensor(tmp_path):
    pickled = b"\x80\x02}" + op_text("model") + b"}" + op_text("t") + op_storage("FloatStorage", "0", 1) + b"ss."
    path = torch_zip(tmp_path / "x.pth", pickled, {"0": storage_bytes(1)})
    _refused_as_torch_would(path, "entries that are not tensors: t")


def test_codecs_encode_only_makes_bytes(tmp_path):
    """Protocol 2 pickles bytes as _codecs.encode(text, 'latin1'); torch allows any codec there."""
    pickled = (b"\x80\x02}" + op_text("model") + b"}" + op_text("t") + op_rebuild(op_storage("FloatStorage", "0", 1), 0,
                                                                                     (1,), (1,))
               + b"s" + op_text("x") + op_global("_codecs", "encode") + op_text("x") + op_text("utf-16") + b"\x86Rs.")
    path = torch_zip(tmp_path / "x.pth", pickled, {"0": storage_bytes(1)})
    refusal = assert_agrees_with_torch(path, maeconv_may_be_stricter=True)
    assert "_codecs.encode used for something other than bytes" in refusal


# --- compressed entries ---

def _rich_state():
    base = torch.randn(6, 4)
    return collections.OrderedDict(
        w=torch.randn(3, 5), transposed=base.t(), sliced=base[2:5, 1:3], half=torch.randn(4).half(),
        bf=torch.randn(2, 3).to(torch.bfloat16), flags=torch.tensor([True, False, True]), count=torch.tensor(7),
        empty=torch.zeros(0, 3), shared=base)


@pytest.mark.parametrize("deflate", ["everything", "tensors only", "data.pkl only"])
def test_a_rezipped_checkpoint_reads_exactly(tmp_path, deflate):
    """What a zip tool makes of torch.save's file: deflated entries, no alignment."""
    original = tmp_path / "original.pth"
    torch.save({"model": _rich_state(), "args": argparse.Namespace(lr=0.1), "epoch": 4}, original)
    with zipfile.ZipFile(original) as archive:
        names = [n for n in archive.namelist() if ("/data/" in n) == (deflate == "tensors only")
                 or deflate == "everything"]
    path = rezip(original, tmp_path / "rezipped.pth", names=names)
    assert_agrees_with_torch(path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.extras["epoch"] == 4 and checkpoint.extras["args"].lr == 0.1
    in_place = {name for name, ref in checkpoint.tensors.items() if ref.span is not None}
    assert in_place == ({"w", "half", "bf", "flags", "count", "shared"} if deflate == "data.pkl only" else set())


@pytest.mark.skipif(shutil.which("zip") is None, reason="needs the zip tool")
def test_a_checkpoint_unpacked_and_packed_again_with_zip_reads_exactly(tmp_path):
    """What `unzip` then `zip -r` make of torch.save's file: folder entries, deflated entries."""
    torch.save({"model": _rich_state()}, tmp_path / "original.pth")
    with zipfile.ZipFile(tmp_path / "original.pth") as archive:
        archive.extractall(tmp_path / "unpacked")
    subprocess.run(["zip", "-q", "-r", str(tmp_path / "packed.pth"), "original"], cwd=tmp_path / "unpacked", check=True)
    with zipfile.ZipFile(tmp_path / "packed.pth") as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
        assert "original/data/" in archive.namelist()
    assert_agrees_with_torch(tmp_path / "packed.pth")


def test_torch_mmap_misreads_what_maeconv_reads(tmp_path):
    """torch.load(mmap=True), maeconv's old fallback, maps a deflated entry's compressed bytes."""
    original = tmp_path / "original.pth"
    torch.save({"model": {"w": torch.randn(50, 40)}}, original)
    path = rezip(original, tmp_path / "deflated.pth")
    mapped = torch.load(path, weights_only=True, mmap=True)["model"]["w"]
    truth = torch.load(original, weights_only=True)["model"]["w"]
    assert not torch.equal(mapped, truth)
    assert np.array_equal(read_checkpoint(path).tensors["w"].load(), truth.numpy())


def test_a_deflated_checkpoint_converts_to_the_right_numbers(tmp_path, tiny_pth):
    path = rezip(tiny_pth, tmp_path / "deflated.pth")
    result = CliRunner().invoke(cli, ["convert", str(path), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 0, result.output
    from safetensors.numpy import load_file

    converted = load_file(tmp_path / "out.safetensors")
    original = torch.load(tiny_pth, weights_only=False)["model"]  # test-only: the file is the test's own
    assert converted.keys() == original.keys()
    for name, tensor in original.items():
        assert np.array_equal(converted[name], tensor.numpy()), name


def _deflated_tensor_file(folder, declared=16):
    """A tensor of `declared` float32 elements, whose deflated entry holds 16."""
    tensor = Tensor(Storage("FloatStorage", "0", declared), 0, (declared,), (1,))
    path = torch_zip(folder / "d.pth", torch_pickle({"t": tensor}), {"0": storage_bytes(16)}, zipfile.ZIP_DEFLATED,
                     pickle_compression=zipfile.ZIP_STORED)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("archive/data/0")
    if declared != 16:
        patch_entry(path, info.filename, file_size=4 * declared)
    return path, info


@pytest.mark.parametrize("damage, reason", [
    ("crc", "fails its CRC check"),
    ("declared shorter", "does not inflate to its declared"),
    ("declared longer", "does not inflate to its declared"),
    ("stream bytes", "corrupt|does not inflate|CRC"),
])
def test_a_damaged_deflated_entry_fails_when_read(tmp_path, damage, reason):
    declared = {"declared shorter": 14, "declared longer": 18}.get(damage, 16)
    path, info = _deflated_tensor_file(tmp_path, declared)
    if damage == "crc":
        patch_entry(path, info.filename, crc=info.CRC ^ 1)
    elif damage == "stream bytes":
        data = bytearray(path.read_bytes())
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        data[start + 5:start + 9] = bytes(b ^ 0xA5 for b in data[start + 5:start + 9])
        path.write_bytes(bytes(data))
    _refused_as_torch_would(path, reason)  # torch.load reads all but the longer one, unchecked


@pytest.mark.parametrize("method, reason", [(zipfile.ZIP_BZIP2, "compression method 12"),
                                            (zipfile.ZIP_LZMA, "compression method 14")])
def test_compression_torch_cannot_read_is_refused(tmp_path, tiny_pth, method, reason):
    path = rezip(tiny_pth, tmp_path / "odd.pth", method)
    assert isinstance(torch_reads(path), Exception)
    _refused_as_torch_would(path, reason)


def test_an_encrypted_entry_is_refused(tmp_path, tiny_pth):
    path = rezip(tiny_pth, tmp_path / "locked.pth", zipfile.ZIP_STORED)
    patch_entry(path, f"{tiny_pth.stem}/data.pkl", flags=1)
    _refused_as_torch_would(path, "encrypted")


def test_an_entry_named_twice_is_refused(tmp_path):
    pickled = torch_pickle({"t": Tensor(Storage("FloatStorage", "0", 2), 0, (2,), (1,))})
    path = torch_zip(tmp_path / "twice.pth", pickled, {"0": storage_bytes(2)})
    with zipfile.ZipFile(path, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("archive/data/0", storage_bytes(2, seed=1))
    _refused_as_torch_would(path, "appears twice")


def test_a_deflate_bomb_is_refused_before_inflating(tmp_path):
    path, info = _deflated_tensor_file(tmp_path)
    patch_entry(path, info.filename, file_size=1032 * info.compress_size + 1)
    _refused_as_torch_would(path, "more than deflate can expand")


def test_bf16_and_bool_views_in_deflated_entries(tmp_path):
    for storage_type, dtype in (("BFloat16Storage", ml_dtypes.bfloat16), ("BoolStorage", np.bool_)):
        path = crafted(tmp_path, "deflated", 1, (2, 2), (1, 3), 12, False, storage_type)
        assert_agrees_with_torch(path)
        assert read_checkpoint(path).tensors["t"].dtype == np.dtype(dtype)


def test_lenient_survey_stands_in_for_unknown_globals():
    pickled = b"\x80\x02}" + TORCH_SIZE + b"s."
    with pytest.raises(torchpickle.Unsupported):
        torchpickle.unpickle(io.BytesIO(pickled), torchpickle.no_storages)
    survey = torchpickle.unpickle(io.BytesIO(pickled), torchpickle.no_storages, lenient=True)
    assert isinstance(survey["shape"], torchpickle.Opaque)


# --- the legacy layout ---

def test_legacy_files_torch_writes_read_exactly_and_lazily(tmp_path):
    path = tmp_path / "legacy.pth"
    state = _rich_state()
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1), "epoch": 4}, path,
               _use_new_zipfile_serialization=False)
    assert_agrees_with_torch(path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.extras["epoch"] == 4 and checkpoint.extras["args"].lr == 0.1
    in_place = {name for name, ref in checkpoint.tensors.items() if ref.span is not None}
    assert in_place == {"w", "half", "bf", "flags", "count", "shared"}


def test_legacy_reading_needs_no_torch(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"model": {"w": torch.arange(6.0).reshape(2, 3)}}, path, _use_new_zipfile_serialization=False)
    script = ("import sys; from maeconv.convert.formats import read_checkpoint; "
              f"print(read_checkpoint({str(path)!r}).tensors['w'].load().tolist()); "
              "assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]"


def _legacy(folder, storages=None, counts=None, keys=None, view=None, numel=12, tensor_offset=0, size=(4,)):
    obj = {"model": {"t": Tensor(Storage("FloatStorage", "0", numel, view, legacy=True), tensor_offset, size, (1,))}}
    storages = {"0": (4, storage_bytes(12))} if storages is None else storages
    return torch_legacy(folder / "legacy.pth", obj, storages, counts, keys)


@pytest.mark.parametrize("change, reason, torch_refuses", [
    (dict(counts={"0": 11}), "does not hold the 12 elements", True),
    (dict(counts={"0": 13}), "does not hold the 12 elements", True),
    (dict(keys=[]), "does not match the storages", False),  # torch hands out uninitialised memory
    (dict(keys=["0", "0"]), "distinct keys", True),
    (dict(keys=["0", "1"]), "does not match the storages", True),
    (dict(keys="0"), "not a list", False),  # torch iterates the string's characters
    (dict(storages={"0": (4, storage_bytes(8))}, counts={"0": 12}), "runs past the end", True),
    (dict(numel=1 << 40), "the file holds fewer", True),
    (dict(view=("v", 4, 4)), None, False),
    (dict(view=("v", 10, 4), size=(2,)), "a view of 4 elements at 10", False),  # torch clips the view
    (dict(view=("v", 10, 4)), "a view of 4 elements at 10", True),
    (dict(view=("v", -2, 4)), "a view of 4 elements at -2", True),
])
def test_crafted_legacy_files(tmp_path, change, reason, torch_refuses):
    path = _legacy(tmp_path, **change)
    expected = torch_reads(path)
    assert isinstance(expected, Exception) == torch_refuses
    if reason is None:
        assert_agrees_with_torch(path)
        return
    _refused_as_torch_would(path, reason)


@pytest.mark.parametrize("header, reason", [
    ([1234, 1001, {"little_endian": True}], "magic number"),
    ([0x1950A86A20F9469CFC6C, 1000, {"little_endian": True}], "protocol version"),
    ([0x1950A86A20F9469CFC6C, 1001, {"little_endian": False}], "big-endian"),
])
def test_legacy_headers(tmp_path, header, reason):
    path = _legacy(tmp_path)
    data = path.read_bytes()
    stream = io.BytesIO(data)
    for _ in range(3):
        pickle.load(stream)
    path.write_bytes(b"".join(pickle.dumps(part, protocol=2) for part in header) + data[stream.tell():])
    _refused_as_torch_would(path, reason)


def test_records_in_two_folders_are_refused(tmp_path):
    pickled = torch_pickle({"t": Tensor(Storage("FloatStorage", "0", 2), 0, (2,), (1,))})
    path = torch_zip(tmp_path / "two.pth", pickled, {"0": storage_bytes(2)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("other/data.pkl", pickled)
    _refused_as_torch_would(path, "entry other/data.pkl lies outside the archive's folder archive")


SB = storage_bytes(2)
RECORDS = {  # name: (entries, what maeconv says, or None where it reads the file)
    "version under .data": ([("a/data.pkl", None), ("a/data/0", SB), ("a/.data/version", b"3\n")], None),
    "version with trailing text": ([("a/data.pkl", None), ("a/data/0", SB), ("a/version", b" 3x")], None),
    "no version": ([("a/data.pkl", None), ("a/data/0", SB)], "no version record"),
    "version 0": ([("a/data.pkl", None), ("a/data/0", SB), ("a/version", b"0")], "format version"),
    "version 11": ([("a/data.pkl", None), ("a/data/0", SB), ("a/version", b"11\n")], "format version"),
    "version not a number": ([("a/data.pkl", None), ("a/data/0", SB), ("a/version", b"x")], "format version"),
    "first entry in another folder": ([("x/version", b"3"), ("a/data.pkl", None), ("a/data/0", SB),
                                       ("a/version", b"3")], "entry a/data.pkl lies outside the archive's folder x"),
    "first entry in no folder": ([("junk", b""), ("a/data.pkl", None), ("a/data/0", SB), ("a/version", b"3")],
                                 "outside the archive's folder junk"),
    "storage in another folder": ([("a/data.pkl", None), ("b/data/0", SB), ("a/version", b"3")], "outside"),
}


@pytest.mark.parametrize("case", RECORDS)
def test_the_records_torch_requires(tmp_path, case):
    entries, reason = RECORDS[case]
    pickled = torch_pickle({"t": Tensor(Storage("FloatStorage", "0", 2), 0, (2,), (1,))})
    path = tmp_path / "records.pth"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries:
            archive.writestr(name, pickled if data is None else data)
    if reason is None:
        assert_agrees_with_torch(path)
    else:
        _refused_as_torch_would(path, reason)
        assert isinstance(torch_reads(path), Exception)
