"""The `maeconv` command line: argument parsing and printing only; the work is in library functions."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import click

os.environ.setdefault("GLOG_v", "3")  # MindSpore's runtime warnings are noise on a terminal

from ..models.config import ACTIVATION_NAMES, ALIASES, MAX_IMG_SIZE, PRESETS, PRETRAIN, get_preset  # noqa: E402
from .formats import MINDSPORE, TORCH  # noqa: E402
from .twins import FRAMEWORKS  # noqa: E402
from ..errors import MaeconvError, one_line  # noqa: E402
from .outputs import Interrupted, handle_signals  # noqa: E402
from .schemes import SCHEME_ALIASES, SCHEMES  # noqa: E402

SCHEME_CHOICES = [*SCHEMES, *SCHEME_ALIASES]

MODES = ("graph", "pynative")


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


def _show_library_notes() -> None:
    logger = logging.getLogger("maeconv")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        logger.addHandler(_NoteHandler())
        logger.propagate = False


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maeconv")
def cli():
    """MAE ViT checkpoints between PyTorch and MindSpore, with proof that nothing changed."""
    _show_library_notes()


def _run_convert(src, dst, fmt, options, as_json):
    from .pipeline import convert

    start = time.perf_counter()
    bar = None

    def start_progress(total_bytes: int):
        """A stderr progress bar over bytes (written, then verified) for large conversions."""
        nonlocal bar
        if total_bytes < (256 << 20):
            return None
        bar = click.progressbar(length=total_bytes, label="converting", file=sys.stderr)
        return bar.update

    try:
        done = convert(src, dst, fmt, options=options, log=say, progress=start_progress)
    finally:
        if bar is not None:
            bar.render_finish()
    seconds = time.perf_counter() - start
    if options.dry_run:
        _print_mapping(done, as_json)
        return
    if as_json:
        click.echo(json.dumps({**done.to_dict(), "seconds": round(seconds, 3)}))
        return
    for note in done.notes:
        say(f"note: {note}")
    for warning in done.warnings:
        say(f"warning: {warning}")
    click.echo(f"wrote {done.output} ({done.preset}, {done.kind}, {done.scheme} names, {done.tensors} tensors, "
               f"read back and verified) in {seconds:.1f} s")


def _print_mapping(done, as_json):
    if as_json:
        click.echo(json.dumps({**done.to_dict(), "mapping": done.mapping}, indent=2))
        return
    rows = [(" + ".join(r["source"]) or "-", " + ".join(r["target"]), "x".join(map(str, r["shape"])) or "scalar",
             r["dtype"], r["transform"]) for r in done.mapping]
    header = ("source", "target", "shape", "dtype", "transform")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for note in done.notes:
        click.echo(f"note: {note}")
    click.echo(f"dry run: {done.tensors} tensors would be written to {done.output} "
               f"({done.format}, {done.scheme} names); nothing written")


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
    for option in reversed(SETTING_OPTIONS.values()):
        command = option(command)
    return command


def with_options(options):
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


common_options = [
    click.option("--from", "source_scheme", type=click.Choice(SCHEME_CHOICES),
                 help="Naming scheme of the input (default: detected)."),
    click.option("--allow-unmapped", is_flag=True, help="Leave out names that map nowhere, and report them."),
    click.option("--dry-run", is_flag=True, help="Print the full name mapping; write nothing."),
    click.option("--force", is_flag=True, help="Overwrite an existing output."),
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
]


def _short_form(name: str, fmt: str, doc: str) -> None:
    """torch2ms / ms2torch: `convert` into one framework's own format and names."""
    @cli.command(name, help=doc)
    @click.argument("src")
    @click.argument("dst", required=False, type=click.Path(path_type=Path))
    @with_options(common_options)
    def command(src, dst, source_scheme, allow_unmapped, dry_run, force, as_json):
        from .pipeline import Options

        options = Options(source_scheme=source_scheme, allow_unmapped=allow_unmapped, dry_run=dry_run, force=force)
        _run_convert(src, dst, fmt, options, as_json)


_short_form("torch2ms", MINDSPORE, "Convert a PyTorch checkpoint (file or official name) to a MindSpore .ckpt "
                                   "with the MindSpore twin's names (default output: the input with .ckpt).")
