"""Data-parallel scaling on one machine: samples/s of `maeconv train` with 1, 2 and 4 CPU workers
(msrun), for the tiny and the base config, and the scaling efficiency (rate / (workers x the
1-worker rate)). Not collected by pytest; prints a Markdown table with the core count and the load.

    .venv/bin/python tests/benchmarks/bench_scaling.py [--models tiny base] [--workers 1 2 4]

The rate is taken from log.jsonl between the first and the last logged step, so start-up, the
rendezvous and the first step's compilation are left out. Batch per worker is fixed (32 tiny,
2 base), so the global batch grows with the workers.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "runtimes" / "ascend" / "configs"
BIN = Path(sys.executable).parent
MODELS = {
    "tiny": (CONFIGS / "mae_vit_tiny_patch8_synthetic.yaml", 32,
             ["--train.max_steps", "48", "--log.log_steps", "8"]),
    "base": (CONFIGS / "mae_vit_base_patch16_800ep.yaml", 2,
             ["--device_target", "CPU", "--train.precision", "fp32", "--train.accum_iter", "1",
              "--train.max_steps", "6", "--log.log_steps", "2"]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model: str, workers: int, data: Path, work: Path) -> dict:
    config, batch, extra = MODELS[model]
    output = work / f"{model}_{workers}"
    command = [str(BIN / "maeconv"), "train", "--config", str(config), "--data.path", str(data), "--output_dir",
               str(output), "--train.batch_size", str(batch), "--checkpoint.save_steps", "100000",
               "--checkpoint.resume", "null", "--log.plot", "false", "--data.num_workers", "2", *extra]
    if workers > 1:
        command[2:2] = ["--workers", str(workers), "--master_port", str(free_port()), "--log_dir",
                        str(work / f"msrun_{model}_{workers}")]
    env = {**os.environ, "GLOG_v": "3", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{model} x {workers}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r]
    first, last = steps[0], steps[-1]
    rate = (last["step"] - first["step"]) * batch * workers / (last["time"] - first["time"])
    return {"model": model, "workers": workers, "global_batch": batch * workers, "rate": rate, "wall": wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    args = parser.parse_args()
    from maeconv.runtimes.ascend.data import make_synthetic_imagenet

    with tempfile.TemporaryDirectory(prefix="maeconv-scaling-") as tmp:
        work = Path(tmp)
        data = make_synthetic_imagenet(work / "data", classes=4, train_per_class=512, val_per_class=4)
        load = os.getloadavg()[0]
        results = [run(model, workers, data, work) for model in args.models for workers in args.workers]
        load = max(load, os.getloadavg()[0])
    print(f"{os.cpu_count()} cores, 1-minute load average up to {load:.1f}\n")
    print("| model | workers | global batch | samples/s | speed-up | scaling efficiency | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        single = next((s["rate"] for s in results if s["model"] == r["model"] and s["workers"] == 1), None)
        speedup = r["rate"] / single if single else float("nan")
        print(f"| {r['model']} | {r['workers']} | {r['global_batch']} | {r['rate']:.2f} | {speedup:.2f} | "
              f"{100 * speedup / r['workers']:.0f} % | {r['wall']:.0f} |")


if __name__ == "__main__":
    main()
