"""MAE pretraining and fine-tuning with MindSpore, single process or data-parallel under msrun;
evaluation of a classifier and reconstruction pictures of a pretrained model.

Reproducibility: the data order and augmentations are seeded by (seed, epoch), the mask noise
and mixup draws by (seed, epoch, batch), all on the host; a checkpoint stores the step and the
data position, so a resumed run trains on exactly the batches and masks it would have seen.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...convert.errors import MaeconvError, first_line
from ...convert.outputs import staged, write_file
from ...models.config import CLASSIFY, FULL, PRETRAIN, get_preset
from . import data as data_lib
from .config import ConfigError, load_config
from ..images import reconstruction_picture
from .plots import plot_curves

CHECKPOINT_DIR = "checkpoints"
MINDSPORE = "mindspore"
FINETUNE_FRESH = ("head.", "fc_norm.")  # what fine-tuning starts afresh rather than loads
LOG_FILE = "log.jsonl"
PLOT_FILE = "curves.png"
TRAIN_PREFIX = "train."
COUNTERS = ("step", "epoch", "epoch_batch", "seed", "world")  # train.<counter> in every checkpoint


# --- process setup ---

@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: str = "CPU"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)


def launched_by_msrun() -> bool:
    return "MS_ROLE" in os.environ or "RANK_TABLE_FILE" in os.environ


def setup_runtime(cfg: dict) -> Runtime:
    import mindspore as ms

    device = cfg["device_target"]
    ms.set_context(mode=ms.GRAPH_MODE if cfg["mode"] == "graph" else ms.PYNATIVE_MODE)
    if device == "CPU" or "DEVICE_ID" not in os.environ:
        ms.set_device(device)
    else:  # the rank-table route names each process's device
        ms.set_device(device, int(os.environ["DEVICE_ID"]))
    runtime = Runtime(device=device)
    if launched_by_msrun():
        from mindspore.communication import get_group_size, get_rank, init

        init()  # the msrun scheduler process stays in here until the job ends
        runtime = Runtime(get_rank(), get_group_size(), device)
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=runtime.world)
    # Initial weights are not broadcast: every rank draws the same ones from the same seed.
    ms.set_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    return runtime


# --- models and weights ---

def model_config(cfg: dict, task: str, classes: int | None = None, recorded: dict | None = None):
    """The model to train: the preset, with each setting from the recipe if it gives one, else as
    the initial checkpoint records it (`recorded`), else the preset's."""
    from ...convert.settings import resolve_settings
    from ...models.config import ACTIVATION_NAMES

    model = cfg["model"]
    preset = get_preset(model["preset"])
    if preset.task != task:
        raise ConfigError(f"model.preset {preset.name!r} is a {preset.task} model; this run mode needs a {task} model")
    base = preset.config.replace(drop_path_rate=model["drop_path_rate"], global_pool=model["global_pool"])
    num_classes = model["num_classes"] or classes
    if task == CLASSIFY and num_classes:
        base = base.replace(num_classes=int(num_classes))
    if model["hidden_act"] is not None and model["hidden_act"] not in ACTIVATION_NAMES:
        raise ConfigError(f"model.hidden_act {model['hidden_act']!r}; expected one of {', '.join(ACTIVATION_NAMES)}")
    flags = {"norm_pix_loss": model["norm_pix_loss"], "mask_ratio": model["mask_ratio"],
             "norm_eps": model["layer_norm_eps"], "activation": ACTIVATION_NAMES.get(model["hidden_act"])}
    try:
        return resolve_settings(base, recorded or {}, "model", **flags).config
    except MaeconvError as error:
        raise ConfigError(str(error)) from None