_short_form("ms2torch", TORCH, "Convert a MindSpore .ckpt to a PyTorch checkpoint in the official "
                               "{'model': ...} layout (default output: the input with .pth).")


@cli.command("convert")
@click.argument("src")
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "scheme", type=click.Choice(SCHEME_CHOICES),
              help="Naming scheme of the output (default: the output format's own; a directory is hf).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), help="Cast floating-point tensors.")
@click.option("--img-size", type=click.IntRange(1, MAX_IMG_SIZE),
              help="Resize pos_embed for another resolution (bicubic); a multiple of the patch size.")
@click.option("--kind", type=click.Choice(["classifier"]), help="Make a fine-tuning initialisation.")
@click.option("--fc-norm-from-norm", is_flag=True, help="With --kind classifier: fc_norm copies the final norm.")
@click.option("--keep-optimizer", is_flag=True, help="Carry optimizer state where the target can hold it.")
@click.option("--max-shard-size", metavar="SIZE",
              help="A Hugging Face directory's weights over SIZE go into shards of at most SIZE, with "
                   "model.safetensors.index.json (5GB, 500MB, 2GiB, or bytes; default 5GB, as save_pretrained).")
@with_settings
@with_options(common_options)
def convert_command(src, dst, scheme, dtype, img_size, kind, fc_norm_from_norm, settings, keep_optimizer,
                    max_shard_size, source_scheme, allow_unmapped, dry_run, force, as_json):
    """Convert between any formats and naming schemes: the output's suffix picks the format
    (.pth/.bin torch, .safetensors, .ckpt MindSpore, no suffix: a Hugging Face directory). The
    model's settings are carried into the output (config.json, metadata, the torch file's args)."""
    from .pipeline import Options

    options = Options(scheme=scheme, source_scheme=source_scheme, dtype=dtype, img_size=img_size, kind=kind,
                      fc_norm_from_norm=fc_norm_from_norm, settings=settings,
                      allow_unmapped=allow_unmapped, keep_optimizer=keep_optimizer, max_shard_size=max_shard_size,
                      dry_run=dry_run, force=force)
    _run_convert(src, dst, None, options, as_json)


