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


class HalfGraph(nn.Module):
    """A task graph in half precision (weights and arithmetic) with the float32 graph's inputs and
    outputs: the images are cast in and every output cast out. The noise is not cast, so the
    mask is exactly the float32 graph's (float16 would tie nearby noise values)."""

    def __init__(self, graph: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.task_graph = graph.to(dtype)  # not `graph`: a torch.fx module keeps its own graph there
        self.dtype = dtype

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None):
        images = images.to(self.dtype)
        outputs = self.task_graph(images) if noise is None else self.task_graph(images, noise)
        if isinstance(outputs, tuple):
            return tuple(output.float() for output in outputs)
        return outputs.float()