def load_initial_weights(model, loaded, task: str, runtime: Runtime) -> None:
    """Pretraining: the whole model, strictly. Fine-tuning: the encoder of a pretraining (or
    classifier) checkpoint; the head and fc_norm start fresh (the head re-initialised with a tiny
    truncated normal, as the reference fine-tuning starts), the decoder is not used."""
    from ...convert.twins import get_twin, load_state

    path = loaded.checkpoint.path
    if task == PRETRAIN:
        load_state(model, loaded.state, MINDSPORE, source=str(path))
        runtime.say(f"loaded {path} ({loaded.detected.preset}, {loaded.detected.kind})")
        return
    report = load_state(model, loaded.state, MINDSPORE, source=str(path), fresh=FINETUNE_FRESH, unused_ok=True)
    get_twin(MINDSPORE).initialise_head(model, std=2e-5)
    used = len(loaded.state) - len(report.unused)
    runtime.say(f"loaded the encoder of {path} ({used} tensors; {len(report.unused)} not used; head and fc_norm new)")


# --- checkpoints ---

def checkpoint_dir(cfg: dict) -> Path:
    return Path(cfg["output_dir"]) / CHECKPOINT_DIR


def checkpoint_path(cfg: dict, step: int) -> Path:
    return checkpoint_dir(cfg) / f"step_{step:08d}.ckpt"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run's checkpoint folder standing for its latest checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("step_*.ckpt"))
        if not found:
            raise MaeconvError(f"{path}: folder holds no step_*.ckpt checkpoints")
        return found[-1]
    return path


def list_checkpoints(cfg: dict) -> list[Path]:
    folder = checkpoint_dir(cfg)
    return sorted(folder.glob("step_*.ckpt")) if folder.is_dir() else []


def save_training_checkpoint(path: Path, model, optimizer, counters: dict[str, int], keep: int,
                             scaler=None) -> None:
    """Model (its own MindSpore names), AdamW moments (adam_m./adam_v.), and train.* counters;
    written to a temporary file and renamed, then older checkpoints beyond `keep` removed."""
    import mindspore as ms

    entries = [{"name": name, "data": param} for name, param in model.parameters_and_names()]
    entries += [{"name": name, "data": param} for name, param in optimizer.state().items()]
    entries += [{"name": TRAIN_PREFIX + key, "data": ms.Tensor(np.array([value], np.int64))}
                for key, value in counters.items()]
    if scaler is not None:
        entries.append({"name": TRAIN_PREFIX + "loss_scale", "data": scaler.scale_value})
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged(path, force=True) as stage:
        ms.save_checkpoint(entries, str(stage.path()))
    for old in sorted(path.parent.glob("step_*.ckpt"))[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


def restore_training_checkpoint(path: Path, model, optimizer, scaler=None) -> dict[str, int]:
    import mindspore as ms

    try:
        saved = ms.load_checkpoint(str(path))
    except Exception as error:
        raise MaeconvError(f"{path}: not a readable MindSpore checkpoint ({first_line(error)})") from None
    targets = {name: param for name, param in model.parameters_and_names()}
    targets.update(optimizer.state())
    if scaler is not None:
        targets[TRAIN_PREFIX + "loss_scale"] = scaler.scale_value
    missing = [name for name in targets if name not in saved]
    if missing:
        raise MaeconvError(f"{path}: not a training checkpoint of this model ({len(missing)} entries missing, "
                           f"e.g. {missing[0]})")
    for name, param in targets.items():
        if tuple(saved[name].shape) != tuple(param.shape):
            raise MaeconvError(f"{path}: {name} has shape {tuple(saved[name].shape)}, expected {tuple(param.shape)}")
        param.set_data(ms.Tensor(saved[name].asnumpy()))
    return {key: int(saved[TRAIN_PREFIX + key].asnumpy().reshape(-1)[0]) for key in COUNTERS}


# --- logging ---

class RunLog:
    """Terminal progress, a JSON line per logged step, and the curves at the end (main rank only)."""

    def __init__(self, output_dir: Path, runtime: Runtime, total_steps: int, resume_step: int):
        self.path = output_dir / LOG_FILE
        self.runtime = runtime
        self.total_steps = total_steps
        self.records: list[dict] = []
        if runtime.is_main and self.path.exists():
            # Steps logged after the checkpoint we resume from are replayed, so drop them.
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.records = [json.loads(line) for line in kept]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.window_start = time.perf_counter()
        self.window_samples = 0
        self.run_start = time.perf_counter()
        self.first_step = resume_step

    def add_samples(self, samples: int) -> None:
        self.window_samples += samples

    def step(self, record: dict) -> None:
        now = time.perf_counter()
        rate = self.window_samples / max(now - self.window_start, 1e-9)
        per_step = (now - self.run_start) / max(record["step"] - self.first_step, 1)
        eta = per_step * (self.total_steps - record["step"])
        record = {**record, "samples_per_s": round(rate, 2), "time": round(time.time(), 3)}
        self.window_start, self.window_samples = now, 0
        if not self.runtime.is_main:
            return
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"epoch {record['epoch'] + 1} step {record['step']}/{self.total_steps}  loss {record['loss']:.4f}  "
              f"lr {record['lr']:.3e}  {rate:.1f} samples/s  ETA {format_duration(eta)}", flush=True)

    def event(self, record: dict) -> None:
        if self.runtime.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --- training ---

