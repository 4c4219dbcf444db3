"""Both twins carry exactly the canonical layout, and load checkpoints strictly."""
import numpy as np
import pytest

from maeconv.convert.twins import MINDSPORE, TORCH
from maeconv.errors import MaeconvError
from maeconv.convert.twins import create_model, load_state, model_state
from maeconv.models import CLASSIFIER, CLASSIFY, ENCODER, FULL, PRETRAIN, checkpoint_shapes, get_config
from maeconv.models.config import FROZEN

from helpers import BASE, TINY, TINY_CLS, kind_state

FRAMEWORKS = (TORCH, MINDSPORE)


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("preset,task,kind", [(TINY, PRETRAIN, FULL), (BASE, PRETRAIN, FULL),
                                              (TINY_CLS, CLASSIFY, CLASSIFIER),
                                              ("vit_base_patch16", CLASSIFY, CLASSIFIER)])
def test_twin_layout_is_canonical(framework, preset, task, kind):
    config = get_config(preset)
    state = model_state(create_model(config, task, framework), framework)
    assert _shapes(state) == checkpoint_shapes(config, kind)
    assert all(v.dtype == np.float32 for v in state.values())


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_position_tables_are_frozen_parameters(framework):
    model = create_model(get_config(TINY), PRETRAIN, framework)
    if framework == TORCH:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert not list(model.buffers())
    else:
        trainable = {p.name for p in model.trainable_params()}
    assert FROZEN.isdisjoint(trainable)
    assert len(trainable) == len(checkpoint_shapes(get_config(TINY), FULL)) - len(FROZEN)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_initialisation_follows_reference(framework):
    config = get_config(BASE)
    state = model_state(create_model(config, PRETRAIN, framework), framework)
    qkv = state["blocks.0.attn.qkv.weight"]
    bound = np.sqrt(6 / (768 + 3 * 768))
    assert np.abs(qkv).max() <= bound and np.abs(qkv).max() > 0.9 * bound  # xavier uniform
    assert not state["blocks.0.attn.qkv.bias"].any()
    np.testing.assert_array_equal(state["norm.weight"], 1)
    assert 0.015 < state["cls_token"].std() < 0.025 and 0.015 < state["mask_token"].std() < 0.025
    patch = state["patch_embed.proj.weight"]
    assert np.abs(patch).max() <= np.sqrt(6 / (768 + 768))  # xavier over the (D, 3*16*16) view


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_load_round_trips_every_tensor(framework, tiny_state):
    model = create_model(get_config(TINY), PRETRAIN, framework)
    assert load_state(model, tiny_state, framework).missing == ()
    back = model_state(model, framework)
    for name, value in tiny_state.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_encoder_only_reports_absent_decoder(framework):
    model = create_model(get_config(TINY), PRETRAIN, framework)
    report = load_state(model, kind_state(TINY, ENCODER), framework)
    assert report.decoder_absent
    assert set(report.missing) == set(checkpoint_shapes(get_config(TINY), FULL)) - set(
        checkpoint_shapes(get_config(TINY), ENCODER))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_load_rejects_unexpected_missing_and_reshaped(framework, tiny_state):
    model = create_model(get_config(TINY_CLS), CLASSIFY, framework)
    with pytest.raises(MaeconvError, match="keys the model does not have"):
        load_state(model, tiny_state, framework)  # pretraining weights into the classifier
    model = create_model(get_config(TINY), PRETRAIN, framework)
    partial = {k: v for k, v in tiny_state.items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(MaeconvError, match="missing"):
        load_state(model, partial, framework)
    reshaped = dict(tiny_state, cls_token=np.zeros((1, 1, 7), np.float32))
    with pytest.raises(MaeconvError, match="shape"):
        load_state(model, reshaped, framework)
