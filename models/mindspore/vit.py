"""The fine-tuned ViT classifier, MindSpore twin; mirrors models/torch/vit.py."""
from __future__ import annotations

from mindspore import Tensor

from ..config import MAEConfig
from .layers import ViTEncoder, layer_norm, linear


class VisionTransformer(ViTEncoder):
    """ViT classifier: mean of patch tokens -> fc_norm -> head, or cls token -> norm -> head."""

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        cfg = config
        if cfg.global_pool:
            self.fc_norm = layer_norm(cfg.embed_dim, cfg.norm_eps)
        else:
            self.norm = layer_norm(cfg.embed_dim, cfg.norm_eps)
        self.head = linear(cfg.embed_dim, cfg.num_classes)

    def forward_tokens(self, imgs: Tensor) -> Tensor:
        """(N, 1 + L, D) encoder tokens; normed only without global pooling (fc_norm normalises
        the pooled vector instead), as timm's forward_features."""
        x = self.apply_blocks(self.append_cls_token(self.embed_patches(imgs)))
        if self.config.global_pool:
            return x
        return self.norm(x)

    def pool(self, tokens: Tensor) -> Tensor:
        """The pre-logits embedding: fc_norm of the mean patch token, or the normed cls token."""
        if self.config.global_pool:
            return self.fc_norm(tokens[:, 1:, :].mean(axis=1))
        return tokens[:, 0]

    def forward_features(self, imgs: Tensor) -> Tensor:
        return self.pool(self.forward_tokens(imgs))

    def construct(self, imgs: Tensor) -> Tensor:
        return self.head(self.forward_features(imgs))
