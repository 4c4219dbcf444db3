"""`maeconv export`: checkpoint -> ONNX or MindIR graph of one task, validated before it is kept."""
from __future__ import annotations

import contextlib
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
from .runners import MINDIR, ONNX
from .tasks import check_kind, get_task, metadata
from .validate import BATCHES, DEFAULT_ATOL, MIN_COSINE, MIN_TOP1, int8_tolerances, int8_top1, validate

FORMATS = (ONNX, MINDIR)
SOURCE_TWIN = {ONNX: TORCH, MINDIR: MINDSPORE}


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


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str, task_name: str, *,
           atol: float | None = None, quantize: str | None = None, optimize: bool = False,
           min_cosine: float = MIN_COSINE, min_top1: float = MIN_TOP1, keep_invalid: bool = False,
           force: bool = False, settings: dict | None = None, batches: Sequence[int] = BATCHES,
           seed: int | None = None, log: Callable[[str], None] = lambda _: None) -> Exported:
    out = Path(out)
    if fmt not in FORMATS:
        raise MaeconvError(f"{out}: unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if out.suffix.lower() != f".{fmt}":
        raise MaeconvError(f"{out}: {'an ONNX' if fmt == ONNX else 'a MindIR'} file name must end in .{fmt}")
    check_target(out, force, inputs=[checkpoint])
    task = get_task(task_name)
    if quantize and fmt != ONNX:
        raise MaeconvError(f"{out}: --quantize is offered for ONNX exports only")
    if quantize and task.name == PRETRAIN:
        raise MaeconvError(f"{out}: --quantize int8 is offered for the features and classify tasks "
                           "(reconstructions are pictures: export them in fp32)")

    loaded = load_canonical(checkpoint)
    detected = loaded.detected
    check_kind(task, detected.kind, str(checkpoint))
    resolved = loaded.settings(**(settings or {}))
    config = resolved.config
    notes = [settings_note(resolved)]
    from .runners import twin_runner

    log(f"building the {SOURCE_TWIN[fmt]} twin ({detected.preset}, {detected.kind}) for task {task.name}")
    source = twin_runner(loaded, task, SOURCE_TWIN[fmt], config)
    info = metadata(task, detected.preset, detected.kind, config)
    precision = quantize or "fp32"
    with staged(out, force=force, inputs=[loaded.checkpoint.path]) as stage:
        tmp = stage.path()
        if fmt == ONNX:
            exported = _write_onnx(source, tmp, info, quantize, optimize, notes, log)
        else:
            from .ascend.mindir import MindIRRunner, export_mindir

            log(f"exporting MindIR to {out}")
            export_mindir(source.graph, task, config, tmp, info)
            exported = MindIRRunner.open(tmp)
        log(f"validating against the {SOURCE_TWIN[fmt]} twin at batch sizes {', '.join(map(str, batches))}")
        if quantize:
            report = validate(exported, source, int8_tolerances(task.outputs, min_cosine),
                              int8_top1(task.outputs, min_top1), batches=batches, seed=seed)
        else:
            atol = DEFAULT_ATOL[fmt] if atol is None else atol
            report = validate(exported, source, atol=atol, batches=batches, seed=seed)
        report.title = f"{out} ({detected.preset}, {detected.kind}, {precision})\n{report.title}"
        if not report.passed and not keep_invalid:
            raise ValidationFailed(f"{out}: validation failed against the {SOURCE_TWIN[fmt]} twin; "
                                   "nothing written (--keep-invalid keeps the file)", report)
    report.notes += notes
    return Exported(out, fmt, task.name, detected.preset, detected.kind, precision, report, notes)


def settings_note(resolved) -> str:
    """The settings a graph was built with, and where each came from."""
    told = {FLAG: "given", FILE: "from the checkpoint", PRESET: "preset default"}
    shown = ", ".join(f"{name} {value} ({told[resolved.sources[BY_NAME[name].field]]})"
                      for name, value in settings_record(resolved.config).items())
    return f"settings: {shown}"


def _write_onnx(source, tmp: Path, info, quantize, optimize, notes, log):
    from .onnx.export import OPSET, export_onnx, fuse_transformer, quantize_int8
    from .onnx.session import OnnxRunner

    task, config = source.info.task, source.info.config
    stages = [tmp.with_name(f"{tmp.name}.{stage}.onnx") for stage in ("fp32", "fused")]
    try:
        current = stages[0] if (quantize or optimize) else tmp
        log(f"exporting ONNX (opset {OPSET}, dynamic batch) from the torch twin")
        export_onnx(source.graph, task, config, current, info)
        notes.append(f"ONNX opset {OPSET}, inputs {', '.join(task.inputs)} with a dynamic batch axis 'batch'")
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
        for stage in stages:
            with contextlib.suppress(FileNotFoundError):
                stage.unlink()
    return OnnxRunner.open(tmp)
