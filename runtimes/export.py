"""`maeconv export`: checkpoint -> ONNX or MindIR graph of one task, validated before it is kept."""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..convert.twins import MINDSPORE, TORCH
from ..errors import MaeconvError
from ..convert.outputs import check_target, staged
from ..convert.pipeline import load_canonical
from ..convert.settings import BY_NAME, FILE, FLAG, PRESET, settings_record
from ..models.config import PRETRAIN
from ..parity.compare import Report
from .isolate import run_in_child
from .runners import MINDIR, ONNX, Runner, graph_files, graph_target, open_graph
from .tasks import Task, check_kind, get_task, metadata, read_metadata
from .validate import (BATCHES, DEFAULT_ATOL, MIN_COSINE, MIN_TOP1, Expected, check, lossy_tolerances, lossy_top1,
                       run_source)

FORMATS = (ONNX, MINDIR)
SOURCE_TWIN = {ONNX: TORCH, MINDIR: MINDSPORE}
FP32, FP16, BF16 = "fp32", "fp16", "bf16"
DTYPES = (FP32, FP16, BF16)
# Checkpoints with more weights than this are exported from a child process (see _source_side);
# below it, a child's start-up (imports: seconds) would cost more than the memory it frees.
ISOLATE_BYTES = 64 << 20
# MindSpore's graph runtime keeps the activations of every batch size a GraphCell has run, for the
# life of the graph (measured: 0.16 GB per image for ViT-B features, ~0.5 GB for ViT-L), so MindIR
# validates at 1 and 2 images; the file has no traced batch size to stay away from, as ONNX's has 2.
VALIDATION_BATCHES = {ONNX: BATCHES, MINDIR: (1, 2)}
# Neither runtime here can run (so validate) bf16: said in one line, not attempted.
NO_BF16 = {ONNX: "ONNX opset 18 has no bfloat16 Conv and onnxruntime's CPU provider no bfloat16 MatMul",
           MINDIR: "MindSpore on CPU runs no bfloat16 MatMul or Softmax"}


class ValidationFailed(MaeconvError):
    """The exported graph disagrees with its source twin; the report says where."""

    def __init__(self, message: str, report: Report):
        super().__init__(message)
        self.report = report


@dataclass
class Exported:
    path: Path
    format: str
    task: str
    preset: str
    kind: str
    precision: str
    report: Report
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # the main file first, then its weights' files


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str, task_name: str, *,
           atol: float | None = None, quantize: str | None = None, optimize: bool = False, dtype: str = FP32,
           min_cosine: float = MIN_COSINE, min_top1: float = MIN_TOP1, keep_invalid: bool = False,
           force: bool = False, settings: dict | None = None, batches: Sequence[int] | None = None,
           seed: int | None = None, log: Callable[[str], None] = lambda _: None) -> Exported:
    out = Path(out)
    task = _check_request(checkpoint, out, fmt, task_name, quantize, dtype, force)
    loaded = load_canonical(checkpoint)  # names and shapes only: the weights are read by the source side
    detected = loaded.detected
    check_kind(task, detected.kind, str(checkpoint))
    resolved = loaded.settings(**(settings or {}))
    notes = [settings_note(resolved)]
    precision = quantize or dtype
    info = {**metadata(task, detected.preset, detected.kind, resolved.config), "maeconv.precision": precision}
    isolated = sum(ref.nbytes for ref in loaded.refs.values()) > ISOLATE_BYTES
    with staged(graph_target(out, fmt), force=force, inputs=[loaded.checkpoint.path]) as stage:
        job = SourceJob(str(loaded.checkpoint.path), fmt, task.name, settings or {}, info, quantize, optimize,
                        dtype, tuple(batches or VALIDATION_BATCHES[fmt]), seed)
        expected, written = _source_side(job, stage.path(), out, isolated, log)
        notes += written
        log(f"validating {out} against the {SOURCE_TWIN[fmt]} twin's outputs")
        tmp = stage.path()
        exported = GraphPerCall(tmp, fmt, info) if isolated and fmt == MINDIR else open_graph(tmp, fmt)
        if precision != FP32:
            report = check(exported, expected, lossy_tolerances(task.outputs, min_cosine),
                           lossy_top1(task.outputs, min_top1))
        else:
            report = check(exported, expected, atol=DEFAULT_ATOL[fmt] if atol is None else atol)
        del exported
        report.title = f"{out} ({detected.preset}, {detected.kind}, {precision})\n{report.title}"
        if not report.passed and not keep_invalid:
            raise ValidationFailed(f"{out}: validation failed against the {SOURCE_TWIN[fmt]} twin; "
                                   "nothing written (--keep-invalid keeps the file)", report)
    report.notes += notes
    files = graph_files(out, fmt)
    if len(files) > 1:
        report.notes.append(f"files: {', '.join(str(f) for f in files)} (they move together)")
    return Exported(out, fmt, task.name, detected.preset, detected.kind, precision, report, notes, files)


