"""A float64 NumPy MAE, written from MAE-FACTS: the ground truth both twins are checked against.

Plain functions over a canonical state dict (facebookresearch/mae names); no framework.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from scipy.special import erf

from .config import GELU, GELU_TANH, MAEConfig

State = Mapping[str, np.ndarray]


def patchify(imgs: np.ndarray, p: int) -> np.ndarray:
    """(N, C, H, W) -> (N, L, p*p*C), each patch laid out (row_in_patch, col_in_patch, channel)."""
    n, c, h, w = imgs.shape
    g, k = h // p, w // p
    x = imgs.reshape(n, c, g, p, k, p)
    return np.einsum("nchpwq->nhwpqc", x).reshape(n, g * k, p * p * c)


def unpatchify(x: np.ndarray, p: int, in_chans: int = 3) -> np.ndarray:
    n, length, _ = x.shape
    g = int(math.isqrt(length))
    x = x.reshape(n, g, g, p, p, in_chans)
    return np.einsum("nhwpqc->nchpwq", x).reshape(n, in_chans, g * p, g * p)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def linear(x: np.ndarray, sd: State, name: str) -> np.ndarray:
    return x @ np.asarray(sd[f"{name}.weight"], np.float64).T + sd[f"{name}.bias"]


def gelu(x: np.ndarray, activation: str = GELU) -> np.ndarray:
    if activation == GELU_TANH:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention(x: np.ndarray, sd: State, name: str, num_heads: int) -> np.ndarray:
    n, t, d = x.shape
    qkv = linear(x, sd, f"{name}.qkv").reshape(n, t, 3, num_heads, d // num_heads)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    attn = softmax(q @ k.swapaxes(-1, -2) * (d // num_heads) ** -0.5)
    return linear((attn @ v).transpose(0, 2, 1, 3).reshape(n, t, d), sd, f"{name}.proj")


def block(x: np.ndarray, sd: State, name: str, num_heads: int, eps: float, activation: str = GELU) -> np.ndarray:
    def norm(h, which):
        return layer_norm(h, sd[f"{name}.{which}.weight"], sd[f"{name}.{which}.bias"], eps)

    x = x + attention(norm(x, "norm1"), sd, f"{name}.attn", num_heads)
    mlp = linear(gelu(linear(norm(x, "norm2"), sd, f"{name}.mlp.fc1"), activation), sd, f"{name}.mlp.fc2")
    return x + mlp


def random_masking(x: np.ndarray, noise: np.ndarray, len_keep: int):
    ids_shuffle = np.argsort(noise, axis=1, kind="stable")
    ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
    ids_keep = ids_shuffle[:, :len_keep]
    x_kept = np.take_along_axis(x, ids_keep[..., None], axis=1)
    mask = np.ones(noise.shape)
    mask[:, :len_keep] = 0
    mask = np.take_along_axis(mask, ids_restore, axis=1)
    return x_kept, mask, ids_restore


def patch_embed(imgs: np.ndarray, sd: State, cfg: MAEConfig) -> np.ndarray:
    # The conv with kernel = stride = p is a matmul over (c, p, q)-ordered patches.
    n, c, h, w = imgs.shape
    p = cfg.patch_size
    g, k = h // p, w // p
    patches = imgs.reshape(n, c, g, p, k, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, g * k, -1)
    weight = np.asarray(sd["patch_embed.proj.weight"], np.float64).reshape(cfg.embed_dim, -1)
    return patches @ weight.T + sd["patch_embed.proj.bias"]


def prepend_cls(x, sd: State):
    cls = sd["cls_token"] + sd["pos_embed"][:, :1, :]
    return np.concatenate([np.broadcast_to(cls, (x.shape[0], 1, x.shape[2])), x], axis=1)


def encoder_blocks(x, sd: State, cfg: MAEConfig):
    for i in range(cfg.depth):
        x = block(x, sd, f"blocks.{i}", cfg.num_heads, cfg.norm_eps, cfg.activation)
    return x


def forward_encoder(imgs, sd: State, cfg: MAEConfig, noise):
    x = patch_embed(imgs, sd, cfg) + sd["pos_embed"][:, 1:, :]
    x, mask, ids_restore = random_masking(x, noise, cfg.len_keep)
    x = encoder_blocks(prepend_cls(x, sd), sd, cfg)
    x = layer_norm(x, sd["norm.weight"], sd["norm.bias"], cfg.norm_eps)
    return x, mask, ids_restore


def forward_decoder(latent, ids_restore, sd: State, cfg: MAEConfig):
    x = linear(latent, sd, "decoder_embed")
    n, t, d = x.shape
    mask_tokens = np.broadcast_to(sd["mask_token"], (n, ids_restore.shape[1] + 1 - t, d))
    tokens = np.concatenate([x[:, 1:, :], mask_tokens], axis=1)
    tokens = np.take_along_axis(tokens, ids_restore[..., None], axis=1)
    x = np.concatenate([x[:, :1, :], tokens], axis=1) + sd["decoder_pos_embed"]
    for i in range(cfg.decoder_depth):
        x = block(x, sd, f"decoder_blocks.{i}", cfg.decoder_num_heads, cfg.norm_eps, cfg.activation)
    x = layer_norm(x, sd["decoder_norm.weight"], sd["decoder_norm.bias"], cfg.norm_eps)
    return linear(x, sd, "decoder_pred")[:, 1:, :]


def forward_loss(imgs, pred, mask, cfg: MAEConfig):
    target = patchify(imgs, cfg.patch_size)
    if cfg.norm_pix_loss:
        mean = target.mean(-1, keepdims=True)
        var = target.var(-1, ddof=1, keepdims=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(-1)
    return (loss * mask).sum() / mask.sum()


def mae_forward(imgs: np.ndarray, sd: State, cfg: MAEConfig, noise: np.ndarray, encoder_only: bool = False) -> dict:
    """The pretraining forward pass in float64: loss, pred, mask, ids_restore, latent
    (only the last three with `encoder_only`)."""
    imgs = np.asarray(imgs, np.float64)
    sd = {name: np.asarray(value, np.float64) for name, value in sd.items()}
    latent, mask, ids_restore = forward_encoder(imgs, sd, cfg, noise)
    if encoder_only:
        return {"latent": latent, "mask": mask, "ids_restore": ids_restore}
    pred = forward_decoder(latent, ids_restore, sd, cfg)
    loss = forward_loss(imgs, pred, mask, cfg)
    return {"loss": loss, "pred": pred, "mask": mask, "ids_restore": ids_restore, "latent": latent}


def features_forward(imgs: np.ndarray, sd: State, cfg: MAEConfig) -> dict:
    """The unmasked encoder in float64: `tokens` (N, 1 + L, D) and the pooled embedding.

    A global-pool classifier (with `fc_norm`) keeps its tokens un-normed and pools
    fc_norm(mean of patch tokens); every other encoder norms its tokens and pools the cls token.
    """
    imgs = np.asarray(imgs, np.float64)
    sd = {name: np.asarray(value, np.float64) for name, value in sd.items()}
    x = patch_embed(imgs, sd, cfg) + sd["pos_embed"][:, 1:, :]
    x = encoder_blocks(prepend_cls(x, sd), sd, cfg)
    if "fc_norm.weight" in sd:
        pooled = layer_norm(x[:, 1:, :].mean(1), sd["fc_norm.weight"], sd["fc_norm.bias"], cfg.norm_eps)
        return {"tokens": x, "pooled": pooled}
    x = layer_norm(x, sd["norm.weight"], sd["norm.bias"], cfg.norm_eps)
    return {"tokens": x, "pooled": x[:, 0]}


def classifier_forward(imgs: np.ndarray, sd: State, cfg: MAEConfig) -> np.ndarray:
    """Logits of the fine-tuned ViT in float64 (global pool + fc_norm, or cls token + norm)."""
    pooled = features_forward(imgs, sd, cfg)["pooled"]
    return linear(pooled, sd, "head")  # linear() computes in float64
