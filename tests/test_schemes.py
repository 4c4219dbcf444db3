"""The mapping layer: tables run both ways, and nothing maps silently."""
import numpy as np
import pytest

from maeconv.convert.schemes import (FACEBOOK, MINDSPORE, SPLIT, TRANSPOSE, MappingError, Rule, Scheme,
                                     apply_from_canonical, apply_to_canonical, get_scheme)
from maeconv.models import CLASSIFIER, FULL, checkpoint_shapes, get_config

from helpers import TINY, TINY_CLS


def _names(preset, kind):
    return list(checkpoint_shapes(get_config(preset), kind))


@pytest.mark.parametrize("preset,kind", [(TINY, FULL), (TINY_CLS, CLASSIFIER), ("mae_vit_base_patch16", FULL)])
@pytest.mark.parametrize("scheme", [FACEBOOK, MINDSPORE])
def test_plans_invert(scheme, preset, kind):
    names = _names(preset, kind)
    forward = scheme.plan_from_canonical(names)
    foreign = [n for step in forward for n in step.foreign]
    assert len(set(foreign)) == len(names)
    assert [step.canonical for step in scheme.plan_to_canonical(foreign)] == names


def test_mindspore_twin_names_layer_norms_gamma_beta():
    names = dict((s.canonical, s.foreign[0]) for s in MINDSPORE.plan_from_canonical(_names(TINY, FULL)))
    assert names["blocks.1.norm2.weight"] == "blocks.1.norm2.gamma"
    assert names["decoder_blocks.0.norm1.bias"] == "decoder_blocks.0.norm1.beta"
    assert names["decoder_norm.weight"] == "decoder_norm.gamma"
    assert names["blocks.1.attn.qkv.weight"] == "blocks.1.attn.qkv.weight"
    changed = [k for k, v in names.items() if k != v]
    assert all(k.endswith(("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm.weight", "norm.bias"))
               for k in changed)


def test_two_names_for_one_tensor_is_an_error():
    for order in (["norm.gamma", "norm.weight"], ["norm.weight", "norm.gamma"]):
        with pytest.raises(MappingError, match="both map to 'norm.weight'"):
            MINDSPORE.plan_to_canonical(order)


TOY = Scheme("toy", "split and transposed weights, no passthrough", rules=(
    Rule("blocks.{n}.attn.qkv.weight", ("layer.{n}.q", "layer.{n}.k", "layer.{n}.v"), SPLIT),
    Rule("blocks.{n}.mlp.fc1.weight", "layer.{n}.mapping", TRANSPOSE),
), framework="torch")


def test_split_and_transpose_run_both_ways():
    rng = np.random.default_rng(0)
    canonical = {"blocks.0.attn.qkv.weight": rng.standard_normal((6, 2)),
                 "blocks.0.mlp.fc1.weight": rng.standard_normal((8, 2))}
    foreign = apply_from_canonical(TOY.plan_from_canonical(canonical), canonical)
    assert sorted(foreign) == ["layer.0.k", "layer.0.mapping", "layer.0.q", "layer.0.v"]
    np.testing.assert_array_equal(foreign["layer.0.k"].load(), canonical["blocks.0.attn.qkv.weight"][2:4])
    assert foreign["layer.0.mapping"].shape == (2, 8) and foreign["layer.0.mapping"].load().shape == (2, 8)
    back = apply_to_canonical(TOY.plan_to_canonical(list(foreign)), foreign)
    for name, value in canonical.items():
        assert back[name].shape == value.shape
        np.testing.assert_array_equal(back[name].load(), value)


def test_unmapped_and_incomplete_names_are_errors():
    with pytest.raises(MappingError, match="1 names that are not toy names: extra.weight"):
        TOY.plan_to_canonical(["layer.0.q", "layer.0.k", "layer.0.v", "extra.weight"])
    with pytest.raises(MappingError, match="parts missing"):
        TOY.plan_to_canonical(["layer.0.q", "layer.0.v"])
    with pytest.raises(MappingError, match="no toy counterpart"):
        TOY.plan_from_canonical(["cls_token"])


def test_scheme_names_and_aliases():
    assert get_scheme("timm") is FACEBOOK and get_scheme("mindspore") is MINDSPORE
    with pytest.raises(KeyError, match="facebook"):
        get_scheme("caffe")


@pytest.mark.parametrize("shape", [(96, 1280), (1280, 96), (40, 2049), (2049, 40), (3, 5000), (1, 7), (0, 100), (100, 0)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_blocked_transpose_gives_numpys_bytes(shape, dtype):
    """Bands for narrow rows, tiles for rows over 8 KiB (2049 float32): both the bytes of `a.T`."""
    import ml_dtypes

    from maeconv.convert.schemes import transposed

    array = np.random.default_rng(0).standard_normal(shape).astype(getattr(ml_dtypes, dtype, dtype))
    out = transposed(array)
    assert out.shape == shape[::-1] and out.dtype == array.dtype and out.flags.c_contiguous
    assert out.tobytes() == np.ascontiguousarray(array.T).tobytes()
