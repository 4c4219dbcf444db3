"""Checkpoints: convert (and its short forms torch2ms, ms2torch), download, inspect."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ..convert.formats import MINDSPORE, TORCH
from ..convert.schemes import SCHEME_ALIASES, SCHEMES
from ..models.config import MAX_IMG_SIZE
from .base import cli, quick_exit_when_done, say
from .options import force_option, json_option, options, with_settings

SCHEME_CHOICES = [*SCHEMES, *SCHEME_ALIASES]
PROGRESS_FROM_BYTES = 256 << 20

conversion_options = options(
    click.option("--from", "source_scheme", type=click.Choice(SCHEME_CHOICES),
                 help="Naming scheme of the input (default: detected)."),
    click.option("--allow-unmapped", is_flag=True, help="Leave out names that map nowhere, and report them."),
    click.option("--dry-run", is_flag=True, help="Print the full name mapping; write nothing."),
    force_option(),
    json_option(),
)


def _run_convert(src, dst, fmt, conversion, as_json):
    from ..convert.pipeline import convert

    quick_exit_when_done()
    start = time.perf_counter()
    bar = None

    def start_progress(total_bytes: int):
        """A stderr progress bar over bytes (written, then verified) for large conversions."""
        nonlocal bar
        if total_bytes < PROGRESS_FROM_BYTES:
            return None
        bar = click.progressbar(length=total_bytes, label="converting", file=sys.stderr)
        return bar.update

    try:
        done = convert(src, dst, fmt, options=conversion, log=say, progress=start_progress)
    finally:
        if bar is not None:
            bar.render_finish()
    seconds = time.perf_counter() - start
    if conversion.dry_run:
        _print_mapping(done, as_json)
    elif as_json:
        click.echo(json.dumps({**done.to_dict(), "seconds": round(seconds, 3)}))
    else:
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
    print_table(("source", "target", "shape", "dtype", "transform"), rows)
    for note in done.notes:
        click.echo(f"note: {note}")
    click.echo(f"dry run: {done.tensors} tensors would be written to {done.output} "
               f"({done.format}, {done.scheme} names); nothing written")


def print_table(header, rows) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _short_form(name: str, fmt: str, doc: str) -> None:
    """torch2ms / ms2torch: `convert` into one framework's own format and names."""
    @cli.command(name, help=doc)
    @click.argument("src")
    @click.argument("dst", required=False, type=click.Path(path_type=Path))
    @conversion_options
    def command(src, dst, source_scheme, allow_unmapped, dry_run, force, as_json):
        from ..convert.pipeline import Options

        conversion = Options(source_scheme=source_scheme, allow_unmapped=allow_unmapped, dry_run=dry_run, force=force)
        _run_convert(src, dst, fmt, conversion, as_json)


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
@click.option("--kind", type=click.Choice(["classifier", "encoder"]),
              help="classifier: make a fine-tuning initialisation; encoder: leave a full checkpoint's decoder out.")
@click.option("--fc-norm-from-norm", is_flag=True, help="With --kind classifier: fc_norm copies the final norm.")
@click.option("--keep-optimizer", is_flag=True, help="Carry optimizer state where the target can hold it.")
@click.option("--max-shard-size", metavar="SIZE",
              help="A Hugging Face directory's weights over SIZE go into shards of at most SIZE, with "
                   "model.safetensors.index.json (5GB, 500MB, 2GiB, or bytes; default 5GB, as save_pretrained).")
@with_settings
@conversion_options
def convert_command(src, dst, scheme, dtype, img_size, kind, fc_norm_from_norm, settings, keep_optimizer,
                    max_shard_size, source_scheme, allow_unmapped, dry_run, force, as_json):
    """Convert between any formats and naming schemes: the output's suffix picks the format
    (.pth/.bin torch, .safetensors, .ckpt MindSpore, no suffix: a Hugging Face directory). The
    model's settings are carried into the output (config.json, metadata, the torch file's args)."""
    from ..convert.pipeline import Options

    conversion = Options(scheme=scheme, source_scheme=source_scheme, dtype=dtype, img_size=img_size, kind=kind,
                         fc_norm_from_norm=fc_norm_from_norm, settings=settings,
                         allow_unmapped=allow_unmapped, keep_optimizer=keep_optimizer,
                         max_shard_size=max_shard_size, dry_run=dry_run, force=force)
    _run_convert(src, dst, None, conversion, as_json)


@cli.command()
@click.argument("name", required=False)
@click.option("--list", "list_names", is_flag=True, help="List the official checkpoint names.")
@force_option("Download again even if cached.")
@json_option()
def download(name, list_names, force, as_json):
    """Fetch an official checkpoint into the cache: resumable; kept only when complete, matching its
    md5 prefix (where published) and parsing as its preset and kind. A Hugging Face Hub repo id
    (org/name[@revision]) is fetched into huggingface_hub's cache instead. MAECONV_DOWNLOAD_STALL_S,
    MAECONV_DOWNLOAD_DEADLINE_S and MAECONV_DOWNLOAD_MAX_BYTES bound the wait and the size."""
    from ..convert.hub import CHECKPOINTS, cache_dir, url_of
    from ..convert.pipeline import fetch_official

    if list_names or not name:
        entries = [{"name": known, "kind": entry.kind, "preset": entry.preset, "url": url_of(known)}
                   for known, entry in sorted(CHECKPOINTS.items())]
        if as_json:
            click.echo(json.dumps(entries, indent=2))
        for row in [] if as_json else entries:
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

    from ..convert import hfhub

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
@json_option()
def inspect(file, source_scheme, as_json):
    """Format, naming scheme, checkpoint kind, preset, key and parameter counts, dtypes; for an
    exported .onnx/.mindir graph its task, preset, kind, settings, precision, opset, inputs and
    outputs (dtype, shape) and files."""
    from ..runtimes.describe import describe

    info = describe(file, source_scheme)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    width = max(map(len, info))
    for key, value in info.items():
        click.echo(f"{key.ljust(width)}  {_shown(key, value)}")


def _shown(key: str, value) -> str:
    if key == "files":
        return ", ".join(f"{k} ({v:,} bytes)" for k, v in value.items())
    if key == "config":
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if key in ("inputs", "outputs") and isinstance(value, dict):  # a graph's: name dtype [shape]
        return ", ".join(f"{k} {v['dtype']} [{', '.join(map(str, v['shape']))}]" for k, v in value.items())
    if key == "settings":  # a checkpoint's say where each comes from
        return ", ".join(f"{k} {v['value']} ({v['from']})" if isinstance(v, dict) else f"{k} {v}"
                         for k, v in value.items())
    if isinstance(value, dict):
        return ", ".join(f"{k} x{v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(value) or "-"
    if value is None:
        return "unknown"
    if isinstance(value, int) and key in ("parameters", "bytes"):
        return f"{value:,}"
    return str(value)
