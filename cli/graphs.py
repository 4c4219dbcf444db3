"""Exported graphs: `export <runtime>` (one subcommand per exporting runtime of the registry) and
`predict` in any runtime."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..errors import MaeconvError
from ..runtimes.registry import EXPORTED, NAMES, RUNTIMES
from .base import cli, say
from .options import Finite, force_option, json_option, load_array, options, seed_option, with_settings

TASK_NAMES = ("pretrain", "features", "classify")
DEFAULT_ATOLS = ", ".join(f"{RUNTIMES[name].atol:g} {RUNTIMES[name].label}" for name in EXPORTED)

export_options = options(
    click.argument("checkpoint"),
    click.argument("out", type=click.Path(dir_okay=False, path_type=Path)),
    click.option("--task", required=True, type=click.Choice(TASK_NAMES),
                 help="pretrain: (images, noise) -> loss, pred, mask; features: images -> tokens, pooled; "
                      "classify: images -> logits."),
    click.option("--atol", type=Finite(0), default=None,
                 help=f"Validation tolerance per output (default {DEFAULT_ATOLS})."),
    seed_option(help="Seed of the validation inputs (default: fresh)."),
    click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
                 help="Precision of the weights and arithmetic; inputs and outputs stay float32. fp16 is "
                      "validated by cosine similarity and top-1 agreement; bf16 is refused (no runtime here "
                      "runs it)."),
    click.option("--min-cosine", type=Finite(-1, 1), default=0.99, show_default=True,
                 help="int8, fp16: lowest cosine similarity."),
    click.option("--min-top1", type=Finite(0, 1), default=0.75, show_default=True,
                 help="int8, fp16: lowest top-1 agreement."),
    click.option("--keep-invalid", is_flag=True, help="Keep the file even if validation fails (exit 1)."),
    force_option(),
    json_option("the validation report"),
    with_settings,
)


@cli.group("export")
def export_group():
    """Export a checkpoint to ONNX or MindIR for one task, validated against its source twin."""


def _runtime_option(option):
    if option.choices:
        return click.option(f"--{option.name}", type=click.Choice(option.choices), default=None, help=option.help)
    return click.option(f"--{option.name}", is_flag=True, help=option.help)


def _export_command(runtime) -> None:
    @export_group.command(runtime.name, help=runtime.export_help)
    @export_options
    @options(*map(_runtime_option, runtime.export_options))
    def command(checkpoint, out, task, as_json, **chosen):
        _export(runtime.name, checkpoint, out, task, as_json, **chosen)


def _export(fmt, checkpoint, out, task, as_json, **chosen):
    from ..runtimes.export import ValidationFailed, export

    start = time.perf_counter()
    try:
        done = export(checkpoint, out, fmt, task, log=say, **chosen)
    except ValidationFailed as failed:
        click.echo(failed.report.to_json() if as_json else failed.report.to_text())
        raise
    click.echo(done.report.to_json() if as_json else done.report.to_text())
    if not done.report.passed:
        raise MaeconvError(f"{out}: validation failed; file kept because of --keep-invalid")
    also = f" with {', '.join(str(f) for f in done.files[1:])}" if len(done.files) > 1 else ""
    say(f"wrote {done.path}{also} ({done.preset}, {done.kind}, task {done.task}, {done.precision}, validated) "
        f"in {time.perf_counter() - start:.1f} s")


for _name in EXPORTED:
    _export_command(RUNTIMES[_name])

RUNTIME_DEFAULTS = ", ".join(f"{name} for {RUNTIMES[name].suffix}" for name in EXPORTED)


@cli.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--runtime", type=click.Choice(NAMES), default=None,
              help=f"Default: {RUNTIME_DEFAULTS}, torch for a checkpoint.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("."),
              help="Directory for the pictures (default: the working directory).")
@click.option("--noise", type=click.Path(dir_okay=False, path_type=Path),
              help="(N, L) or (L,) .npy; the smallest values are the kept patches.")
@seed_option(help="Seed of the mask noise (default: fresh, printed).")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), help="Class names, one per line.")
@force_option("Overwrite existing pictures.")
@json_option()
@with_settings
def predict(model, images, runtime, out_dir, noise, seed, settings, labels, force, as_json):
    """Reconstruction pictures (original | masked | reconstruction | pasted) for a pretraining
    model, or the top-5 classes for a classifier."""
    import secrets

    from ..runtimes.predict import predict as run_predict, read_labels

    names = read_labels(labels)
    noise_array = load_array(noise, "--noise") if noise is not None else None
    if noise_array is None and seed is None:
        seed = secrets.randbelow(2**31)
    done = run_predict(model, images, runtime, out_dir, noise_array, str(noise), seed, settings, force,
                       names, str(labels))
    for note in done.notes:
        say(note)
    if as_json:
        click.echo(json.dumps({"task": done.task, "runtime": done.runtime, "written": [str(p) for p in done.written],
                               "top5": done.top5, "seed": seed if noise is None else None}))
    elif done.task == "classify":
        for image, top in zip(images, done.top5):
            click.echo(f"{image}: " + ", ".join(f"{label} {p:.3f}" for label, p in top))
    else:
        for path in done.written:
            click.echo(f"wrote {path}")
        if noise is None:
            say(f"mask seed {seed} (--seed {seed} draws the same masks)")
