"""Proof: forward (one twin's outputs to an .npz), parity (both twins against the reference), demo."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from ..errors import MaeconvError
from ..models.config import ALIASES, PRESETS, PRETRAIN, get_preset
from ..models.twins import FRAMEWORKS
from .base import cli, fail_unless, say
from .options import force_option, json_option, load_array, mode_option, seed_option, with_settings


@cli.command()
@click.argument("checkpoint")
@click.option("--images", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="(N, 3, H, W) float32 .npy, already normalised.")
@click.option("--noise", type=click.Path(dir_okay=False, path_type=Path),
              help="(N, L) .npy; the smallest values are the kept patches. Random if absent.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .npz.")
@with_settings
@click.option("--framework", type=click.Choice(FRAMEWORKS),
              help="Which twin runs (default: the checkpoint's own framework).")
@mode_option()
@force_option()
@json_option()
def forward(checkpoint, images, noise, out, settings, framework, mode, force, as_json):
    """Run the pretraining model and save loss, pred, mask, ids_restore, latent to an .npz."""
    import numpy as np

    from ..convert.outputs import check_target, staged
    from ..parity.runs import forward as run_forward

    inputs = [checkpoint, images, *([noise] if noise else [])]
    check_target(out, force, inputs=inputs)
    noise_array = None if noise is None else load_array(noise, "--noise")
    outputs, framework, preset = run_forward(checkpoint, load_array(images, "--images"), noise_array, settings,
                                             framework, mode, (str(images), str(noise)))
    with staged(out, force=force, inputs=inputs) as stage, open(stage.path(), "wb") as f:
        np.savez(f, **outputs)
    if as_json:
        click.echo(json.dumps({"output": str(out), "loss": float(outputs["loss"]), "framework": framework,
                               "preset": preset, "shapes": {k: list(v.shape) for k, v in outputs.items()}}))
    else:
        click.echo(f"wrote {out} (loss {float(outputs['loss']):.6f}, {framework}, {preset})")


@cli.command()
@click.argument("checkpoint")
@click.option("--batch", type=click.IntRange(1, 64), default=2, show_default=True)
@seed_option(default=0)
@with_settings
@mode_option()
@json_option("the report")
def parity(checkpoint, batch, seed, settings, mode, as_json):
    """Run both twins and the float64 reference on seeded inputs; non-zero exit on a failure."""
    from ..parity.runs import checkpoint_report

    report = checkpoint_report(checkpoint, batch, seed, settings, mode)
    click.echo(report.to_json() if as_json else report.to_text())
    fail_unless(report.passed)


PRETRAIN_PRESETS = sorted(name for name in [*PRESETS, *ALIASES] if get_preset(name).task == PRETRAIN)


@cli.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the demo files go, kept (default: a temporary directory, removed afterwards; "
                   "with --train: ./maeconv-demo).")
@click.option("--preset", default="mae_vit_base_patch16", show_default=True, type=click.Choice(PRETRAIN_PRESETS))
@click.option("--train", "train_photos", is_flag=True,
              help="Pretrain a tiny MAE on scikit-image's sample photographs with the MindSpore trainer, convert "
                   "and export it, and picture every runtime's reconstructions of held-out crops.")
@click.option("--epochs", type=click.IntRange(1), help="With --train: training epochs (default 4). A second run "
                                                        "in the same --workdir continues the finished training.")
@json_option("the parity report (with --train: the losses, times and files)")
def demo(workdir, preset, train_photos, epochs, as_json):
    """Build an official-layout checkpoint (seeded random weights), convert it, prove parity.
    With --train: the whole hub on real photographs (about 4 minutes on 2 CPU cores)."""
    given = click.get_current_context().get_parameter_source
    if train_photos:
        if given("preset").name != "DEFAULT":
            raise click.UsageError("--preset is for the seeded demo; --train trains mae_vit_tiny_patch8")
        return _photo_demo(workdir or Path("maeconv-demo"), epochs, as_json)
    if epochs is not None:
        raise click.UsageError("--epochs goes with --train")
    from ..parity.demo import run_demo

    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="maeconv-demo-") as tmp:
            report = run_demo(Path(tmp), preset, say)
        report.notes.append("the files above were in a temporary folder, now removed: --workdir DIR keeps them")
    else:
        _make_workdir(workdir)
        report = run_demo(workdir, preset, say)
    click.echo(report.to_json() if as_json else report.to_text())
    fail_unless(report.passed)


def _make_workdir(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MaeconvError(f"{workdir}: cannot create the work directory ({error.strerror or error})") from None


def _photo_demo(workdir: Path, epochs: int | None, as_json: bool) -> None:
    from ..runtimes.photos import DemoSize, run_photo_demo

    _make_workdir(workdir)
    size = DemoSize() if epochs is None else DemoSize(epochs=epochs)
    done = run_photo_demo(workdir, size, say)
    if as_json:
        click.echo(json.dumps({"losses": done.losses, "seconds": done.seconds, "picture": str(done.picture),
                               "files": {k: str(v) for k, v in done.files.items()}}, indent=2))
        return
    click.echo("masked-patch loss on the held-out crops (mean of 8, same masks):")
    for name, loss in done.losses.items():
        click.echo(f"  {name:<10} {loss:.4f}")
    click.echo(f"picture: {done.picture} (original | masked | each runtime's reconstruction)")
    click.echo(f"each runtime's 4-panel pictures: {done.workdir / 'pictures'}/<runtime>/")
    click.echo(f"models: {', '.join(str(done.files[k]) for k in ('mindspore', 'torch', 'onnx', 'mindir') if k in done.files)}")
    click.echo(f"all of it kept in {done.workdir}; times: " + ", ".join(f"{k} {v:.0f} s" for k, v in done.seconds.items()))
