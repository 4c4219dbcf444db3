"""PyTorch twin of MAE ViT; its adapter is models/torch/twin.py."""
from .mae import MaskedAutoencoderViT
from .vit import VisionTransformer

__all__ = ["MaskedAutoencoderViT", "VisionTransformer"]
