"""Images/s of the ViT-B encoder (`features`, 224x224) on every runtime, side by side in one run.

    python tests/benchmarks/bench_runtimes.py [--reps 5] [--images 64] [--threads 0]

Runtimes: torch eager, onnxruntime fp32 (plain and with the transformer optimizer's fusions),
onnxruntime int8 (dynamic), MindSpore graph mode, MindIR GraphCell. Calls are interleaved
round-robin and the median per runtime is reported, so load from other processes hits every
runtime alike; onnxruntime's pool threads do not spin between calls and every timed call
follows a rest (--settle), so one runtime's idle worker threads do not slow the next one
down. Weights are seeded random (real ones cannot be downloaded here); top-1 agreement of int8
is measured on the fine-tuned ViT-B classifier over `--images` inputs.
Goals: onnxruntime fp32 >= 1.5x torch eager at batch 8; int8 >= 2.5x with top-1 agreement >= 99%.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402

from maeconv.convert.twins import TORCH  # noqa: E402
from maeconv.convert.pipeline import load_canonical  # noqa: E402
from maeconv.convert.twins import create_model  # noqa: E402
from maeconv.models import get_preset  # noqa: E402
from maeconv.runtimes.export import export  # noqa: E402
from maeconv.runtimes.onnx.session import OnnxRunner  # noqa: E402
from maeconv.runtimes.registry import open_graph
from maeconv.runtimes.runners import twin_runner  # noqa: E402
from maeconv.runtimes.tasks import TASKS  # noqa: E402

ENCODER = "mae_vit_base_patch16"
CLASSIFIER = "vit_base_patch16"


def write_checkpoint(path: Path, preset: str, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    spec = get_preset(preset)
    model = create_model(spec.config, spec.task, TORCH)
    state = model.state_dict()
    if spec.task == "pretrain":  # the released encoder file: no decoder
        state = {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": state}, path)
    return path


def images(count: int, seed: int) -> np.ndarray:
    """Smooth random pictures (bicubic-upsampled 14x14 noise), normalised like ImageNet inputs."""
    import torch

    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.standard_normal((count, 3, 14, 14)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=224, mode="bicubic", align_corners=False)
    fine += 0.3 * torch.randn(fine.shape, generator=torch.Generator().manual_seed(seed))
    return fine.numpy()


def timed(runner, batch: np.ndarray) -> float:
    start = time.perf_counter()
    runner({"images": batch})
    return time.perf_counter() - start


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="timed calls per runtime and batch size")
    parser.add_argument("--images", type=int, default=64, help="classifier inputs for top-1 agreement")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds of rest before each timed call, so the previous runtime's worker threads "
                             "have gone idle")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="maeconv-bench-") as tmp:
        root = Path(tmp)
        encoder = write_checkpoint(root / "encoder.pth", ENCODER)
        files = {}
        for name, options in (("fp32", {}), ("fp32 fused", {"optimize": True}),
                              ("int8", {"quantize": "int8"}), ("int8 fused", {"quantize": "int8", "optimize": True})):
            log(f"exporting ONNX {name}")
            files[name] = export(encoder, root / f"{name.replace(' ', '_')}.onnx", "onnx", "features", log=log,
                                 **options).path
        log("exporting MindIR")
        files["mindir"] = export(encoder, root / "features.mindir", "mindir", "features", log=log).path

        loaded = load_canonical(encoder)
        runners = {"torch eager": twin_runner(loaded, TASKS["features"], "torch")}
        for name in ("fp32", "fp32 fused", "int8", "int8 fused"):
            runners[f"onnxruntime {name}"] = OnnxRunner.open(files[name], threads=args.threads, spinning=False)
        runners["mindspore graph mode"] = twin_runner(loaded, TASKS["features"], "mindspore")
        runners["MindIR GraphCell"] = open_graph(files["mindir"], "mindir")

        speeds = {}
        for batch_size in args.batches:
            batch = images(batch_size, seed=batch_size)
            for name, runner in runners.items():  # warm-up: graph compilation, allocator, caches
                log(f"warming up {name} at batch {batch_size}")
                timed(runner, batch)
            seconds = {name: [] for name in runners}
            for rep in range(args.reps):
                log(f"batch {batch_size}: round {rep + 1} of {args.reps}")
                for name, runner in runners.items():
                    time.sleep(args.settle)
                    seconds[name].append(timed(runner, batch))
            for name, values in seconds.items():
                speeds[name, batch_size] = batch_size / statistics.median(values)

        log("top-1 agreement on the ViT-B classifier")
        classifier = write_checkpoint(root / "classifier.pth", CLASSIFIER, seed=1)
        top1 = {}
        for name, options in (("fp32", {}), ("int8", {"quantize": "int8"}), ("int8 fused", {"quantize": "int8",
                                                                                            "optimize": True})):
            path = export(classifier, root / f"cls_{name.replace(' ', '_')}.onnx", "onnx", "classify", log=log,
                          **options).path
            top1[name] = OnnxRunner.open(path, threads=args.threads, spinning=False)
        source = twin_runner(load_canonical(classifier), TASKS["classify"], "torch")
        inputs = images(args.images, seed=123)
        expected = np.concatenate([source({"images": inputs[i:i + 8]})["logits"] for i in range(0, len(inputs), 8)])
        agreement = {}
        for name, runner in top1.items():
            logits = np.concatenate([runner({"images": inputs[i:i + 8]})["logits"] for i in range(0, len(inputs), 8)])
            agreement[name] = float(np.mean(logits.argmax(-1) == expected.argmax(-1)))

    import onnxruntime
    import mindspore

    print(f"ViT-B encoder, task features, 224x224, fp32 weights seeded random; {os.cpu_count()} CPU cores; "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, mindspore {mindspore.__version__}; "
          f"median of {args.reps} interleaved calls, {args.settle:g} s rest before each\n")
    header = ["runtime"] + [f"{label} batch {b}" for b in args.batches for label in ("img/s", "x torch")]
    rows = []
    for name in runners:
        row = [name]
        for b in args.batches:
            row += [f"{speeds[name, b]:.2f}", f"{speeds[name, b] / speeds['torch eager', b]:.2f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print()
    for name, value in agreement.items():
        print(f"top-1 agreement with torch, ViT-B classifier, onnxruntime {name}: {value:.1%} of {args.images} inputs")
    b = max(args.batches)
    fp32 = max(speeds["onnxruntime fp32", b], speeds["onnxruntime fp32 fused", b]) / speeds["torch eager", b]
    int8_name = max(("int8", "int8 fused"), key=lambda n: speeds[f"onnxruntime {n}", b])
    int8 = speeds[f"onnxruntime {int8_name}", b] / speeds["torch eager", b]
    print(f"\ngoal onnxruntime fp32 >= 1.5x torch eager at batch {b}: {fp32:.2f}x -> "
          f"{'met' if fp32 >= 1.5 else 'NOT met'}")
    print(f"goal int8 >= 2.5x with top-1 >= 99% at batch {b}: {int8:.2f}x ({int8_name}), "
          f"top-1 {agreement[int8_name]:.1%} -> {'met' if int8 >= 2.5 and agreement[int8_name] >= 0.99 else 'NOT met'}")


if __name__ == "__main__":
    main()
