"""Transformer building blocks of the MindSpore twin; mirrors models/torch/layers.py.

MindSpore's own LayerNorm names its parameters gamma/beta; the mapping layer
(convert/schemes.py) owns that difference. Everything else keeps the canonical names.
"""
from __future__ import annotations

import math

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, Uniform, XavierUniform, initializer

from ..config import GELU, GELU_TANH, drop_path_rates
from ..pos_embed import sincos_2d


class PatchProjection(nn.Cell):
    """Holds a Conv2d(C, D, k=p, stride=p)'s weight and bias, computed as a matmul.

    MindSpore's Conv2d of this shape is 100-300x slower than torch on CPU; with kernel ==
    stride the convolution is exactly a matmul of (c, p, q)-ordered patches with the weight
    viewed as (D, C*p*p). Parameter names and shapes stay those of the conv.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        fan_in = in_chans * patch_size * patch_size
        # Xavier over the (D, C*p*p) view, as the reference; the bias keeps torch's default.
        bound = math.sqrt(6.0 / (fan_in + embed_dim))
        self.weight = Parameter(initializer(Uniform(bound), (embed_dim, in_chans, patch_size, patch_size)))
        self.bias = Parameter(initializer(Uniform(1.0 / math.sqrt(fan_in)), (embed_dim,)))

    def construct(self, patches: Tensor) -> Tensor:
        weight = self.weight.reshape(self.weight.shape[0], -1)
        return ops.matmul(patches, weight.T) + self.bias


class PatchEmbed(nn.Cell):
    """Cuts an image into non-overlapping patches and projects each to `embed_dim`."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = PatchProjection(in_chans, embed_dim, patch_size)

    def construct(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        p = self.patch_size
        patches = x.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
        return self.proj(patches.reshape(n, (h // p) * (w // p), c * p * p))


def linear(in_features: int, out_features: int) -> nn.Dense:
    return nn.Dense(in_features, out_features, weight_init=XavierUniform(), bias_init="zeros")


class Attention(nn.Cell):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = linear(dim, dim * 3)
        self.proj = linear(dim, dim)

    def construct(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        heads = (batch, tokens, self.num_heads, dim // self.num_heads)
        # Split q | k | v along features and lay k out as (.., head_dim, tokens) in one transpose:
        # on CPU this is much cheaper than slicing a 5-D transposed qkv tensor.
        q, k, v = ops.split(self.qkv(x), dim, axis=-1)
        q = q.reshape(heads).transpose(0, 2, 1, 3)
        k = k.reshape(heads).transpose(0, 2, 3, 1)
        v = v.reshape(heads).transpose(0, 2, 1, 3)
        attn = ops.softmax(ops.matmul(q * self.scale, k), axis=-1)
        x = ops.matmul(attn, v)
        return self.proj(x.swapaxes(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Cell):
    def __init__(self, dim: int, hidden: int, activation: str = GELU):
        super().__init__()
        self.fc1 = linear(dim, hidden)
        self.act = nn.GELU(approximate=activation == GELU_TANH)  # the reference: exact (erf); MindSpore's default is tanh
        self.fc2 = linear(hidden, dim)

    def construct(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def layer_norm(dim: int, eps: float) -> nn.LayerNorm:
    return nn.LayerNorm((dim,), epsilon=eps)  # MindSpore's default epsilon is 1e-7


class DropPath(nn.Cell):
    """Stochastic depth: drops a residual branch for whole samples while training (timm's drop_path)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def construct(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        kept = ops.floor(keep + ops.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype))
        return x * kept / keep


class Block(nn.Cell):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, drop_path: float = 0.0,
                 activation: str = GELU):
        super().__init__()
        self.norm1 = layer_norm(dim, eps)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layer_norm(dim, eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), activation)

    def construct(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def frozen_table(table: np.ndarray) -> Parameter:
    """A fixed sin-cos table kept as a parameter so checkpoints carry it."""
    return Parameter(Tensor(table[None]), requires_grad=False)


def token(dim: int) -> Parameter:
    return Parameter(initializer(Normal(sigma=0.02), (1, 1, dim)))


class ViTEncoder(nn.Cell):
    """The ViT encoder's parts, on the model itself where their canonical names put them, and the
    steps both models take through them."""

    def __init__(self, config):
        super().__init__()
        self.config = cfg = config
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = token(cfg.embed_dim)
        self.pos_embed = frozen_table(sincos_2d(cfg.embed_dim, cfg.grid_size))
        self.blocks = nn.CellList(
            [Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, rate, cfg.activation)
             for rate in drop_path_rates(cfg)])

    def embed_patches(self, imgs: Tensor) -> Tensor:
        # embed patches, add pos embed w/o cls token
        return self.patch_embed(imgs) + self.pos_embed[:, 1:, :]

    def append_cls_token(self, x: Tensor) -> Tensor:
        cls_tokens = ops.broadcast_to(self.cls_token + self.pos_embed[:, :1, :], (x.shape[0], 1, x.shape[2]))
        return ops.concat([cls_tokens, x], 1)

    def apply_blocks(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x
