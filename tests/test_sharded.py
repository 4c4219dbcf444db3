"""Sharded checkpoints (model.safetensors.index.json + shards; pytorch_model.bin.index.json):
read strictly, written over --max-shard-size as one set, loaded by transformers, round trips exact."""
import json
import os

import numpy as np
import pytest
import torch

from maeconv.convert.formats import read_checkpoint
from maeconv.convert.formats.sharded import parse_size, shard_plan
from maeconv.convert.tensors import TensorRef

from helpers import run_cli, save_official

MEMBERS = "model-{:05d}-of-{:05d}.safetensors"


@pytest.fixture
def sharded(tmp_path, tiny_state):
    src = save_official(tmp_path / "src.pth", tiny_state, with_args=False)
    result = run_cli("convert", src, tmp_path / "hf", "--max-shard-size", "40KB")
    assert result.exit_code == 0, result.output
    return tmp_path / "hf"


def _index(folder):
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _write_index(folder, index):
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_sizes():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("1.5kib") == 1536 and parse_size("123456") == 123456
    for bad in ("5XB", "0", "-1", "GB", "1e9", ""):
        with pytest.raises(Exception, match="max-shard-size"):
            parse_size(bad)


def test_shards_hold_at_most_the_limit_and_a_larger_tensor_alone():
    refs = {name: TensorRef.of(np.zeros(n, np.float32)) for name, n in (("a", 10), ("b", 10), ("c", 100), ("d", 5))}
    assert shard_plan(refs, 80) == [["a", "b"], ["c"], ["d"]]
    assert shard_plan(refs, 10**6) == [["a", "b", "c", "d"]]


def test_written_shards_round_trip_and_load_in_transformers(sharded, tmp_path, tiny_state):
    transformers = pytest.importorskip("transformers")
    index = _index(sharded)
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert shards == [MEMBERS.format(i, len(shards)) for i in range(1, len(shards) + 1)] and len(shards) > 2
    assert sorted(set(index["weight_map"].values())) == shards
    assert all(os.path.getsize(sharded / s) <= 40_000 + 4096 for s in shards)  # data <= limit, plus a header
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in tiny_state.values())
    assert not (sharded / "model.safetensors").exists()
    # the same model, unsharded, for comparison
    assert run_cli("convert", tmp_path / "src.pth", tmp_path / "single").exit_code == 0
    assert sorted(os.listdir(tmp_path / "single")) == ["config.json", "model.safetensors"]
    model, info = transformers.ViTMAEForPreTraining.from_pretrained(sharded, output_loading_info=True)
    assert not any(info.values()), info
    single = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "single")
    for (name, a), (_, b) in zip(model.state_dict().items(), single.state_dict().items()):
        assert torch.equal(a, b), name
    assert run_cli("convert", sharded, tmp_path / "back.pth").exit_code == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)["model"]
    assert set(back) == set(tiny_state)
    assert all(np.array_equal(back[k].numpy(), tiny_state[k]) for k in tiny_state)
    # the index alone reads too
    assert set(read_checkpoint(sharded / "model.safetensors.index.json").tensors) == set(index["weight_map"])


def test_transformers_own_shards_read(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=128, decoder_hidden_size=16,
                                       decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                       decoder_intermediate_size=64, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(config)
    model.save_pretrained(tmp_path / "saved", max_shard_size="50KB")
    assert (tmp_path / "saved" / "model.safetensors.index.json").exists()
    result = run_cli("inspect", tmp_path / "saved", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["preset"] == "mae_vit_tiny_patch8"


def test_sharded_torch_bin_read(tmp_path, tiny_state):
    """pytorch_model.bin.index.json with torch shards, as older save_pretrained wrote them."""
    from maeconv.convert.schemes import HF

    hf_names = {s.foreign[0]: s.canonical for s in HF.plan_from_canonical(tiny_state) if len(s.foreign) == 1}
    assert run_cli("convert", save_official(tmp_path / "src.pth", tiny_state, with_args=False),
                   tmp_path / "hf").exit_code == 0
    tensors = {k: torch.from_numpy(np.array(v.load())) for k, v in read_checkpoint(tmp_path / "hf").tensors.items()}
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    names = sorted(tensors)
    halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for file, members in halves.items():
        torch.save({n: tensors[n] for n in members}, folder / file)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, members in halves.items() for n in members}}))
    result = run_cli("convert", folder, tmp_path / "back.pth")
    assert result.exit_code == 0, result.output
    back = torch.load(tmp_path / "back.pth", weights_only=True)["model"]
    assert all(np.array_equal(back[k].numpy(), tiny_state[k]) for k in tiny_state)
    assert hf_names  # names were hf's


