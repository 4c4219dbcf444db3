"""The schemes of the rest of the MAE world: OpenMMLab (mmpretrain / mmselfsup), MindCV (the
MindSpore twin's names), MindFormers' own converter's files, and timm-ready encoder output.

Files are built in each library's exact layout (its names, its top-level keys, its objects beside the
state dict) with seeded random weights; the real libraries are used where they are importable."""
import collections
import json
import sys
import types

import numpy as np
import pytest
import torch

from maeconv.convert.formats import read_checkpoint
from maeconv.convert.pipeline import load_canonical
from maeconv.convert.schemes import MINDFORMERS, OPENMMLAB, apply_from_canonical, get_scheme
from maeconv.models import CLASSIFIER, ENCODER, FULL, get_config

from helpers import TINY, TINY_CLS, kind_state, run_cli, save_official

KINDS = [(TINY, FULL), (TINY, ENCODER), (TINY_CLS, CLASSIFIER)]


def foreign_state(scheme, state) -> dict[str, np.ndarray]:
    plan = get_scheme(scheme).plan_from_canonical(state)
    return {name: ref.load() for name, ref in apply_from_canonical(plan, state).items()}


def as_torch(state) -> collections.OrderedDict:
    return collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in state.items())


def history_buffer_class():
    """mmengine's HistoryBuffer, what its runner keeps in a checkpoint's message hub: the real one
    where mmengine is installed, else a class pickled under its name. maeconv never imports it."""
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
        return HistoryBuffer
    except ImportError:
        pass
    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.arange(3.0)
            self.max_length = 20

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[module.__name__] = module
    return HistoryBuffer


