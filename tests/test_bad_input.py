"""Bad input: a clear one-line error naming the file, a non-zero exit, and nothing left behind."""
import argparse
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from maeconv.cli import cli

from crafting import patch_entry
from helpers import save_official


class RunsCode:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _snapshot(folder):
    return {p: (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def _fails_cleanly(tmp_path, args, *expected):
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    for text in expected:
        assert text in errors[0]
    assert _snapshot(tmp_path) == before  # no output, no temporary file, inputs untouched
    return errors[0]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out.ckpt"


def test_missing_file(tmp_path, out):
    _fails_cleanly(tmp_path, ["torch2ms", tmp_path / "nope.pth", out], "nope.pth", "no such file")


def test_empty_file(tmp_path, out):
    (tmp_path / "empty.pth").write_bytes(b"")
    _fails_cleanly(tmp_path, ["torch2ms", tmp_path / "empty.pth", out], "empty.pth", "empty")


def test_truncated_torch_file(tmp_path, tiny_pth, out):
    data = tiny_pth.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    _fails_cleanly(tmp_path, ["torch2ms", bad, out], "truncated.pth", "not a readable PyTorch checkpoint")


@pytest.mark.parametrize("name,command", [("random.pth", "torch2ms"), ("random.ckpt", "ms2torch"),
                                          ("random.bin", "inspect")])
def test_random_bytes(tmp_path, name, command):
    bad = tmp_path / name
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    args = [command, bad] + ([tmp_path / "out.x"] if command != "inspect" else [])
    _fails_cleanly(tmp_path, args, name, "not a readable")


def test_truncated_mindspore_file(tmp_path, tiny_pth):
    CliRunner().invoke(cli, ["torch2ms", str(tiny_pth), str(tmp_path / "good.ckpt")])
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 3])
    _fails_cleanly(tmp_path, ["ms2torch", tmp_path / "cut.ckpt", tmp_path / "o.pth"], "cut.ckpt",
                   "not a readable MindSpore checkpoint")


@pytest.mark.parametrize("layout", ["zip", "legacy", "plain pickle"])
def test_pickle_that_would_run_code_is_not_run(tmp_path, out, layout):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    payload = {"model": {"cls_token": torch.zeros(1), "evil": RunsCode(marker)}}
    if layout == "plain pickle":
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, evil, _use_new_zipfile_serialization=layout == "zip")
    _fails_cleanly(tmp_path, ["torch2ms", evil, out], "evil.pth", "refuses to run")
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_code_beside_the_state_dict_is_skipped_not_run(tmp_path, tiny_state, legacy):
    """What would run code outside the state dict (mmengine's objects in OpenMMLab checkpoints) is
    left out with a note, never run."""
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    model = {k: torch.from_numpy(np.array(v)) for k, v in tiny_state.items()}
    torch.save({"model": model, "args": RunsCode(marker)}, evil, _use_new_zipfile_serialization=not legacy)
    result = CliRunner().invoke(cli, ["torch2ms", str(evil), str(tmp_path / "o.ckpt")])
    assert result.exit_code == 0, result.output
    assert "code maeconv does not run" in result.output and "posix.system" in result.output
    assert not marker.exists() and (tmp_path / "o.ckpt").exists()


def test_state_dict_matching_no_preset(tmp_path, out, tiny_state):
    odd = dict(tiny_state)
    odd["blocks.0.attn.qkv.weight"] = np.zeros((5, 5), np.float32)
    del odd["norm.bias"]
    path = save_official(tmp_path / "odd.pth", odd)
    line = _fails_cleanly(tmp_path, ["torch2ms", path, out], "odd.pth", "match no preset")
    assert "norm.bias" in line and "blocks.0.attn.qkv.weight" in line


def test_not_a_state_dict(tmp_path, out):
    torch.save({"model": {"x": 3}}, tmp_path / "notensors.pth")
    _fails_cleanly(tmp_path, ["torch2ms", tmp_path / "notensors.pth", out], "notensors.pth", "not tensors")


def test_existing_output_needs_force(tmp_path, tiny_pth):
    existing = tmp_path / "exists.ckpt"
    existing.write_bytes(b"keep me")
    _fails_cleanly(tmp_path, ["torch2ms", tiny_pth, existing], "exists.ckpt", "--force")
    assert existing.read_bytes() == b"keep me"
    assert CliRunner().invoke(cli, ["torch2ms", str(tiny_pth), str(existing), "--force"]).exit_code == 0
    assert existing.read_bytes() != b"keep me"


def test_output_into_missing_directory(tmp_path, tiny_pth):
    _fails_cleanly(tmp_path, ["torch2ms", tiny_pth, tmp_path / "no" / "dir.ckpt"], "does not exist")


def test_console_script_prints_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "maeconv", "inspect", str(tmp_path / "gone.pth")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: {tmp_path / 'gone.pth'}: no such file"
    assert result.stdout == ""


def _valid_files(tmp_path, tiny_pth):
    CliRunner().invoke(cli, ["convert", str(tiny_pth), str(tmp_path / "v.safetensors")])
    CliRunner().invoke(cli, ["convert", str(tiny_pth), str(tmp_path / "v.ckpt")])
    return {".pth": tiny_pth, ".safetensors": tmp_path / "v.safetensors", ".ckpt": tmp_path / "v.ckpt"}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".ckpt"])
