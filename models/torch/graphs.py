"""The PyTorch twin as one module per task, with the exported graphs' inputs and outputs.

Each takes the images first, then the noise where the task masks; nothing random happens
inside, so an exported graph computes the same mask for the same noise on every run.
"""
from __future__ import annotations

import torch
from torch import nn


class PretrainGraph(nn.Module):
    """(images, noise) -> (loss, pred, mask)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, noise: torch.Tensor):
        loss, pred, mask, _, _ = self.model(images, None, noise)
        return loss, pred, mask


class FeaturesGraph(nn.Module):
    """images -> (tokens, pooled): the encoder on every patch, no masking."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        tokens = self.model.forward_tokens(images)
        return tokens, self.model.pool(tokens)


class ClassifyGraph(nn.Module):
    """images -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model(images)


GRAPHS = {"pretrain": PretrainGraph, "features": FeaturesGraph, "classify": ClassifyGraph}
