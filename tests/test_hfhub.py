"""Hugging Face Hub repo ids as checkpoints: a local Hub cache in huggingface_hub's own layout
(models--org--name/{blobs,refs,snapshots}), HF_HUB_OFFLINE=1, no network."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from maeconv.convert.hfhub import parse, repo_of
from maeconv.convert.pipeline import load_canonical

from helpers import TINY, run_cli, save_official, seeded_state

pytest.importorskip("huggingface_hub")

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def cache_repo(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT_A,
               refs: tuple[str, ...] = ("main",)) -> Path:
    """The files as huggingface_hub caches one revision of a repo: blobs by hash, the snapshot as
    relative links to them, each ref naming the commit."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache


@pytest.fixture
def hf_folder(tmp_path, tiny_state):
    """A transformers-layout directory (config.json + model.safetensors) of the tiny model."""
    src = save_official(tmp_path / "src.pth", tiny_state, with_args=False)
    result = run_cli("convert", src, tmp_path / "hf-made")
    assert result.exit_code == 0, result.output
    return tmp_path / "hf-made"


def _state(path):
    return {k: v.numpy() for k, v in torch.load(path, weights_only=True)["model"].items()}


def test_repo_ids_are_told_from_paths():
    assert parse("facebook/vit-mae-base").repo_id == "facebook/vit-mae-base"
    assert str(parse("timm/vit_base_patch16_224.mae@v1.0")) == "timm/vit_base_patch16_224.mae@v1.0"
    assert repo_of("hf://facebook/vit-mae-base").repo_id == "facebook/vit-mae-base"
    for path in ("model.pth", "runs/ckpt.ckpt", "a/b/c", "./facebook/vit-mae-base", "/abs/x", "out/hf.safetensors",
                 "a--b/c", "org/na..me", "org/name@", "mae_pretrain_vit_base"):
        assert repo_of(path) is None, path


