"""The `maeconv` command line. Each module holds one group of commands; a command parses its
options, calls one library function and prints what came back.

    base        the group, one-line errors, `say`, the entry points
    options     the options several commands share (declared once)
    checkpoints convert, torch2ms, ms2torch, download, inspect
    checks      forward, parity, demo
    graphs      export onnx|mindir, predict (one subcommand per runtime of the registry)
    training    train (also runtimes/ascend/train.py)
"""
from .base import cli, main
from . import checkpoints, checks, graphs, training  # each registers its commands
from .training import train_main

__all__ = ["cli", "main", "train_main", "checkpoints", "checks", "graphs", "training"]