def save_mmengine(path, state, legacy=False, meta_objects=True):
    """The layout mmengine's runner saves: meta, state_dict, message_hub, optimizer, param_schedulers
    (a real or stand-in HistoryBuffer in the hub and in meta)."""
    history = history_buffer_class()
    meta = {"epoch": 400, "iter": 100000, "cfg": "model = dict(type='MAE', ...)", "mmengine_version": "0.10.4",
            "seed": 0, "experiment_name": "mae_vit-base-p16"}
    if meta_objects:
        meta["hub"] = history()
    checkpoint = {"meta": meta, "state_dict": as_torch(foreign_state("mmpretrain", state)),
                  "message_hub": {"log_scalars": {"train/loss": history()}, "runtime_info": {"epoch": 400}},
                  "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                  "param_schedulers": [{"last_epoch": 3}]}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


def assert_same(state, other):
    assert list(other) == list(state)
    for name, value in state.items():
        got = other[name].numpy() if isinstance(other[name], torch.Tensor) else other[name]
        assert got.dtype == value.dtype and np.array_equal(got, value), name


# --- OpenMMLab ----------------------------------------------------------------------------------

def test_openmmlab_names_are_mmpretrains():
    """The names of mmpretrain's MAE (MAEViT backbone, MAEPretrainDecoder neck) and fine-tuned
    VisionTransformer + LinearClsHead, as their sources build them."""
    full = dict((s.canonical, s.foreign[0]) for s in OPENMMLAB.plan_from_canonical(kind_state(TINY, FULL)))
    assert full["blocks.1.norm1.weight"] == "backbone.layers.1.ln1.weight"
    assert full["blocks.1.mlp.fc1.bias"] == "backbone.layers.1.ffn.layers.0.0.bias"
    assert full["blocks.1.mlp.fc2.weight"] == "backbone.layers.1.ffn.layers.1.weight"
    assert full["patch_embed.proj.weight"] == "backbone.patch_embed.projection.weight"
    assert full["norm.bias"] == "backbone.ln1.bias"
    assert full["decoder_norm.weight"] == "neck.ln1.weight"
    assert full["decoder_blocks.0.norm2.weight"] == "neck.decoder_blocks.0.ln2.weight"
    assert full["mask_token"] == "neck.mask_token"
    classifier = dict((s.canonical, s.foreign[0]) for s in
                      OPENMMLAB.plan_from_canonical(kind_state(TINY_CLS, CLASSIFIER)))
    assert classifier["fc_norm.weight"] == "backbone.ln2.weight" and classifier["head.bias"] == "head.fc.bias"
    assert not any(name.startswith("backbone.ln1") for name in classifier.values())


def test_openmmlab_rules_match_whole_names():
    """ln1 is a block's first norm, the backbone's final norm and the decoder's norm: only the
    whole name decides which."""
    for name, canonical in [("backbone.ln1.weight", "norm.weight"), ("neck.ln1.weight", "decoder_norm.weight"),
                            ("backbone.layers.3.ln1.weight", "blocks.3.norm1.weight"),
                            ("neck.decoder_blocks.3.ln1.weight", "decoder_blocks.3.norm1.weight")]:
        assert OPENMMLAB.match_foreign(name)[1] == canonical
    for name in ("backbone.layers.3.ln1.weight.extra", "x.backbone.ln1.weight", "backbone.layers.ln1.weight",
                 "neck.decoder_blocks.0.ffn.layers.0.weight", "backbone.ln3.weight"):
        assert OPENMMLAB.match_foreign(name) is None


@pytest.mark.parametrize("preset, kind", KINDS)
@pytest.mark.parametrize("alias", ["mmpretrain", "openmmlab", "mmselfsup"])
def test_openmmlab_round_trips_bit_exact(tmp_path, preset, kind, alias):
    state = kind_state(preset, kind)
    source = save_official(tmp_path / "fb.pth", state)
    mm = tmp_path / "mm.pth"
    result = run_cli("convert", source, mm, "--to", alias)
    assert result.exit_code == 0, result.output
    written = torch.load(mm, weights_only=True)
    assert sorted(written) == ["meta", "state_dict"]  # mmpretrain's layout, loadable without mmengine
    assert_same(foreign_state("mmpretrain", state), written["state_dict"])
    assert json.loads(written["meta"]["maeconv.settings"])["norm_pix_loss"] is True
    back = tmp_path / "back.pth"
    assert run_cli("convert", mm, back).exit_code == 0  # detected, no --from
    assert_same(state, torch.load(back, weights_only=True)["model"])


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("preset, kind", KINDS)
def test_mmengine_checkpoints_are_read_without_mmengine(tmp_path, preset, kind, legacy):
    """mmengine's runner's checkpoint (torch's zip or legacy layout) with its objects beside the state
    dict: the tensors are read, the objects left out with a note, nothing of them run."""
    state = kind_state(preset, kind)
    path = save_mmengine(tmp_path / "epoch_400.pth", state, legacy)
    loaded = load_canonical(path)
    assert (loaded.scheme.name, loaded.detected.preset, loaded.detected.kind) == ("mmpretrain", preset, kind)
    assert sorted(loaded.skipped) == ["message_hub", "optimizer", "param_schedulers"]
    assert_same(state, loaded.state)
    result = run_cli("convert", path, tmp_path / "out.ckpt")
    assert result.exit_code == 0, result.output
    assert "mmengine.logging.history_buffer.HistoryBuffer" in result.output
    assert "skipped 3 optimizer/training-state entries" in result.output
    assert_same(state, load_canonical(tmp_path / "out.ckpt").state)


def test_openmmlab_inspect_and_dry_run(tmp_path):
    path = save_mmengine(tmp_path / "mae.pth", kind_state(TINY, FULL))
    info = json.loads(run_cli("inspect", path, "--json").stdout)
    assert (info["scheme"], info["kind"], info["preset"]) == ("mmpretrain", "full", TINY)
    assert info["same_names_as"] == ["openmmlab", "mmselfsup"]
    result = run_cli("convert", path, tmp_path / "x.pth", "--dry-run", "--json")
    assert result.exit_code == 0 and not (tmp_path / "x.pth").exists()
    rows = {row["canonical"]: row for row in json.loads(result.stdout)["mapping"]}
    assert rows["decoder_norm.weight"]["source"] == ["neck.ln1.weight"]
    assert rows["norm.weight"]["source"] == ["backbone.ln1.weight"]
    assert rows["blocks.0.mlp.fc1.weight"]["source"] == ["backbone.layers.0.ffn.layers.0.0.weight"]
    assert all(row["transform"] == "rename" for row in rows.values())
    table = run_cli("convert", path, tmp_path / "x.pth", "--dry-run").stdout
    assert "neck.decoder_blocks.0.ffn.layers.1.weight" in table and "decoder_blocks.0.mlp.fc2.weight" in table


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update({"vit.norm.gamma": d.pop("backbone.ln1.weight")}), "as mmpretrain: 1 names that are not"),
    (lambda d: d.update({"backbone.layers.0.ffn.layers.0.weight": d.pop("backbone.layers.0.ffn.layers.0.0.weight")}),
     "backbone.layers.0.ffn.layers.0.weight"),
    (lambda d: d.update({"backbone.ln2.weight": d["backbone.ln1.weight"]}), "1 unexpected (e.g. fc_norm.weight)"),
    (lambda d: d.pop("neck.ln1.bias"), "1 missing (e.g. decoder_norm.bias)"),
])
def test_bad_openmmlab_files_are_refused_in_one_line(tmp_path, change, expected):
    """A stray name of another scheme, a name that only contains a rule's name, an extra or a
    missing tensor: one error line naming it, nothing written."""
    named = foreign_state("mmpretrain", kind_state(TINY, FULL))
    change(named)
    path = tmp_path / "bad.pth"
    torch.save({"meta": {}, "state_dict": as_torch(named)}, path)
    result = run_cli("convert", path, tmp_path / "out.pth")
    assert result.exit_code == 1 and expected in result.stderr, result.stderr
    assert result.stderr.count("Error:") == 1 and not (tmp_path / "out.pth").exists()


