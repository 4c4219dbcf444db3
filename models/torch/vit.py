"""The fine-tuned ViT classifier, PyTorch twin: facebookresearch/mae `models_vit.py` names."""
from __future__ import annotations

import torch
from torch import nn

from ..config import MAEConfig
from .layers import build_encoder, init_weights


class VisionTransformer(nn.Module):
    """ViT classifier: mean of patch tokens -> fc_norm -> head, or cls token -> norm -> head."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        cfg = config
        build_encoder(self, cfg)
        if cfg.global_pool:
            self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        else:
            self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.initialize_weights()

    def initialize_weights(self) -> None:
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