@dataclass
class Position:
    step: int = 0          # optimizer steps done
    epoch: int = 0
    epoch_batch: int = 0   # batches of this epoch already consumed (on each rank)


def mask_noise(seed: int, epoch: int, batch: int, global_batch: int, length: int, rank: int, world: int):
    """The global batch's noise is one draw; rank r takes rows r, r + world, ... like its data shard."""
    noise = np.random.default_rng([seed, epoch, batch]).random((global_batch, length), dtype=np.float32)
    return noise[rank::world]


def _ensure_data(cfg: dict, runtime: Runtime) -> None:
    root = Path(cfg["data"]["path"])
    synthetic = cfg["data"]["synthetic"]
    if root.exists() or not synthetic:
        return
    if runtime.is_main:
        print(f"data folder {root} is absent: making a synthetic ImageNet-layout dataset there "
              f"({synthetic})", flush=True)
        _make_synthetic_locked(root, synthetic)
    else:
        while not (root / ".complete").exists():  # another rank is writing it
            time.sleep(0.2)


def _make_synthetic_locked(root: Path, synthetic: dict) -> None:
    tmp = root.with_name(root.name + f".partial-{os.getpid()}")
    data_lib.make_synthetic_imagenet(tmp, **synthetic)
    (tmp / ".complete").touch()
    os.replace(tmp, root)


