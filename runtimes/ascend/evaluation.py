"""A classifier's top-1/top-5 on a val folder, and a pretraining model's reconstruction pictures
(through the same predict path as `maeconv predict`)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ...errors import MaeconvError
from ...convert.outputs import write_file
from ...models.config import CLASSIFIER, CLASSIFY, FULL
from . import data as data_lib
from .checkpointing import list_checkpoints, resolve_checkpoint
from .config import ConfigError
from .runtime import Runtime, ends_job_on_error, setup_runtime

MINDSPORE = "mindspore"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def evaluate_model(model, cfg, config, runtime: Runtime) -> dict:
    """Top-1 / top-5 accuracy (%) on the val split with the reference eval transform."""
    from mindspore import Tensor

    split = data_lib.build_split(cfg.data.path, cfg.data.val_split, data_lib.EVAL, config.img_size,
                                 cfg.eval.batch_size, shuffle=False, training=False, workers=cfg.data.num_workers)
    model.set_train(False)
    correct1 = correct5 = seen = 0
    k = min(5, config.num_classes)
    start = time.perf_counter()
    for i, (images, labels) in enumerate(split.dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)):
        top = np.argsort(-model(Tensor(images)).asnumpy(), axis=1)[:, :k]
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(axis=1).sum())
        seen += len(labels)
        if (i + 1) % 20 == 0:
            runtime.say(f"eval {seen} images, top-1 {100 * correct1 / seen:.2f}%")
    if seen == 0:
        raise MaeconvError(f"{Path(cfg.data.path, cfg.data.val_split)}: no readable images")
    seconds = time.perf_counter() - start
    return {"top1": 100.0 * correct1 / seen, f"top{k}": 100.0 * correct5 / seen, "images": seen,
            "corrupt_images_skipped": split.corrupt.count, "images_per_s": round(seen / max(seconds, 1e-9), 1)}


def eval_line(result: dict) -> str:
    tops = "  ".join(f"{k.replace('top', 'top-')} {v:.2f}%" for k, v in result.items() if k.startswith("top"))
    return f"{tops}  ({result['images']} images, {result['corrupt_images_skipped']} corrupt skipped)"


def checkpoint_of_kind(path: str | Path, kind: str, why: str):
    """(file, canonical checkpoint) for a checkpoint or run folder, refused unless it is of `kind`."""
    from ...convert.pipeline import load_canonical

    path = resolve_checkpoint(path)
    loaded = load_canonical(path)
    if loaded.detected.kind != kind:
        raise MaeconvError(f"{path}: is a {loaded.detected.kind} checkpoint; {why}")
    return path, loaded


@ends_job_on_error
def run_eval(cfg) -> dict:
    from ...convert.twins import get_twin

    runtime = setup_runtime(cfg)
    path = cfg.eval.checkpoint or cfg.model.checkpoint
    if not path:
        raise ConfigError("eval needs a classifier checkpoint: --eval.checkpoint PATH")
    path, loaded = checkpoint_of_kind(path, CLASSIFIER, "eval needs a fine-tuned classifier")
    config = loaded.detected.config
    model = get_twin(MINDSPORE).build(loaded.state, config, CLASSIFY, cfg.mode)
    result = evaluate_model(model, cfg, config, runtime)
    runtime.say(f"{path} on {Path(cfg.data.path, cfg.data.val_split)}: {eval_line(result)}")
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_file(output_dir / "eval.json", json.dumps({"checkpoint": str(path), **result}, indent=2))
    return {"checkpoint": str(path), **result}


@ends_job_on_error
def run_predict(cfg, images: list | None = None) -> list[Path]:
    """Reconstruction pictures (original | masked | reconstruction | reconstruction + visible) of
    `images`, or of the first `predict.images` of the val split, into output_dir/predict."""
    from ...runtimes.predict import predict

    runtime = setup_runtime(cfg)
    path = cfg.predict.checkpoint or cfg.model.checkpoint
    if not path:
        found = list_checkpoints(cfg.output_dir)
        path = found[-1] if found else None
    if not path:
        raise ConfigError("predict needs a pretraining checkpoint: --predict.checkpoint PATH")
    path, _ = checkpoint_of_kind(path, FULL, "pictures need encoder and decoder")
    images = images or val_images(cfg, cfg.predict.images)
    settings = {"norm_pix_loss": cfg.model.norm_pix_loss, "mask_ratio": cfg.model.mask_ratio}
    done = predict(path, images, MINDSPORE, Path(cfg.output_dir) / "predict", seed=cfg.predict.mask_seed,
                   settings=settings, force=True)
    runtime.say(f"wrote {len(done.written)} pictures to {Path(cfg.output_dir) / 'predict'} (original | masked | "
                "reconstruction | reconstruction + visible)")
    return done.written


def val_images(cfg, count: int) -> list[Path]:
    """The first `count` images of the val split, class folder by class folder."""
    folder = data_lib.folder_split(cfg.data.path, cfg.data.val_split)
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise MaeconvError(f"{folder}: no images")
    return found[:count]