@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_files_in_every_format(tmp_path, tiny_pth, suffix, damage):
    data = _valid_files(tmp_path, tiny_pth)[suffix].read_bytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(data[: len(data) * 2 // 3] if damage == "truncated" else np.random.default_rng(1).bytes(len(data)))
    line = _fails_cleanly(tmp_path, ["convert", bad, tmp_path / "out.pth"], f"bad{suffix}")
    assert "truncated" in line or "not a" in line or "does not fit" in line or "corrupt" in line


def test_broken_hf_directories(tmp_path, tiny_pth):
    folder = tmp_path / "hf"
    CliRunner().invoke(cli, ["convert", str(tiny_pth), str(folder)])
    (folder / "config.json").write_text("{not json")
    _fails_cleanly(tmp_path, ["inspect", folder], "config.json", "not valid JSON")
    (folder / "config.json").unlink()
    _fails_cleanly(tmp_path, ["inspect", folder], "not a Hugging Face model directory")


@pytest.mark.parametrize("config, reason", [
    ('{"mask_ratio": 1' + "0" * 5000 + "}", "an integer of 5001 digits"),
    ('{"mask_ratio": 1' + "0" * 400 + "}", "too large a number"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"mask_ratio": NaN}', "NaN is not JSON"),
    ('{"hidden_act": "gelu", "hidden_act": "relu"}', "key 'hidden_act' appears twice"),
    ("[1, 2, 3]", "not a model config"),
    ("null", "not a model config"),
])
def test_hostile_json_in_a_hf_config(tmp_path, tiny_pth, config, reason):
    """Whatever json.loads lets through or trips over (an int past Python's digit limit, a float the
    int overflows, nesting past the recursion limit, NaN, a key twice, a non-object) is one line."""
    folder = tmp_path / "hf"
    CliRunner().invoke(cli, ["convert", str(tiny_pth), str(folder)])
    (folder / "config.json").write_text(config)
    for command in (["inspect", folder], ["convert", folder, tmp_path / "out.pth"]):
        _fails_cleanly(tmp_path, command, "config.json", reason)


def test_a_huge_integer_setting_in_a_torch_file(tmp_path, tiny_state):
    path = tmp_path / "big.pth"
    model = {name: torch.from_numpy(np.array(value)) for name, value in tiny_state.items()}
    torch.save({"model": model, "args": argparse.Namespace(mask_ratio=10**400)}, path)  # as the reference saves args
    _fails_cleanly(tmp_path, ["convert", path, tmp_path / "out.safetensors"], "mask_ratio", "too large a number")


def test_a_zip_version_zipfile_cannot_read(tmp_path, tiny_pth):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(tiny_pth.read_bytes())
    with zipfile.ZipFile(bad) as archive:
        first = archive.infolist()[0].filename
    patch_entry(bad, first, version=0xFF)
    _fails_cleanly(tmp_path, ["inspect", bad], "bad.pth", "cannot read")


def test_links_out_of_a_hf_folder_are_refused(tmp_path, tiny_pth):
    """A folder format's files are its own: a weights file or shard that links elsewhere is not read."""
    folder, elsewhere = tmp_path / "hf", tmp_path / "elsewhere"
    CliRunner().invoke(cli, ["convert", str(tiny_pth), str(folder)])
    elsewhere.mkdir()
    (folder / "model.safetensors").rename(elsewhere / "model.safetensors")
    (folder / "model.safetensors").symlink_to(elsewhere / "model.safetensors")
    _fails_cleanly(tmp_path, ["inspect", folder], "model.safetensors is a link to", "outside the folder")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to("../elsewhere/model.safetensors")
    _fails_cleanly(tmp_path, ["convert", folder, tmp_path / "out.pth"], "outside the folder")
    (folder / "model.safetensors").unlink()
    (elsewhere / "model.safetensors").rename(folder / "real.safetensors")
    (folder / "model.safetensors").symlink_to("real.safetensors")  # a link inside the folder is its own file
    assert CliRunner().invoke(cli, ["inspect", str(folder)]).exit_code == 0


def test_full_disk_leaves_nothing_behind(tmp_path, tiny_pth):
    """A write that fails part-way (the file size limit stands in for a full disk)."""
    import resource
    import signal

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    before = _snapshot(tmp_path)
    result = subprocess.run([sys.executable, "-m", "maeconv", "torch2ms", str(tiny_pth),
                             str(tmp_path / "out.ckpt")], capture_output=True, text=True, timeout=120,
                            preexec_fn=limit_file_size)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"Error: {tmp_path / 'out.ckpt'}: cannot write")
    assert _snapshot(tmp_path) == before


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory nobody may write into: read-only bits, or for root (who ignores them) the
    immutable attribute."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
            pytest.skip("root needs chattr +i for an unwritable directory, and it is not available here")
    yield locked
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)


def test_unwritable_directory(tmp_path, tiny_pth, unwritable_dir):
    _fails_cleanly(tmp_path, ["torch2ms", tiny_pth, unwritable_dir / "out.ckpt"], "not writable")


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
@pytest.mark.parametrize("damaged, reason", [("tensor", "read-back check failed for"),
                                             ("header", "read-back check failed: the written file does not parse")])
def test_a_corrupted_write_is_caught_by_the_read_back(tmp_path, tiny_pth, monkeypatch, suffix, damaged, reason):
    from maeconv.convert import tensors

    original = tensors.write_all

    def corrupting_write(out, data):
        is_tensor = isinstance(data, np.ndarray)  # headers are written as bytes
        if (damaged == "tensor") == is_tensor and len(memoryview(data).cast("B")) > 8:
            data = bytes(memoryview(data).cast("B"))
            data = data[:4] + bytes(b ^ 0x5A for b in data[4:8]) + data[8:]  # goes wrong on its way to the disk
        original(out, data)

    monkeypatch.setattr(tensors, "write_all", corrupting_write)
    _fails_cleanly(tmp_path, ["convert", tiny_pth, tmp_path / f"out{suffix}"], reason)