def train(cfg: dict, finetune: bool = False) -> dict:
    """Pretraining (`finetune` False) or fine-tuning; returns a summary of the run."""
    import mindspore as ms
    from mindspore import Tensor, nn

    from ...convert.pipeline import load_canonical
    from ...convert.twins import create_model
    from .optim import NO_WEIGHT_DECAY, AdamW, learning_rate, parameter_groups, scaled_lr
    from .steps import AccumulateStep, ApplyStep, ClassifierLoss, PretrainLoss, TrainStep, accumulators_for

    runtime = setup_runtime(cfg)
    _check_precision(cfg, runtime)
    output_dir = Path(cfg["output_dir"])
    if runtime.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        write_file(output_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    _ensure_data(cfg, runtime)
    tcfg, dcfg = cfg["train"], cfg["data"]
    task = CLASSIFY if finetune else PRETRAIN
    augment = dcfg["augment"] or (data_lib.FINETUNE if finetune else data_lib.PRETRAIN)
    probe = data_lib.build_split(dcfg["path"], dcfg["train_split"], augment, 8, tcfg["batch_size"],
                                 rank=runtime.rank, world=runtime.world)
    initial = load_canonical(resolve_checkpoint(cfg["model"]["checkpoint"])) if cfg["model"]["checkpoint"] else None
    config = model_config(cfg, task, probe.classes, initial.recorded if initial else None)
    model = create_model(config, task, MINDSPORE)
    if finetune:
        model.pos_embed.requires_grad = True  # fine-tuning trains the position table, as the reference
    if initial is not None:
        load_initial_weights(model, initial, task, runtime)
    if tcfg["precision"] != "fp32":
        dtype = ms.float16 if tcfg["precision"] == "fp16" else ms.bfloat16
        model = ms.amp.auto_mixed_precision(model, "O1", dtype)

    params = model.trainable_params()
    names = {id(p): name for name, p in model.parameters_and_names()}
    groups = parameter_groups([(names[id(p)], tuple(p.shape)) for p in params], tcfg["weight_decay"],
                              tcfg["layer_decay"], config.depth, NO_WEIGHT_DECAY if finetune else frozenset())
    optimizer = AdamW(params, groups, tuple(tcfg["betas"]), tcfg["eps"])
    accum = int(tcfg["accum_iter"])
    global_batch = tcfg["batch_size"] * runtime.world
    base_lr = tcfg["lr"] if tcfg["lr"] is not None else scaled_lr(tcfg["blr"], global_batch * accum)
    reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=runtime.world) \
        if runtime.world > 1 else None
    scaler = _loss_scaler(cfg)
    loss_net = ClassifierLoss(model) if finetune else PretrainLoss(model)
    if accum == 1:
        step_fn = TrainStep(loss_net, optimizer, reducer, tcfg["clip_grad"], scaler)
    else:
        sums = accumulators_for(optimizer.parameters)
        accumulate = AccumulateStep(loss_net, optimizer, sums, scaler, reducer is not None)
        apply = ApplyStep(optimizer, sums, accum, reducer, tcfg["clip_grad"], scaler)
    model.set_train(True)

    steps_per_epoch = probe.steps_per_epoch
    usable = steps_per_epoch // accum * accum  # batches per epoch that make whole optimizer steps
    if usable == 0:
        raise ConfigError(f"{dcfg['path']}: {probe.images} training images per rank give no full "
                          f"batch of {tcfg['batch_size']} x accum_iter {accum}")
    total = tcfg["epochs"] * usable // accum
    if tcfg["max_steps"] is not None:
        total = min(total, int(tcfg["max_steps"]))

    position = Position()
    resume = _resume_path(cfg)
    if resume is not None:
        counters = restore_training_checkpoint(resume, model, optimizer, scaler)
        if counters["world"] != runtime.world:
            raise MaeconvError(f"{resume}: written by {counters['world']} ranks, resuming on {runtime.world} would "
                               f"change the data order")
        position = Position(counters["step"], counters["epoch"], counters["epoch_batch"])
        ms.set_seed(cfg["seed"] + position.step)
        runtime.say(f"resumed from {resume} at step {position.step} (epoch {position.epoch + 1}, "
                    f"batch {position.epoch_batch})")
    log = RunLog(output_dir, runtime, total, position.step)
    mixup = _mixup(cfg, config.num_classes) if finetune else None
    runtime.say(f"{'fine-tuning' if finetune else 'pretraining'} {cfg['model']['preset']} on {dcfg['path']}: "
                f"{probe.images * runtime.world} images, {runtime.world} rank(s) x batch {tcfg['batch_size']} x "
                f"accum {accum}, lr {base_lr:.3e}, {total} steps, {cfg['device_target']} {cfg['mode']} mode")

    save_steps, keep = cfg["checkpoint"]["save_steps"], cfg["checkpoint"]["keep"]
    log_steps = max(int(cfg["log"]["log_steps"]), 1)
    corrupt = 0
    window_losses: list[float] = []
    step_losses: list[float] = []
    first_loss = None
    size = config.img_size
    start = time.perf_counter()
    lr = 0.0
    while position.step < total and position.epoch < tcfg["epochs"]:
        split = data_lib.build_split(dcfg["path"], dcfg["train_split"], augment, size, tcfg["batch_size"],
                                     seed=cfg["seed"], epoch=position.epoch, rank=runtime.rank,
                                     world=runtime.world, shuffle=dcfg["shuffle"], workers=dcfg["num_workers"],
                                     skip_batches=position.epoch_batch, finetune=cfg["finetune"])
        batches = split.dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)
        epoch = position.epoch
        while position.epoch == epoch and position.step < total:
            images, labels = next(batches)
            micro = position.epoch_batch % accum
            if micro == 0:
                lr = learning_rate(position.epoch + position.epoch_batch / steps_per_epoch, base_lr,
                                   tcfg["min_lr"], tcfg["warmup_epochs"], tcfg["epochs"])
            key = [cfg["seed"], position.epoch, position.epoch_batch]
            if finetune:
                images, aux = mixup(images, labels, np.random.default_rng(key + [runtime.rank]))
            else:
                aux = mask_noise(*key, global_batch, config.num_patches, runtime.rank, runtime.world)
            if accum == 1:
                loss = step_fn(Tensor(images), Tensor(aux), Tensor(np.float32(lr)))
            else:
                loss = accumulate(Tensor(images), Tensor(aux))
                if micro == accum - 1:
                    apply(Tensor(np.float32(lr)))
            step_losses.append(float(loss.asnumpy()))
            log.add_samples(global_batch)
            position.epoch_batch += 1
            if micro != accum - 1:
                continue
            position.step += 1
            loss_value = float(np.mean(step_losses))
            step_losses = []
            if not math.isfinite(loss_value):
                raise MaeconvError(f"loss is {loss_value} at step {position.step}; stopping")
            first_loss = loss_value if first_loss is None else first_loss
            window_losses.append(loss_value)
            if position.epoch_batch >= usable:
                position.epoch, position.epoch_batch = position.epoch + 1, 0
            if position.step % log_steps == 0 or position.step == total:
                log.step({"step": position.step, "epoch": epoch, "loss": float(np.mean(window_losses)),
                          "lr": lr})
                window_losses = []
            if runtime.is_main and (position.step % save_steps == 0 or position.step == total):
                save_training_checkpoint(checkpoint_path(cfg, position.step), model, optimizer,
                                         _counters(cfg, position, runtime), keep, scaler)
        batches.stop()
        corrupt += split.corrupt.count
        if split.corrupt.count:
            runtime.say(f"skipped {split.corrupt.count} corrupt image(s) in epoch {epoch + 1}")
            log.event({"event": "corrupt_images_skipped", "epoch": epoch, "count": split.corrupt.count})
        if position.epoch != epoch and finetune and tcfg["eval_each_epoch"]:
            _log_eval(model, cfg, config, runtime, log, epoch)
    model.set_train(False)
    seconds = time.perf_counter() - start
    summary = {"steps": position.step, "first_loss": first_loss, "seconds": round(seconds, 2),
               "corrupt_images_skipped": corrupt}
    records = [r for r in log.records if "loss" in r]
    if records:
        summary["last_loss"] = records[-1]["loss"]
    if finetune and Path(dcfg["path"], dcfg["val_split"]).is_dir():
        summary.update(_log_eval(model, cfg, config, runtime, log, position.epoch))
    if runtime.is_main:
        if cfg["log"]["plot"] and records:
            plot_curves(records, output_dir / PLOT_FILE)
        latest = list_checkpoints(cfg)
        summary["checkpoint"] = str(latest[-1]) if latest else None
        write_file(output_dir / "summary.json", json.dumps(summary, indent=2))
        runtime.say(f"done: {position.step} steps in {format_duration(seconds)}; loss {first_loss} -> "
                    f"{summary.get('last_loss')}; outputs in {output_dir}")
    return summary


