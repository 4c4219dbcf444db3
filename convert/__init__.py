"""Checkpoint conversion between naming schemes and formats, and the Python API."""
from .api import AutoConfig, AutoModel, from_pretrained

__all__ = ["AutoConfig", "AutoModel", "from_pretrained"]