class GraphPerCall(Runner):
    """An exported graph opened afresh, in a child process, for every call: a MindSpore GraphCell
    keeps the activations of each batch size it has run for as long as it lives (ViT-H: about 1 GB
    per image), so each validation batch gets a process whose memory all goes back when it ends.
    Its timings include starting that process and loading the graph."""

    def __init__(self, path: Path, fmt: str, meta: dict[str, str]):
        # `meta`: what was written into the graph, which each child reads back from the file;
        # reading it here would import MindSpore (0.4 GB) into a process that only waits.
        precision = meta.get("maeconv.precision", FP32)
        super().__init__(read_metadata(meta, str(path)), "MindIR GraphCell, a process per batch"
                         + ("" if precision == FP32 else f", {precision}"))
        self.path, self.fmt = path, fmt

    def __call__(self, inputs):
        return run_in_child(run_graph, (self.path, self.fmt, dict(inputs)), lambda _: None, self.path)


def run_graph(path: Path, fmt: str, inputs: dict, log: Callable[[str], None] = lambda _: None) -> dict:
    """One call of an exported graph (`log`: run_in_child's calling convention; nothing to say)."""
    return open_graph(path, fmt)(inputs)


@dataclass(frozen=True)
class SourceJob:
    """What the source side needs: picklable, for a child process."""

    checkpoint: str
    fmt: str
    task: str
    settings: dict
    info: dict
    quantize: str | None
    optimize: bool
    dtype: str
    batches: tuple[int, ...]
    seed: int | None


def _source_side(job: SourceJob, tmp: Path, out: Path, isolated: bool, log) -> tuple[Expected, list[str]]:
    """The twin's outputs on the validation inputs, and the graph written to `tmp`. A large model's
    twin lives in a child process: when it exits, everything its framework cached goes with it
    (MindSpore keeps a compiled twin's parameters, torch.onnx views of them, after the last
    reference is dropped), so the exported graph is opened with that memory free."""
    try:
        if isolated:
            return run_in_child(write_from_twin, (job, tmp), log, tmp)
        done = write_from_twin(job, tmp, log)
        gc.collect()  # the twin's cells, which MindSpore links in cycles
        return done
    except MaeconvError as error:  # name the output as the user gave it, not its staged path
        raise MaeconvError(str(error).replace(str(tmp), str(out))) from None


def write_from_twin(job: SourceJob, tmp: Path,
                    log: Callable[[str], None] = lambda _: None) -> tuple[Expected, list[str]]:
    from ..models.twins import PYNATIVE
    from .runners import twin_runner

    loaded = load_canonical(job.checkpoint)
    task = get_task(job.task)
    config = loaded.settings(**job.settings).config
    detected = loaded.detected
    log(f"building the {SOURCE_TWIN[job.fmt]} twin ({detected.preset}, {detected.kind}) for task {task.name}")
    # MindSpore's PyNative mode: after running the validation batches of ViT-L, graph mode held
    # 1.5 GB more than before, PyNative 0.05 GB.
    source = twin_runner(loaded, task, SOURCE_TWIN[job.fmt], config, mode=PYNATIVE)
    del loaded
    log(f"running the {SOURCE_TWIN[job.fmt]} twin on the validation inputs "
        f"(batch sizes {', '.join(map(str, job.batches))})")
    expected = run_source(source, job.batches, job.seed)
    notes: list[str] = []
    if job.fmt == ONNX:
        _write_onnx(source, tmp, job.info, job.quantize, job.optimize, job.dtype, notes, log)
    else:
        _write_mindir(source, tmp, job.info, job.dtype, log)
    return expected, notes