def _counters(cfg: dict, position: Position, runtime: Runtime) -> dict[str, int]:
    return {"step": position.step, "epoch": position.epoch, "epoch_batch": position.epoch_batch,
            "seed": cfg["seed"], "world": runtime.world}


def _resume_path(cfg: dict) -> Path | None:
    resume = cfg["checkpoint"]["resume"]
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(cfg)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_file():
        raise MaeconvError(f"{path}: no such checkpoint to resume from")
    return path


def _check_precision(cfg: dict, runtime: Runtime) -> None:
    precision = cfg["train"]["precision"]
    if precision not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"train.precision {precision!r}; expected fp32, fp16 or bf16")
    if precision != "fp32" and runtime.device == "CPU":
        raise ConfigError("mixed precision needs a GPU or Ascend device; on CPU use --train.precision fp32")


def _loss_scaler(cfg: dict):
    import mindspore as ms

    setting = cfg["train"]["loss_scale"]
    if setting == "auto":  # dynamic where half precision needs it
        setting = None if cfg["train"]["precision"] == "fp32" else "dynamic"
    if setting in (None, "none"):
        return None
    if setting == "dynamic":
        return ms.amp.DynamicLossScaler(2.0 ** 16, 2, 1000)
    return ms.amp.StaticLossScaler(float(setting))


