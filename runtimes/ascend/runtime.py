"""The process a run lives in: device, execution mode, seeds, and its rank when msrun (or an
Ascend rank table) started it among others, with the timeouts the ranks wait for each other."""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...errors import MaeconvError
from .config import ConfigError
from .rendezvous import Rendezvous, rendezvous_address

# MindSpore sets HCCL_CONNECT_TIMEOUT to this when it is imported and the variable is unset.
MINDSPORE_CONNECT_DEFAULT = "600"
HCCL_CONNECT_RANGE = (120, 7200)  # CANN's


@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: str = "CPU"
    local_rank: int = 0                   # this rank's place among the workers of its machine
    rendezvous: Rendezvous | None = None  # several ranks under msrun

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def barrier(self, name: str) -> float:
        """Waits for every rank (cluster.barrier_timeout); returns the seconds waited."""
        return self.rendezvous.barrier(name) if self.rendezvous is not None else 0.0

    def decide(self, name: str, compute: Callable[[], object]):
        """Rank 0's compute() for every rank (JSON-able); a single process computes it itself."""
        return self.rendezvous.decide(name, compute) if self.rendezvous is not None else compute()


_joined = False  # this process joined a cluster: its failure must end the job on every node


def collective_timeouts(cluster, environ=os.environ) -> dict[str, str]:
    """The environment variables through which MindSpore's collective backends take their timeouts,
    from the config: those the user set explicitly are left as they are."""
    if cluster.barrier_timeout <= 0:
        raise ConfigError(f"cluster.barrier_timeout {cluster.barrier_timeout}; expected seconds > 0")
    forever = cluster.collective_timeout <= 0
    low, high = HCCL_CONNECT_RANGE
    wanted = {
        "MS_CPU_COMM_OP_TIMEOUT": "-1" if forever else str(int(cluster.collective_timeout)),  # mccl; < 0: forever
        "HCCL_EXEC_TIMEOUT": "0" if forever else str(int(cluster.collective_timeout)),        # HCCL; 0: forever
        "HCCL_CONNECT_TIMEOUT": str(min(max(int(cluster.connect_timeout), low), high)),
    }
    imported = "mindspore" in sys.modules
    for name in list(wanted):
        current = environ.get(name)
        mindspore_default = name == "HCCL_CONNECT_TIMEOUT" and imported and current == MINDSPORE_CONNECT_DEFAULT
        if current is not None and not mindspore_default:
            del wanted[name]
    return wanted


def ends_job_on_error(run):
    """`run`, flagging the job as failed when it stops on an error in a process that joined one."""
    @functools.wraps(run)
    def guarded(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        except BaseException:
            flag_failure()
            raise
    return guarded


def flag_failure() -> None:
    """A rank that stops on an error tells msrun's scheduler, as MindSpore's own excepthook does;
    a clean exit with status 1 would count as finished, and the other nodes would wait for it."""
    if _joined:
        from mindspore._c_expression import set_cluster_exit_with_exception

        set_cluster_exit_with_exception()


def launched_by_msrun() -> bool:
    return "MS_ROLE" in os.environ or "RANK_TABLE_FILE" in os.environ


def setup_runtime(cfg) -> Runtime:
    """Device and mode set, the collective group joined where launched among others, seeds set."""
    timeouts = collective_timeouts(cfg.cluster)
    if launched_by_msrun():
        os.environ.update(timeouts)  # read at init() (HCCL) and at the first collective (mccl)
    import mindspore as ms

    device = cfg.device_target
    if cfg.use_parallel and not launched_by_msrun():
        raise MaeconvError("use_parallel is set, but this process was not started as one of several workers: "
                           "launch it with maeconv train --workers N (msrun)")
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == "graph" else ms.PYNATIVE_MODE)
    device_id = os.environ.get("DEVICE_ID") if launched_by_msrun() else cfg.device_id
    _set_device(device, None if device == "CPU" or device_id is None else int(device_id))
    runtime = _join(cfg, device) if launched_by_msrun() else Runtime(device=device)
    # Initial weights are not broadcast: every rank draws the same ones from the same seed.
    ms.set_seed(cfg.seed)
    np.random.seed(cfg.seed)
    return runtime


def _join(cfg, device: str) -> Runtime:
    """The collective group joined; with msrun's scheduler, the rendezvous too."""
    global _joined
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    init()  # the msrun scheduler process stays in here until the job ends
    _joined = True
    _die_on_sigterm()
    rank, world = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=world)
    # msrun's DEVICE_ID is the worker's index on its machine (the rank table's is the device's)
    runtime = Runtime(rank, world, device, int(os.environ.get("DEVICE_ID", 0)))
    address = rendezvous_address(cfg.cluster.rendezvous_port)
    if world > 1 and address is not None:
        runtime.rendezvous = Rendezvous(rank, world, *address, cfg.cluster.barrier_timeout)
    return runtime


def _die_on_sigterm() -> None:
    """MindSpore ends a worker whose job failed (a peer dead, the scheduler gone) with SIGTERM,
    typically while its main thread waits inside a collective, where a Python signal handler (the
    command line's) would never run: the worker would live on and msrun would wait for it forever.
    Outputs are staged, so dying on the spot leaves no partial file."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
