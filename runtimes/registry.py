"""The runtimes a model runs in, one entry each. Export, predict, validation, `inspect` and the
CLI iterate this table; what a runtime does lives in its own module (`hooks`), imported only when
that runtime is used, so listing runtimes imports no framework.

A runtime that runs exported graphs names a hooks module with:
    target(path) -> convert.outputs.Target      the graph and the files its weights may go to
    write(source, tmp, job, log) -> notes       the source twin's graph to `tmp` (job: export.SourceJob)
    load(path, threads) -> runners.Runner       an exported file, ready to call
    file_metadata(path) -> dict[str, str]       what maeconv recorded in the file, weights not loaded
    weight_files(path) -> list[str]             files beside the graph that it names for its weights
    signature(path, outputs) -> dict            inputs and outputs (dtype, shape), opset, producer it declares
Adding one is an entry here plus its hooks module and tests.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..convert.formats.base import member_of
from ..errors import MaeconvError
from ..models.twins import MINDSPORE, TORCH


@dataclass(frozen=True)
class ExportOption:
    """A runtime-specific export option (CLI flag `--name`); a choice list or a plain flag."""

    name: str
    help: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Runtime:
    name: str
    label: str                  # as in 'ONNX exports'
    title: str                  # as in 'an ONNX file'
    source_twin: str            # the twin that runs checkpoints here or that graphs are exported from
    suffix: str | None = None   # exported graphs' suffix; None: the twin runs checkpoints itself
    hooks_module: str | None = None
    atol: float | None = None   # default validation tolerance per output of an fp32 export
    validation_batches: tuple[int, ...] = ()
    no_bf16: str = ""           # why bf16 cannot be validated here
    export_help: str = ""
    export_options: tuple[ExportOption, ...] = ()
    # A large model's graph is opened in a fresh child process per validation batch (MindSpore
    # keeps each batch size's activations for the life of a GraphCell).
    validate_per_call_when_large: bool = False

    @property
    def exported(self) -> bool:
        return self.suffix is not None

    @property
    def hooks(self):
        if self.hooks_module is None:
            raise MaeconvError(f"runtime {self.name!r} runs checkpoints, not exported graphs")
        return importlib.import_module(self.hooks_module)


RUNTIMES: dict[str, Runtime] = {entry.name: entry for entry in (
    Runtime("torch", "PyTorch", "a PyTorch checkpoint", TORCH),
    Runtime("mindspore", "MindSpore", "a MindSpore checkpoint", MINDSPORE),
    Runtime("onnx", "ONNX", "an ONNX file", TORCH, ".onnx", "maeconv.runtimes.onnx.runtime", atol=1e-4,
            validation_batches=(1, 4),  # the export traces batch 2: both differ from it
            no_bf16="ONNX opset 18 has no bfloat16 Conv and onnxruntime's CPU provider no bfloat16 MatMul",
            export_help="From the torch twin; opset 18, dynamic batch axis, run with onnxruntime.",
            export_options=(
                ExportOption("quantize", "Dynamic int8 (features, classify); validated by cosine similarity and "
                                         "top-1 agreement.", ("int8",)),
                ExportOption("optimize", "Store the graph fused by onnxruntime's transformer optimizer "
                                         "(SkipLayerNorm, BiasGelu)."))),
    # MindSpore's graph runtime keeps the activations of every batch size a GraphCell has run, for
    # the life of the graph (0.16 GB per image for ViT-B features), so MindIR validates at 1 and 2
    # images; the file has no traced batch size to stay away from.
    Runtime("mindir", "MindIR", "a MindIR file", MINDSPORE, ".mindir", "maeconv.runtimes.ascend.mindir", atol=1e-5,
            validation_batches=(1, 2), no_bf16="MindSpore on CPU runs no bfloat16 MatMul or Softmax",
            export_help="From the MindSpore twin; dynamic batch axis, loads with mindspore.load + nn.GraphCell.",
            validate_per_call_when_large=True),
)}
NAMES = tuple(RUNTIMES)
EXPORTED = tuple(name for name, entry in RUNTIMES.items() if entry.exported)


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise MaeconvError(f"unknown runtime {name!r}; expected one of {', '.join(NAMES)}") from None


def runtime_of(path: str | os.PathLike) -> str:
    """The runtime a file implies: an exported graph's by its suffix, else the torch twin's (a
    checkpoint in any format)."""
    suffix = Path(path).suffix.lower()
    return next((name for name in EXPORTED if RUNTIMES[name].suffix == suffix), TORCH)


def is_exported(path: str | os.PathLike) -> bool:
    return RUNTIMES[runtime_of(path)].exported


def graph_target(path: str | os.PathLike, runtime: str):
    """An exported graph and the files its weights go to when they are large; they move together,
    and `--force` replaces them together."""
    return get_runtime(runtime).hooks.target(Path(path))


def graph_files(path: str | os.PathLike, runtime: str) -> list[Path]:
    """The files that make up an exported graph as it is on disk, its main file first."""
    target = graph_target(path, runtime)
    found = [target.path]
    for member in target.members[:-1]:
        if member.is_dir():
            found += sorted(entry for entry in member.iterdir() if entry.is_file())
        elif member.exists():
            found.append(member)
    return found


def check_weight_files(path: Path, runtime: str) -> list[Path]:
    """The files holding the graph's weights, by the names the graph records (so a renamed graph
    still finds them); one whose weights were not moved with it fails here, in one line, not
    deep inside a runtime."""
    names = get_runtime(runtime).hooks.weight_files(path)
    named = [path.parent / name for name in names]
    for name, file in zip(names, named):
        if not file.is_file() or not member_of(file, path.parent):
            raise MaeconvError(f"{path}: its weights are in {str(name)!r:.200}, which is not beside it (the files of "
                               "an export are copied and moved together)")
    return named


def open_graph(path: str | os.PathLike, runtime: str, threads: int = 0):
    """A runner for an exported file; the file's own metadata says its task and config."""
    path = Path(path)
    if not path.is_file():
        raise MaeconvError(f"{path}: no such file")
    entry = get_runtime(runtime)
    if not entry.exported:
        raise MaeconvError(f"{path}: runtime {runtime!r} runs checkpoints, not exported graphs")
    check_weight_files(path, runtime)
    return entry.hooks.load(path, threads)