def _mixup(cfg: dict, num_classes: int) -> data_lib.Mixup:
    f = cfg["finetune"]
    return data_lib.Mixup(f["mixup"], f["cutmix"], f["mixup_prob"], f["switch_prob"], f["smoothing"], num_classes)


# --- evaluation and pictures ---

def evaluate_model(model, cfg: dict, config, runtime: Runtime) -> dict:
    """Top-1 / top-5 accuracy (%) on the val split with the reference eval transform."""
    from mindspore import Tensor

    dcfg = cfg["data"]
    split = data_lib.build_split(dcfg["path"], dcfg["val_split"], data_lib.EVAL, config.img_size,
                                 cfg["eval"]["batch_size"], shuffle=False, training=False,
                                 workers=dcfg["num_workers"])
    model.set_train(False)
    correct1 = correct5 = seen = 0
    k = min(5, config.num_classes)
    start = time.perf_counter()
    for i, (images, labels) in enumerate(split.dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)):
        logits = model(Tensor(images)).asnumpy()
        top = np.argsort(-logits, axis=1)[:, :k]
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(axis=1).sum())
        seen += len(labels)
        if (i + 1) % 20 == 0:
            runtime.say(f"eval {seen} images, top-1 {100 * correct1 / seen:.2f}%")
    seconds = time.perf_counter() - start
    if seen == 0:
        raise MaeconvError(f"{Path(dcfg['path'], dcfg['val_split'])}: no readable images")
    return {"top1": 100.0 * correct1 / seen, f"top{k}": 100.0 * correct5 / seen, "images": seen,
            "corrupt_images_skipped": split.corrupt.count, "images_per_s": round(seen / max(seconds, 1e-9), 1)}


def _log_eval(model, cfg, config, runtime, log, epoch) -> dict:
    result = evaluate_model(model, cfg, config, runtime)
    model.set_train(True)
    log.event({"event": "eval", "epoch": epoch, **result})
    runtime.say(_eval_line(result))
    return {"eval": result}


def _eval_line(result: dict) -> str:
    tops = "  ".join(f"{k.replace('top', 'top-')} {v:.2f}%" for k, v in result.items() if k.startswith("top"))
    return f"{tops}  ({result['images']} images, {result['corrupt_images_skipped']} corrupt skipped)"


def load_checkpoint_of_kind(path: str | Path, kind: str, why: str):
    """(file, canonical checkpoint) for a checkpoint or run folder, refused unless it is of `kind`."""
    from ...convert.pipeline import load_canonical

    path = resolve_checkpoint(path)
    loaded = load_canonical(path)
    if loaded.detected.kind != kind:
        raise MaeconvError(f"{path}: is a {loaded.detected.kind} checkpoint; {why}")
    return path, loaded


