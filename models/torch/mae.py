"""The MAE pretraining model, PyTorch twin: facebookresearch/mae `models_mae.py`, names and all."""
from __future__ import annotations

import torch
from torch import nn

from ..config import MAEConfig
from ..pos_embed import sincos_2d
from .layers import Block, ViTEncoder, frozen_table, init_weights, token


class MaskedAutoencoderViT(ViTEncoder):
    """Masked autoencoder with a ViT encoder and a light transformer decoder."""

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        cfg = config
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)

        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
        self.mask_token = token(cfg.decoder_embed_dim)
        self.decoder_pos_embed = frozen_table(sincos_2d(cfg.decoder_embed_dim, cfg.grid_size))
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.norm_eps, 0.0, cfg.activation)
            for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(cfg.decoder_embed_dim, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(cfg.decoder_embed_dim, cfg.patch_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        self.apply(init_weights)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, L, p*p*3), each patch channel-last."""
        p = self.config.patch_size
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*3) -> (N, 3, H, W)."""
        p, c, g = self.config.patch_size, self.config.in_chans, self.config.grid_size
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Keeps the patches with the smallest noise; mask is 0 for kept, 1 for removed."""
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)  # noise in [0, 1]
        # sort noise for each sample: ascend, small is keep, large is remove
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        # keep the first subset
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        # generate the binary mask: 0 is keep, 1 is remove, unshuffled to the patch order
        mask = torch.ones(n, length, device=x.device, dtype=x.dtype)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        x = self.embed_patches(imgs)
        # masking: length -> length * (1 - mask_ratio)
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        x = self.append_cls_token(x)
        # apply Transformer blocks
        x = self.apply_blocks(x)
        return self.norm(x), mask, ids_restore

    def forward_tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """The encoder on every patch, no masking: (N, 1 + L, D) after the final norm."""
        return self.norm(self.apply_blocks(self.append_cls_token(self.embed_patches(imgs))))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image embedding of a pretrained encoder: its normed cls token, as timm's
        `vit_*.mae` models and MAE linear probing use it."""
        return tokens[:, 0]

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        # embed tokens
        x = self.decoder_embed(x)
        # append mask tokens to sequence, unshuffle, then add pos embed
        n, tokens, dim = x.shape
        mask_tokens = self.mask_token.expand(n, ids_restore.shape[1] + 1 - tokens, -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # no cls token
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed  # append cls token
        # apply Transformer blocks
        for blk in self.decoder_blocks:
            x = blk(x)
        # predictor projection, then remove cls token
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the removed patches only."""
        target = self.patchify(imgs)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as the reference
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None):
        """Returns (loss, pred, mask, ids_restore, latent); `noise` (N, L) fixes the mask."""
        if mask_ratio is None:
            mask_ratio = self.config.mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask, ids_restore, latent
