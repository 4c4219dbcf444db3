"""The `maeconv` group: MaeconvError as one line and exit 1, library notices as `note:` lines,
signals as a one-line message and exit 128+signal."""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading

import click

os.environ.setdefault("GLOG_v", "3")  # MindSpore's runtime warnings are noise on a terminal

from ..convert.outputs import Interrupted, handle_signals  # noqa: E402
from ..errors import MaeconvError, one_line  # noqa: E402


class OneLineErrors:
    """Turns MaeconvError into click's one-line 'Error: ...' and exit status 1, and keeps every
    error on one line whatever names it quotes."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MaeconvError as error:
            raise click.ClickException(one_line(str(error))) from None
        except click.ClickException as error:
            error.message = one_line(error.message)
            raise


class Command(OneLineErrors, click.Command):
    pass


class Group(OneLineErrors, click.Group):
    command_class = Command
    group_class = type  # subgroups (export) are of this class too


def say(message: str) -> None:
    click.echo(message, err=True)


class _NoteHandler(logging.Handler):
    """The library's notices (logger 'maeconv') as 'note: ...' lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        say(f"note: {one_line(record.getMessage())}")


def show_library_notes() -> None:
    logger = logging.getLogger("maeconv")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        logger.addHandler(_NoteHandler())
        logger.propagate = False


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maeconv")
def cli():
    """MAE ViT checkpoints between PyTorch and MindSpore, with proof that nothing changed."""
    show_library_notes()


def fail_unless(passed: bool) -> None:
    """A report was printed; its verdict is the exit status."""
    if not passed:
        click.get_current_context().exit(1)


# Exit callbacks registered once the CLI is loaded (logging's). A library imported later (torch,
# MindSpore) may add its own, and those must run.
_EXIT_CALLBACKS_AT_LOAD = atexit._ncallbacks() if hasattr(atexit, "_ncallbacks") else None
_quick_exit = False


def quick_exit_when_done() -> None:
    """Called by a command that closes every file it writes and joins its threads before it ends:
    the process may then skip the interpreter's teardown (see `_exit_now`)."""
    global _quick_exit
    _quick_exit = True


def _exit_now(code) -> None:
    """Ends the process at once with status `code`, skipping the interpreter's teardown of its
    modules and memory: after a ViT-H conversion that teardown took 0.1-0.2 s, some 10% of the
    command. Only when nothing else must run at exit: no other thread alive and no exit callback
    added since the CLI loaded. Otherwise returns, and the process exits as usual."""
    if not isinstance(code, (int, type(None))) or threading.active_count() > 1:
        return
    if _EXIT_CALLBACKS_AT_LOAD is None or atexit._ncallbacks() > _EXIT_CALLBACKS_AT_LOAD:
        return
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: the usual exit reports it
        return
    os._exit(code or 0)


def run(command, prog_name: str, interrupted_says: str = "") -> None:
    """Runs a click command as a program: a signal ends it with one line and status 128+signal; a
    command that asked for it (`quick_exit_when_done`) ends the process itself."""
    global _quick_exit
    _quick_exit = False  # asked for by this run's command only
    handle_signals()
    show_library_notes()
    try:
        command(prog_name=prog_name)
    except Interrupted as interrupted:
        say(f"Error: interrupted by {interrupted}{interrupted_says}")
        sys.exit(128 + interrupted.signum)
    except SystemExit as done:
        if _quick_exit:
            _exit_now(done.code)
        raise


def main() -> None:
    run(cli, "maeconv", "; unfinished outputs removed")
