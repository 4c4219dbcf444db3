"""Every scheme and format: converted there and back bit-identical, detected, and audited."""
import json

import numpy as np
import pytest
import torch

from maeconv.convert.formats import read_checkpoint
from maeconv.convert.pipeline import load_canonical
from maeconv.convert.schemes import HF, MINDFORMERS, apply_from_canonical
from maeconv.models import CLASSIFIER, get_config

from helpers import run_cli, TINY, TINY_CLS, kind_state, save_official, seeded_state

# (output name, --to, expected format, expected scheme)
TARGETS = [
    ("x.ckpt", None, "mindspore", "mindspore"),
    ("x.ckpt", "mindformers", "mindspore", "mindformers"),
    ("x.safetensors", None, "safetensors", "facebook"),
    ("x.safetensors", "mindspore", "safetensors", "mindspore"),
    ("x.safetensors", "mindformers", "safetensors", "mindformers"),
    ("x.pth", "hf", "torch", "hf"),
    ("hf_model", None, "hf-dir", "hf"),
]


def run(*args):
    return run_cli(*args, catch_exceptions=False)


def _assert_bit_identical(path, state):
    restored = torch.load(path, weights_only=True)["model"]
    assert list(restored) == list(state)
    for name, value in state.items():
        assert restored[name].numpy().tobytes() == value.tobytes(), name


@pytest.mark.parametrize("kind", ["full", "encoder"])
@pytest.mark.parametrize("name,scheme,fmt,expected_scheme", TARGETS)
def test_round_trip_through_every_scheme_and_format(tmp_path, name, scheme, fmt, expected_scheme, kind):
    state = kind_state(TINY, kind)
    src = save_official(tmp_path / "src.pth", state)
    out = tmp_path / name
    result = run("convert", src, out, *(["--to", scheme] if scheme else []), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["format"], info["scheme"], info["kind"]) == (fmt, expected_scheme, kind)
    loaded = load_canonical(out)
    assert (loaded.checkpoint.format, loaded.scheme.name, loaded.detected.kind) == (fmt, expected_scheme, kind)
    assert run("convert", out, tmp_path / "back.pth", "--to", "facebook").exit_code == 0
    _assert_bit_identical(tmp_path / "back.pth", state)


def test_classifier_through_mindformers_and_back(tmp_path):
    state = seeded_state(TINY_CLS)
    src = save_official(tmp_path / "cls.pth", state)
    assert run("convert", src, tmp_path / "mf.ckpt", "--to", "mindformers").exit_code == 0
    names = set(read_checkpoint(tmp_path / "mf.ckpt").tensors)
    assert {"vit.fc_norm.gamma", "head.weight", "vit.cls_tokens"} <= names
    assert run("convert", tmp_path / "mf.ckpt", tmp_path / "back.pth").exit_code == 0
    _assert_bit_identical(tmp_path / "back.pth", state)


def test_hf_has_no_names_for_the_classifier_head(tmp_path):
    src = save_official(tmp_path / "cls.pth", seeded_state(TINY_CLS))
    result = run("convert", src, tmp_path / "hf", "--to", "hf")
    assert result.exit_code == 1 and "no hf counterpart" in result.stderr and "fc_norm" in result.stderr


def test_mindformers_layout(tmp_path, tiny_state):
    names = apply_from_canonical(MINDFORMERS.plan_from_canonical(tiny_state), tiny_state)
    assert names["vit.blocks.0.attention.projection.weight"].load().tobytes() == \
        np.ascontiguousarray(tiny_state["blocks.0.attn.proj.weight"].T).tobytes()
    np.testing.assert_array_equal(names["decoder_blocks.0.output.mapping.weight"].load(),
                                  tiny_state["decoder_blocks.0.mlp.fc1.weight"].T)
    dim = get_config(TINY).embed_dim
    np.testing.assert_array_equal(names["vit.blocks.1.attention.dense2.bias"].load(),
                                  tiny_state["blocks.1.attn.qkv.bias"][dim:2 * dim])
    assert "mask_tokens" in names and "decoder_norm.gamma" in names and "decoder_pred.weight" in names
    assert not any(n.startswith("vit.decoder") for n in names)  # MindFormers' own converter's defect


