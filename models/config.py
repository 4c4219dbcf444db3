"""Framework-neutral MAE configuration, the preset registry and the canonical parameter layout."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

PRETRAIN = "pretrain"
CLASSIFY = "classify"

# The MLP activations both twins compute: the reference's exact (erf) GELU, and the tanh
# approximation some Hub configs name. ACTIVATION_NAMES maps the names configs use to them.
GELU, GELU_TANH = "gelu", "gelu_tanh"
ACTIVATION_NAMES = {"gelu": GELU, "gelu_python": GELU, "gelu_tanh": GELU_TANH, "gelu_new": GELU_TANH,
                    "gelu_pytorch_tanh": GELU_TANH, "gelu_fast": GELU_TANH}
# A position table beyond this many pixels a side is a typo, not a model (and would not fit in memory).
MAX_IMG_SIZE = 2048


@dataclass(frozen=True)
class MAEConfig:
    """Hyper-parameters of one MAE ViT; defaults are facebookresearch/mae's presets."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    # The reference class defaults to 1e-5; every released preset passes 1e-6.
    norm_eps: float = 1e-6
    norm_pix_loss: bool = False
    mask_ratio: float = 0.75
    num_classes: int = 1000
    global_pool: bool = True
    # Stochastic depth of the encoder blocks, rising linearly to this rate (fine-tuning only).
    drop_path_rate: float = 0.0
    activation: str = GELU

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2 * self.in_chans

    @property
    def len_keep(self) -> int:
        return int(self.num_patches * (1 - self.mask_ratio))

    def replace(self, **changes) -> "MAEConfig":
        return dataclasses.replace(self, **changes)

    def check(self) -> "MAEConfig":
        """Itself, or a ValueError naming the first setting the twins cannot run."""
        for problem in _problems(self):
            raise ValueError(problem)
        return self


def _problems(cfg: MAEConfig):
    if not (isinstance(cfg.img_size, int) and cfg.patch_size <= cfg.img_size <= MAX_IMG_SIZE
            and cfg.img_size % cfg.patch_size == 0):
        yield (f"image size {cfg.img_size!r}: expected a multiple of the patch size {cfg.patch_size} "
               f"up to {MAX_IMG_SIZE}")
    if not (isinstance(cfg.norm_eps, float) and math.isfinite(cfg.norm_eps) and 0 < cfg.norm_eps < 1):
        yield f"layer_norm_eps {cfg.norm_eps!r}: expected a number between 0 and 1"
    if cfg.activation not in ACTIVATION_NAMES.values():
        yield f"activation {cfg.activation!r}: the twins compute {', '.join(sorted(ACTIVATION_NAMES))}"
    if not (isinstance(cfg.mask_ratio, float) and 0 <= cfg.mask_ratio < 1) or \
            not 1 <= int(cfg.num_patches * (1 - cfg.mask_ratio)) < cfg.num_patches:
        yield (f"mask ratio {cfg.mask_ratio!r}: expected a number in [0, 1) that keeps at least one of the "
               f"{cfg.num_patches} patches and removes at least one")
    if not isinstance(cfg.norm_pix_loss, bool):
        yield f"norm_pix_loss {cfg.norm_pix_loss!r}: expected true or false"


def drop_path_rates(cfg: MAEConfig) -> list[float]:
    """Per encoder block, rising linearly from 0 to `drop_path_rate` (timm's stochastic-depth rule)."""
    if cfg.depth == 1:
        return [0.0]
    return [cfg.drop_path_rate * i / (cfg.depth - 1) for i in range(cfg.depth)]


@dataclass(frozen=True)
class Preset:
    name: str
    task: str  # PRETRAIN (encoder + decoder) or CLASSIFY (fine-tuned ViT)
    config: MAEConfig


_BASE = MAEConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12)
_LARGE = MAEConfig(patch_size=16, embed_dim=1024, depth=24, num_heads=16)
_HUGE = MAEConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16)
# Small enough that a MindSpore graph compiles in seconds; same code paths as base.
_TINY = MAEConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                  decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, num_classes=10)

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("mae_vit_base_patch16", PRETRAIN, _BASE),
        Preset("mae_vit_large_patch16", PRETRAIN, _LARGE),
        Preset("mae_vit_huge_patch14", PRETRAIN, _HUGE),
        Preset("mae_vit_tiny_patch8", PRETRAIN, _TINY),
        Preset("vit_base_patch16", CLASSIFY, _BASE),
        Preset("vit_large_patch16", CLASSIFY, _LARGE),
        Preset("vit_huge_patch14", CLASSIFY, _HUGE),
        Preset("vit_tiny_patch8", CLASSIFY, _TINY),
    )
}