# --- MindCV -------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, kind", KINDS)
def test_mindcv_is_the_mindspore_twins_names(tmp_path, preset, kind):
    """mindcv.models.mae: canonical names with MindSpore's gamma/beta; a fine-tuned classifier as
    its VisionTransformer(global_pool='avg') names it (fc_norm, head, no norm)."""
    state = kind_state(preset, kind)
    out = tmp_path / "mindcv.ckpt"
    result = run_cli("convert", save_official(tmp_path / "fb.pth", state), out, "--to", "mindcv")
    assert result.exit_code == 0 and "mindcv names" in result.output, result.output
    names = set(read_checkpoint(out).tensors)
    assert "blocks.0.norm1.gamma" in names and "blocks.0.attn.qkv.weight" in names
    assert ("fc_norm.gamma" in names and "head.weight" in names) == (kind == CLASSIFIER)
    info = json.loads(run_cli("inspect", out, "--json").stdout)
    assert info["scheme"] == "mindspore" and info["same_names_as"] == ["mindcv"]
    back = tmp_path / "back.pth"
    assert run_cli("convert", out, back, "--from", "mindcv").exit_code == 0
    assert_same(state, torch.load(back, weights_only=True)["model"])


# --- MindFormers' own files ---------------------------------------------------------------------

def mindformers_converter_names(state) -> dict[str, np.ndarray]:
    """What MindFormers' models/mae/convert_weight.py writes for a full checkpoint: its names, with
    the decoder (and mask_tokens) under "vit." too."""
    names = foreign_state("mindformers", state)
    decoder = ("mask_tokens", "decoder_")
    return {("vit." + k if k.startswith(decoder) else k): v for k, v in names.items()}


def save_ckpt(path, named):
    from maeconv.convert.formats import ckpt
    from maeconv.convert.tensors import TensorRef

    ckpt.write(path, {k: TensorRef.of(np.ascontiguousarray(v)) for k, v in named.items()})
    return path


def test_mindformers_converters_layout_reads_as_mindformers(tmp_path):
    state = kind_state(TINY, FULL)
    path = save_ckpt(tmp_path / "mae_vit_base_p16.ckpt", mindformers_converter_names(state))
    assert "vit.decoder_blocks.0.attention.dense1.weight" in read_checkpoint(path).tensors
    loaded = load_canonical(path)
    assert (loaded.scheme.name, loaded.detected.kind) == ("mindformers", FULL)
    assert_same(state, loaded.state)
    out = tmp_path / "fixed.ckpt"
    assert run_cli("convert", path, out, "--to", "mindformers").exit_code == 0
    written = set(read_checkpoint(out).tensors)
    assert "decoder_blocks.0.attention.dense1.weight" in written and "mask_tokens" in written
    assert not any(name.startswith(("vit.decoder", "vit.mask")) for name in written)  # MindFormers' own layout


def test_a_broken_mindformers_file_is_explained_as_mindformers(tmp_path):
    """A MindFormers file with one tensor missing is explained by the scheme its names are in, not
    by a name-passing scheme's closest preset."""
    named = mindformers_converter_names(kind_state(TINY, FULL))
    del named["vit.decoder_blocks.0.output.mapping.bias"]
    result = run_cli("inspect", save_ckpt(tmp_path / "broken.ckpt", named))
    assert result.exit_code == 1
    assert "as mindformers" in result.stderr and "decoder_blocks.0.mlp.fc1.bias" in result.stderr, result.stderr


