"""PyTorch twin of MAE ViT."""
from ..config import CLASSIFY, PRETRAIN, MAEConfig, get_preset
from .mae import MaskedAutoencoderViT
from .vit import VisionTransformer

MODEL_CLASSES = {PRETRAIN: MaskedAutoencoderViT, CLASSIFY: VisionTransformer}


def create_model(name: str, **overrides):
    """A freshly initialised model of the preset `name`; keyword arguments override its config."""
    preset = get_preset(name)
    return MODEL_CLASSES[preset.task](preset.config.replace(**overrides))


__all__ = ["MODEL_CLASSES", "MAEConfig", "MaskedAutoencoderViT", "VisionTransformer", "create_model"]
