"""Work done in a child process whose memory all goes back when it exits: frameworks keep caches
(compiled graphs, their parameters, allocator pools) that no Python reference lets go of.

The child is a fresh interpreter (`python -c`), not a multiprocessing "spawn" child: that one
re-imports the caller's main module, which breaks every script without a `__main__` guard."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from typing import Callable

from ..errors import MaeconvError

LOG, DONE, ERROR = "log", "done", "error"
CHILD = "import sys; from maeconv.runtimes.isolate import child_main; child_main(int(sys.argv[1]))"


def run_in_child(fn: Callable, args: tuple, log: Callable[[str], None], shown):
    """`fn(*args, log=...)` (a module-level function, picklable arguments) in a child process: its
    log lines reach `log` as they come, its result or exception comes back (an error names
    `shown`). An interrupt of this process ends the child too."""
    read_fd, write_fd = os.pipe()
    try:
        # stdout stays clean for --json: the child writes nothing there
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(write_fd)], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, pass_fds=(write_fd,))
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        try:
            pickle.dump((fn, args), child.stdin)
            child.stdin.close()
            return _receive(reader, child, log, shown)
        finally:
            if child.poll() is None:
                child.terminate()
            child.wait()


def _receive(reader, child: subprocess.Popen, log: Callable[[str], None], shown):
    while True:
        try:
            kind, value = pickle.load(reader)
        except EOFError:
            raise MaeconvError(f"{shown}: the export process ended without a result (exit status "
                               f"{child.wait()}; out of memory?)") from None
        if kind == LOG:
            log(value)
        elif kind == ERROR:
            raise value
        else:
            return value


def child_main(fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    with os.fdopen(fd, "wb") as out:
        def send(kind: str, value) -> None:
            pickle.dump((kind, value), out)
            out.flush()

        fn, args = pickle.load(sys.stdin.buffer)
        try:
            result = fn(*args, log=lambda message: send(LOG, message))
        except BaseException as error:  # everything goes back to the parent, which re-raises it
            send(ERROR, _picklable(error))
        else:
            send(DONE, result)


def _picklable(error: BaseException) -> BaseException:
    try:
        pickle.dumps(error)
        return error
    except Exception:  # an exception type that cannot cross: its message still can
        return RuntimeError(f"{type(error).__name__}: {error}")