@cli.command()
@click.argument("name", required=False)
@click.option("--list", "list_names", is_flag=True, help="List the official checkpoint names.")
@click.option("--force", is_flag=True, help="Download again even if cached.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def download(name, list_names, force, as_json):
    """Fetch an official checkpoint into the cache: resumable; kept only when complete, matching its
    md5 prefix (where published) and parsing as its preset and kind. A Hugging Face Hub repo id
    (org/name[@revision]) is fetched into huggingface_hub's cache instead. MAECONV_DOWNLOAD_STALL_S,
    MAECONV_DOWNLOAD_DEADLINE_S and MAECONV_DOWNLOAD_MAX_BYTES bound the wait and the size."""
    from .hub import CHECKPOINTS, cache_dir, url_of
    from .pipeline import fetch_official

    if list_names or not name:
        entries = [{"name": known, "kind": entry.kind, "preset": entry.preset, "url": url_of(known)}
                   for known, entry in sorted(CHECKPOINTS.items())]
        if as_json:
            click.echo(json.dumps(entries, indent=2))
            return
        for row in entries:
            click.echo(f"{row['name']:32s} {row['kind']:10s} {row['preset']:24s} {row['url']}")
        return
    bar = None

    def progress(total, advance):
        """Called first with the file's size (0: the server does not say) and the bytes already there."""
        nonlocal bar
        if bar is None and total:
            bar = click.progressbar(length=total, label=name, file=sys.stderr)
        if bar is not None:
            bar.update(advance)

    from . import hfhub

    if name not in CHECKPOINTS and (name.startswith(hfhub.PREFIX) or hfhub.repo_of(name)):
        repo = hfhub.parse(name, explicit=True)
        path = hfhub.fetch(repo, log=say)
        click.echo(json.dumps({"name": str(repo), "path": str(path)}) if as_json
                   else f"{repo}: {path} (Hugging Face cache {hfhub.cache_dir()})")
        return
    path = fetch_official(name, log=say, progress=progress, force=force)
    if bar is not None:
        bar.render_finish()
    click.echo(json.dumps({"name": name, "path": str(path), "bytes": path.stat().st_size}) if as_json
               else f"{name}: {path} (cache {cache_dir()})")


@cli.command()
@click.argument("file")
@click.option("--from", "source_scheme", type=click.Choice(SCHEME_CHOICES), help="Naming scheme (default: detected).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def inspect(file, source_scheme, as_json):
    """Format, naming scheme, checkpoint kind, preset, key and parameter counts, dtypes; for an
    exported .onnx/.mindir graph its task, preset, precision, inputs, outputs and files."""
    from ..runtimes.runners import MINDIR, ONNX, runtime_of
    from .pipeline import describe

    if runtime_of(file) in (ONNX, MINDIR):
        from ..runtimes.describe import describe_graph

        info = describe_graph(file)
    else:
        info = describe(file, source_scheme)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    width = max(map(len, info))
    for key, value in info.items():
        if key == "files":
            value = ", ".join(f"{k} ({v:,} bytes)" for k, v in value.items())
        elif key in ("inputs", "outputs") and isinstance(value, dict):
            value = ", ".join(f"{k} {v['dtype']} [{', '.join(map(str, v['shape']))}]" for k, v in value.items())
        elif key == "settings":
            value = ", ".join(f"{k} {v['value']} ({v['from']})" if isinstance(v, dict) else f"{k} {v}"
                              for k, v in value.items())
        elif key == "config":
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, dict):
            value = ", ".join(f"{k} x{v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        elif value is None:
            value = "unknown"
        elif isinstance(value, int) and key in ("parameters", "bytes"):
            value = f"{value:,}"
        click.echo(f"{key.ljust(width)}  {value}")


def _load_array(path: Path, what: str):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MaeconvError(f"{path}: no such file") from None
    except Exception as error:
        raise MaeconvError(f"{path}: not a readable .npy array for {what} ({error})") from None


def _framework_option():
    return click.option("--framework", type=click.Choice(FRAMEWORKS),
                        help="Which twin runs (default: the checkpoint's own framework).")


def _mode_option():
    return click.option("--mode", type=click.Choice(MODES), default="graph", show_default=True,
                        help="MindSpore execution mode.")


@cli.command()
@click.argument("checkpoint")
@click.option("--images", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="(N, 3, H, W) float32 .npy, already normalised.")
@click.option("--noise", type=click.Path(dir_okay=False, path_type=Path),
              help="(N, L) .npy; the smallest values are the kept patches. Random if absent.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .npz.")
@with_settings
@_framework_option()
@_mode_option()
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def forward(checkpoint, images, noise, out, settings, framework, mode, force, as_json):
    """Run the pretraining model and save loss, pred, mask, ids_restore, latent to an .npz."""
    import numpy as np

    from ..parity.twins import build_model, run_pretrain
    from .outputs import check_target, staged
    from .pipeline import load_canonical

    check_target(out, force, inputs=[checkpoint, images, *([noise] if noise else [])])
    loaded = load_canonical(checkpoint)
    config = loaded.settings(**settings).config
    _require_full(loaded, checkpoint)
    imgs = _load_array(images, "--images").astype(np.float32, copy=False)
    expected = (config.in_chans, config.img_size, config.img_size)
    if imgs.ndim != 4 or imgs.shape[1:] != expected:
        raise MaeconvError(f"{images}: shape {imgs.shape}, expected (N, {', '.join(map(str, expected))})")
    if noise is None:
        noise_arr = np.random.default_rng().random((imgs.shape[0], config.num_patches), dtype=np.float32)
    else:
        noise_arr = _load_array(noise, "--noise").astype(np.float32, copy=False)
        if noise_arr.shape != (imgs.shape[0], config.num_patches):
            raise MaeconvError(f"{noise}: shape {noise_arr.shape}, expected ({imgs.shape[0]}, {config.num_patches})")
    framework = framework or loaded.framework
    model = build_model(loaded.state, config, framework, mode)
    outputs = run_pretrain(model, framework, imgs, noise_arr)
    with staged(out, force=force, inputs=[checkpoint, images]) as stage, open(stage.path(), "wb") as f:
        np.savez(f, **outputs)
    if as_json:
        click.echo(json.dumps({"output": str(out), "loss": float(outputs["loss"]), "framework": framework,
                               "preset": loaded.detected.preset,
                               "shapes": {k: list(v.shape) for k, v in outputs.items()}}))
    else:
        click.echo(f"wrote {out} (loss {float(outputs['loss']):.6f}, {framework}, {loaded.detected.preset})")


def _require_full(loaded, checkpoint):
    from ..models.config import CLASSIFIER, ENCODER

    if loaded.detected.kind == ENCODER:
        raise MaeconvError(f"{checkpoint}: holds the encoder only (no decoder); this needs a full checkpoint")
    if loaded.detected.kind == CLASSIFIER:
        raise MaeconvError(f"{checkpoint}: is a fine-tuned classifier; this needs a pretraining checkpoint")


@cli.command()
@click.argument("checkpoint")
@click.option("--batch", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@with_settings
@_mode_option()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def parity(checkpoint, batch, seed, settings, mode, as_json):
    """Run both twins and the float64 reference on seeded inputs; non-zero exit on a failure."""
    report = _parity_report(checkpoint, batch, seed, settings, mode)
    click.echo(report.to_json() if as_json else report.to_text())
    if not report.passed:
        sys.exit(1)


def _parity_report(checkpoint, batch=2, seed=0, settings=None, mode="graph"):
    from ..models.config import CLASSIFIER, ENCODER
    from ..parity.twins import check_classifier, check_pretrain
    from .pipeline import load_canonical

    loaded = load_canonical(checkpoint)
    config = loaded.settings(**(settings or {})).config
    if loaded.detected.kind == CLASSIFIER:
        report = check_classifier(loaded.state, config, batch, seed, mode)
    else:
        report = check_pretrain(loaded.state, config, batch, seed, mode, loaded.detected.kind == ENCODER)
    report.title = f"{checkpoint} ({loaded.detected.preset}, {loaded.detected.kind})\n{report.title}"
    return report


@cli.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the demo files go (default: a temporary directory, removed afterwards).")
@click.option("--preset", default="mae_vit_base_patch16", show_default=True,
              type=click.Choice(sorted(name for name in [*PRESETS, *ALIASES] if get_preset(name).task == PRETRAIN)))
@click.option("--json", "as_json", is_flag=True, help="Print the parity report as JSON.")
def demo(workdir, preset, as_json):
    """Build an official-layout checkpoint (seeded random weights), convert it, prove parity."""
    from ..parity.demo import run_demo

    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="maeconv-demo-") as tmp:
            report = run_demo(Path(tmp), preset, say)
    else:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MaeconvError(f"{workdir}: cannot create the work directory ({error.strerror or error})") from None
        report = run_demo(workdir, preset, say)
    click.echo(report.to_json() if as_json else report.to_text())
    if not report.passed:
        sys.exit(1)


def _card_option(name: str, **kwargs):
    """One of the flags of MindFormers' run scripts, as the model card writes it (and with hyphens)."""
    return click.option(f"--{name}", f"--{name.replace('_', '-')}", name, default=None, **kwargs)


@cli.command(context_settings={"ignore_unknown_options": True},
             epilog="Any config key can be overridden by its dotted path after the options: --train.epochs 2, "
                    "--data.path DIR, --checkpoint.resume null (values are YAML).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML recipe (see runtimes/ascend/configs/).")
@click.option("--run_mode", "--run-mode", type=click.Choice(["train", "finetune", "eval", "predict"]),
              help="Default: the config's run_mode.")
@click.option("--make_synthetic", "--make-synthetic", "make_synthetic", type=click.Path(path_type=Path),
              help="Write a small synthetic ImageNet-layout dataset to this folder and exit.")
@_card_option("train_dataset_dir", help="Training images: the dataset root or its train split folder.")
@_card_option("eval_dataset_dir", help="Evaluation images: the dataset root or its val split folder.")
@_card_option("predict_data", help="predict: an image, a URL, or a folder of images.")
@_card_option("load_checkpoint", help="The checkpoint to start from (train, finetune) or to run (eval, predict).")
@_card_option("device_id", type=click.IntRange(0))
@_card_option("device_target", type=click.Choice(["CPU", "GPU", "Ascend"]))
@_card_option("use_parallel", type=click.BOOL, help="True: refuse to run unless started as one of several workers.")
@_card_option("output_dir", help="Where the run writes (checkpoints, logs, pictures).")
@click.option("--workers", type=click.IntRange(1), help="Start this many data-parallel workers here (msrun, joined).")
@click.option("--nodes", type=click.IntRange(1), default=1, show_default=True, help="With --workers: machines.")
@click.option("--node_rank", "--node-rank", type=click.IntRange(0), default=0, show_default=True)
@click.option("--master_addr", "--master-addr", default="127.0.0.1", show_default=True)
@click.option("--master_port", "--master-port", type=click.IntRange(1, 65535), default=8118, show_default=True)
@click.option("--log_dir", "--log-dir", default="msrun_log", show_default=True, help="With --workers: worker logs.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def train(ctx, config_path, run_mode, make_synthetic, predict_data, workers, nodes, node_rank, master_addr,
          master_port, log_dir, overrides, **card):
    """MindSpore pretraining, fine-tuning, evaluation and reconstruction pictures."""
    from ..runtimes.ascend.api import card_overrides, predict_inputs
    from ..runtimes.ascend.config import ConfigError, load_config, merge_trees, parse_overrides

    if make_synthetic:
        from ..runtimes.ascend.data import make_synthetic_imagenet

        click.echo(f"wrote a synthetic ImageNet-layout dataset to {make_synthetic_imagenet(make_synthetic)}")
        return
    if config_path is None:
        raise click.UsageError("--config is required")
    try:
        tree = merge_trees(card_overrides(**card), parse_overrides(list(overrides)))
        cfg = load_config(config_path, merge_trees(tree, {"run_mode": run_mode} if run_mode else {}))
        if workers:  # the workers read the same arguments; the config is only checked here
            from ..runtimes.ascend.launch import Cluster, launch

            arguments = ["--config", str(config_path), *(["--run_mode", run_mode] if run_mode else []),
                         *(["--predict_data", str(predict_data)] if predict_data else []),
                         *(f"--{name}={value}" for name, value in card.items() if value is not None), *overrides]
            ctx.exit(launch(Cluster(workers, nodes, node_rank, master_addr, master_port, log_dir), arguments))
        from ..runtimes.ascend.trainer import run_config

        run_config(cfg, predict_inputs(predict_data) if predict_data else None)
    except (ConfigError, FileNotFoundError) as error:
        raise MaeconvError(str(error)) from None


# --- export and predict: thin wrappers over maeconv.runtimes ---

TASK_NAMES = ("pretrain", "features", "classify")


def _export_options(fn):
    options = [
        click.argument("checkpoint"),
        click.argument("out", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--task", required=True, type=click.Choice(TASK_NAMES),
                     help="pretrain: (images, noise) -> loss, pred, mask; features: images -> tokens, pooled; "
                          "classify: images -> logits."),
        click.option("--atol", type=Finite(0), default=None,
                     help="Validation tolerance per output (default 1e-4 ONNX, 1e-5 MindIR)."),
        click.option("--seed", type=SEED, default=None, help="Seed of the validation inputs (default: fresh)."),
        click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
                     help="Precision of the weights and arithmetic; inputs and outputs stay float32. fp16 is "
                          "validated by cosine similarity and top-1 agreement; bf16 is refused (no runtime here "
                          "runs it)."),
        click.option("--min-cosine", type=Finite(-1, 1), default=0.99, show_default=True,
                     help="int8, fp16: lowest cosine similarity."),
        click.option("--min-top1", type=Finite(0, 1), default=0.75, show_default=True,
                     help="int8, fp16: lowest top-1 agreement."),
        click.option("--keep-invalid", is_flag=True, help="Keep the file even if validation fails (exit 1)."),
        click.option("--force", is_flag=True, help="Overwrite an existing output."),
        click.option("--json", "as_json", is_flag=True, help="Print the validation report as JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return with_settings(fn)


def _export(fmt, checkpoint, out, task, as_json, **options):
    from ..runtimes.export import ValidationFailed, export

    start = time.perf_counter()
    try:
        done = export(checkpoint, out, fmt, task, log=say, **options)
    except ValidationFailed as failed:
        click.echo(failed.report.to_json() if as_json else failed.report.to_text())
        raise
    click.echo(done.report.to_json() if as_json else done.report.to_text())
    if not done.report.passed:
        raise MaeconvError(f"{out}: validation failed; file kept because of --keep-invalid")
    also = f" with {', '.join(str(f) for f in done.files[1:])}" if len(done.files) > 1 else ""
    say(f"wrote {done.path}{also} ({done.preset}, {done.kind}, task {done.task}, {done.precision}, validated) "
        f"in {time.perf_counter() - start:.1f} s")


@cli.group("export")
def export_group():
    """Export a checkpoint to ONNX or MindIR for one task, validated against its source twin."""


@export_group.command("onnx")
@_export_options
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Dynamic int8 (features, classify); validated by cosine similarity and top-1 agreement.")
@click.option("--optimize", is_flag=True,
              help="Store the graph fused by onnxruntime's transformer optimizer (SkipLayerNorm, BiasGelu).")
def export_onnx(checkpoint, out, task, as_json, **options):
    """From the torch twin; opset 18, dynamic batch axis, run with onnxruntime."""
    _export("onnx", checkpoint, out, task, as_json, **options)


@export_group.command("mindir")
@_export_options
def export_mindir(checkpoint, out, task, as_json, **options):
    """From the MindSpore twin; dynamic batch axis, loads with mindspore.load + nn.GraphCell."""
    _export("mindir", checkpoint, out, task, as_json, **options)


@cli.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--runtime", type=click.Choice(["torch", "mindspore", "onnx", "mindir"]), default=None,
              help="Default: onnx for .onnx, mindir for .mindir, torch for a checkpoint.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("."),
              help="Directory for the pictures (default: the working directory).")
@click.option("--noise", type=click.Path(dir_okay=False, path_type=Path),
              help="(N, L) or (L,) .npy; the smallest values are the kept patches.")
@click.option("--seed", type=SEED, default=None, help="Seed of the mask noise (default: fresh, printed).")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), help="Class names, one per line.")
@click.option("--force", is_flag=True, help="Overwrite existing pictures.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@with_settings
def predict(model, images, runtime, out_dir, noise, seed, settings, labels, force, as_json):
    """Reconstruction pictures (original | masked | reconstruction | pasted) for a pretraining
    model, or the top-5 classes for a classifier."""
    import secrets

    from ..runtimes.predict import predict as run_predict, read_labels

    names = read_labels(labels)
    noise_array = _load_array(noise, "--noise") if noise is not None else None
    if noise_array is None and seed is None:
        seed = secrets.randbelow(2**31)
    done = run_predict(model, images, runtime, out_dir, noise_array, str(noise), seed, settings, force,
                       names, str(labels))
    for note in done.notes:
        say(note)
    if as_json:
        click.echo(json.dumps({"task": done.task, "runtime": done.runtime, "written": [str(p) for p in done.written],
                               "top5": done.top5, "seed": seed if noise is None else None}))
        return
    if done.task == "classify":
        for image, top in zip(images, done.top5):
            click.echo(f"{image}: " + ", ".join(f"{label} {p:.3f}" for label, p in top))
        return
    for path in done.written:
        click.echo(f"wrote {path}")
    if noise is None:
        say(f"mask seed {seed} (--seed {seed} draws the same masks)")


def train_main():
    """runtimes/ascend/train.py: the train command alone."""
    handle_signals()
    _show_library_notes()
    try:
        train(prog_name="train.py")
    except Interrupted as interrupted:
        say(f"Error: interrupted by {interrupted}")
        sys.exit(128 + interrupted.signum)


def main():
    handle_signals()
    try:
        cli(prog_name="maeconv")
    except Interrupted as interrupted:
        say(f"Error: interrupted by {interrupted}; unfinished outputs removed")
        sys.exit(128 + interrupted.signum)


if __name__ == "__main__":
    main()
