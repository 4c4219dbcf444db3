"""Options shared by several commands, declared once: `--json`, `--force`, the model-setting
flags, number types that refuse NaN."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import click

from ..errors import MaeconvError
from ..models.config import ACTIVATION_NAMES
from ..models.twins import MODES


def options(*decorators):
    """Several click decorators as one, applied in the order listed (top first)."""
    def decorate(fn):
        for option in reversed(decorators):
            fn = option(fn)
        return fn
    return decorate


def json_option(what: str = "the result"):
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def force_option(help: str = "Overwrite an existing output."):
    return click.option("--force", is_flag=True, help=help)


class Finite(click.ParamType):
    """A finite number within optional bounds (click's FloatRange lets NaN through)."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        too_low = self.low is not None and (number <= self.low if self.low_open else number < self.low)
        too_high = self.high is not None and (number >= self.high if self.high_open else number > self.high)
        if not math.isfinite(number) or too_low or too_high:
            self.fail(f"{value!r} is not a finite number {self._bounds()}".rstrip(), param, ctx)
        return number

    def _bounds(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(part for part in (low, high) if part)


SEED = click.IntRange(0, 2**32 - 1)


def seed_option(default=None, help: str | None = None):
    return click.option("--seed", type=SEED, default=default, show_default=default is not None, help=help)


def mode_option():
    return click.option("--mode", type=click.Choice(MODES), default="graph", show_default=True,
                        help="MindSpore execution mode.")


def _activation(ctx, param, value):
    return None if value is None else ACTIVATION_NAMES[value]


# Flags that override a model setting: absent unless given (then the file's, else the preset's).
SETTING_OPTIONS = {
    "norm_pix_loss": click.option("--norm-pix-loss/--no-norm-pix-loss", default=None,
                                  help="Loss targets: normalised pixels or raw (default: what the file records, "
                                       "else raw)."),
    "mask_ratio": click.option("--mask-ratio", type=Finite(0, 1, high_open=True), default=None,
                               help="Fraction of patches removed (default: the file's, else 0.75)."),
    "norm_eps": click.option("--layer-norm-eps", "norm_eps", type=Finite(0, 1, low_open=True), default=None,
                             help="LayerNorm epsilon (default: the file's, else 1e-6)."),
    "activation": click.option("--hidden-act", "activation", type=click.Choice(sorted(ACTIVATION_NAMES)),
                               default=None, callback=_activation,
                               help="MLP activation (default: the file's, else exact gelu)."),
}


def with_settings(fn):
    """Adds the setting flags; the command receives them as one `settings` dict."""
    @functools.wraps(fn)
    def command(*args, **kwargs):
        return fn(*args, settings={name: kwargs.pop(name) for name in SETTING_OPTIONS}, **kwargs)
    return options(*SETTING_OPTIONS.values())(command)


def load_array(path: Path, what: str):
    """A NumPy .npy given on the command line (never a pickle)."""
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MaeconvError(f"{path}: no such file") from None
    except Exception as error:
        raise MaeconvError(f"{path}: not a readable .npy array for {what} ({error})") from None
