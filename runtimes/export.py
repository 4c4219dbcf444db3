"""`maeconv export`: checkpoint -> ONNX or MindIR graph of one task, validated before it is kept."""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import MaeconvError
from ..convert.outputs import check_target, staged
from ..convert.pipeline import load_canonical
from ..convert.settings import BY_NAME, FILE, FLAG, PRESET, settings_record
from ..parity.compare import Report
from .isolate import run_in_child
from .registry import EXPORTED, Runtime, get_runtime, graph_files, graph_target, open_graph
from .runners import Runner
from .tasks import Task, check_kind, get_task, metadata, read_metadata
from .validate import MIN_COSINE, MIN_TOP1, Expected, check, lossy_tolerances, lossy_top1, run_source

FP32, FP16, BF16 = "fp32", "fp16", "bf16"
DTYPES = (FP32, FP16, BF16)
# Checkpoints with more weights than this are exported from a child process (see _source_side);
# below it, a child's start-up (imports: seconds) would cost more than the memory it frees.
ISOLATE_BYTES = 64 << 20
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
           atol: float | None = None, dtype: str = FP32, min_cosine: float = MIN_COSINE, min_top1: float = MIN_TOP1,
           keep_invalid: bool = False, force: bool = False, settings: dict | None = None,
           batches: Sequence[int] | None = None, seed: int | None = None,
           log: Callable[[str], None] = lambda _: None, **runtime_options) -> Exported:
    """`runtime_options`: the runtime's own export options (the registry's `export_options`, e.g.
    ONNX's quantize and optimize)."""
    out = Path(out)
    runtime = _runtime_of_export(out, fmt)
    task = _check_request(checkpoint, out, runtime, task_name, dtype, force, runtime_options)
    loaded = load_canonical(checkpoint)  # names and shapes only: the weights are read by the source side
    detected = loaded.detected
    check_kind(task, detected.kind, str(checkpoint))
    resolved = loaded.settings(**(settings or {}))
    notes = [settings_note(resolved)]
    precision = runtime_options.get("quantize") or dtype
    info = {**metadata(task, detected.preset, detected.kind, resolved.config), "maeconv.precision": precision}
    isolated = sum(ref.nbytes for ref in loaded.refs.values()) > ISOLATE_BYTES
    with staged(graph_target(out, fmt), force=force, inputs=[loaded.checkpoint.path]) as stage:
        job = SourceJob(str(loaded.checkpoint.path), fmt, task.name, settings or {}, info, dtype,
                        tuple(batches or runtime.validation_batches), seed, runtime_options)
        expected, written = _source_side(job, stage.path(), out, isolated, log)
        notes += written
        log(f"validating {out} against the {runtime.source_twin} twin's outputs")
        tmp = stage.path()
        per_call = isolated and runtime.validate_per_call_when_large
        exported = GraphPerCall(tmp, fmt, info) if per_call else open_graph(tmp, fmt)
        if precision != FP32:
            report = check(exported, expected, lossy_tolerances(task.outputs, min_cosine),
                           lossy_top1(task.outputs, min_top1))
        else:
            report = check(exported, expected, atol=runtime.atol if atol is None else atol)
        del exported
        report.title = f"{out} ({detected.preset}, {detected.kind}, {precision})\n{report.title}"
        if not report.passed and not keep_invalid:
            raise ValidationFailed(f"{out}: validation failed against the {runtime.source_twin} twin; "
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
    dtype: str
    batches: tuple[int, ...]
    seed: int | None
    options: dict  # the runtime's own export options


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
    runtime = get_runtime(job.fmt)
    log(f"building the {runtime.source_twin} twin ({detected.preset}, {detected.kind}) for task {task.name}")
    # MindSpore's PyNative mode: after running the validation batches of ViT-L, graph mode held
    # 1.5 GB more than before, PyNative 0.05 GB.
    source = twin_runner(loaded, task, runtime.source_twin, config, mode=PYNATIVE)
    del loaded
    log(f"running the {runtime.source_twin} twin on the validation inputs "
        f"(batch sizes {', '.join(map(str, job.batches))})")
    expected = run_source(source, job.batches, job.seed)
    return expected, runtime.hooks.write(source, tmp, job, log)


def _runtime_of_export(out: Path, fmt: str) -> Runtime:
    if fmt not in EXPORTED:
        raise MaeconvError(f"{out}: unknown export format {fmt!r}; expected one of {', '.join(EXPORTED)}")
    runtime = get_runtime(fmt)
    if out.suffix.lower() != runtime.suffix:
        raise MaeconvError(f"{out}: {runtime.title} name must end in {runtime.suffix}")
    return runtime


def _check_request(checkpoint, out: Path, runtime: Runtime, task_name: str, dtype: str, force: bool,
                   options: dict) -> Task:
    """Everything that can be refused before the checkpoint is read."""
    check_target(graph_target(out, runtime.name), force, inputs=[checkpoint])
    task = get_task(task_name)
    if dtype not in DTYPES:
        raise MaeconvError(f"{out}: unknown --dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if dtype == BF16:
        raise MaeconvError(f"{out}: --dtype bf16 cannot be validated here ({runtime.no_bf16}); use --dtype fp16")
    offered = {option.name for option in runtime.export_options}
    for name, value in options.items():
        if value and name not in offered:
            others = [r.label for r in map(get_runtime, EXPORTED) if name in {o.name for o in r.export_options}]
            raise MaeconvError(f"{out}: --{name} is offered for {' and '.join(others) or 'no'} exports only")
    if hasattr(runtime.hooks, "check_options"):
        runtime.hooks.check_options(out, task, dtype, options)
    return task


def settings_note(resolved) -> str:
    """The settings a graph was built with, and where each came from."""
    told = {FLAG: "given", FILE: "from the checkpoint", PRESET: "preset default"}
    shown = ", ".join(f"{name} {value} ({told[resolved.sources[BY_NAME[name].field]]})"
                      for name, value in settings_record(resolved.config).items())
    return f"settings: {shown}"