# Names other projects use for the same presets (the MindFormers model card says mae_vit_base_p16).
ALIASES: dict[str, str] = {
    "mae_vit_base_p16": "mae_vit_base_patch16",
    "mae_vit_large_p16": "mae_vit_large_patch16",
    "mae_vit_huge_p14": "mae_vit_huge_patch14",
}


def get_preset(name: str) -> Preset:
    canonical = ALIASES.get(name, name)
    if canonical not in PRESETS:
        known = ", ".join(sorted([*PRESETS, *ALIASES]))
        raise KeyError(f"unknown preset {name!r}; known presets: {known}")
    return PRESETS[canonical]


def get_config(name: str, **overrides) -> MAEConfig:
    return get_preset(name).config.replace(**overrides)


# --- the canonical parameter layout (facebookresearch/mae names and shapes) ---

def _block_shapes(prefix: str, dim: int, mlp_ratio: float) -> list[tuple[str, tuple[int, ...]]]:
    hidden = int(dim * mlp_ratio)
    return [
        (f"{prefix}.norm1.weight", (dim,)),
        (f"{prefix}.norm1.bias", (dim,)),
        (f"{prefix}.attn.qkv.weight", (3 * dim, dim)),
        (f"{prefix}.attn.qkv.bias", (3 * dim,)),
        (f"{prefix}.attn.proj.weight", (dim, dim)),
        (f"{prefix}.attn.proj.bias", (dim,)),
        (f"{prefix}.norm2.weight", (dim,)),
        (f"{prefix}.norm2.bias", (dim,)),
        (f"{prefix}.mlp.fc1.weight", (hidden, dim)),
        (f"{prefix}.mlp.fc1.bias", (hidden,)),
        (f"{prefix}.mlp.fc2.weight", (dim, hidden)),
        (f"{prefix}.mlp.fc2.bias", (dim,)),
    ]


def encoder_shapes(cfg: MAEConfig, final_norm: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    dim, p = cfg.embed_dim, cfg.patch_size
    shapes = [
        ("cls_token", (1, 1, dim)),
        ("pos_embed", (1, 1 + cfg.num_patches, dim)),
        ("patch_embed.proj.weight", (dim, cfg.in_chans, p, p)),
        ("patch_embed.proj.bias", (dim,)),
    ]
    for i in range(cfg.depth):
        shapes += _block_shapes(f"blocks.{i}", dim, cfg.mlp_ratio)
    if final_norm:
        shapes += [("norm.weight", (dim,)), ("norm.bias", (dim,))]
    return shapes


def decoder_shapes(cfg: MAEConfig) -> list[tuple[str, tuple[int, ...]]]:
    dim = cfg.decoder_embed_dim
    shapes = [
        ("mask_token", (1, 1, dim)),
        ("decoder_pos_embed", (1, 1 + cfg.num_patches, dim)),
        ("decoder_embed.weight", (dim, cfg.embed_dim)),
        ("decoder_embed.bias", (dim,)),
    ]
    for i in range(cfg.decoder_depth):
        shapes += _block_shapes(f"decoder_blocks.{i}", dim, cfg.mlp_ratio)
    shapes += [
        ("decoder_norm.weight", (dim,)),
        ("decoder_norm.bias", (dim,)),
        ("decoder_pred.weight", (cfg.patch_dim, dim)),
        ("decoder_pred.bias", (cfg.patch_dim,)),
    ]
    return shapes


def classifier_shapes(cfg: MAEConfig) -> list[tuple[str, tuple[int, ...]]]:
    dim = cfg.embed_dim
    shapes = encoder_shapes(cfg, final_norm=not cfg.global_pool)
    if cfg.global_pool:
        shapes += [("fc_norm.weight", (dim,)), ("fc_norm.bias", (dim,))]
    shapes += [("head.weight", (cfg.num_classes, dim)), ("head.bias", (cfg.num_classes,))]
    return shapes


# Checkpoint kinds as released (MAE-FACTS section 2).
ENCODER = "encoder"        # mae_pretrain_vit_*.pth
FULL = "full"              # mae_pretrain_vit_*_full.pth, mae_visualize_vit_*.pth
CLASSIFIER = "classifier"  # mae_finetuned_vit_*.pth
KINDS = (ENCODER, FULL, CLASSIFIER)

# Parameters that are fixed tables, never trained.
FROZEN = frozenset({"pos_embed", "decoder_pos_embed"})


def checkpoint_shapes(cfg: MAEConfig, kind: str) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every tensor a checkpoint of this kind holds."""
    if kind == ENCODER:
        return dict(encoder_shapes(cfg))
    if kind == FULL:
        return dict(encoder_shapes(cfg) + decoder_shapes(cfg))
    if kind == CLASSIFIER:
        return dict(classifier_shapes(cfg))
    raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {KINDS}")
