"""Model settings are decided by one rule everywhere (flag > file > preset), honoured by both twins
and the exports, carried into every output format, and refused in one line when the twins cannot
honour them. Checked against transformers itself where the file is a Hugging Face directory."""
import json

import numpy as np
import pytest
import torch

from maeconv.errors import MaeconvError
from maeconv.convert.pipeline import load_canonical
from maeconv.models import get_config, reference
from maeconv.models.config import GELU_TANH
from maeconv.parity.twins import check_pretrain, parity_inputs

from helpers import run_cli as run, TINY, save_official

transformers = pytest.importorskip("transformers")

ODD = {"layer_norm_eps": 1e-3, "hidden_act": "gelu_new", "mask_ratio": 0.5, "norm_pix_loss": True}
ODD_CONFIG = dict(norm_eps=1e-3, activation=GELU_TANH, mask_ratio=0.5, norm_pix_loss=True)
CARRIED = {**ODD, "hidden_act": "gelu_pytorch_tanh"}  # transformers' own name of the tanh GELU




def one_error(result, *expected):
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for text in expected:
        assert text in errors[0], errors[0]


@pytest.fixture
def hf_dir(tmp_path, tiny_state):
    """A transformers-layout directory of the tiny model, its config.json edited by each test."""
    src = save_official(tmp_path / "src.pth", tiny_state, with_args=False)
    folder = tmp_path / "hf"
    assert run("convert", src, folder).exit_code == 0

    def edit(**changes):
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))
        return folder
    return edit


def transformers_outputs(folder, images, noise):
    model = transformers.ViTMAEForPreTraining.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(images), noise=torch.from_numpy(noise))
    return {"loss": out.loss.numpy(), "pred": out.logits.numpy(), "mask": out.mask.numpy()}


@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_every_setting_of_a_config_json_is_honoured_as_transformers_does(tmp_path, hf_dir, framework):
    folder = hf_dir(**ODD)
    images, noise = parity_inputs(get_config(TINY), batch=2, seed=3)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "n.npy", noise)
    result = run("forward", folder, "--images", tmp_path / "x.npy", "--noise", tmp_path / "n.npy",
                 "--out", tmp_path / "o.npz", "--framework", framework)
    assert result.exit_code == 0, result.output
    ours, theirs = np.load(tmp_path / "o.npz"), transformers_outputs(folder, images, noise)
    assert int((1 - ours["mask"][0]).sum()) == int(16 * (1 - 0.5))
    np.testing.assert_array_equal(ours["mask"], theirs["mask"])
    np.testing.assert_allclose(ours["pred"], theirs["pred"], atol=1e-5)
    np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-5)
    plain = reference.mae_forward(images, load_canonical(folder).state, get_config(TINY), noise)
    assert np.abs(ours["pred"] - plain["pred"]).max() > 1e-3  # the settings really changed the numbers


def test_both_twins_match_the_reference_with_the_tanh_gelu_and_another_eps(tiny_state):
    report = check_pretrain(tiny_state, get_config(TINY, **ODD_CONFIG), batch=2)
    assert report.passed, report.to_text()


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("False", False), ("true", True)])
def test_norm_pix_loss_is_read_strictly(hf_dir, value, expected):
    assert load_canonical(hf_dir(norm_pix_loss=value)).settings().config.norm_pix_loss is expected


@pytest.mark.parametrize("changes, message", [
    ({"norm_pix_loss": "maybe"}, "norm_pix_loss: 'maybe' is not true or false"),
    ({"hidden_act": "relu"}, "hidden_act: 'relu' is not an activation the twins compute"),
    ({"qkv_bias": False}, "qkv_bias False"),
    ({"num_attention_heads": 2}, "num_attention_heads is 2"),
    ({"image_size": 64}, "records image size 64"),
    ({"mask_ratio": 1.5}, "mask ratio 1.5"),
    ({"layer_norm_eps": -1}, "layer_norm_eps -1.0"),
    ({"mask_ratio": "nan"}, "mask_ratio: 'nan' is not a finite number"),
])
def test_settings_the_twins_cannot_honour_are_refused(tmp_path, hf_dir, changes, message):
    folder = hf_dir(**changes)
    one_error(run("inspect", folder), message)
    one_error(run("convert", folder, tmp_path / "out.pth"), message)
    assert not (tmp_path / "out.pth").exists()


