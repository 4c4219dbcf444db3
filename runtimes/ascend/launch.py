"""Data-parallel training started for the user: msrun with this very interpreter, joined, its exit
status passed on. (msrun itself starts `python` from PATH, which outside an activated virtual
environment is not the one maeconv is installed in.)"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

TRAIN_SCRIPT = Path(__file__).with_name("train.py")


@dataclass(frozen=True)
class Cluster:
    workers: int                 # worker processes on this machine
    nodes: int = 1               # machines, each with `workers` of them
    node_rank: int = 0           # this machine's place; node 0 runs msrun's scheduler
    master_addr: str = "127.0.0.1"
    master_port: int = 8118
    log_dir: str = "msrun_log"   # the workers' logs (worker_N.log)

    def msrun_arguments(self) -> list[str]:
        return [f"--worker_num={self.workers * self.nodes}", f"--local_worker_num={self.workers}",
                f"--master_addr={self.master_addr}", f"--master_port={self.master_port}",
                f"--node_rank={self.node_rank}", f"--log_dir={self.log_dir}", "--join=True"]


def launch(cluster: Cluster, arguments: list[str]) -> int:
    """Runs train.py `arguments` on `cluster.workers` workers here; returns msrun's exit status."""
    shim = Path(tempfile.mkdtemp(prefix="maeconv-msrun-"))
    try:
        # What msrun's workers find first on PATH. A script, not a link: a link to a virtual
        # environment's interpreter, called by another name, no longer finds the environment.
        (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (shim / "python").chmod(0o755)
        env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"}
        command = [sys.executable, "-m", "mindspore.parallel.cluster.run", *cluster.msrun_arguments(),
                   str(TRAIN_SCRIPT), *arguments]
        return subprocess.run(command, env=env).returncode
    finally:
        (shim / "python").unlink(missing_ok=True)
        shim.rmdir()
