"""Transformer building blocks of the PyTorch twin (facebookresearch/mae and timm names)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GELU, GELU_TANH, drop_path_rates
from ..pos_embed import sincos_2d


class PatchEmbed(nn.Module):
    """Cuts an image into non-overlapping patches and projects each to `embed_dim`."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str = GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if activation == GELU_TANH else "none")  # the reference: exact (erf)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch for whole samples while training (timm's drop_path)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        kept = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * kept / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, drop_path: float = 0.0,
                 activation: str = GELU):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def token(dim: int) -> nn.Parameter:
    return nn.Parameter(nn.init.normal_(torch.empty(1, 1, dim), std=0.02))


class ViTEncoder(nn.Module):
    """The ViT encoder's parts, on the model itself where their canonical names put them, and the
    steps both models take through them."""

    def __init__(self, config):
        super().__init__()
        self.config = cfg = config
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = token(cfg.embed_dim)
        self.pos_embed = frozen_table(sincos_2d(cfg.embed_dim, cfg.grid_size))
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, rate, cfg.activation)
            for rate in drop_path_rates(cfg))

    def embed_patches(self, imgs: torch.Tensor) -> torch.Tensor:
        # embed patches, add pos embed w/o cls token
        return self.patch_embed(imgs) + self.pos_embed[:, 1:, :]

    def append_cls_token(self, x: torch.Tensor) -> torch.Tensor:
        cls_tokens = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        return torch.cat([cls_tokens, x], dim=1)

    def apply_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


def frozen_table(table) -> nn.Parameter:
    """A fixed sin-cos table kept as a parameter (not a buffer) so checkpoints carry it."""
    return nn.Parameter(torch.from_numpy(table).unsqueeze(0), requires_grad=False)


def init_weights(module: nn.Module) -> None:
    """The reference initialisation: xavier-uniform Linear, zero bias, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, PatchEmbed):
        # Xavier over the conv viewed as a (D, C*p*p) Linear; the bias keeps torch's default.
        weight = module.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
