"""The MindSpore twin as one cell per task; mirrors models/torch/graphs.py.

Each takes the images first, then the noise where the task masks; nothing random happens
inside, so an exported MindIR computes the same mask for the same noise on every run.
"""
from __future__ import annotations

from mindspore import Tensor, nn


class PretrainGraph(nn.Cell):
    """(images, noise) -> (loss, pred, mask)."""

    def __init__(self, model: nn.Cell):
        super().__init__()
        self.model = model

    def construct(self, images: Tensor, noise: Tensor):
        loss, pred, mask, _, _ = self.model(images, None, noise)
        return loss, pred, mask


class FeaturesGraph(nn.Cell):
    """images -> (tokens, pooled): the encoder on every patch, no masking."""

    def __init__(self, model: nn.Cell):
        super().__init__()
        self.model = model

    def construct(self, images: Tensor):
        tokens = self.model.forward_tokens(images)
        return tokens, self.model.pool(tokens)


class ClassifyGraph(nn.Cell):
    """images -> logits."""

    def __init__(self, model: nn.Cell):
        super().__init__()
        self.model = model

    def construct(self, images: Tensor):
        return self.model(images)


GRAPHS = {"pretrain": PretrainGraph, "features": FeaturesGraph, "classify": ClassifyGraph}
