"""One epoch of training, as facebookresearch/mae's engine_pretrain.py runs it: per-iteration lr,
gradient accumulation, the mask noise (or mixup) drawn on the host from (seed, epoch, batch)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ...errors import MaeconvError
from .checkpointing import Position
from .optim import learning_rate


@dataclass
class Step:
    """The compiled step cells: `train(images, aux, lr) -> loss`, or with accumulation
    `accumulate(images, aux) -> loss` per micro-batch and `apply(lr)` once per optimizer step."""

    train: Callable | None
    accumulate: Callable | None = None
    apply: Callable | None = None
    accum_iter: int = 1
    # Several ranks: called once, after the step compiled and before its first collective, with the
    # compile time: every rank waits there for the others (a late machine must not run into the
    # collective timeout).
    meet: Callable[[float], None] | None = None
    started: bool = False

    def start(self, images, aux, lr) -> None:
        """Compiles the step cells for these inputs (graph mode), then meets the other ranks."""
        self.started = True
        if self.meet is None:
            return
        import mindspore as ms

        begin = time.perf_counter()
        if ms.get_context("mode") == ms.GRAPH_MODE:
            if self.accum_iter == 1:
                self.train.compile(images, aux, lr)
            else:
                self.accumulate.compile(images, aux)
                self.apply.compile(lr)
        self.meet(time.perf_counter() - begin)


@dataclass
class Schedule:
    base_lr: float
    min_lr: float
    warmup_epochs: float
    epochs: int
    steps_per_epoch: int   # batches in an epoch (for the fractional epoch of the lr schedule)
    usable: int            # batches per epoch that make whole optimizer steps
    total_steps: int

    def lr(self, position: Position) -> float:
        epoch = position.epoch + position.epoch_batch / self.steps_per_epoch
        return learning_rate(epoch, self.base_lr, self.min_lr, self.warmup_epochs, self.epochs)


# (images, labels, [seed, epoch, batch]) -> the step's images and second input: the mask noise,
# or mixup's mixed images and soft targets.
Inputs = Callable[[np.ndarray, np.ndarray, list], tuple[np.ndarray, np.ndarray]]


def train_one_epoch(step: Step, batches: Iterator, inputs: Inputs, position: Position, schedule: Schedule,
                    seed: int, samples: Callable[[int], None]) -> Iterator[tuple[float, float]]:
    """Runs the batches of the current epoch from `position` on, advancing it, and yields
    (loss, lr) after each optimizer step."""
    from mindspore import Tensor

    epoch, lr, losses = position.epoch, 0.0, []
    while position.epoch == epoch and position.step < schedule.total_steps:
        images, labels = next(batches)
        micro = position.epoch_batch % step.accum_iter
        if micro == 0:
            # per-iteration (rather than per-epoch) lr schedule
            lr = schedule.lr(position)
        images, aux = inputs(images, labels, [seed, position.epoch, position.epoch_batch])
        images, aux, lr_tensor = Tensor(images), Tensor(aux), Tensor(np.float32(lr))
        if not step.started:
            step.start(images, aux, lr_tensor)
        if step.accum_iter == 1:
            loss = step.train(images, aux, lr_tensor)
        else:
            loss = step.accumulate(images, aux)
            if micro == step.accum_iter - 1:
                step.apply(lr_tensor)
        losses.append(float(loss.asnumpy()))
        samples(len(images))
        position.epoch_batch += 1
        if micro != step.accum_iter - 1:
            continue
        position.step += 1
        loss_value, losses = float(np.mean(losses)), []
        if not math.isfinite(loss_value):
            raise MaeconvError(f"loss is {loss_value} at step {position.step}; stopping")
        if position.epoch_batch >= schedule.usable:
            position.epoch, position.epoch_batch = position.epoch + 1, 0
        yield loss_value, lr
