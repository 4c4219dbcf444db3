"""The process a run lives in: device, execution mode, seeds, and its rank when msrun (or an
Ascend rank table) started it among others."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


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
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == "graph" else ms.PYNATIVE_MODE)
    if device == "CPU" or "DEVICE_ID" not in os.environ:
        ms.set_device(device)
    else:  # the rank-table route names each process's device
        ms.set_device(device, int(os.environ["DEVICE_ID"]))
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
