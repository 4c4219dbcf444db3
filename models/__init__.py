"""MAE ViT: framework-neutral configuration and presets; the twins live in .torch and .mindspore."""
from .config import (ALIASES, CLASSIFIER, CLASSIFY, ENCODER, FULL, KINDS, PRESETS, PRETRAIN, MAEConfig,
                     Preset, checkpoint_shapes, get_config, get_preset)

__all__ = ["ALIASES", "CLASSIFIER", "CLASSIFY", "ENCODER", "FULL", "KINDS", "PRESETS", "PRETRAIN",
           "MAEConfig", "Preset", "checkpoint_shapes", "get_config", "get_preset"]