SUFFIXES = [".pth", ".safetensors", ".ckpt", ""]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_conversions_carry_every_setting_into_every_format(tmp_path, hf_dir, suffix):
    source = hf_dir(**ODD)
    out = tmp_path / f"carried{suffix}"
    assert run("convert", source, out).exit_code == 0
    shown = json.loads(run("inspect", out, "--json").stdout)["settings"]
    assert {name: shown[name]["value"] for name in ODD} == CARRIED
    assert {shown[name]["from"] for name in ODD} == {"file"}
    back = tmp_path / "back"
    assert run("convert", out, back).exit_code == 0
    written = json.loads((back / "config.json").read_text())
    assert {name: written[name] for name in ODD} == CARRIED


def test_carried_settings_load_in_the_frameworks_own_loaders(tmp_path, hf_dir):
    import mindspore as ms

    source = hf_dir(**ODD)
    assert run("convert", source, tmp_path / "t.pth").exit_code == 0
    assert run("convert", source, tmp_path / "m.ckpt").exit_code == 0
    args = torch.load(tmp_path / "t.pth", weights_only=True)["args"]
    assert args["layer_norm_eps"] == 1e-3 and args["mask_ratio"] == 0.5 and args["norm_pix_loss"] is True
    loaded = ms.load_checkpoint(str(tmp_path / "m.ckpt"))
    assert json.loads(loaded["maeconv.settings"])["hidden_act"] == "gelu_pytorch_tanh"


def test_a_flag_overrides_the_file_and_is_recorded(tmp_path, hf_dir):
    source = hf_dir(**ODD)
    out = tmp_path / "flagged.safetensors"
    assert run("convert", source, out, "--no-norm-pix-loss", "--layer-norm-eps", "1e-6").exit_code == 0
    shown = json.loads(run("inspect", out, "--json").stdout)["settings"]
    assert shown["norm_pix_loss"]["value"] is False and shown["layer_norm_eps"]["value"] == 1e-6
    assert shown["mask_ratio"]["value"] == 0.5  # no flag: still the file's


def test_a_setting_nobody_records_is_the_presets(tmp_path, tiny_state):
    path = save_official(tmp_path / "plain.pth", tiny_state, with_args=False)
    shown = json.loads(run("inspect", path, "--json").stdout)["settings"]
    assert shown["layer_norm_eps"] == {"value": 1e-6, "from": "preset"}
    assert shown["norm_pix_loss"] == {"value": False, "from": "preset"}


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnx", "mindir"])
def test_exports_are_built_with_the_files_settings(tmp_path, hf_dir, runtime):
    from maeconv.runtimes.registry import open_graph

    source = hf_dir(**ODD)
    out = tmp_path / f"f.{runtime}"
    result = run("export", runtime, source, out, "--task", "features")
    assert result.exit_code == 0, result.output
    graph = open_graph(out, runtime)
    images, _ = parity_inputs(get_config(TINY), batch=2, seed=1)
    expected = reference.features_forward(images, load_canonical(source).state, get_config(TINY, **ODD_CONFIG))
    np.testing.assert_allclose(graph({"images": images})["tokens"], expected["tokens"], atol=1e-4)


def test_the_python_api_resolves_the_same_way(hf_dir):
    from maeconv import from_pretrained

    source = hf_dir(**ODD)
    model = from_pretrained(source)
    assert (model.config.norm_eps, model.config.activation, model.config.mask_ratio) == (1e-3, GELU_TANH, 0.5)
    assert from_pretrained(source, mask_ratio=0.25).config.mask_ratio == 0.25
    with pytest.raises(MaeconvError, match="mask ratio 1.0"):
        from_pretrained(source, mask_ratio=1.0)
