"""The MindSpore twin as one cell per task; mirrors models/torch/graphs.py.

Each takes the images first, then the noise where the task masks; nothing random happens
inside, so an exported MindIR computes the same mask for the same noise on every run.
"""
from __future__ import annotations

from mindspore import Tensor, nn, ops
from mindspore.common import dtype as mstype


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


class HalfGraph(nn.Cell):
    """Mirrors models/torch/graphs.py's HalfGraph: weights and arithmetic in `dtype`, the images
    cast in, every output cast out to float32, the noise left in float32."""

    def __init__(self, graph: nn.Cell, dtype):
        super().__init__()
        for param in graph.get_parameters():
            param.set_dtype(dtype)  # set_data would cast the new data back to the old dtype
        self.task_graph = graph
        self.dtype = dtype

    def construct(self, images: Tensor, noise: Tensor = None):
        images = ops.cast(images, self.dtype)
        outputs = self.task_graph(images) if noise is None else self.task_graph(images, noise)
        if isinstance(outputs, tuple):
            return tuple([ops.cast(output, mstype.float32) for output in outputs])
        return ops.cast(outputs, mstype.float32)
