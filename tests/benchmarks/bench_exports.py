"""Export time, file sizes and peak memory for ViT-B/L/H x task x runtime (ONNX, MindIR).

    python tests/benchmarks/bench_exports.py [--sizes base,large,huge] [--tasks features,pretrain,classify]
        [--runtimes onnx,mindir] [--dtype fp32] [--dir DIR] [--keep]

Writes seeded checkpoints in the official layout (a full pretraining file per size, and a
fine-tuned classifier for `classify`), then runs `maeconv export RUNTIME CKPT OUT --task T` once
per cell, one at a time, each in a fresh process. Peak RSS is the largest resident set of any
process of the export (the command and the child interpreter its source side runs in; the
command waits at well under 1 GB while the child works), as wait4 reports it. Prints one
table: wall time, the files written and their total size, peak RSS and its ratio to the
checkpoint's weights (the goal: at most 2.5x). Disk: up to 2.6 GB per checkpoint and per
export of huge; exports are deleted after they are measured unless --keep.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESETS = {"base": ("mae_vit_base_patch16", "vit_base_patch16"),
           "large": ("mae_vit_large_patch16", "vit_large_patch16"),
           "huge": ("mae_vit_huge_patch14", "vit_huge_patch14")}
SUFFIX = {"onnx": "h.onnx", "mindir": "h.mindir"}


WRITE = """import sys
sys.path.insert(0, sys.argv[1])
from helpers import save_official, seeded_state
save_official(sys.argv[2], seeded_state(sys.argv[3]))
"""


def checkpoint(folder: Path, size: str, task: str) -> Path:
    """The seeded checkpoint a task exports from: the full file, or a classifier for classify.
    Written by another process: a forked child's peak RSS counts the pages it shares with its
    parent until it execs, so this process must stay small."""
    kind = "classifier" if task == "classify" else "full"
    path = folder / f"{size}_{kind}.pth"
    if not path.exists():
        subprocess.run([sys.executable, "-c", WRITE, str(Path(__file__).resolve().parents[1]), str(path),
                        PRESETS[size][kind == "classifier"]], check=True)
    return path


def weights_bytes(path: Path) -> int:
    from maeconv.convert.pipeline import load_canonical  # headers only: this process stays small

    return sum(ref.nbytes for ref in load_canonical(path).refs.values())


def measure(command: list[str]) -> tuple[float, int, int, str]:
    """(wall seconds, peak RSS bytes of any process of the command, exit status, stderr tail)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)  # ru_maxrss covers the children it waited for
    seconds = time.perf_counter() - start
    tail = process.stderr.read().strip().splitlines()[-1:] if process.stderr else []
    return seconds, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status), " ".join(tail)


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def run_cell(work: Path, size: str, task: str, runtime: str, dtype: str, keep: bool) -> dict:
    source = checkpoint(work, size, task)
    out_dir = work / f"{size}_{task}_{runtime}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    maeconv = [sys.executable, "-c", "from maeconv.cli import main; main()"]
    command = [*maeconv, "export", runtime, str(source), str(out_dir / SUFFIX[runtime]), "--task", task,
               "--dtype", dtype, "--seed", "0"]
    seconds, peak, code, tail = measure(command)
    files = files_of(out_dir)
    row = {"size": size, "task": task, "runtime": runtime, "seconds": seconds, "peak": peak, "code": code,
           "files": [str(f.relative_to(out_dir)) for f in files], "bytes": sum(f.stat().st_size for f in files),
           "weights": weights_bytes(source), "tail": tail}
    if not keep:
        shutil.rmtree(out_dir)
    return row


def print_table(rows: list[dict]) -> None:
    header = ("size", "task", "runtime", "time s", "files", "size GB", "peak RSS GB", "x weights")
    lines = [header]
    for r in rows:
        files = " + ".join(r["files"]) if r["code"] == 0 else f"FAILED ({r['tail']})"
        lines.append((r["size"], r["task"], r["runtime"], f"{r['seconds']:.0f}", files, f"{r['bytes'] / 1e9:.2f}",
                      f"{r['peak'] / 1e9:.2f}", f"{r['peak'] / r['weights']:.2f}"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print("| " + " | ".join(str(cell).ljust(width) for cell, width in zip(line, widths)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="base,large,huge")
    parser.add_argument("--tasks", default="features,pretrain,classify")
    parser.add_argument("--runtimes", default="onnx,mindir")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    parser.add_argument("--dir", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the exports.")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench_exports_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GLOG_v", "3")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; dtype {args.dtype}; "
          f"work folder {work}", flush=True)
    rows = []
    for size in args.sizes.split(","):
        for task in args.tasks.split(","):
            for runtime in args.runtimes.split(","):
                rows.append(run_cell(work, size, task, runtime, args.dtype, args.keep))
                r = rows[-1]
                print(f"{size} {task} {runtime}: {r['seconds']:.0f} s, peak {r['peak'] / 1e9:.2f} GB "
                      f"({r['peak'] / r['weights']:.2f}x), {r['bytes'] / 1e9:.2f} GB in {len(r['files'])} files"
                      + ("" if r["code"] == 0 else f", FAILED: {r['tail']}"), flush=True)
    print_table(rows)
    if args.dir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
