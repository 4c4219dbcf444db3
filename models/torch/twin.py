"""The PyTorch twin's adapter: what maeconv does with a model, done with torch (see models/twins.py)."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..config import CLASSIFY, PRETRAIN
from ..twins import TORCH, Twin
from .graphs import GRAPHS
from .mae import MaskedAutoencoderViT
from .vit import VisionTransformer

MODEL_CLASSES = {PRETRAIN: MaskedAutoencoderViT, CLASSIFY: VisionTransformer}


def torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def numpy_to_torch(array: np.ndarray) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    if not array.flags.writeable:  # torch warns on read-only memory; the copy is one tensor at a time
        array = array.copy()
    return torch.from_numpy(array)


class TorchTwin(Twin):
    name = TORCH
    naming = "facebook"
    label = "torch eager"

    def model_class(self, task: str):
        return MODEL_CLASSES[task]

    def parameters(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return dict(model.state_dict(keep_vars=True))

    def to_numpy(self, value: torch.Tensor) -> np.ndarray:
        return torch_to_numpy(value)

    def assign(self, model: nn.Module, own: Mapping[str, np.ndarray]) -> None:
        parameters = self.parameters(model)
        with torch.no_grad():
            for name, value in own.items():
                parameters[name].copy_(numpy_to_torch(value))

    def run(self, model: nn.Module, method: str, *args):
        with torch.inference_mode():
            outputs = getattr(model, method)(*(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args))
        if isinstance(outputs, torch.Tensor):
            return torch_to_numpy(outputs)
        return tuple(torch_to_numpy(t) for t in outputs)

    def loss_gradients(self, model: nn.Module, images: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
        model.zero_grad()
        model(torch.from_numpy(images), None, torch.from_numpy(noise))[0].backward()
        return {name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.requires_grad}

    def graph(self, model: nn.Module, task: str) -> nn.Module:
        return GRAPHS[task](model).eval()

    def inference(self, model: nn.Module, mode: str = "graph") -> nn.Module:
        return model.eval()

    def initialise_head(self, model: nn.Module, std: float) -> None:
        with torch.no_grad():
            nn.init.trunc_normal_(model.head.weight, std=std, a=-2.0, b=2.0)


ADAPTER = TorchTwin
