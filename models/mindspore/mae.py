"""The MAE pretraining model, MindSpore twin; mirrors models/torch/mae.py method for method.

Runs in graph mode (mode 0) and PyNative. Random ops stay outside the math: pass `noise`
to fix the mask, as exported graphs and parity checks do.
"""
from __future__ import annotations

from mindspore import Tensor, nn, ops

from ..config import MAEConfig
from ..pos_embed import sincos_2d
from .layers import Block, ViTEncoder, frozen_table, layer_norm, linear, token


class MaskedAutoencoderViT(ViTEncoder):
    """Masked autoencoder with a ViT encoder and a light transformer decoder."""

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        cfg = config
        self.norm = layer_norm(cfg.embed_dim, cfg.norm_eps)

        self.decoder_embed = linear(cfg.embed_dim, cfg.decoder_embed_dim)
        self.mask_token = token(cfg.decoder_embed_dim)
        self.decoder_pos_embed = frozen_table(sincos_2d(cfg.decoder_embed_dim, cfg.grid_size))
        self.decoder_blocks = nn.CellList(
            [Block(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.norm_eps, 0.0, cfg.activation)
             for _ in range(cfg.decoder_depth)])
        self.decoder_norm = layer_norm(cfg.decoder_embed_dim, cfg.norm_eps)
        self.decoder_pred = linear(cfg.decoder_embed_dim, cfg.patch_dim)

    def patchify(self, imgs: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, L, p*p*3), each patch channel-last."""
        p = self.config.patch_size
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 3, 5, 1)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(N, L, p*p*3) -> (N, 3, H, W)."""
        p, c, g = self.config.patch_size, self.config.in_chans, self.config.grid_size
        x = x.reshape(x.shape[0], g, g, p, p, c).transpose(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], c, g * p, g * p)

    def random_masking(self, x: Tensor, mask_ratio: float, noise: Tensor = None):
        """Keeps the patches with the smallest noise; mask is 0 for kept, 1 for removed."""
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = ops.rand(n, length, dtype=x.dtype)  # noise in [0, 1]
        # sort noise for each sample: ascend, small is keep, large is remove
        ids_shuffle = ops.argsort(noise, axis=1)
        ids_restore = ops.argsort(ids_shuffle, axis=1)
        # keep the first subset
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = ops.gather_elements(x, 1, ops.broadcast_to(ids_keep.expand_dims(-1), (n, len_keep, dim)))
        # generate the binary mask: 0 is keep, 1 is remove, unshuffled to the patch order
        mask = ops.concat([ops.zeros((n, len_keep), x.dtype), ops.ones((n, length - len_keep), x.dtype)], 1)
        mask = ops.gather_elements(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def forward_encoder(self, imgs: Tensor, mask_ratio: float, noise: Tensor = None):
        x = self.embed_patches(imgs)
        # masking: length -> length * (1 - mask_ratio)
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        x = self.append_cls_token(x)
        # apply Transformer blocks
        x = self.apply_blocks(x)
        return self.norm(x), mask, ids_restore

    def forward_tokens(self, imgs: Tensor) -> Tensor:
        """The encoder on every patch, no masking: (N, 1 + L, D) after the final norm."""
        return self.norm(self.apply_blocks(self.append_cls_token(self.embed_patches(imgs))))

    def pool(self, tokens: Tensor) -> Tensor:
        """The image embedding of a pretrained encoder: its normed cls token, as timm's
        `vit_*.mae` models and MAE linear probing use it."""
        return tokens[:, 0]

    def forward_decoder(self, x: Tensor, ids_restore: Tensor) -> Tensor:
        # embed tokens
        x = self.decoder_embed(x)
        # append mask tokens to sequence, unshuffle, then add pos embed
        n, tokens, dim = x.shape
        mask_tokens = ops.broadcast_to(self.mask_token, (n, ids_restore.shape[1] + 1 - tokens, dim))
        x_ = ops.concat([x[:, 1:, :], mask_tokens], 1)  # no cls token
        x_ = ops.gather_elements(x_, 1, ops.broadcast_to(ids_restore.expand_dims(-1), x_.shape))
        x = ops.concat([x[:, :1, :], x_], 1) + self.decoder_pos_embed  # append cls token
        # apply Transformer blocks
        for blk in self.decoder_blocks:
            x = blk(x)
        # predictor projection, then remove cls token
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error per patch, averaged over the removed patches only."""
        target = self.patchify(imgs)
        if self.config.norm_pix_loss:
            mean = target.mean(axis=-1, keep_dims=True)
            centered = target - mean
            # unbiased, as the reference; by hand, as Tensor.var branches on ddof, a Switch in MindIR
            var = (centered * centered).sum(axis=-1, keepdims=True) / (target.shape[-1] - 1)
            target = centered / ops.sqrt(var + 1.0e-6)
        loss = ((pred - target) ** 2).mean(axis=-1)
        return (loss * mask).sum() / mask.sum()

    def construct(self, imgs: Tensor, mask_ratio: float = None, noise: Tensor = None):
        """Returns (loss, pred, mask, ids_restore, latent); `noise` (N, L) fixes the mask."""
        if mask_ratio is None:
            mask_ratio = self.config.mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask, ids_restore, latent
