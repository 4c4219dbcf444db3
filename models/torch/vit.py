"""The fine-tuned ViT classifier, PyTorch twin: facebookresearch/mae `models_vit.py` names."""
from __future__ import annotations

import torch
from torch import nn

from ..config import MAEConfig
from ..pos_embed import sincos_2d
from .layers import Block, PatchEmbed, frozen_table, init_weights


class VisionTransformer(nn.Module):
    """ViT classifier: mean of patch tokens -> fc_norm -> head, or cls token -> norm -> head."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        cfg = config
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = frozen_table(sincos_2d(cfg.embed_dim, cfg.grid_size))
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps) for _ in range(cfg.depth))
        if cfg.global_pool:
            self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        else:
            self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls_tokens = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_tokens, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        if self.config.global_pool:
            return self.fc_norm(x[:, 1:, :].mean(dim=1))
        return self.norm(x)[:, 0]

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(imgs))