@pytest.mark.parametrize("dtype, stored", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_mindformers_half_precision_follows_its_per_tensor_policy(tmp_path, dtype, stored):
    """MindFormers (param_init_type float16) builds only its blocks' Linear layers in half
    precision; tokens, position tables, LayerNorms, the patch embedding, decoder_embed/pred and the
    head stay float32 Parameters, and MindSpore refuses a checkpoint whose dtypes differ."""
    state = kind_state(TINY, FULL)
    out = tmp_path / "half.ckpt"
    result = run_cli("convert", save_official(tmp_path / "fb.pth", state), out, "--to", "mindformers",
                     "--dtype", dtype)
    assert result.exit_code == 0 and "kept" in result.output, result.output
    dtypes = {name: ref.dtype.name for name, ref in read_checkpoint(out).tensors.items()}
    half = {name for name, value in dtypes.items() if value == stored}
    assert half == {name for name in dtypes if any(f".{part}." in name for part in
                                                   ("attention.dense1", "attention.dense2", "attention.dense3",
                                                    "attention.projection", "output.mapping", "output.projection"))}
    for name in ("mask_tokens", "vit.cls_tokens", "vit.pos_embed", "decoder_pos_embed", "vit.blocks.0.layernorm1.gamma",
                 "vit.norm.beta", "decoder_norm.gamma", "vit.patch_embed.proj.weight", "decoder_embed.weight",
                 "decoder_pred.bias"):
        assert dtypes[name] == "float32", name
    everywhere = tmp_path / "half.pth"  # other targets cast every floating tensor, as before
    run_cli("convert", tmp_path / "fb.pth", everywhere, "--dtype", dtype)
    assert {ref.dtype.name for ref in read_checkpoint(everywhere).tensors.values()} == {stored}
    assert MINDFORMERS.casts("decoder_blocks.2.attn.proj.weight") and not MINDFORMERS.casts("head.weight")


# --- encoder-only and timm-ready output ---------------------------------------------------------

@pytest.mark.parametrize("target", ["timm", "facebook", "mmpretrain", "hf"])
def test_kind_encoder_writes_the_encoder_of_a_full_checkpoint(tmp_path, target):
    full = kind_state(TINY, FULL)
    out = tmp_path / ("enc" if target == "hf" else "enc.pth")
    result = run_cli("convert", save_official(tmp_path / "full.pth", full), out, "--kind", "encoder", "--to", target)
    assert result.exit_code == 0 and "dropped 20 decoder tensors" in result.output, result.output
    loaded = load_canonical(out)
    assert loaded.detected.kind == ENCODER
    assert_same(kind_state(TINY, ENCODER), loaded.state)


def test_timm_refuses_full_checkpoints_so_maeconv_says_so(tmp_path):
    source = save_official(tmp_path / "full.pth", kind_state(TINY, FULL))
    result = run_cli("convert", source, tmp_path / "t.pth", "--to", "timm")
    assert result.exit_code == 1 and "--kind encoder" in result.stderr and "mask_token" in result.stderr
    assert not (tmp_path / "t.pth").exists()
    assert run_cli("convert", source, tmp_path / "t.pth", "--to", "facebook").exit_code == 0
    classifier = save_official(tmp_path / "cls.pth", kind_state(TINY_CLS, CLASSIFIER))
    assert run_cli("convert", classifier, tmp_path / "c.pth", "--to", "timm").exit_code == 0
    result = run_cli("convert", classifier, tmp_path / "e.pth", "--kind", "encoder")
    assert result.exit_code == 1 and "cannot turn a classifier checkpoint into encoder" in result.stderr


def test_timm_loads_the_encoder_output_with_its_own_loader(tmp_path):
    """timm's own create_model(pretrained=True) from the file, strictly, and the same features."""
    timm = pytest.importorskip("timm")
    from maeconv.convert.twins import TORCH, create_model, load_state

    full = kind_state(TINY, FULL)
    out = tmp_path / "enc.pth"
    assert run_cli("convert", save_official(tmp_path / "full.pth", full), out, "--to", "timm",
                   "--kind", "encoder").exit_code == 0
    config = get_config(TINY)
    model = timm.create_model("vit_base_patch16_224.mae", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)),
                              img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
                              depth=config.depth, num_heads=config.num_heads)
    images = torch.randn(2, 3, config.img_size, config.img_size, generator=torch.Generator().manual_seed(0))
    twin = create_model(config, "pretrain", TORCH)
    load_state(twin, load_canonical(out).state, TORCH, str(out))
    with torch.no_grad():
        theirs, ours = model.forward_features(images), twin.forward_tokens(images)
    assert theirs.shape == (2, 1 + config.num_patches, config.embed_dim)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


# --- against mmpretrain itself, where it is importable ------------------------------------------

