"""Ranks meeting on the host, outside the collectives: a barrier with a timeout that names the ranks
that did not arrive, and values rank 0 decides for everyone (the data path it sees, the checkpoint
a run resumes from).

Why not a collective barrier: a collective waits only as long as the backend's collective timeout
(30 s by default for MindSpore's CPU collectives), and cannot say who is missing. Nodes reach
their first step minutes apart (data staging, caches, graph compilation), so every rank meets the
others here first, with a generous timeout (`cluster.barrier_timeout`).

Built on MindSpore's own key-value store (`mindspore.mint.distributed.TCPStore`), served by rank
0's process on the msrun master address, at msrun's port - 1 unless `cluster.rendezvous_port`
says otherwise (port + 1 falls into the port range msrun gives its first worker).
"""
from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import Callable

from ...errors import MaeconvError, first_line

_POLL_S = 0.2
_STORES: dict = {}  # (host, port) -> TCPStore: rank 0's process serves it for the whole job


class RendezvousError(MaeconvError):
    pass


def rendezvous_address(port: int | None = None) -> tuple[str, int] | None:
    """Where the store is, for a process msrun started; None elsewhere (a rank table has no master)."""
    host, master_port = os.environ.get("MS_SCHED_HOST"), os.environ.get("MS_SCHED_PORT")
    if not host or not master_port:
        return None
    return host, int(port) if port is not None else int(master_port) - 1


class Rendezvous:
    """`world` ranks meeting through rank 0's store; every rank makes the same calls in the same
    order (the names are numbered, so a second run in one process meets afresh)."""

    def __init__(self, rank: int, world: int, host: str, port: int, timeout: float):
        self.rank, self.world, self.host, self.port, self.timeout = rank, world, host, port, float(timeout)
        self.calls = 0
        self.store = self._open()

    def _open(self):
        from mindspore.mint.distributed import TCPStore

        if (self.host, self.port) in _STORES:
            return _STORES[(self.host, self.port)]
        try:
            store = TCPStore(self.host, self.port, world_size=self.world, is_master=self.rank == 0,
                             timeout=timedelta(seconds=self.timeout), wait_for_workers=False)
        except RuntimeError as error:
            if self.rank == 0:
                raise RendezvousError(
                    f"rank 0 cannot serve the rendezvous store on {self.host}:{self.port} ({first_line(error)}): "
                    "the port must be free on the master host (cluster.rendezvous_port), and rank 0 must run "
                    "there (--node_rank 0 on the machine at --master_addr)") from None
            raise RendezvousError(f"rank 0 did not arrive: no rendezvous store on {self.host}:{self.port} within "
                                  f"{self.timeout:.0f} s (cluster.barrier_timeout)") from None
        _STORES[(self.host, self.port)] = store
        return store

    def _key(self, name: str) -> str:
        self.calls += 1
        return f"maeconv/{self.calls}/{name}"

    def barrier(self, name: str) -> float:
        """Blocks until every rank has called barrier(name); returns the seconds waited. After
        `timeout` seconds: RendezvousError naming the ranks that did not arrive."""
        key, start = self._key(name), time.monotonic()
        self.store.add(f"{key}/rank/{self.rank}", 1)
        arrived = self.store.add(f"{key}/count", 1)
        while arrived < self.world:
            if time.monotonic() - start > self.timeout:
                missing = [r for r in range(self.world) if self.store.add(f"{key}/rank/{r}", 0) == 0]
                raise RendezvousError(
                    f"rank(s) {', '.join(map(str, missing))} of {self.world} did not reach '{name}' within "
                    f"{self.timeout:.0f} s (cluster.barrier_timeout; rank {self.rank} waited)")
            time.sleep(_POLL_S)
            arrived = self.store.add(f"{key}/count", 0)
        return time.monotonic() - start

    def decide(self, name: str, compute: Callable[[], object]):
        """Rank 0's `compute()` (JSON-able) for every rank. An error rank 0 meets is every rank's
        error, with the same message."""
        key = self._key(name)
        if self.rank == 0:
            try:
                value = compute()
            except Exception as failure:
                self._publish(key, {"value": None, "error": str(failure)})
                raise
            self._publish(key, {"value": value, "error": None})
            return value
        start = time.monotonic()
        while self.store.add(f"{key}/ready", 0) == 0:
            if time.monotonic() - start > self.timeout:
                raise RendezvousError(f"rank 0 did not reach '{name}' within {self.timeout:.0f} s "
                                      f"(cluster.barrier_timeout; rank {self.rank} waited)")
            time.sleep(_POLL_S)
        shared = json.loads(self.store.get(f"{key}/value").decode())
        if shared["error"] is not None:
            raise MaeconvError(shared["error"])
        return shared["value"]

    def _publish(self, key: str, record: dict) -> None:
        self.store.set(f"{key}/value", json.dumps(record))
        self.store.add(f"{key}/ready", 1)