def _check_request(checkpoint, out: Path, fmt: str, task_name: str, quantize, dtype: str, force: bool) -> Task:
    """Everything that can be refused before the checkpoint is read."""
    if fmt not in FORMATS:
        raise MaeconvError(f"{out}: unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if out.suffix.lower() != f".{fmt}":
        raise MaeconvError(f"{out}: {'an ONNX' if fmt == ONNX else 'a MindIR'} file name must end in .{fmt}")
    check_target(graph_target(out, fmt), force, inputs=[checkpoint])
    task = get_task(task_name)
    if dtype not in DTYPES:
        raise MaeconvError(f"{out}: unknown --dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if dtype == BF16:
        raise MaeconvError(f"{out}: --dtype bf16 cannot be validated here ({NO_BF16[fmt]}); use --dtype fp16")
    if quantize and fmt != ONNX:
        raise MaeconvError(f"{out}: --quantize is offered for ONNX exports only")
    if quantize and dtype != FP32:
        raise MaeconvError(f"{out}: --quantize int8 starts from the float32 graph; give either it or --dtype")
    if quantize and task.name == PRETRAIN:
        raise MaeconvError(f"{out}: --quantize int8 is offered for the features and classify tasks "
                           "(reconstructions are pictures: export them in fp32)")
    return task


def _write_mindir(source, tmp: Path, info, dtype: str, log) -> None:
    import mindspore as ms

    from ..models.mindspore.graphs import HalfGraph
    from .ascend.mindir import export_mindir

    cell = source.graph if dtype == FP32 else HalfGraph(source.graph, ms.float16)
    log(f"exporting MindIR ({dtype})")
    export_mindir(cell, source.info.task, source.info.config, tmp, info)


def settings_note(resolved) -> str:
    """The settings a graph was built with, and where each came from."""
    told = {FLAG: "given", FILE: "from the checkpoint", PRESET: "preset default"}
    shown = ", ".join(f"{name} {value} ({told[resolved.sources[BY_NAME[name].field]]})"
                      for name, value in settings_record(resolved.config).items())
    return f"settings: {shown}"


def _write_onnx(source, tmp: Path, info, quantize, optimize, dtype, notes, log) -> None:
    import torch

    from .onnx.export import OPSET, export_onnx, fuse_transformer, quantize_int8
    from ..models.torch.graphs import HalfGraph

    task, config = source.info.task, source.info.config
    stages = [tmp.with_name(f"{tmp.name}.{stage}.onnx") for stage in ("fp32", "fused")]
    try:
        current = stages[0] if (quantize or optimize) else tmp
        graph = source.graph if dtype == FP32 else HalfGraph(source.graph, torch.float16)
        log(f"exporting ONNX (opset {OPSET}, dynamic batch, {dtype}) from the torch twin")
        export_onnx(graph, task, config, current, info)
        del graph
        notes.append(f"ONNX opset {OPSET}, inputs {', '.join(task.inputs)} with a dynamic batch axis 'batch'")
        if dtype != FP32:
            notes.append(f"{dtype}: weights and arithmetic in {dtype}; inputs and outputs float32, "
                         "cast at the graph's boundary")
        if optimize:
            log("fusing with onnxruntime's transformer optimizer")
            target = stages[1] if quantize else tmp
            fused = fuse_transformer(current, target, config)
            notes.append("fused: " + (", ".join(f"{op} x{n}" for op, n in fused.items()) or "nothing"))
            current = target
        if quantize:
            log("quantising to int8 (dynamic, MatMul weights)")
            quantize_int8(current, tmp)
            notes.append("int8: dynamic quantisation of the MatMul weights; activations quantised per call")
    finally:
        for stage in stages:  # with the external data a large stage wrote beside it
            for leftover in (stage, stage.with_name(f"{stage.name}.data")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
