"""Conversion speed and memory: every scheme x format as source and as target, against `cp`.

    python tests/benchmarks/bench_convert.py [--preset mae_vit_huge_patch14] [--dir DIR] [--repeat 3]
                                             [--only TEXT] [--naive]

Builds a full checkpoint of the preset in the official layout (random weights; 2.6 GB for huge),
then, on the same disk, one at a time, each command in its own process with `sync` before it:

- as source: the checkpoint is written (untimed) in each scheme x format (torch .pth,
  safetensors, MindSpore .ckpt, Hugging Face directory, sharded Hugging Face directory), and
  `maeconv convert` of that into the official torch file is timed, beside `cp` of it;
- as target: `maeconv convert` of the official torch file into each scheme x format is timed,
  beside `cp` of the official file.

A conversion and its `cp` run in turn, `--repeat` times each (the order reversed every other
round); the best of each is reported. Each timed command starts right after another process has
touched and freed 1.25x the file in memory (`--no-warm`: not): on a virtual machine whose host takes
back the memory a guest frees (free page reporting), writing 2.6 GB into pages the host took back
cost 3.5-9 s against about 1 s into pages just freed, and which of the two a command got depended
on what ran before it (back to back, runs alternated slow and quick). Warm, both `cp` and maeconv
write into pages just freed, as on a machine whose memory is its own.

Each row is held to its goal: paths that only rename (and copy bytes) <= 1.2x `cp` of the same
bytes, paths that transpose or split <= 2.0x; peak RSS (the command's maximum resident set) below
0.1x the file. `--dry-run --json` of each conversion tells which transforms it runs. The
sharded directories use --max-shard-size of a third of the file (the default 5GB would not
shard even ViT-H). `--naive` adds the naive pipeline (load everything, rename,
mindspore.save_checkpoint) for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

NAIVE = r"""
import sys, torch, mindspore as ms
from maeconv.convert.schemes import MINDSPORE
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)["model"]
names = {s.canonical: s.foreign[0] for s in MINDSPORE.plan_from_canonical(state)}
ms.save_checkpoint([{"name": names[k], "data": ms.Tensor(v.numpy())} for k, v in state.items()], sys.argv[2])
"""

MEASURE = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(time.perf_counter() - start, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, code)
"""

MAECONV = [sys.executable, "-m", "maeconv"]
RENAME_GOAL, TRANSFORM_GOAL, RSS_GOAL = 1.2, 2.0, 0.1


@dataclass(frozen=True)
class Layout:
    """One scheme x format: how a file of it is named and written."""

    scheme: str
    fmt: str          # pth | safetensors | ckpt | hf-dir | hf-sharded
    @property
    def label(self) -> str:
        return f"{self.scheme} {self.fmt}"

    def path(self, folder: Path, stem: str) -> Path:
        return folder / (stem if self.fmt.startswith("hf-") else f"{stem}.{self.fmt}")

    def flags(self, shard_size: int) -> list[str]:
        flags = ["--to", self.scheme]
        return flags + (["--max-shard-size", str(shard_size)] if self.fmt == "hf-sharded" else [])


OFFICIAL = Layout("facebook", "pth")


def layouts() -> list[Layout]:
    """Every scheme (the registry's, aliases aside) in every flat format, and hf's directories."""
    from maeconv.convert.schemes import SCHEMES

    return [Layout(scheme, fmt) for scheme in SCHEMES for fmt in ("pth", "safetensors", "ckpt")] + \
        [Layout("hf", "hf-dir"), Layout("hf", "hf-sharded")]


# Bytes of memory touched and freed right before each timed command (0: none); set from --warm.
warm_bytes = 0
WARM = "import numpy, sys; numpy.ones(int(sys.argv[1]), numpy.uint8)"


def measure(command: list[str]) -> tuple[float, int, float]:
    """(wall seconds, peak RSS bytes, CPU seconds) of a command run in a fresh process, after a sync
    and, with `warm_bytes`, right after another process touched and freed that much memory."""
    os.sync()  # every command starts with no earlier writes still going to the disk
    if warm_bytes:
        subprocess.run([sys.executable, "-c", WARM, str(warm_bytes)], check=True)
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True)
    seconds, rss_kb, cpu, code = out.stdout.split()
    if code != "0":
        raise SystemExit(f"command failed ({code}): {' '.join(command)}")
    return float(seconds), int(rss_kb) * 1024, float(cpu)


def best(command: list[str], repeat: int, output: Path | None) -> tuple[float, int, float]:
    """The best wall and CPU time of `repeat` runs, and the largest peak RSS."""
    return side_by_side([(command, output)], repeat)[0]


def side_by_side(commands: list[tuple[list[str], Path | None]], repeat: int) -> list[tuple[float, int, float]]:
    """`best` of each command, their runs taken in turn, the order reversed every other round (a, b,
    b, a, ...): on a virtual machine whose host backs memory lazily, the cost of writing to the page
    cache drifts by several times from one run to the next (a 2.6 GB `cp` took 0.9 s and 11 s on
    the same afternoon; back to back, runs alternate slow and quick), so a command and the `cp` it
    is held to are measured under the same conditions, several times."""
    results: list[list[tuple[float, int, float]]] = [[] for _ in commands]
    for round_ in range(repeat):
        order = list(enumerate(commands))
        for index, (command, output) in (order if round_ % 2 == 0 else order[::-1]):
            if output is not None:
                remove(output)
            results[index].append(measure(command))
    for _, output in commands:
        if output is not None:
            remove(output)
    return [(min(r[0] for r in runs), max(r[1] for r in runs), min(r[2] for r in runs)) for runs in results]


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size


