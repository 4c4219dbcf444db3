"""The `maeconv` group: MaeconvError as one line and exit 1, library notices as `note:` lines,
signals as a one-line message and exit 128+signal."""
from __future__ import annotations

import logging
import os
import sys

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


def run(command, prog_name: str, interrupted_says: str = "") -> None:
    """Runs a click command as a program: a signal ends it with one line and status 128+signal."""
    handle_signals()
    show_library_notes()
    try:
        command(prog_name=prog_name)
    except Interrupted as interrupted:
        say(f"Error: interrupted by {interrupted}{interrupted_says}")
        sys.exit(128 + interrupted.signum)


def main() -> None:
    run(cli, "maeconv", "; unfinished outputs removed")
