"""A written Hugging Face directory loads in transformers and computes what the source computes."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from maeconv.cli import cli
from maeconv.models import get_config, reference
from maeconv.parity.compare import compare
from maeconv.parity.twins import PRETRAIN_TOLERANCES, parity_inputs

from helpers import BASE, TINY, save_official, seeded_state

transformers = pytest.importorskip("transformers")


def _hf_outputs(folder, images, noise):
    model = transformers.ViTMAEForPreTraining.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(images), noise=torch.from_numpy(noise))
    return {"loss": out.loss.numpy(), "pred": out.logits.numpy(), "mask": out.mask.numpy(),
            "ids_restore": out.ids_restore.numpy()}


@pytest.mark.parametrize("preset,norm_pix_loss", [(TINY, True), (TINY, False),
                                                  pytest.param(BASE, True, marks=pytest.mark.slow)])
def test_hf_directory_matches_the_reference(tmp_path, preset, norm_pix_loss):
    state = seeded_state(preset)
    src = save_official(tmp_path / "src.pth", state, with_args=False)
    folder = tmp_path / "hf"
    flag = "--norm-pix-loss" if norm_pix_loss else "--no-norm-pix-loss"
    result = CliRunner().invoke(cli, ["convert", str(src), str(folder), flag])
    assert result.exit_code == 0, result.output
    config = get_config(preset, norm_pix_loss=norm_pix_loss)
    images, noise = parity_inputs(config, batch=2, seed=4)
    expected = reference.mae_forward(images, state, config, noise)
    tolerances = {k: v for k, v in PRETRAIN_TOLERANCES.items() if k != "latent"}
    rows = compare("transformers vs reference", _hf_outputs(folder, images, noise), expected, tolerances)
    assert all(row.passed for row in rows), rows


def test_transformers_own_directory_reads_back(tmp_path):
    config = transformers.ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=128, decoder_hidden_size=16,
                                       decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                       decoder_intermediate_size=64, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(config).eval()
    model.save_pretrained(tmp_path / "saved")
    out = tmp_path / "twin.pth"
    assert CliRunner().invoke(cli, ["convert", str(tmp_path / "saved"), str(out)]).exit_code == 0
    state = {k: v.numpy() for k, v in torch.load(out, weights_only=True)["model"].items()}
    images, noise = parity_inputs(get_config(TINY), batch=2, seed=2)
    expected = reference.mae_forward(images, state, get_config(TINY), noise)
    with torch.no_grad():
        hf = model(pixel_values=torch.from_numpy(images), noise=torch.from_numpy(noise))
    np.testing.assert_allclose(hf.logits.numpy(), expected["pred"], atol=1e-5)
    np.testing.assert_array_equal(hf.mask.numpy(), expected["mask"])


def test_timm_layout_loads_strictly_in_timm(tmp_path, base_classifier_state):
    timm = pytest.importorskip("timm")  # optional: timm needs torchvision, which this CPU torch build lacks
    state = base_classifier_state
    src = save_official(tmp_path / "cls.pth", state, with_args=False)
    assert CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "timm.safetensors")]).exit_code == 0
    from safetensors.torch import load_file

    model = timm.create_model("vit_base_patch16_224", pretrained=False, global_pool="avg", fc_norm=True)
    model.load_state_dict(load_file(tmp_path / "timm.safetensors"), strict=True)


def test_encoder_only_directory_is_a_vit_mae_model(tmp_path):
    from helpers import kind_state

    state = kind_state(TINY, "encoder")
    src = save_official(tmp_path / "enc.pth", state, with_args=False)
    assert CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "hf")]).exit_code == 0
    model = transformers.ViTMAEModel.from_pretrained(tmp_path / "hf").eval()
    config = get_config(TINY)
    images, noise = parity_inputs(config, batch=2, seed=6)
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(images), noise=torch.from_numpy(noise))
    expected = reference.mae_forward(images, state, config, noise, encoder_only=True)
    np.testing.assert_allclose(out.last_hidden_state.numpy(), expected["latent"], atol=1e-5)
