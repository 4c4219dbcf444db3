"""What `maeconv.pipeline` adds on top of the raw runtime call: ViT-B at 224, a batch of 8 images.

    python tests/benchmarks/bench_pipeline.py [--reps 5] [--runtimes torch onnx]

For each task (masked image modeling, classification) and runtime it times, interleaved and as a
median over `--reps` rounds: the runner on the already preprocessed batch (the raw call), and the
pipeline on the same 8 pictures given as PIL images (preprocessing, batching, the per-image answers:
pictures and losses, or ranked labels). The overhead is (pipeline - raw) / raw. On a shared
machine two separate calls scatter by more than the overhead, so it is also measured within each
pipeline call: the time outside the runner over the time inside it ("in-call"). Weights are seeded
random. Goal: under 10% per image.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import maeconv  # noqa: E402
from maeconv.runtimes.export import export  # noqa: E402
from maeconv.runtimes.images import prepare_image  # noqa: E402

BATCH = 8
CHECKPOINTS = {"masked_image_modeling": ("mae_vit_base_patch16", "pretrain"),
               "image_classification": ("vit_base_patch16", "classify")}


def write_checkpoint(path: Path, preset: str) -> Path:
    import torch

    from maeconv.convert.twins import TORCH, create_model
    from maeconv.models import get_preset

    torch.manual_seed(0)
    spec = get_preset(preset)
    torch.save({"model": create_model(spec.config, spec.task, TORCH).state_dict()}, path)
    return path


def pictures(count: int) -> list:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (256 + 8 * i, 320, 3), dtype=np.uint8)) for i in range(count)]


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


class TimedRunner:
    """The pipeline's runner, timing its own calls."""

    def __init__(self, runner):
        self.runner, self.inside = runner, 0.0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def __call__(self, inputs):
        start = time.perf_counter()
        try:
            return self.runner(inputs)
        finally:
            self.inside += time.perf_counter() - start


def measure(task, images: list, reps: int) -> tuple[float, float, float]:
    """Medians of: the raw call, the pipeline call, and the pipeline's time outside its runner
    over the time inside it."""
    batch = np.stack([prepare_image(image, 224)[0] for image in images])
    noise = np.random.default_rng(1).random((len(images), 196), dtype=np.float32)
    inputs = {"images": batch, "noise": noise}
    raw = {name: inputs[name] for name in task.runner.info.task.inputs}
    task(images[:1], seed=0)  # warm-up: compilation, sessions
    task.runner = timed_runner = TimedRunner(task.runner)
    rounds = []
    for _ in range(reps):
        raw_s = timed(lambda: timed_runner.runner(raw))
        timed_runner.inside = 0.0
        full_s = timed(lambda: task(images, noise=noise))
        rounds.append((raw_s, full_s, (full_s - timed_runner.inside) / timed_runner.inside))
    return tuple(statistics.median(r[i] for r in rounds) for i in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnx"])
    args = parser.parse_args()
    images = pictures(BATCH)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; batch {BATCH}, 224x224, median of {args.reps}")
    print(f"{'task':24s} {'runtime':9s} {'raw s':>8s} {'pipeline s':>11s} {'overhead':>9s} {'in-call':>8s}")
    with tempfile.TemporaryDirectory() as folder:
        for name, (preset, graph_task) in CHECKPOINTS.items():
            checkpoint = write_checkpoint(Path(folder) / f"{preset}.pth", preset)
            for runtime in args.runtimes:
                model = checkpoint
                if runtime in ("onnx", "mindir"):
                    model = Path(folder) / f"{preset}.{runtime}"
                    export(checkpoint, model, runtime, graph_task)
                task = maeconv.pipeline(name, model=model, runtime=runtime)
                raw, full, in_call = measure(task, images, args.reps)
                print(f"{name:24s} {runtime:9s} {raw:8.3f} {full:11.3f} {100 * (full - raw) / raw:8.1f}% "
                      f"{100 * in_call:7.1f}%")


if __name__ == "__main__":
    main()
