"""`maeconv demo`: the whole job on an embedded default, since real weights can't be downloaded here."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ..convert.formats import read_checkpoint
from ..convert.verify import same_tensors
from ..convert.pipeline import Options, convert, load_canonical
from ..convert.twins import TORCH, create_model
from ..models.config import ENCODER, get_preset
from .compare import Report, Row
from .twins import GRAPH, check_pretrain


def write_official_checkpoint(path: Path, preset: str, seed: int = 0) -> None:
    """A checkpoint in the layout the reference training code writes: {'model': ..., 'args': ...}."""
    import torch

    torch.manual_seed(seed)
    model = create_model(get_preset(preset).config, get_preset(preset).task, TORCH)
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model=preset, mask_ratio=0.75),
                "epoch": 799}, path)


def run_demo(workdir: Path, preset: str = "mae_vit_base_patch16", log: Callable[[str], None] = print) -> Report:
    source = workdir / f"{preset}_seeded.pth"
    log(f"writing {source} (official layout, seeded random weights)")
    write_official_checkpoint(source, preset)
    log("converting torch -> MindSpore")
    converted = convert(source, workdir / f"{preset}_seeded.ckpt", options=Options(force=True))
    log("converting MindSpore -> torch")
    back = convert(converted.output, workdir / f"{preset}_roundtrip.pth", options=Options(force=True))
    differ = same_tensors(read_checkpoint(source).tensors, read_checkpoint(back.output).tensors)
    log("running both twins and the float64 reference")
    loaded = load_canonical(converted.output)
    report = check_pretrain(loaded.state, loaded.detected.config, mode=GRAPH,
                            encoder_only=loaded.detected.kind == ENCODER)
    report.title = f"{converted.output} ({converted.preset}, {converted.kind})\n{report.title}"
    report.notes.append(f"round trip torch -> MindSpore -> torch: {converted.tensors} tensors, "
                        + ("all bit-identical" if not differ else f"{len(differ)} DIFFER (e.g. {differ[0]})"))
    if differ:
        report.rows.append(Row("torch -> MindSpore -> torch", f"{len(differ)} tensors", float("inf"), float("inf"),
                               "bit-identical", False))
    return report
