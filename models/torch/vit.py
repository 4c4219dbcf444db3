"""The fine-tuned ViT classifier, PyTorch twin: facebookresearch/mae `models_vit.py` names."""
from __future__ import annotations

import torch
from torch import nn

from ..config import MAEConfig
from .layers import ViTEncoder, init_weights


class VisionTransformer(ViTEncoder):
    """ViT classifier: mean of patch tokens -> fc_norm -> head, or cls token -> norm -> head."""

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        cfg = config
        if cfg.global_pool:
            self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        else:
            self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        self.apply(init_weights)

    def forward_tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, 1 + L, D) encoder tokens; normed only without global pooling (fc_norm normalises
        the pooled vector instead), as timm's forward_features."""
        x = self.apply_blocks(self.append_cls_token(self.embed_patches(imgs)))
        return x if self.config.global_pool else self.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The pre-logits embedding: fc_norm of the mean patch token, or the normed cls token."""
        if self.config.global_pool:
            return self.fc_norm(tokens[:, 1:, :].mean(dim=1))
        return tokens[:, 0]

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_tokens(imgs))

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(imgs))
