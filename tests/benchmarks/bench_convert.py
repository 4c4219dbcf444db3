"""Conversion speed and memory: maeconv torch2ms against `cp` and against a naive pipeline.

    python tests/benchmarks/bench_convert.py [--preset mae_vit_huge_patch14] [--dir DIR] [--repeat 3] [--skip-naive]

Builds a full checkpoint of the preset in the official layout (random weights, about 2.6 GB
for huge), then times, in one run and on the same disk: `cp` of the file, `cp` followed by
`cmp` (a copy verified the way maeconv verifies), `maeconv torch2ms` (streaming, read back and
compared), `maeconv ms2torch` of its output (the way back, also streaming), and the naive pipeline (torch.load of everything, rename,
mindspore.save_checkpoint of the list). Each command runs in its own process; its peak RSS is
that process's maximum resident set. Prints a table of wall time and peak RSS with ratios.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
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
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def measure(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a command run in a fresh process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True)
    seconds, rss_kb, code = out.stdout.split()
    if code != "0":
        raise SystemExit(f"command failed ({code}): {' '.join(command)}")
    return float(seconds), int(rss_kb) * 1024


def build_checkpoint(path: Path, preset: str) -> None:
    import numpy as np
    import torch

    from maeconv.models import FULL, checkpoint_shapes, get_config

    rng = np.random.default_rng(0)
    state = {name: torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
             for name, shape in checkpoint_shapes(get_config(preset), FULL).items()}
    torch.save({"model": state}, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mae_vit_huge_patch14")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the best is reported")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive pipeline (about 15 s a run)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="maeconv-bench-", dir=args.dir))
    try:
        source = work / "source.pth"
        print(f"building {args.preset} full checkpoint in {work} ...", flush=True)
        build_checkpoint(source, args.preset)
        size = source.stat().st_size
        converted = work / "source.ckpt"  # the way back starts from maeconv's own output
        subprocess.run([sys.executable, "-m", "maeconv", "torch2ms", str(source), str(converted)],
                       check=True, capture_output=True)
        commands = {
            "cp": ["cp", str(source), str(work / "copy.pth")],
            # a copy that is also read back and compared, with the standard tools
            "cp + cmp": ["sh", "-c", f"cp {source} {work / 'copy.pth'} && cmp {source} {work / 'copy.pth'}"],
            "maeconv torch2ms": [sys.executable, "-m", "maeconv", "torch2ms", str(source),
                                 str(work / "maeconv.ckpt")],
            "maeconv ms2torch (the way back)": [sys.executable, "-m", "maeconv", "ms2torch",
                                                str(converted), str(work / "back.pth")],
        }
        if not args.skip_naive:
            commands["naive (load all, save_checkpoint)"] = [sys.executable, "-c", NAIVE, str(source),
                                                             str(work / "naive.ckpt")]
        results = {name: (float("inf"), 0) for name in commands}
        for _ in range(args.repeat):
            for name, command in commands.items():
                for stale in ("copy.pth", "maeconv.ckpt", "back.pth", "naive.ckpt"):
                    (work / stale).unlink(missing_ok=True)
                os.sync()  # every command starts with no earlier writes still going to the disk
                seconds, rss = measure(command)
                best_seconds, best_rss = results[name]
                results[name] = (min(seconds, best_seconds), max(rss, best_rss))
                print(f"  {name}: {seconds:.2f} s, peak RSS {rss / 2**20:.0f} MiB", flush=True)
        cp_seconds = results["cp"][0]
        print(f"\n{args.preset} full checkpoint: {size / 1e9:.2f} GB, best of {args.repeat} runs each\n")
        print(f"{'method':36s} {'wall s':>8s} {'x cp':>6s} {'peak RSS MiB':>13s} {'RSS / file':>10s}")
        for name, (seconds, rss) in results.items():
            print(f"{name:36s} {seconds:8.2f} {seconds / cp_seconds:6.2f} {rss / 2**20:13.0f} {rss / size:10.2f}")
        print("\ngoal: maeconv torch2ms <= 1.5 x cp, peak RSS < 0.6 x file size")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