def test_hf_reads_both_decoder_namings(tmp_path, tiny_state):
    from maeconv.convert.formats import safetensors as st_format

    hub = apply_from_canonical(HF.plan_from_canonical(tiny_state), tiny_state)
    assert "decoder.decoder_layers.0.attention.attention.query.weight" in hub
    v5 = {n.replace("decoder.decoder_layers.", "decoder.decoder_encoder.layer."): r for n, r in hub.items()}
    for variant, tensors in (("hub", hub), ("v5", v5)):
        folder = tmp_path / variant
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        st_format.write(folder / "model.safetensors", tensors)
        loaded = load_canonical(folder)
        assert loaded.scheme is HF and loaded.detected.kind == "full"
        for name, value in tiny_state.items():
            assert loaded.refs[name].load().tobytes() == value.tobytes(), (variant, name)


def test_dry_run_prints_the_full_mapping_and_writes_nothing(tmp_path, tiny_pth):
    out = tmp_path / "mf.ckpt"
    result = run("convert", tiny_pth, out, "--to", "mindformers", "--dry-run", "--json")
    assert result.exit_code == 0 and not out.exists()
    mapping = json.loads(result.stdout)["mapping"]
    assert len(mapping) == len(kind_state(TINY, "full"))
    qkv = next(r for r in mapping if r["canonical"] == "blocks.0.attn.qkv.weight")
    assert qkv["source"] == ["blocks.0.attn.qkv.weight"] and qkv["transform"] == "split"
    assert qkv["target"] == [f"vit.blocks.0.attention.dense{i}.weight" for i in (1, 2, 3)]
    proj = next(r for r in mapping if r["canonical"] == "decoder_blocks.0.attn.proj.weight")
    assert proj["target"] == ["decoder_blocks.0.attention.projection.weight"] and proj["transform"] == "transpose"
    text = run("convert", tiny_pth, out, "--to", "mindformers", "--dry-run").stdout
    assert "vit.blocks.0.attention.dense1.weight + vit.blocks.0.attention.dense2.weight" in text
    assert "nothing written" in text and not out.exists()


@pytest.mark.parametrize("dtype,numpy_dtype", [("fp16", np.float16), ("bf16", "bfloat16"), ("fp32", np.float32)])
def test_dtype_cast(tmp_path, tiny_pth, tiny_state, dtype, numpy_dtype):
    import ml_dtypes

    numpy_dtype = ml_dtypes.bfloat16 if numpy_dtype == "bfloat16" else numpy_dtype
    out = tmp_path / "cast.safetensors"
    assert run("convert", tiny_pth, out, "--dtype", dtype).exit_code == 0
    refs = read_checkpoint(out).tensors
    for name, value in tiny_state.items():
        assert refs[name].load().tobytes() == value.astype(numpy_dtype).tobytes(), name
    # bf16 -> MindSpore -> torch keeps bf16 without a detour through fp32
    assert run("convert", out, tmp_path / "cast.ckpt").exit_code == 0
    assert run("convert", tmp_path / "cast.ckpt", tmp_path / "cast.pth").exit_code == 0
    restored = torch.load(tmp_path / "cast.pth", weights_only=True)["model"]
    assert str(restored["cls_token"].dtype) == f"torch.{ {'fp16': 'float16', 'bf16': 'bfloat16', 'fp32': 'float32'}[dtype]}"


def test_img_size_resizes_pos_embed_the_reference_way(tmp_path, tiny_pth, tiny_state):
    import torch.nn.functional as F

    out = tmp_path / "big.pth"
    result = run("convert", tiny_pth, out, "--img-size", "48", "--json")
    assert result.exit_code == 0, result.output
    restored = torch.load(out, weights_only=True)["model"]
    config = get_config(TINY)
    table = torch.from_numpy(tiny_state["pos_embed"])
    grid = table[:, 1:].reshape(1, 4, 4, config.embed_dim).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    expected = torch.cat([table[:, :1], expected.permute(0, 2, 3, 1).reshape(1, 36, -1)], dim=1)
    assert torch.equal(restored["pos_embed"], expected)
    from maeconv.models.pos_embed import sincos_2d

    np.testing.assert_array_equal(restored["decoder_pos_embed"].numpy()[0], sincos_2d(config.decoder_embed_dim, 6))
    assert load_canonical(out).detected.config.img_size == 48


