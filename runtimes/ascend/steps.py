"""The compiled training step: loss, gradients, all-reduce across ranks, clipping, AdamW.

One cell per kind of step so that each compiles to a single graph: `TrainStep` (forward,
backward and update together), or with gradient accumulation `AccumulateStep` on every
micro-batch and `ApplyStep` once per optimizer step.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops


class PretrainLoss(nn.Cell):
    """MAE reconstruction loss, the mask given by `noise` (drawn on the host, so it is reproducible)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, images, noise):
        return self.model(images, None, noise)[0]


class ClassifierLoss(nn.Cell):
    """Cross-entropy against soft targets (mixup/cutmix and label smoothing already applied)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, images, targets):
        logits = self.model(images)
        return (-(targets * ops.log_softmax(logits, -1)).sum(-1)).mean()


class ScaledLoss(nn.Cell):
    """The loss times the current loss scale, for fp16/bf16 training."""

    def __init__(self, loss_net, scaler):
        super().__init__()
        self.loss_net = loss_net
        self.scaler = scaler

    def construct(self, images, aux):
        return self.scaler.scale(self.loss_net(images, aux))


class _Update(nn.Cell):
    """Shared tail of a step: average across ranks, unscale, clip, and apply AdamW if finite."""

    def __init__(self, optimizer, reducer=None, clip_grad=None, scaler=None):
        super().__init__()
        self.optimizer = optimizer
        self.reducer = reducer
        self.use_reducer = reducer is not None
        self.clip_grad = clip_grad
        self.scaler = scaler
        self.use_scaler = scaler is not None

    def update(self, grads, lr):
        if self.use_reducer:
            grads = self.reducer(grads)
        if self.use_scaler:
            grads = self.scaler.unscale(grads)
            finite = ms.amp.all_finite(grads)
            self.scaler.adjust(finite)
            if self.clip_grad is not None:
                grads = ops.clip_by_global_norm(grads, self.clip_grad)
            if finite:
                self.optimizer(grads, lr)
            return finite
        if self.clip_grad is not None:
            grads = ops.clip_by_global_norm(grads, self.clip_grad)
        return ops.depend(ops.ones((), ms.bool_), self.optimizer(grads, lr))


class TrainStep(_Update):
    """Returns the loss averaged over all ranks."""

    def __init__(self, loss_net, optimizer, reducer=None, clip_grad=None, scaler=None):
        super().__init__(optimizer, reducer, clip_grad, scaler)
        self.loss_net = ScaledLoss(loss_net, scaler) if scaler is not None else loss_net
        self.grad_fn = ops.value_and_grad(self.loss_net, None, optimizer.parameters)
        self.loss_mean = LossMean(reducer is not None)

    def construct(self, images, aux, lr):
        loss, grads = self.grad_fn(images, aux)
        if self.use_scaler:
            loss = self.scaler.unscale(loss)
        finite = self.update(grads, lr)
        return ops.depend(self.loss_mean(loss), finite)


class LossMean(nn.Cell):
    """The mean of a scalar over all ranks (identity in a single process)."""

    def __init__(self, distributed: bool):
        super().__init__()
        self.distributed = distributed
        if distributed:
            from mindspore.communication import get_group_size

            self.all_reduce = ops.AllReduce()
            self.inverse = 1.0 / get_group_size()

    def construct(self, value):
        if self.distributed:
            return self.all_reduce(value) * self.inverse
        return value


class AccumulateStep(nn.Cell):
    """Adds one micro-batch's gradients to the accumulators."""

    def __init__(self, loss_net, optimizer, accumulators, scaler=None, distributed=False):
        super().__init__()
        self.loss_mean = LossMean(distributed)
        self.loss_net = ScaledLoss(loss_net, scaler) if scaler is not None else loss_net
        self.scaler = scaler
        self.use_scaler = scaler is not None
        self.grad_fn = ops.value_and_grad(self.loss_net, None, optimizer.parameters)
        self.accumulators = accumulators
        self.hyper_map = ops.HyperMap()

    def construct(self, images, aux):
        loss, grads = self.grad_fn(images, aux)
        if self.use_scaler:
            loss = self.scaler.unscale(loss)
        done = self.hyper_map(ops.assign_add, self.accumulators, grads)
        return ops.depend(self.loss_mean(loss), done)


class ApplyStep(_Update):
    """Applies the mean of the accumulated gradients, then clears the accumulators."""

    def __init__(self, optimizer, accumulators, accum_iter, reducer=None, clip_grad=None, scaler=None):
        super().__init__(optimizer, reducer, clip_grad, scaler)
        self.accumulators = accumulators
        self.inverse = 1.0 / accum_iter
        self.hyper_map = ops.HyperMap()

    def construct(self, lr):
        grads = self.hyper_map(ops.partial(ops.mul, self.inverse), self.accumulators)
        finite = self.update(grads, lr)
        cleared = self.hyper_map(ops.assign, self.accumulators, self.hyper_map(ops.zeros_like, self.accumulators))
        return ops.depend(finite, cleared)


def accumulators_for(params) -> ParameterTuple:
    return ParameterTuple([Parameter(Tensor(np.zeros(p.shape, np.float32)), name=f"train.grad_sum.{p.name}",
                                     requires_grad=False) for p in params])


class FromRank0(nn.Cell):
    """Overwrites the parameters with rank 0's values (a broadcast), e.g. after rank 0 alone
    loaded a checkpoint."""

    def __init__(self, params):
        super().__init__()
        self.params = ParameterTuple(params)
        self.broadcast = ops.Broadcast(0)
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(ops.assign, self.params, self.broadcast(self.params))