def test_transformers_repo_from_the_cache(hub_cache, hf_folder, tiny_state, tmp_path):
    files = {name: hf_folder / name for name in ("config.json", "model.safetensors")}
    cache_repo(hub_cache, "facebook/vit-mae-tiny", files)
    loaded = load_canonical("facebook/vit-mae-tiny")
    assert loaded.checkpoint.format == "hf-dir" and loaded.detected.kind == "full"
    result = run_cli("convert", "facebook/vit-mae-tiny", tmp_path / "out.pth")
    assert result.exit_code == 0, result.output
    back = _state(tmp_path / "out.pth")
    assert set(back) == set(tiny_state)
    assert all(np.array_equal(back[k], tiny_state[k]) for k in tiny_state)
    result = run_cli("inspect", "hf://facebook/vit-mae-tiny", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["preset"] == TINY


def test_timm_repo_is_its_weights_file(hub_cache, tiny_state, tmp_path):
    """timm's repos keep timm's config.json (no model_type): the weights file is the checkpoint."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tiny_state.items()}, tmp_path / "w.safetensors")
    (tmp_path / "timm-config.json").write_text(json.dumps({"architecture": "vit_tiny", "num_classes": 0}))
    cache_repo(hub_cache, "timm/vit_tiny_patch8.mae", {"config.json": tmp_path / "timm-config.json",
                                                         "model.safetensors": tmp_path / "w.safetensors"})
    loaded = load_canonical("timm/vit_tiny_patch8.mae")
    assert loaded.checkpoint.format == "safetensors" and loaded.scheme.name == "facebook"
    assert all(np.array_equal(loaded.refs[k].load(), tiny_state[k]) for k in tiny_state)


def test_revisions_and_commits(hub_cache, hf_folder, tmp_path, tiny_state):
    files = {name: hf_folder / name for name in ("config.json", "model.safetensors")}
    cache_repo(hub_cache, "org/mae", files, COMMIT_A, refs=("main",))
    other = seeded_state(TINY, seed=5)
    save_official(tmp_path / "other.pth", other, with_args=False)
    assert run_cli("convert", tmp_path / "other.pth", tmp_path / "hf-other").exit_code == 0
    cache_repo(hub_cache, "org/mae", {name: tmp_path / "hf-other" / name
                                      for name in ("config.json", "model.safetensors")}, COMMIT_B, refs=("v2",))
    for source, expected in (("org/mae", tiny_state), ("org/mae@v2", other), (f"org/mae@{COMMIT_B}", other),
                             (f"hf://org/mae@{COMMIT_A}", tiny_state)):
        refs = load_canonical(source).refs
        assert all(np.array_equal(refs[k].load(), expected[k]) for k in expected), source


def test_a_local_path_wins(hub_cache, hf_folder, tmp_path, tiny_state):
    cache_repo(hub_cache, "org/mae", {name: hf_folder / name for name in ("config.json", "model.safetensors")})
    local = tmp_path / "org" / "mae"
    local.parent.mkdir()
    save_official(local, seeded_state(TINY, seed=9), with_args=False)
    assert load_canonical("org/mae").checkpoint.path == Path("org/mae")   # the file, not the repo
    assert load_canonical("hf://org/mae").checkpoint.format == "hf-dir"  # hf:// asks for the Hub


@pytest.mark.parametrize("source,expected", [
    ("org/absent", "does not hold org/absent and HF_HUB_OFFLINE is set"),
    ("org/mae@v9", "holds org/mae but not its revision 'v9'"),
    (f"org/mae@{COMMIT_B}", f"holds org/mae but not its revision '{COMMIT_B}'"),
    ("hf://not a repo", "not a Hugging Face Hub repo id"),
])
def test_offline_errors_are_one_line(hub_cache, hf_folder, source, expected, tmp_path):
    cache_repo(hub_cache, "org/mae", {name: hf_folder / name for name in ("config.json", "model.safetensors")})
    for command in (["inspect", source], ["convert", source, tmp_path / "x.pth"]):
        result = run_cli(*command)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and expected in result.output, result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "x.pth").exists()


def test_cached_repo_without_weights(hub_cache, hf_folder):
    cache_repo(hub_cache, "org/readme-only", {"config.json": hf_folder / "config.json"})
    result = run_cli("inspect", "org/readme-only")
    assert result.exit_code == 1 and "holds no model weights maeconv reads" in result.output


def test_sharded_repo_from_the_cache(hub_cache, tiny_state, tmp_path):
    src = save_official(tmp_path / "src.pth", tiny_state, with_args=False)
    assert run_cli("convert", src, tmp_path / "sharded", "--max-shard-size", "40KB").exit_code == 0
    files = {p.name: p for p in (tmp_path / "sharded").iterdir()}
    assert len(files) > 3
    cache_repo(hub_cache, "org/sharded", files)
    result = run_cli("convert", "org/sharded", tmp_path / "back.pth")
    assert result.exit_code == 0, result.output
    back = _state(tmp_path / "back.pth")
    assert all(np.array_equal(back[k], tiny_state[k]) for k in tiny_state)
    shutil.rmtree(tmp_path / "sharded")


def test_download_a_cached_repo(hub_cache, hf_folder):
    snapshot = cache_repo(hub_cache, "org/mae", {name: hf_folder / name for name in ("config.json", "model.safetensors")})
    result = run_cli("download", "org/mae", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"name": "org/mae", "path": str(snapshot)}


@pytest.mark.parametrize("error,expected", [
    ("RepositoryNotFoundError", "no Hugging Face Hub repo org/absent that can be read (not found or private)"),
    ("GatedRepoError", "(gated: accept its terms and log in)"),
    ("RevisionNotFoundError", "has no revision 'v9'"),
    ("ConnectError", "the Hub could not be reached"),
])
def test_online_errors_are_one_line(hub_cache, monkeypatch, error, expected, tmp_path):
    """What huggingface_hub raises online, simulated (no test reaches the network)."""
    import types

    import huggingface_hub
    from huggingface_hub import errors

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def refuse(*args, **kwargs):
        if error == "ConnectError":
            raise errors.LocalEntryNotFoundError("cannot find the requested files in the local cache")
        raise getattr(errors, error)("404", response=types.SimpleNamespace(headers={}, status_code=404, request=None))

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    result = run_cli("convert", "org/absent@v9" if error == "RevisionNotFoundError" else "org/absent",
                     tmp_path / "x.pth")
    assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
    assert expected in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("target", ["../../../outside", "absolute"])
def test_a_ref_that_leads_out_of_the_cache_is_refused(hub_cache, hf_folder, tmp_path, target):
    """A ref file names a commit, whose snapshot is a folder in the repo's `snapshots/`; one that
    names a path elsewhere (relative or absolute) is not followed."""
    cache_repo(hub_cache, "org/mae", {name: hf_folder / name for name in ("config.json", "model.safetensors")})
    shutil.copytree(hf_folder, tmp_path / "outside")
    ref = str(tmp_path / "outside") if target == "absolute" else target
    (hub_cache / "models--org--mae" / "refs" / "main").write_text(ref)
    for command in (["inspect", "org/mae"], ["convert", "org/mae", tmp_path / "x.pth"]):
        result = run_cli(*command)
        assert result.exit_code == 1 and "not to a snapshot in" in result.output, result.output
        assert result.output.count("\n") == 1
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("layout", ["transformers", "timm"])
def test_a_snapshot_file_linking_out_of_the_cache_is_refused(hub_cache, hf_folder, tmp_path, tiny_state, layout):
    if layout == "transformers":
        files = {name: hf_folder / name for name in ("config.json", "model.safetensors")}
        weights = "model.safetensors"
    else:
        files = {"pytorch_model.bin": save_official(tmp_path / "timm.bin", tiny_state, with_args=False)}
        weights = "pytorch_model.bin"
    snapshot = cache_repo(hub_cache, "org/mae", files)
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes((snapshot / weights).read_bytes())
    (snapshot / weights).unlink()
    (snapshot / weights).symlink_to(outside)
    result = run_cli("convert", "org/mae", tmp_path / "x.pth")
    assert result.exit_code == 1 and "is a link to" in result.output and "outside" in result.output, result.output
    (snapshot / weights).unlink()
    (snapshot / weights).symlink_to(os.path.relpath(outside.rename(hub_cache / "models--org--mae" / "blobs" / "x"),
                                                    snapshot))
    assert run_cli("convert", "org/mae", tmp_path / "x.pth").exit_code == 0  # a blob of the repo's own