@pytest.mark.parametrize("from_norm", [False, True])
def test_pretraining_checkpoint_to_classifier_initialisation(tmp_path, tiny_pth, tiny_state, from_norm):
    from maeconv.convert.twins import create_model, load_state

    out = tmp_path / "init.pth"
    result = run("convert", tiny_pth, out, "--kind", "classifier", *(["--fc-norm-from-norm"] if from_norm else []))
    assert result.exit_code == 0 and "head" in result.stderr and "train it before use" in result.stderr
    loaded = load_canonical(out)
    assert (loaded.detected.kind, loaded.detected.preset) == (CLASSIFIER, TINY_CLS)
    state = loaded.state
    assert not any(k.startswith(("decoder", "mask_token", "norm.")) for k in state)
    np.testing.assert_array_equal(state["blocks.1.mlp.fc2.weight"], tiny_state["blocks.1.mlp.fc2.weight"])
    expected = tiny_state["norm.weight"] if from_norm else np.ones_like(tiny_state["norm.weight"])
    np.testing.assert_array_equal(state["fc_norm.weight"], expected)
    assert 0 < np.abs(state["head.weight"]).max() < 1e-4
    model = create_model(loaded.detected.config, "classify", "torch")
    assert load_state(model, state, "torch").missing == ()


def test_mix_of_two_schemes_is_refused(tmp_path, tiny_state):
    hf = apply_from_canonical(HF.plan_from_canonical(tiny_state), tiny_state)
    mixed = {n: r.load() for n, r in hf.items() if n.startswith("vit.")}
    mixed.update({k: v for k, v in tiny_state.items() if k.startswith("decoder") or k == "mask_token"})
    path = save_official(tmp_path / "mixed.pth", mixed)
    result = run("inspect", path)
    assert result.exit_code == 1 and "fit no naming scheme" in result.stderr


def test_unknown_names_are_listed_or_left_out_on_request(tmp_path, tiny_state):
    state = dict(tiny_state, **{"extra.projector.weight": np.zeros((2, 2), np.float32)})
    path = save_official(tmp_path / "extra.pth", state)
    result = run("convert", path, tmp_path / "out.ckpt")
    assert result.exit_code == 1 and "extra.projector.weight" in result.stderr
    assert not (tmp_path / "out.ckpt").exists()
    result = run("convert", path, tmp_path / "out.ckpt", "--allow-unmapped", "--json")
    assert result.exit_code == 0
    assert any("extra.projector.weight" in note for note in json.loads(result.stdout)["notes"])
    assert "extra.projector.weight" not in read_checkpoint(tmp_path / "out.ckpt").tensors


def _mindformers_training_checkpoint(path, state):
    import mindspore as ms

    own = {n: r.load() for n, r in apply_from_canonical(MINDFORMERS.plan_from_canonical(state), state).items()}
    entries = [{"name": n, "data": ms.Tensor(v)} for n, v in own.items()]
    for prefix, scale in (("adam_m.", 0.1), ("adam_v.", 0.01)):
        entries += [{"name": prefix + n, "data": ms.Tensor(v * scale)} for n, v in own.items()
                    if not n.endswith("pos_embed")]
    entries.append({"name": "global_step", "data": ms.Tensor(np.array([42], np.int32))})
    ms.save_checkpoint(entries, str(path))
    return own


def test_optimizer_state_is_skipped_or_kept(tmp_path, tiny_state):
    src = tmp_path / "mf_train.ckpt"
    _mindformers_training_checkpoint(src, tiny_state)
    result = run("convert", src, tmp_path / "model.pth")
    assert result.exit_code == 0 and "skipped" in result.stderr
    _assert_bit_identical(tmp_path / "model.pth", tiny_state)
    result = run("convert", src, tmp_path / "twin.ckpt", "--keep-optimizer")
    assert result.exit_code == 0, result.output
    kept = read_checkpoint(tmp_path / "twin.ckpt").tensors
    expected = (tiny_state["blocks.0.attn.qkv.weight"] * np.float32(0.1)).astype(np.float32)
    assert kept["adam_m.blocks.0.attn.qkv.weight"].load().tobytes() == expected.tobytes()  # dense1/2/3 fused back
    assert "adam_v.blocks.0.norm1.gamma" in kept and int(kept["global_step"].load()[0]) == 42
    result = run("convert", src, tmp_path / "no.pth", "--keep-optimizer")
    assert result.exit_code == 1 and "--keep-optimizer needs" in result.stderr


def test_nan_weights_are_written_with_a_warning(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["blocks.0.mlp.fc1.bias"] = state["blocks.0.mlp.fc1.bias"].copy()
    state["blocks.0.mlp.fc1.bias"][3] = np.nan
    path = save_official(tmp_path / "nan.pth", state)
    result = run("torch2ms", path, tmp_path / "nan.ckpt")
    assert result.exit_code == 0 and "warning: 1 tensors hold NaN or Inf" in result.stderr
    assert "blocks.0.mlp.fc1.bias" in result.stderr
