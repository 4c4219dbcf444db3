"""Outputs never destroy what maeconv did not write: --force limits, overlap with the inputs,
exclusive staging, races, signals, leftovers of killed runs, unusable names, file modes."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from maeconv.convert import outputs
from maeconv.errors import MaeconvError

from helpers import run_cli as run




def snapshot(folder):
    return {p: (p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p) if p.is_symlink() else None)
            for p in folder.rglob("*")}


def fails(result, *expected):
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def hf_dir(tmp_path, tiny_pth):
    folder = tmp_path / "hf"
    assert run("convert", tiny_pth, folder).exit_code == 0
    return folder


# --- --force: what it may and may not replace ---

def test_force_onto_the_parent_of_the_input_deletes_nothing(tmp_path, tiny_pth, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    before = snapshot(tmp_path)
    fails(run("convert", "../mae_tiny.pth", "..", "--force"), "not a usable output name")
    fails(run("convert", tiny_pth, tmp_path, "--force"), "output would overwrite the input")
    assert snapshot(tmp_path) == before


def test_force_onto_an_unrelated_folder_keeps_its_files(tmp_path, tiny_pth):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"\xff\xd8\xff")
    before = snapshot(tmp_path)
    fails(run("convert", tiny_pth, other, "--force"), "photos", "holiday.jpg")
    fails(run("torch2ms", tiny_pth, other, "--force"), "photos")
    assert snapshot(tmp_path) == before


def test_force_onto_the_working_directory_is_refused(tmp_path, tiny_pth, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    fails(run("convert", tiny_pth, empty, "--force"), "working directory")
    assert empty.is_dir() and not list(empty.iterdir())


def test_force_never_overwrites_the_weights_of_an_input_directory(tmp_path, hf_dir):
    before = snapshot(tmp_path)
    fails(run("convert", hf_dir, hf_dir / "model.safetensors", "--force"), "output would overwrite the input")
    fails(run("convert", hf_dir, hf_dir, "--force"), "output would overwrite the input")
    fails(run("convert", hf_dir / "model.safetensors", hf_dir, "--force"), "output would overwrite the input")
    assert snapshot(tmp_path) == before


def test_output_overlap_is_checked_on_real_files_not_spelling(tmp_path, tiny_pth):
    link = tmp_path / "alias.pth"
    link.symlink_to(tiny_pth)
    before = snapshot(tmp_path)
    fails(run("convert", tiny_pth, tmp_path / "." / "mae_tiny.pth", "--force"), "overwrite the input")
    fails(run("convert", tiny_pth, link, "--force"), "overwrite the input")
    os.link(tiny_pth, tmp_path / "hardlink.pth")
    before = snapshot(tmp_path)
    fails(run("convert", tiny_pth, tmp_path / "hardlink.pth", "--force"), "overwrite the input")
    assert snapshot(tmp_path) == before


def test_force_replaces_a_directory_maeconv_wrote_and_only_that(tmp_path, tiny_pth, hf_dir):
    fails(run("convert", tiny_pth, hf_dir), "already exists")
    config = (hf_dir / "config.json").read_text()
    (hf_dir / "config.json").write_text("{}")
    assert run("convert", tiny_pth, hf_dir, "--force").exit_code == 0
    assert (hf_dir / "config.json").read_text() == config
    (hf_dir / "notes.txt").write_text("mine")
    fails(run("convert", tiny_pth, hf_dir, "--force"), "notes.txt", "maeconv does not write")
    assert (hf_dir / "notes.txt").read_text() == "mine" and (hf_dir / "model.safetensors").exists()


def test_force_replaces_a_file_and_a_link_but_not_what_the_link_points_at(tmp_path, tiny_pth):
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(b"precious")
    link = tmp_path / "out.ckpt"
    link.symlink_to(elsewhere)
    fails(run("torch2ms", tiny_pth, link), "already exists")
    assert run("torch2ms", tiny_pth, link, "--force").exit_code == 0
    assert not link.is_symlink() and link.stat().st_size > 1000
    assert elsewhere.read_bytes() == b"precious"


# --- staging: exclusive, private, never following a planted link ---

def test_staging_never_follows_a_planted_link(tmp_path, tiny_pth, monkeypatch):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"keep")
    monkeypatch.setattr(outputs.secrets, "token_hex", lambda n: "0badc0de")
    (tmp_path / f".maeconv-{os.getpid()}-0badc0de.tmp").symlink_to(victim)
    fails(run("torch2ms", tiny_pth, tmp_path / "out.ckpt"), "staging folder")
    assert snapshot(victim) == {victim / "keep": b"keep"} and not (tmp_path / "out.ckpt").exists()


def test_staging_folder_is_private_and_outputs_get_the_usual_mode(tmp_path, monkeypatch):
    seen = []
    original = outputs._commit

    def look(staging, *args):
        seen.append(os.stat(staging).st_mode & 0o777)
        return original(staging, *args)

    monkeypatch.setattr(outputs, "_commit", look)
    old = os.umask(0o022)
    try:
        with outputs.staged(tmp_path / "ro.bin") as stage:
            stage.path().write_bytes(b"x")
            os.chmod(stage.path(), 0o400)  # as MindSpore's writers leave their files
    finally:
        os.umask(old)
    assert seen == [0o700]
    assert (tmp_path / "ro.bin").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["ro.bin"]


# --- races: an existing output is never silently replaced ---

def test_an_output_appearing_during_the_work_is_kept_and_reported(tmp_path, tiny_pth, monkeypatch):
    from maeconv.convert import writers

    original = writers.write_verified
    out = tmp_path / "race.ckpt"

    def other_run_wins(path, *args, **kwargs):
        original(path, *args, **kwargs)
        out.write_bytes(b"the other run's file")

    monkeypatch.setattr(writers, "write_verified", other_run_wins)
    fails(run("torch2ms", tiny_pth, out), "race.ckpt", "appeared while maeconv was writing")
    assert out.read_bytes() == b"the other run's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mae_tiny.pth", "race.ckpt"]


def test_a_failed_rename_in_a_set_takes_back_the_members_already_moved(tmp_path, monkeypatch):
    with pytest.raises(MaeconvError, match="appeared while maeconv was writing"):
        with outputs.staged(tmp_path / "a.png", tmp_path / "b.png") as stage:
            stage.path(0).write_bytes(b"a")
            stage.path(1).write_bytes(b"b")
            (tmp_path / "b.png").write_bytes(b"someone else's")  # after the checks, before the renames
            monkeypatch.setattr(outputs, "check_target", lambda *args, **kwargs: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png"]
    assert (tmp_path / "b.png").read_bytes() == b"someone else's"


def test_rename_without_replacing_is_exclusive(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        outputs._rename(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"b"
    outputs._rename(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c").read_bytes() == b"a" and not (tmp_path / "a").exists()


# --- signals and leftovers ---

SLOW_CONVERSION = textwrap.dedent("""
    import sys, time
    from maeconv.convert import writers
    from maeconv.cli import main
    original = writers.write_verified
    def slow(*args, **kwargs):
        original(*args, **kwargs)
        print("written", flush=True)
        time.sleep(60)
    writers.write_verified = slow
    sys.argv = ["maeconv", "torch2ms", sys.argv[1], sys.argv[2]]
    main()
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_termination_signals_clean_up(tmp_path, tiny_pth, signum):
    before = snapshot(tmp_path)
    process = subprocess.Popen([sys.executable, "-c", SLOW_CONVERSION, str(tiny_pth), str(tmp_path / "out.ckpt")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "written"
    assert any(p.name.startswith(".maeconv-") for p in tmp_path.iterdir())  # staged, not yet renamed
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert stderr.strip() == f"Error: interrupted by {signal.Signals(signum).name}; unfinished outputs removed"
    assert snapshot(tmp_path) == before


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path, tiny_pth):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".maeconv-{dead.pid}-0123abcd.tmp"
    stale.mkdir()
    (stale / "out.ckpt").write_bytes(b"half")
    alive = tmp_path / f".maeconv-{os.getppid()}-4567cdef.tmp"  # a live process's: left alone
    alive.mkdir()
    result = run("torch2ms", tiny_pth, tmp_path / "out.ckpt")
    assert result.exit_code == 0
    assert f"removed {stale}" in result.stderr
    assert not stale.exists() and alive.is_dir()


# --- unusable names ---

@pytest.mark.parametrize("name, message", [(".", "not a usable output name"), ("..", "not a usable output name"),
                                           ("x" * 256 + ".ckpt", "file name too long"),
                                           ("a_file/out.ckpt", "is not a directory"),
                                           ("missing/out.ckpt", "does not exist")])
def test_unusable_output_names(tmp_path, tiny_pth, monkeypatch, name, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_bytes(b"")
    before = snapshot(tmp_path)
    fails(run("torch2ms", tiny_pth, name), message)
    assert snapshot(tmp_path) == before


def test_a_name_too_long_only_with_a_suffix_added_still_works(tmp_path, tiny_pth):
    out = tmp_path / ("x" * 250 + ".ckpt")  # 255 bytes: the longest name there is
    assert run("torch2ms", tiny_pth, out).exit_code == 0 and out.exists()


def test_names_with_control_characters_are_escaped_in_errors(tmp_path):
    weird = tmp_path / "evil\n\x1b[31mname.pth"
    line = fails(run("inspect", weird), "evil\\n\\x1b[31mname.pth")
    assert "\x1b" not in line


def test_export_and_forward_refuse_to_overwrite_their_input(tmp_path, tiny_pth):
    (tmp_path / "alias.onnx").symlink_to(tiny_pth)
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    before = snapshot(tmp_path)
    fails(run("export", "onnx", tiny_pth, tmp_path / "alias.onnx", "--task", "features", "--force"),
          "overwrite the input")
    fails(run("forward", tiny_pth, "--images", tmp_path / "x.npy", "--out", tmp_path / "x.npy", "--force"),
          "overwrite the input")
    assert snapshot(tmp_path) == before
