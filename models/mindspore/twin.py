"""The MindSpore twin's adapter: what maeconv does with a model, done with MindSpore (see
models/twins.py). Its parameters are canonical but for LayerNorm's gamma/beta."""
from __future__ import annotations

from typing import Mapping

import mindspore as ms
import numpy as np
from mindspore import nn

from ..config import CLASSIFY, PRETRAIN
from ..twins import GRAPH, MINDSPORE, Twin
from .graphs import GRAPHS
from .mae import MaskedAutoencoderViT
from .vit import VisionTransformer

MODEL_CLASSES = {PRETRAIN: MaskedAutoencoderViT, CLASSIFY: VisionTransformer}
# The NumPy dtype of each MindSpore parameter dtype the twins hold (ms.dtype_to_nptype is deprecated).
NUMPY_DTYPES = {ms.float32: np.float32, ms.float16: np.float16, ms.float64: np.float64}


class MindSporeTwin(Twin):
    name = MINDSPORE
    naming = "mindspore"
    label = "mindspore graph mode"

    def model_class(self, task: str):
        return MODEL_CLASSES[task]

    def set_mode(self, mode: str) -> None:
        ms.set_context(mode=ms.GRAPH_MODE if mode == GRAPH else ms.PYNATIVE_MODE)

    def parameters(self, model: nn.Cell) -> dict[str, ms.Parameter]:
        return dict(model.parameters_and_names())

    def to_numpy(self, value: ms.Parameter) -> np.ndarray:
        return value.asnumpy()

    def assign(self, model: nn.Cell, own: Mapping[str, np.ndarray]) -> None:
        parameters = self.parameters(model)
        for name, value in own.items():
            dtype = NUMPY_DTYPES[parameters[name].dtype]
            parameters[name].set_data(ms.Tensor(np.ascontiguousarray(value, dtype=dtype)))

    def run(self, model: nn.Cell, method: str, *args):
        outputs = getattr(model, method)(*(ms.Tensor(a) if isinstance(a, np.ndarray) else a for a in args))
        if isinstance(outputs, ms.Tensor):
            return outputs.asnumpy()
        return tuple(t.asnumpy() for t in outputs)

    def loss_gradients(self, model: nn.Cell, images: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
        params = model.trainable_params()

        def loss_fn(imgs, noise_):
            return model(imgs, None, noise_)[0]

        grads = ms.grad(loss_fn, grad_position=None, weights=params)(ms.Tensor(images), ms.Tensor(noise))
        return {p.name: g.asnumpy() for p, g in zip(params, grads)}

    def graph(self, model: nn.Cell, task: str) -> nn.Cell:
        return GRAPHS[task](model).set_train(False)

    def inference(self, model: nn.Cell, mode: str = GRAPH) -> nn.Cell:
        self.set_mode(mode)
        return model.set_train(False)

    def initialise_head(self, model: nn.Cell, std: float) -> None:
        from mindspore.common.initializer import TruncatedNormal, initializer

        model.head.weight.set_data(initializer(TruncatedNormal(sigma=std), model.head.weight.shape, ms.float32))


ADAPTER = MindSporeTwin