def run_eval(cfg: dict) -> dict:
    from ...parity.twins import build_model
    from ...models.config import CLASSIFIER

    runtime = setup_runtime(cfg)
    path = cfg["eval"]["checkpoint"] or cfg["model"]["checkpoint"]
    if not path:
        raise ConfigError("eval needs a classifier checkpoint: --eval.checkpoint PATH")
    path, loaded = load_checkpoint_of_kind(path, CLASSIFIER, "eval needs a fine-tuned classifier")
    config = loaded.detected.config
    model = build_model(loaded.state, config, MINDSPORE, cfg["mode"], CLASSIFY)
    result = evaluate_model(model, cfg, config, runtime)
    runtime.say(f"{path} on {Path(cfg['data']['path'], cfg['data']['val_split'])}: {_eval_line(result)}")
    output_dir = Path(cfg["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    write_file(output_dir / "eval.json", json.dumps({"checkpoint": str(path), **result}, indent=2))
    return result


def run_predict(cfg: dict) -> list[Path]:
    """Reconstruction pictures (original | masked | reconstruction | reconstruction + visible)."""
    from PIL import Image

    from ...parity.twins import build_model, run_pretrain

    runtime = setup_runtime(cfg)
    path = cfg["predict"]["checkpoint"] or cfg["model"]["checkpoint"]
    if not path:
        found = list_checkpoints(cfg)
        path = found[-1] if found else None
    if not path:
        raise ConfigError("predict needs a pretraining checkpoint: --predict.checkpoint PATH")
    path, loaded = load_checkpoint_of_kind(path, FULL, "pictures need encoder and decoder")
    config = loaded.settings(norm_pix_loss=cfg["model"]["norm_pix_loss"], mask_ratio=cfg["model"]["mask_ratio"]).config
    model = build_model(loaded.state, config, MINDSPORE, cfg["mode"])
    dcfg = cfg["data"]
    count = int(cfg["predict"]["images"])
    split = data_lib.build_split(dcfg["path"], dcfg["val_split"], data_lib.EVAL, config.img_size, count,
                                 shuffle=False, training=False, workers=dcfg["num_workers"])
    images, _ = next(split.dataset.create_tuple_iterator(output_numpy=True, num_epochs=1))
    noise = np.random.default_rng(cfg["predict"]["mask_seed"]).random((len(images), config.num_patches),
                                                                         dtype=np.float32)
    outputs = run_pretrain(model, MINDSPORE, images, noise)
    folder = Path(cfg["output_dir"]) / "predict"
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / f"reconstruction_{i:03d}.png" for i in range(len(images))]
    with staged(*written, force=True) as stage:
        for i in range(len(images)):
            picture = reconstruction_picture(images[i], outputs["pred"][i], outputs["mask"][i], config,
                                             norm_pix=config.norm_pix_loss)
            Image.fromarray(picture).save(stage.path(i), format="PNG")
    runtime.say(f"wrote {len(written)} pictures to {folder} (original | masked | reconstruction | "
                f"reconstruction + visible), loss {float(outputs['loss']):.4f}")
    return written


# --- entry point ---

def main(argv: list[str] | None = None) -> int:
    import argparse

    os.environ.setdefault("GLOG_v", "3")
    parser = argparse.ArgumentParser(
        prog="train.py", allow_abbrev=False,
        description="MAE pretraining, fine-tuning, evaluation and reconstruction pictures with MindSpore.",
        epilog="Any config key can be overridden: --train.epochs 2, --data.path DIR, --checkpoint.resume null.")
    parser.add_argument("--config", help="YAML recipe (see runtimes/ascend/configs/)")
    parser.add_argument("--run_mode", choices=("train", "finetune", "eval", "predict"),
                        help="default: the config's run_mode")
    parser.add_argument("--make_synthetic", metavar="DIR",
                        help="write a small synthetic ImageNet-layout dataset to DIR and exit")
    args, overrides = parser.parse_known_args(argv)
    try:
        if args.make_synthetic:
            root = data_lib.make_synthetic_imagenet(args.make_synthetic)
            print(f"wrote a synthetic ImageNet-layout dataset to {root}")
            return 0
        if not args.config:
            parser.error("--config is required")
        cfg = load_config(args.config, overrides)
        if args.run_mode:
            cfg["run_mode"] = args.run_mode
        mode = cfg["run_mode"]
        if mode in ("train", "finetune"):
            train(cfg, finetune=mode == "finetune")
        elif mode == "eval":
            run_eval(cfg)
        else:
            run_predict(cfg)
    except (ConfigError, MaeconvError, FileNotFoundError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0
