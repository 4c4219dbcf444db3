"""The process a run lives in: device, execution mode, seeds, and its rank when msrun (or an
Ascend rank table) started it among others."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ...errors import MaeconvError


@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: str = "CPU"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)


def launched_by_msrun() -> bool:
    return "MS_ROLE" in os.environ or "RANK_TABLE_FILE" in os.environ


def setup_runtime(cfg) -> Runtime:
    """Device and mode set, the collective group joined where launched among others, seeds set."""
    import mindspore as ms

    device = cfg.device_target
    if cfg.use_parallel and not launched_by_msrun():
        raise MaeconvError("use_parallel is set, but this process was not started as one of several workers: "
                           "launch it with maeconv train --workers N (msrun)")
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == "graph" else ms.PYNATIVE_MODE)
    device_id = os.environ.get("DEVICE_ID") if launched_by_msrun() else cfg.device_id
    _set_device(device, None if device == "CPU" or device_id is None else int(device_id))
    runtime = Runtime(device=device)
    if launched_by_msrun():
        from mindspore.communication import get_group_size, get_rank, init

        init()  # the msrun scheduler process stays in here until the job ends
        runtime = Runtime(get_rank(), get_group_size(), device)
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=runtime.world)
    # Initial weights are not broadcast: every rank draws the same ones from the same seed.
    ms.set_seed(cfg.seed)
    np.random.seed(cfg.seed)
    return runtime


def _set_device(device: str, device_id: int | None) -> None:
    """The device of this process; once MindSpore runs (an earlier model in a notebook), it stays."""
    import mindspore as ms

    try:
        ms.set_device(device) if device_id is None else ms.set_device(device, device_id)
    except RuntimeError:
        current = ms.get_context("device_target")
        if current != device:
            raise MaeconvError(f"MindSpore already runs on {current} in this process; {device} needs a new one") \
                from None
