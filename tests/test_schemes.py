"""The mapping layer: tables run both ways, and nothing maps silently."""
import ctypes

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


def test_a_joined_tensor_is_written_from_its_parts_bytes():
    """q, k, v joined into qkv: the writer gets the parts' bytes one after another (no whole built),
    and they are the bytes of the joined tensor; parts that differ in dtype are joined by NumPy."""
    from maeconv.convert.tensors import TensorRef, tensor_bytes

    rng = np.random.default_rng(3)
    parts = {name: rng.standard_normal((2, 2)).astype(np.float32) for name in ("layer.0.q", "layer.0.k", "layer.0.v")}
    plan = TOY.plan_to_canonical(list(parts))
    joined = apply_to_canonical(plan, parts)["blocks.0.attn.qkv.weight"]
    assert len(joined.pieces) == 3
    written = b"".join(map(bytes, tensor_bytes(joined)))
    assert written == joined.load().tobytes() == np.concatenate(list(parts.values())).tobytes()
    mixed = dict(parts, **{"layer.0.v": TensorRef.of(parts["layer.0.v"].astype(np.float64))})
    assert apply_to_canonical(plan, mixed)["blocks.0.attn.qkv.weight"].pieces == ()


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
def test_blocked_transpose_gives_numpys_bytes(shape, dtype, monkeypatch):
    """Bands for narrow rows, tiles for rows over 8 KiB (2049 float32): both the bytes of `a.T`."""
    import ml_dtypes

    from maeconv.convert import schemes
    from maeconv.convert.schemes import transposed

    monkeypatch.setattr(schemes, "transposed_exactly", lambda array: None)  # NumPy's copy, not OpenBLAS
    array = np.random.default_rng(0).standard_normal(shape).astype(getattr(ml_dtypes, dtype, dtype))
    out = transposed(array)
    assert out.shape == shape[::-1] and out.dtype == array.dtype and out.flags.c_contiguous
    assert out.tobytes() == np.ascontiguousarray(array.T).tobytes()


def _awkward_floats(shape, dtype, rng):
    """Random values with the bit patterns a copy by arithmetic could change: -0, subnormals, the
    largest finite values."""
    array = rng.standard_normal(shape).astype(dtype)
    info = np.finfo(dtype)
    flat = array.reshape(-1)
    for index, value in enumerate([-0.0, info.smallest_subnormal, -info.smallest_subnormal, info.max, info.tiny / 3]):
        flat[(index * 7919) % flat.size] = value
    return array


@pytest.mark.parametrize("shape", [(5120, 128), (128, 5120), (97, 31), (1, 9), (9, 1)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("offset", [0, 5])
def test_openblas_transpose_gives_numpys_bytes(shape, dtype, offset):
    from maeconv.convert.blas import omatcopy, transposed_exactly

    if omatcopy(np.dtype(dtype)) is None:
        pytest.skip("this NumPy ships no OpenBLAS with omatcopy")
    array = _at_offset(_awkward_floats(shape, dtype, np.random.default_rng(1)), offset)
    out = transposed_exactly(array)
    assert out is not None and out.shape == shape[::-1] and out.flags.c_contiguous
    assert out.tobytes() == np.ascontiguousarray(array.T).tobytes()


def _at_offset(array: np.ndarray, offset: int) -> np.ndarray:
    """A copy of `array` starting `offset` bytes into its memory (as tensors lie in a .ckpt)."""
    memory = np.zeros(array.nbytes + 16, np.uint8)
    moved = np.frombuffer(memory.data, array.dtype, array.size, offset).reshape(array.shape)
    moved[...] = array
    return moved


@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("special", [np.nan, np.inf, "signalling"])
def test_openblas_transpose_leaves_nan_and_inf_to_numpy(special, offset):
    """OpenBLAS quiets a signalling NaN as it scales by 1: such matrices take NumPy's copy, whose
    bytes are the source's (also for a source at an odd offset)."""
    from maeconv.convert.blas import transposed_exactly
    from maeconv.convert.schemes import transposed

    array = np.random.default_rng(2).standard_normal((64, 48)).astype(np.float32)
    if special == "signalling":
        array.view(np.uint32)[3, 5] = 0x7F800001
    else:
        array[3, 5] = special
    array = _at_offset(array, offset)
    assert array.flags.aligned == (offset == 0)
    assert transposed_exactly(array) is None
    assert transposed(array).tobytes() == np.ascontiguousarray(array.T).tobytes()


def test_openblas_transpose_refused_where_the_thread_flushes_subnormals(monkeypatch):
    """A kernel that flushes subnormals to zero (as under FTZ/DAZ) fails the per-call probe."""
    from maeconv.convert import blas

    def flushing(order, trans, rows, columns, alpha, source, lda, target, ldb):
        a = np.ctypeslib.as_array(ctypes.cast(source, ctypes.POINTER(ctypes.c_float)), (rows, columns))
        b = np.ctypeslib.as_array(ctypes.cast(target, ctypes.POINTER(ctypes.c_float)), (columns, rows))
        b[...] = np.where(np.abs(a) < np.finfo(np.float32).tiny, np.float32(0), a).T

    monkeypatch.setattr(blas, "omatcopy", lambda dtype: flushing)
    assert blas.transposed_exactly(np.ones((4, 3), np.float32)) is None
