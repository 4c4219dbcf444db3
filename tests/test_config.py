"""Presets, the canonical layout and the sin-cos tables against MAE-FACTS."""
import numpy as np
import pytest

from maeconv.models import ALIASES, CLASSIFIER, ENCODER, FULL, checkpoint_shapes, get_config, get_preset
from maeconv.models.pos_embed import sincos_2d

# MAE-FACTS sections 1 and 2: (keys, parameters) of the released checkpoint kinds.
RELEASED = {
    ("mae_vit_base_patch16", FULL): (254, 111_907_840),
    ("mae_vit_large_patch16", FULL): (398, 329_541_888),
    ("mae_vit_huge_patch14", FULL): (494, 657_074_508),
    ("mae_vit_base_patch16", ENCODER): (150, 85_798_656),
    ("mae_vit_large_patch16", ENCODER): (294, None),
    ("mae_vit_huge_patch14", ENCODER): (390, None),
    ("vit_base_patch16", CLASSIFIER): (152, None),
    ("vit_large_patch16", CLASSIFIER): (296, None),
    ("vit_huge_patch14", CLASSIFIER): (392, None),
}
FP32_BYTES = {"mae_vit_base_patch16": 447_631_360, "mae_vit_large_patch16": 1_318_167_552,
              "mae_vit_huge_patch14": 2_628_298_032}


@pytest.mark.parametrize("preset,kind", RELEASED)
def test_released_layouts(preset, kind):
    shapes = checkpoint_shapes(get_config(preset), kind)
    keys, params = RELEASED[preset, kind]
    assert len(shapes) == keys
    if params is not None:
        assert sum(int(np.prod(s)) for s in shapes.values()) == params


@pytest.mark.parametrize("preset", FP32_BYTES)
def test_full_checkpoint_bytes(preset):
    shapes = checkpoint_shapes(get_config(preset), FULL)
    assert 4 * sum(int(np.prod(s)) for s in shapes.values()) == FP32_BYTES[preset]


def test_finetuned_classifier_has_fc_norm_not_norm():
    shapes = checkpoint_shapes(get_config("vit_base_patch16"), CLASSIFIER)
    assert "fc_norm.weight" in shapes and "norm.weight" not in shapes
    assert shapes["head.weight"] == (1000, 768)


@pytest.mark.parametrize("alias,name", ALIASES.items())
def test_aliases(alias, name):
    assert get_preset(alias) == get_preset(name)


def test_unknown_preset_lists_known():
    with pytest.raises(KeyError, match="mae_vit_base_patch16"):
        get_preset("mae_vit_gigantic")


def test_presets_use_reference_eps_and_heads():
    huge = get_config("mae_vit_huge_patch14")
    assert (huge.patch_size, huge.embed_dim, huge.depth, huge.num_heads) == (14, 1280, 32, 16)
    assert huge.norm_eps == 1e-6 and huge.len_keep == 64
    assert get_config("mae_vit_base_patch16").len_keep == 49


def test_sincos_table_layout():
    dim, grid = 16, 3
    table = sincos_2d(dim, grid)
    assert table.shape == (1 + grid * grid, dim) and table.dtype == np.float32
    assert not table[0].any()
    quarter = dim // 4
    omega = 10000.0 ** (-np.arange(quarter) / quarter)
    i, j = 1, 2  # row 1, column 2
    row = table[1 + i * grid + j]
    # first half encodes the column, as the reference (despite its name emb_h)
    expected = np.concatenate([np.sin(j * omega), np.cos(j * omega), np.sin(i * omega), np.cos(i * omega)])
    np.testing.assert_array_equal(row, expected.astype(np.float32))