def transforms(source: Path, target: Path, flags: list[str]) -> str:
    """The transforms the conversion runs, from its --dry-run mapping."""
    out = subprocess.run([*MAECONV, "convert", str(source), str(target), *flags, "--dry-run", "--json"],
                         capture_output=True, text=True, check=True)
    found = {t for row in json.loads(out.stdout)["mapping"] for t in row["transform"].split("+")}
    return "+".join(sorted(found - {"rename"})) or "rename"


def build_checkpoint(path: Path, preset: str) -> None:
    import numpy as np
    import torch

    from maeconv.models import FULL, checkpoint_shapes, get_config

    rng = np.random.default_rng(0)
    state = {name: torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
             for name, shape in checkpoint_shapes(get_config(preset), FULL).items()}
    torch.save({"model": state}, path)


def row(direction: str, layout: Layout, kind: str, run: tuple, cp: tuple, size: int) -> dict:
    """One conversion against cp of the same bytes: `run` and `cp` are `best`'s (wall, RSS, CPU)."""
    goal = RENAME_GOAL if kind == "rename" else TRANSFORM_GOAL
    seconds, rss, cpu = run
    ratio = seconds / cp[0]
    return {"direction": direction, "layout": layout.label, "transforms": kind, "seconds": seconds, "cp": cp[0],
            "x_cp": ratio, "cpu": cpu, "cp_cpu": cp[2], "goal": goal, "rss": rss, "rss_file": rss / size,
            "met": ratio <= goal and rss / size < RSS_GOAL}


def run_matrix(work: Path, official: Path, layouts: list[Layout], repeat: int, shard: int) -> list[dict]:
    rows = []
    size = size_of(official)
    cp_official = (["cp", str(official), str(work / "copy")], work / "copy")
    for layout in layouts:  # as source: layout -> the official torch file
        source = official if layout == OFFICIAL else layout.path(work, "source")
        if layout != OFFICIAL:
            subprocess.run([*MAECONV, "convert", str(official), str(source), *layout.flags(shard)], check=True,
                           capture_output=True)
        back = work / "back.pth"
        kind = transforms(source, back, ["--to", "facebook"])
        run, cp = side_by_side([([*MAECONV, "convert", str(source), str(back), "--to", "facebook"], back),
                                (["cp", "-r", str(source), str(work / "copy")], work / "copy")], repeat)
        rows.append(row("from", layout, kind, run, cp, size_of(source)))
        show(rows[-1])
        if layout != OFFICIAL:
            remove(source)
    for layout in layouts:  # as target: the official torch file -> layout
        target = layout.path(work, "target")
        kind = transforms(official, target, layout.flags(shard))
        run, cp = side_by_side([([*MAECONV, "convert", str(official), str(target), *layout.flags(shard)], target),
                                cp_official], repeat)
        rows.append(row("to", layout, kind, run, cp, size))
        show(rows[-1])
    return rows


def arrow(r: dict) -> str:
    return f"{r['layout']} -> facebook pth" if r["direction"] == "from" else f"facebook pth -> {r['layout']}"


def show(r: dict) -> None:
    print(f"  {arrow(r)}: {r['seconds']:.2f} s ({r['x_cp']:.2f} x cp), CPU {r['cpu']:.2f} s, {r['transforms']}, "
          f"peak RSS {r['rss'] / 2**20:.0f} MiB", flush=True)


def print_table(rows: list[dict]) -> None:
    print("| as | conversion | transforms | wall s | cp s | x cp | goal | CPU s | cp CPU s | peak RSS MiB | "
          "RSS / file | met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'source' if r['direction'] == 'from' else 'target'} | {arrow(r)} | {r['transforms']} | "
              f"{r['seconds']:.2f} | {r['cp']:.2f} | {r['x_cp']:.2f} | <= {r['goal']} | {r['cpu']:.2f} | "
              f"{r['cp_cpu']:.2f} | {r['rss'] / 2**20:.0f} | {r['rss_file']:.3f} | {'yes' if r['met'] else 'no'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mae_vit_huge_patch14")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the best is reported")
    parser.add_argument("--only", default="", help="only the scheme x format layouts whose label holds this text")
    parser.add_argument("--naive", action="store_true", help="add the naive pipeline (about 20 s a run for huge)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--no-warm", dest="warm", action="store_false",
                        help="time each command without first touching and freeing memory (see above)")
    args = parser.parse_args()
    global warm_bytes
    work = Path(tempfile.mkdtemp(prefix="maeconv-bench-", dir=args.dir))
    try:
        official = work / "official.pth"
        print(f"building {args.preset} full checkpoint in {work} ...", flush=True)
        build_checkpoint(official, args.preset)
        size = official.stat().st_size
        warm_bytes = size + size // 4 if args.warm else 0
        chosen = [layout for layout in layouts() if args.only in layout.label]
        rows = run_matrix(work, official, chosen, args.repeat, size // 3)
        print(f"\n{args.preset} full checkpoint: {size / 1e9:.2f} GB, best of {args.repeat} runs each"
              f"{f', each right after {warm_bytes / 1e9:.1f} GB of memory was touched and freed' if warm_bytes else ''}\n")
        print_table(rows)
        if args.naive:
            seconds, rss, _ = best([sys.executable, "-c", NAIVE, str(official), str(work / "naive.ckpt")],
                                   args.repeat, work / "naive.ckpt")
            print(f"\nnaive (load all, save_checkpoint): {seconds:.2f} s, peak RSS {rss / 2**20:.0f} MiB")
        print(f"\ngoals: rename-only <= {RENAME_GOAL} x cp, transpose/split <= {TRANSFORM_GOAL} x cp, "
              f"peak RSS < {RSS_GOAL} x file")
        if args.json:
            args.json.write_text(json.dumps({"preset": args.preset, "bytes": size, "rows": rows}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
