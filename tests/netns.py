"""Two "machines" on one host, for multi-node tests: machine 0 in the host's network namespace,
machine 1 in a network namespace of its own, joined by a veth pair on a private /24; each in its
own folder, which machine 1 sees (through a mount namespace) at machine 0's path, so a relative
path means the same place on both, as on two hosts with the same checkout. Needs root."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

LATE_NODE_HOOK = Path(__file__).with_name("late_node")


def unavailable() -> str | None:
    """Why two machines cannot be simulated here, or None."""
    if os.geteuid() != 0:
        return "simulating two machines needs root (ip netns add, mount --bind)"
    missing = [tool for tool in ("ip", "unshare", "mount") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not found" if missing else None


@dataclass
class Network:
    namespace: str      # machine 1's
    veth: str           # machine 0's end (machine 1's end is in the namespace)
    master_addr: str    # machine 0
    node_addr: str      # machine 1


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _free_subnet() -> str:
    """10.X.Y (a /24) that no address or route here uses, starting from one given by the pid."""
    used = _ip("-o", "-4", "addr", "show").stdout + _ip("-4", "route", "show").stdout
    seed = os.getpid()
    for i in range(256):
        prefix = f"10.{150 + (seed // 256 + i) % 100}.{(seed + i) % 256}"
        if f"{prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 for the test network")


@contextlib.contextmanager
def network():
    """The two-machine network, removed afterwards whatever happened (with any process left in it).
    Raises PermissionError (with the reason) where namespaces cannot be made."""
    tag = f"mae{os.getpid() % 100000}{int(time.time() * 1000) % 100}"
    net = Network(f"{tag}n", f"{tag}a", "", "")
    prefix = _free_subnet()
    net.master_addr, net.node_addr = f"{prefix}.1", f"{prefix}.2"
    made = _ip("netns", "add", net.namespace, check=False)
    if made.returncode != 0:
        raise PermissionError(f"ip netns add failed: {made.stderr.strip()}")
    try:
        for args in (("link", "add", net.veth, "type", "veth", "peer", "name", f"{tag}b"),
                     ("link", "set", f"{tag}b", "netns", net.namespace),
                     ("addr", "add", f"{net.master_addr}/24", "dev", net.veth), ("link", "set", net.veth, "up"),
                     ("-n", net.namespace, "addr", "add", f"{net.node_addr}/24", "dev", f"{tag}b"),
                     ("-n", net.namespace, "link", "set", f"{tag}b", "up"),
                     ("-n", net.namespace, "link", "set", "lo", "up")):
            _ip(*args)
        yield net
    finally:
        for pid in _ip("netns", "pids", net.namespace, check=False).stdout.split():
            _kill(int(pid))
        _ip("netns", "del", net.namespace, check=False)
        _ip("link", "del", net.veth, check=False)  # the peer goes with it


def free_port_pair() -> int:
    """A port P with P - 1 free too (msrun's master port and the trainer's rendezvous store)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("", port - 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free pair of ports")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def job_pids(port: int, role: str | None = None, rank: int | None = None) -> list[int]:
    """Processes of the msrun job at master port `port` (msrun starts its workers in sessions of
    their own: found by their environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"MS_SCHED_PORT={port}".encode() not in environ:
            continue
        if role and f"MS_ROLE={role}".encode() not in environ:
            continue
        if rank is not None and f"RANK_ID={rank}".encode() not in environ:
            continue
        found.append(int(entry.name))
    return found


@dataclass
class Place:
    """The two machines' folders: machine 0's is `path`, machine 1's `other`, seen at `path`."""

    path: Path
    other: Path

    @classmethod
    def make(cls, root: Path) -> Place:
        (root / "machine0").mkdir(parents=True)
        (root / "machine1").mkdir()
        return cls(root / "machine0", root / "machine1")

    def on(self, node: int) -> Path:
        """Where machine `node`'s files are on this host."""
        return self.path if node == 0 else self.other


@dataclass
class Job:
    rc: dict = field(default_factory=dict)        # node -> the command's exit status
    seconds: dict = field(default_factory=dict)   # node -> when it exited, from the start
    output: dict = field(default_factory=dict)    # node -> what the command printed
    logs: dict = field(default_factory=dict)      # node -> its msrun worker logs, concatenated
    events: dict = field(default_factory=dict)    # what on_poll recorded


def node_command(net: Network, node: int, place: Place, command: list[str]) -> list[str]:
    """`command` as machine `node` runs it: machine 1 in its network namespace, with its own
    hostname and its own folder mounted at machine 0's path."""
    if node == 0:
        return command
    script = 'mount --bind "$1" "$2" && hostname node1 && cd "$2" && shift 2 && exec "$@"'
    return ["ip", "netns", "exec", net.namespace, "unshare", "--mount", "--uts", "--propagation", "private",
            "sh", "-c", script, "sh", str(place.other), str(place.path), *command]


def run_job(net: Network, place: Place, commands: dict, port: int, env: dict, node_env: dict | None = None,
            timeout: float = 300, on_poll=None) -> Job:
    """Runs commands[node] on each machine; waits for both (at most `timeout` s), then kills
    whatever of the job is left. `on_poll(job, start)` is called while it runs."""
    job, processes, start = Job(), {}, time.monotonic()
    for node in commands:
        shutil.rmtree(place.on(node) / "msrun_log", ignore_errors=True)
    try:
        for node, command in commands.items():
            out = open(place.on(node) / f"command_{port}.out", "w")
            processes[node] = subprocess.Popen(node_command(net, node, place, command), cwd=place.path,
                                               env={**env, **(node_env or {}).get(node, {})}, stdout=out,
                                               stderr=subprocess.STDOUT, start_new_session=True)
            out.close()
        while len(job.rc) < len(processes) and time.monotonic() - start < timeout:
            for node, process in processes.items():
                if node not in job.rc and process.poll() is not None:
                    job.rc[node], job.seconds[node] = process.returncode, time.monotonic() - start
            if on_poll is not None:
                on_poll(job, start)
            time.sleep(0.2)
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for pid in job_pids(port):
            _kill(pid)
    for node in processes:
        job.output[node] = (place.on(node) / f"command_{port}.out").read_text(errors="replace")
        logs = sorted((place.on(node) / "msrun_log").glob("*.log"))
        job.logs[node] = "".join(f"== {p.name}\n{p.read_text(errors='replace')}" for p in logs)
    return job
