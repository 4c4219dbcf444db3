"""The Python API: models and configs by name or path, in either framework."""
import numpy as np
import pytest

from maeconv import AutoConfig, AutoModel, from_pretrained
from maeconv.convert.twins import model_state
from maeconv.models import get_config

from helpers import TINY, TINY_CLS, kind_state, save_official, seeded_state


@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_from_pretrained_loads_every_tensor(tmp_path, tiny_pth, tiny_state, framework):
    model = from_pretrained(tiny_pth, framework=framework)
    assert type(model).__name__ == "MaskedAutoencoderViT" and not model.decoder_absent
    assert model.config.norm_pix_loss is True  # from the file's pickled args
    state = model_state(model, framework)
    for name, value in tiny_state.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


def test_encoder_only_warns_that_the_decoder_is_absent(tmp_path):
    path = save_official(tmp_path / "enc.pth", kind_state(TINY, "encoder"))
    with pytest.warns(UserWarning, match="decoder is left as initialised"):
        model = from_pretrained(path)
    assert model.decoder_absent


def test_classifier_and_configs(tmp_path):
    path = save_official(tmp_path / "cls.pth", seeded_state(TINY_CLS))
    model = AutoModel.from_pretrained(str(path), framework="mindspore")
    assert type(model).__name__ == "VisionTransformer"
    assert AutoConfig.from_pretrained("mae_vit_base_p16") == get_config("mae_vit_base_patch16")
    assert AutoConfig.from_pretrained(str(path)).num_classes == get_config(TINY_CLS).num_classes
    fresh = AutoModel.from_pretrained("vit_tiny_patch8", framework="torch", num_classes=3)
    assert fresh.head.out_features == 3
