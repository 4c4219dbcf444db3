"""AdamW as torch.optim.AdamW computes it, parameter groups as the MAE reference builds them, and
the learning-rate schedule (per-iteration linear warm-up, then half-cycle cosine).

MindSpore's nn.AdamWeightDecay leaves out Adam's bias correction, which changes the first
thousands of steps; this optimizer keeps it. Its moments are named `adam_m.<parameter>` and
`adam_v.<parameter>`, the names MindSpore training checkpoints use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

# Parameters that fine-tuning never decays (the reference ViT's no_weight_decay()).
NO_WEIGHT_DECAY = frozenset({"pos_embed", "cls_token", "dist_token"})


def learning_rate(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """The reference schedule at a fractional epoch: linear warm-up, then half-cycle cosine to min_lr."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def scaled_lr(blr: float, global_batch: int) -> float:
    """The linear scaling rule: lr = base lr x effective batch / 256."""
    return blr * global_batch / 256


def layer_id(name: str, depth: int) -> int:
    """Embeddings 0, block i -> i + 1, everything after the blocks depth + 1."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


@dataclass(frozen=True)
class Group:
    """Per-parameter optimisation settings."""

    name: str
    weight_decay: float
    lr_scale: float


def parameter_groups(named_shapes: list[tuple[str, tuple[int, ...]]], weight_decay: float,
                     layer_decay: float | None = None, depth: int = 0,
                     no_weight_decay: frozenset[str] = frozenset()) -> list[Group]:
    """Settings for each trainable parameter (canonical names): no decay on biases, 1-D tensors and
    `no_weight_decay`; with `layer_decay`, lr x decay ** (depth + 1 - layer_id)."""
    groups = []
    for name, shape in named_shapes:
        decay = 0.0 if len(shape) == 1 or name.endswith(".bias") or name in no_weight_decay else weight_decay
        scale = 1.0 if layer_decay is None else layer_decay ** (depth + 1 - layer_id(name, depth))
        groups.append(Group(name, decay, scale))
    return groups


class AdamW(nn.Cell):
    """torch.optim.AdamW's update, with per-parameter weight decay and lr scale (`groups`, in the
    order of `params`). `construct(grads, lr)` applies one step at learning rate `lr`."""

    def __init__(self, params, groups: list[Group], betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__()
        self.parameters = ParameterTuple(params)
        # Checkpoint names, fixed here: MindSpore prefixes .name when a cell is nested in another.
        self.state_names = ([f"adam_m.{g.name}" for g in groups] + [f"adam_v.{g.name}" for g in groups]
                            + ["train.optimizer_step"])
        self.moments1 = ParameterTuple(
            [Parameter(Tensor(np.zeros(p.shape, np.float32)), name=f"adam_m.{g.name}") for p, g in zip(params, groups)])
        self.moments2 = ParameterTuple(
            [Parameter(Tensor(np.zeros(p.shape, np.float32)), name=f"adam_v.{g.name}") for p, g in zip(params, groups)])
        self.step = Parameter(Tensor(np.zeros((1,), np.int32)), name="train.optimizer_step", requires_grad=False)
        self.weight_decays = tuple(Tensor(np.float32(g.weight_decay)) for g in groups)
        self.lr_scales = tuple(Tensor(np.float32(g.lr_scale)) for g in groups)
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), float(eps)
        self.hyper_map = ops.HyperMap()
        self.adam = ops.AdamWeightDecay()

    def construct(self, grads, lr):
        step = self.step + 1
        ops.assign(self.step, step)
        t = step.reshape(()).astype(ms.float32)
        correction1 = 1.0 - ops.pow(self.beta1, t)
        correction2_sqrt = ops.sqrt(1.0 - ops.pow(self.beta2, t))
        # MindSpore's fused AdamWeightDecay kernel has no bias correction; folding it into the
        # step size, epsilon and decay gives torch's update exactly:
        #   p - lr*wd*p - lr/c1 * m / (sqrt(v)/sqrt(c2) + eps)
        # = p - lr' * (m / (sqrt(v) + eps*sqrt(c2)) + wd' * p),  lr' = lr*sqrt(c2)/c1,  wd' = wd*c1/sqrt(c2)
        step_size = lr * correction2_sqrt / correction1
        eps = self.eps * correction2_sqrt
        decay_factor = correction1 / correction2_sqrt
        update = ops.partial(_fused_update, self.adam, self.beta1, self.beta2, step_size, eps, decay_factor)
        return self.hyper_map(update, self.parameters, self.moments1, self.moments2, grads,
                              self.weight_decays, self.lr_scales)

    def state(self) -> dict:
        """Checkpoint name -> Parameter of everything the optimizer carries between steps."""
        return dict(zip(self.state_names, (*self.moments1, *self.moments2, self.step)))


def _fused_update(adam, beta1, beta2, step_size, eps, decay_factor, param, m, v, grad, weight_decay, lr_scale):
    return adam(param, m, v, step_size * lr_scale, beta1, beta2, eps, weight_decay * decay_factor, grad)