def _corrupt(folder, how):
    index = _index(folder)
    weight_map = index["weight_map"]
    first = sorted(set(weight_map.values()))[0]
    name = next(n for n, f in weight_map.items() if f == first)
    if how == "missing shard":
        (folder / first).unlink()
    elif how == "tensor in another shard":
        weight_map[name] = sorted(set(weight_map.values()))[1]
    elif how == "extra tensor in a shard":
        del weight_map[name]
    elif how == "named tensor absent":
        weight_map["vit.extra.weight"] = first
    elif how == "path out of the folder":
        weight_map[name] = "../" + first
    elif how == "not json":
        (folder / "model.safetensors.index.json").write_text("{not json")
        return
    elif how == "no weight_map":
        index = {"metadata": {}}
    elif how == "truncated shard":
        data = (folder / first).read_bytes()
        (folder / first).write_bytes(data[:-4])
        return
    elif how == "shard linking out of the folder":
        elsewhere = folder.parent / "elsewhere"
        elsewhere.mkdir()
        (folder / first).rename(elsewhere / first)
        (folder / first).symlink_to(elsewhere / first)
        return
    elif how == "a tensor named twice in the index":
        second = sorted(set(weight_map.values()))[1]
        text = json.dumps(index)
        (folder / "model.safetensors.index.json").write_text(
            text.replace('"weight_map": {', f'"weight_map": {{"{name}": "{second}", ', 1))
        return
    elif how == "tensor in two shards":
        from safetensors.numpy import load_file, save_file

        second = sorted(set(weight_map.values()))[1]
        both = {**load_file(folder / second), name: load_file(folder / first)[name]}
        save_file(both, folder / second, metadata={"format": "pt"})
    _write_index(folder, index)


@pytest.mark.parametrize("how,expected", [
    ("missing shard", "which is not beside it"),
    ("tensor in another shard", "puts in"),
    ("extra tensor in a shard", "does not name"),
    ("named tensor absent", "is not in its shard"),
    ("path out of the folder", "not a file name beside the index"),
    ("not json", "not valid JSON"),
    ("no weight_map", "no \"weight_map\""),
    ("truncated shard", "truncated or corrupt"),
    ("tensor in two shards", "also in another shard"),
    ("shard linking out of the folder", "is a link to"),
    ("a tensor named twice in the index", "appears twice in one object"),
])
def test_bad_shards_are_refused_in_one_line(sharded, tmp_path, how, expected):
    _corrupt(sharded, how)
    for source in (sharded, sharded / "model.safetensors.index.json"):
        result = run_cli("convert", source, tmp_path / "out.pth")
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and expected in result.output, result.output
        assert result.output.count("\n") == 1
        assert not (tmp_path / "out.pth").exists()


def test_max_shard_size_options(sharded, tmp_path):
    result = run_cli("convert", tmp_path / "src.pth", tmp_path / "x.pth", "--max-shard-size", "1MB")
    assert result.exit_code == 1 and "shards a Hugging Face directory" in result.output
    result = run_cli("convert", tmp_path / "src.pth", tmp_path / "y", "--max-shard-size", "lots")
    assert result.exit_code == 1 and "--max-shard-size" in result.output
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "y").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".maeconv-")] == []


def test_force_replaces_shards_with_one_file_and_back(sharded, tmp_path):
    result = run_cli("convert", tmp_path / "src.pth", sharded, "--force")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(sharded)) == ["config.json", "model.safetensors"]  # no stale shard left
    result = run_cli("convert", tmp_path / "src.pth", sharded, "--force", "--max-shard-size", "60KB")
    assert result.exit_code == 0, result.output
    assert "model.safetensors" not in os.listdir(sharded) and "model.safetensors.index.json" in os.listdir(sharded)
    (sharded / "notes.txt").write_text("mine")
    result = run_cli("convert", tmp_path / "src.pth", sharded, "--force")
    assert result.exit_code == 1 and "notes.txt" in result.output