def mmpretrain_models(config):
    """mmpretrain's MAE (configs/_base_/models/mae_vit-base-p16.py) and fine-tuned classifier
    (configs/mae/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py), at the tiny preset's size."""
    pytest.importorskip("mmpretrain")
    import mmpretrain.models  # noqa: F401  (registers the models)
    from mmpretrain.registry import MODELS
    arch = dict(embed_dims=config.embed_dim, num_layers=config.depth, num_heads=config.num_heads,
                feedforward_channels=int(config.embed_dim * config.mlp_ratio))
    mae = MODELS.build(dict(
        type="MAE", backbone=dict(type="MAEViT", arch=arch, img_size=config.img_size, patch_size=config.patch_size,
                                  mask_ratio=0.75),
        neck=dict(type="MAEPretrainDecoder", num_patches=config.num_patches, patch_size=config.patch_size,
                  embed_dim=config.embed_dim, decoder_embed_dim=config.decoder_embed_dim,
                  decoder_depth=config.decoder_depth, decoder_num_heads=config.decoder_num_heads, mlp_ratio=4.0),
        head=dict(type="MAEPretrainHead", norm_pix=True, patch_size=config.patch_size,
                  loss=dict(type="PixelReconstructionLoss", criterion="L2"))))
    classifier = MODELS.build(dict(
        type="ImageClassifier",
        backbone=dict(type="VisionTransformer", arch=arch, img_size=config.img_size, patch_size=config.patch_size,
                      out_type="avg_featmap", final_norm=False),
        head=dict(type="LinearClsHead", num_classes=config.num_classes, in_channels=config.embed_dim)))
    return mae, classifier


def test_mmpretrain_loads_the_output_strictly_and_computes_the_same(tmp_path):
    pytest.importorskip("mmpretrain")
    from mmengine.runner.checkpoint import load_checkpoint

    from maeconv.convert.twins import TORCH, create_model, load_state

    config = get_config(TINY)
    mae, classifier = mmpretrain_models(config)
    images = torch.randn(2, 3, config.img_size, config.img_size, generator=torch.Generator().manual_seed(0))
    for model, preset, kind in ((mae, TINY, FULL), (classifier, TINY_CLS, CLASSIFIER)):
        state = kind_state(preset, kind)
        out = tmp_path / f"{kind}.pth"
        source = save_official(tmp_path / f"{kind}_fb.pth", state)
        assert run_cli("convert", source, out, "--to", "mmpretrain").exit_code == 0
        load_checkpoint(model, str(out), strict=True)  # mmengine's own loader, every name
        twin = create_model(get_config(preset), "pretrain" if kind == FULL else "classify", TORCH)
        load_state(twin, state, TORCH, "state")
        model.eval()
        with torch.no_grad():
            if kind == FULL:  # the encoder on every patch: cls-token features, masking aside
                theirs = model.backbone.ln1(_mm_tokens(model.backbone, images))
                torch.testing.assert_close(theirs, twin.forward_tokens(images), rtol=1e-5, atol=1e-5)
            else:
                torch.testing.assert_close(model(images), twin(images), rtol=1e-5, atol=1e-5)


def _mm_tokens(backbone, images):
    """mmpretrain's VisionTransformer up to its final norm, every patch kept."""
    x, _ = backbone.patch_embed(images)
    x = torch.cat([backbone.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + backbone.pos_embed
    for layer in backbone.layers:
        x = layer(x)
    return x


def test_mmengine_saves_read_as_mmpretrain(tmp_path):
    """A checkpoint as mmengine's save_checkpoint writes it, with a real MessageHub beside the weights."""
    pytest.importorskip("mmpretrain")
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import save_checkpoint

    config = get_config(TINY)
    mae, _ = mmpretrain_models(config)
    hub = MessageHub.get_instance("maeconv-test")
    hub.update_scalar("train/loss", 0.5)
    path = tmp_path / "epoch_1.pth"
    save_checkpoint({"meta": {"epoch": 1}, "state_dict": mae.state_dict(), "message_hub": hub.state_dict()}, str(path))
    loaded = load_canonical(path)
    assert (loaded.scheme.name, loaded.detected.kind) == ("mmpretrain", FULL)
    expected = {step.canonical: mae.state_dict()[step.foreign[0]].numpy() for step in loaded.plan}
    assert_same(expected, loaded.state)


def test_readme_lists_every_scheme_with_where_it_was_verified():
    from pathlib import Path

    from maeconv.convert.schemes import SCHEMES

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme[readme.index("| scheme (aliases) |"):]
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")][:len(SCHEMES) + 1]
    assert len([r for r in rows if r.startswith("| `")]) == len(SCHEMES)
    for scheme in SCHEMES.values():
        row = next(r for r in rows if r.startswith(f"| `{scheme.name}`"))
        assert all(f"`{alias}`" in row.split("|")[1] for alias in scheme.aliases), row
        assert scheme.verified and len(row.split("|")) == 6 and row.split("|")[4].strip(), row
