"""Numerical parity: each twin against the float64 reference, and twin against twin."""
import numpy as np
import pytest

from maeconv.convert.twins import MINDSPORE, TORCH, create_model, get_twin, load_state
from maeconv.models import PRETRAIN, get_config
from maeconv.models import reference
from maeconv.parity.compare import EXACT, Tolerance, compare
from maeconv.models.twins import GRAPH, PYNATIVE
from maeconv.parity.twins import (GRADIENT_TOLERANCE, check_classifier, check_pretrain, gradient_errors,
                                  parity_inputs, pretrain_gradients)

from helpers import BASE, TINY, TINY_CLS, seeded_state


def _assert_passed(report):
    failed = [r for r in report.rows if not r.passed]
    assert not failed, report.to_text()
    assert {r.pair for r in report.rows} == {"torch vs reference", "mindspore vs reference", "mindspore vs torch"}


@pytest.mark.parametrize("mode", [GRAPH, PYNATIVE])
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_tiny_pretrain_forward(tiny_state, mode, norm_pix_loss):
    config = get_config(TINY, norm_pix_loss=norm_pix_loss)
    _assert_passed(check_pretrain(tiny_state, config, batch=3, mode=mode))


def test_tiny_encoder_only(tiny_state):
    report = check_pretrain(tiny_state, get_config(TINY), mode=GRAPH, encoder_only=True)
    _assert_passed(report)
    assert {r.output for r in report.rows} == {"latent", "mask", "ids_restore"}


@pytest.mark.slow
def test_base_pretrain_forward(base_state):
    _assert_passed(check_pretrain(base_state, get_config(BASE, norm_pix_loss=True), batch=2, mode=GRAPH))


@pytest.mark.parametrize("global_pool", [True, False])
def test_tiny_classifier_logits(global_pool):
    state = seeded_state(TINY_CLS, global_pool=global_pool)
    _assert_passed(check_classifier(state, get_config(TINY_CLS, global_pool=global_pool), batch=3, mode=GRAPH))


@pytest.mark.slow
def test_base_classifier_logits(base_classifier_state):
    _assert_passed(check_classifier(base_classifier_state, get_config("vit_base_patch16"), batch=2, mode=GRAPH))


def test_masking_follows_the_noise(tiny_state):
    config = get_config(TINY)
    images, noise = parity_inputs(config, batch=2, seed=3)
    out = reference.mae_forward(images, tiny_state, config, noise)
    kept = np.argsort(noise, axis=1)[:, :config.len_keep]
    for row in range(2):
        assert set(np.flatnonzero(out["mask"][row] == 0)) == set(kept[row])
    assert out["mask"].sum(1).tolist() == [config.num_patches - config.len_keep] * 2
    assert out["latent"].shape == (2, 1 + config.len_keep, config.embed_dim)


def test_reference_patchify_inverts():
    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((2, 3, 32, 32))
    patches = reference.patchify(imgs, 8)
    # channel-last inside a patch: index (row*p + col)*3 + c
    assert patches[1, 5, (2 * 8 + 7) * 3 + 1] == imgs[1, 1, 8 + 2, 8 + 7]
    np.testing.assert_array_equal(reference.unpatchify(patches, 8), imgs)


@pytest.mark.parametrize("framework", [TORCH, MINDSPORE])
def test_twin_patchify_matches_reference(framework, tiny_state):
    config = get_config(TINY)
    images, _ = parity_inputs(config, batch=2)
    model = create_model(config, PRETRAIN, framework)
    if framework == TORCH:
        import torch
        patches = model.patchify(torch.from_numpy(images))
        restored = model.unpatchify(patches).numpy()
        patches = patches.numpy()
    else:
        import mindspore as ms
        get_twin(MINDSPORE).set_mode(PYNATIVE)
        patches = model.patchify(ms.Tensor(images))
        restored = model.unpatchify(patches).asnumpy()
        patches = patches.asnumpy()
    np.testing.assert_array_equal(patches, reference.patchify(images, config.patch_size))
    np.testing.assert_array_equal(restored, images)


def _gradient_parity(state, config, mode):
    images, noise = parity_inputs(config, batch=2, seed=1)
    grads = {}
    get_twin(MINDSPORE).set_mode(mode)
    for framework in (TORCH, MINDSPORE):
        model = create_model(config, PRETRAIN, framework)
        load_state(model, state, framework)
        grads[framework] = pretrain_gradients(model, framework, images, noise)
    errors = gradient_errors(grads[MINDSPORE], grads[TORCH])
    assert len(errors) == len(state) - 2  # every parameter but the two frozen tables
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRADIENT_TOLERANCE, (worst, errors[worst])
    assert all(np.linalg.norm(g) > 0 for g in grads[TORCH].values())


@pytest.mark.parametrize("mode", [GRAPH, PYNATIVE])
def test_tiny_gradients(tiny_state, mode):
    _gradient_parity(tiny_state, get_config(TINY, norm_pix_loss=True), mode)


@pytest.mark.slow
def test_base_gradients(base_state):
    _gradient_parity(base_state, get_config(BASE), PYNATIVE)


def test_compare_flags_a_difference():
    a = {"x": np.array([1.0, 2.0]), "ids": np.array([0, 1])}
    b = {"x": np.array([1.0, 2.1]), "ids": np.array([1, 0])}
    rows = compare("a vs b", a, b, {"x": Tolerance("abs", 0.05), "ids": Tolerance(EXACT)})
    assert [r.passed for r in rows] == [False, False]
    assert rows[0].max_abs == pytest.approx(0.1)


@pytest.mark.large
@pytest.mark.parametrize("preset", ["mae_vit_large_patch16", "mae_vit_huge_patch14"])
def test_large_and_huge_pretrain_forward(preset):
    _assert_passed(check_pretrain(seeded_state(preset), get_config(preset), batch=1, mode=GRAPH))
