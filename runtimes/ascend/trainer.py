"""MAE pretraining and fine-tuning with MindSpore, single process or data-parallel under msrun, cut
like facebookresearch/mae's main_pretrain.py: this module sets a run up and drives it epoch by
epoch; engine.py runs an epoch, checkpointing.py saves and resumes, evaluation.py evaluates and
draws, logs.py tells.

Reproducibility: the data order and augmentations are seeded by (seed, epoch), the mask noise
and mixup draws by (seed, epoch, batch), all on the host; a checkpoint stores the step and the
data position, so a resumed run trains on exactly the batches and masks it would have seen.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import MaeconvError
from ...convert.outputs import Interrupted, write_file
from ...models.config import CLASSIFY, PRETRAIN, get_preset
from . import checkpointing
from . import data as data_lib
from .checkpointing import Position
from .config import ConfigError, RunConfig
from .engine import Schedule, Step, train_one_epoch
from .evaluation import eval_line, evaluate_model
from .logs import RunLog, format_duration
from .plots import plot_curves
from .runtime import Runtime, ends_job_on_error, setup_runtime

MINDSPORE = "mindspore"
FINETUNE_FRESH = ("head.", "fc_norm.")  # what fine-tuning starts afresh rather than loads
PLOT_FILE = "curves.png"
SUMMARY_FILE = "summary.json"


# --- the model ---

def model_config(cfg: RunConfig, task: str, classes: int | None = None, recorded: dict | None = None):
    """The model to train: the preset, with each setting from the recipe if it gives one, else as
    the initial checkpoint records it (`recorded`), else the preset's."""
    from ...convert.settings import resolve_settings
    from ...models.config import ACTIVATION_NAMES

    model = cfg.model
    preset = get_preset(model.preset)
    if preset.task != task:
        raise ConfigError(f"model.preset {preset.name!r} is a {preset.task} model; this run mode needs a {task} model")
    base = preset.config.replace(drop_path_rate=model.drop_path_rate, global_pool=model.global_pool)
    num_classes = model.num_classes or classes
    if task == CLASSIFY and num_classes:
        base = base.replace(num_classes=int(num_classes))
    if model.hidden_act is not None and model.hidden_act not in ACTIVATION_NAMES:
        raise ConfigError(f"model.hidden_act {model.hidden_act!r}; expected one of {', '.join(ACTIVATION_NAMES)}")
    flags = {"norm_pix_loss": model.norm_pix_loss, "mask_ratio": model.mask_ratio, "norm_eps": model.layer_norm_eps,
             "activation": ACTIVATION_NAMES.get(model.hidden_act), "img_size": model.img_size}
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


# --- setting a run up ---

@dataclass
class Run:
    """What a training run holds between epochs."""

    cfg: RunConfig
    finetune: bool
    runtime: Runtime
    model: object
    config: object          # the MAEConfig trained
    optimizer: object
    scaler: object
    step: Step
    schedule: Schedule
    augment: str
    images_per_rank: int
    mixup: data_lib.Mixup | None

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    def inputs(self, images: np.ndarray, labels: np.ndarray, key: list):
        """The step's second input: mixup's soft targets, or the global batch's mask noise (one
        draw; rank r takes rows r, r + world, ... like its data shard)."""
        if self.mixup is not None:
            return self.mixup(images, labels, np.random.default_rng(key + [self.runtime.rank]))
        world, rank = self.runtime.world, self.runtime.rank
        noise = np.random.default_rng(key).random((len(images) * world, self.config.num_patches), dtype=np.float32)
        return images, noise[rank::world]


def build_run(cfg: RunConfig, finetune: bool, runtime: Runtime) -> Run:
    """The model (with its initial weights), AdamW and its parameter groups, the compiled step and
    the learning-rate schedule."""
    from ...convert.pipeline import load_canonical
    from ...convert.twins import create_model

    task = CLASSIFY if finetune else PRETRAIN
    augment = cfg.data.augment or (data_lib.FINETUNE if finetune else data_lib.PRETRAIN)
    probe = data_lib.build_split(cfg.data.path, cfg.data.train_split, augment, 8, cfg.train.batch_size,
                                 rank=runtime.rank, world=runtime.world)
    initial = load_canonical(checkpointing.resolve_checkpoint(cfg.model.checkpoint)) if cfg.model.checkpoint else None
    config = model_config(cfg, task, probe.classes, initial.recorded if initial else None)
    model = create_model(config, task, MINDSPORE)
    if finetune:
        model.pos_embed.requires_grad = True  # fine-tuning trains the position table, as the reference
    if initial is not None:
        load_initial_weights(model, initial, task, runtime)
    model = _mixed_precision(cfg, model)
    optimizer = _optimizer(cfg, model, config, finetune)
    scaler = _loss_scaler(cfg)
    step = _compiled_step(cfg, model, optimizer, scaler, finetune, runtime)
    schedule = _schedule(cfg, probe, runtime)
    model.set_train(True)
    mixup = _mixup(cfg, config.num_classes) if finetune else None
    return Run(cfg, finetune, runtime, model, config, optimizer, scaler, step, schedule, augment, probe.images, mixup)


def _mixed_precision(cfg: RunConfig, model):
    if cfg.train.precision == "fp32":
        return model
    import mindspore as ms

    return ms.amp.auto_mixed_precision(model, "O1", ms.float16 if cfg.train.precision == "fp16" else ms.bfloat16)


def _optimizer(cfg: RunConfig, model, config, finetune: bool):
    from .optim import NO_WEIGHT_DECAY, AdamW, parameter_groups

    params = model.trainable_params()
    names = {id(p): name for name, p in model.parameters_and_names()}
    groups = parameter_groups([(names[id(p)], tuple(p.shape)) for p in params], cfg.train.weight_decay,
                              cfg.train.layer_decay, config.depth, NO_WEIGHT_DECAY if finetune else frozenset())
    return AdamW(params, groups, tuple(cfg.train.betas), cfg.train.eps)


def _compiled_step(cfg: RunConfig, model, optimizer, scaler, finetune: bool, runtime: Runtime) -> Step:
    from mindspore import nn

    from .steps import AccumulateStep, ApplyStep, ClassifierLoss, PretrainLoss, TrainStep, accumulators_for

    accum, clip = int(cfg.train.accum_iter), cfg.train.clip_grad
    reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=runtime.world) \
        if runtime.world > 1 else None
    loss_net = ClassifierLoss(model) if finetune else PretrainLoss(model)
    if accum == 1:
        return Step(TrainStep(loss_net, optimizer, reducer, clip, scaler))
    sums = accumulators_for(optimizer.parameters)
    return Step(None, AccumulateStep(loss_net, optimizer, sums, scaler, reducer is not None),
                ApplyStep(optimizer, sums, accum, reducer, clip, scaler), accum)


def _schedule(cfg: RunConfig, probe, runtime: Runtime) -> Schedule:
    from .optim import scaled_lr

    train, accum = cfg.train, int(cfg.train.accum_iter)
    usable = probe.steps_per_epoch // accum * accum  # batches per epoch that make whole optimizer steps
    if usable == 0:
        raise ConfigError(f"{cfg.data.path}: {probe.images} training images per rank give no full "
                          f"batch of {train.batch_size} x accum_iter {accum}")
    total = train.epochs * usable // accum
    if train.max_steps is not None:
        total = min(total, int(train.max_steps))
    global_batch = train.batch_size * runtime.world
    base_lr = train.lr if train.lr is not None else scaled_lr(train.blr, global_batch * accum)
    return Schedule(base_lr, train.min_lr, train.warmup_epochs, train.epochs, probe.steps_per_epoch, usable, total)


def _check_precision(cfg: RunConfig, runtime: Runtime) -> None:
    if cfg.train.precision not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"train.precision {cfg.train.precision!r}; expected fp32, fp16 or bf16")
    if cfg.train.precision != "fp32" and runtime.device == "CPU":
        raise ConfigError("mixed precision needs a GPU or Ascend device; on CPU use --train.precision fp32")


def _loss_scaler(cfg: RunConfig):
    import mindspore as ms

    setting = cfg.train.loss_scale
    if setting == "auto":  # dynamic where half precision needs it
        setting = None if cfg.train.precision == "fp32" else "dynamic"
    if setting in (None, "none"):
        return None
    if setting == "dynamic":
        return ms.amp.DynamicLossScaler(2.0 ** 16, 2, 1000)
    return ms.amp.StaticLossScaler(float(setting))


def _mixup(cfg: RunConfig, num_classes: int) -> data_lib.Mixup:
    f = cfg.finetune
    return data_lib.Mixup(f.mixup, f.cutmix, f.mixup_prob, f.switch_prob, f.smoothing, num_classes)


# --- driving it ---

@ends_job_on_error
def train(cfg: RunConfig, finetune: bool = False) -> dict:
    """Pretraining (`finetune` False) or fine-tuning; returns a summary of the run."""
    runtime = setup_runtime(cfg)
    _check_precision(cfg, runtime)
    if runtime.is_main:
        import yaml

        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        write_file(Path(cfg.output_dir) / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    data_lib.ensure_dataset(cfg.data.path, cfg.data.synthetic, runtime)
    run = build_run(cfg, finetune, runtime)
    position = _resume(run)
    if position.step >= run.schedule.total_steps:
        return _finished_already(run, position)
    log = RunLog(run.output_dir, runtime, run.schedule.total_steps, position.step, cfg.log.log_steps)
    run.step.meet = _meeting(runtime, log) if runtime.world > 1 else None
    runtime.say(f"{'fine-tuning' if finetune else 'pretraining'} {cfg.model.preset} on {cfg.data.path}: "
                f"{run.images_per_rank * runtime.world} images, {runtime.world} rank(s) x batch "
                f"{cfg.train.batch_size} x accum {cfg.train.accum_iter}, lr {run.schedule.base_lr:.3e}, "
                f"{run.schedule.total_steps} steps, {cfg.device_target} {cfg.mode} mode")
    start, corrupt = time.perf_counter(), 0
    try:
        while position.step < run.schedule.total_steps and position.epoch < cfg.train.epochs:
            corrupt += _epoch(run, position, log)
    except (KeyboardInterrupt, Interrupted):
        _say_interrupted(run, position)
        raise
    return _finish(run, position, log, corrupt, time.perf_counter() - start)


def _meeting(runtime: Runtime, log: RunLog):
    """What every rank does once its first step has compiled: wait for the others, then start the
    throughput clock."""
    def meet(compiled: float) -> None:
        waited = runtime.barrier("first step")
        print(f"rank {runtime.rank}: first step compiled in {compiled:.1f} s; waited {waited:.1f} s for the other "
              "ranks", flush=True)
        log.restart_clock()
    return meet


def _epoch(run: Run, position: Position, log: RunLog) -> int:
    """One epoch through the engine, checkpoints on the way; returns the corrupt images skipped."""
    cfg, runtime = run.cfg, run.runtime
    split = data_lib.build_split(cfg.data.path, cfg.data.train_split, run.augment, run.config.img_size,
                                 cfg.train.batch_size, seed=cfg.seed, epoch=position.epoch, rank=runtime.rank,
                                 world=runtime.world, shuffle=cfg.data.shuffle, workers=cfg.data.num_workers,
                                 skip_batches=position.epoch_batch, finetune=vars(cfg.finetune))
    batches = split.dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)
    epoch, total = position.epoch, run.schedule.total_steps
    for loss, lr in train_one_epoch(run.step, batches, run.inputs, position, run.schedule, cfg.seed,
                                    lambda n: log.add_samples(n * runtime.world)):
        log.optimizer_step(position.step, epoch, loss, lr)
        if runtime.is_main and (position.step % cfg.checkpoint.save_steps == 0 or position.step == total):
            checkpointing.save(checkpointing.checkpoint_path(cfg.output_dir, position.step), run.model,
                               run.optimizer, position, cfg.seed, runtime.world, cfg.checkpoint.keep, run.scaler)
    batches.stop()
    if split.corrupt.count:
        runtime.say(f"skipped {split.corrupt.count} corrupt image(s) in epoch {epoch + 1}")
        log.event({"event": "corrupt_images_skipped", "epoch": epoch, "count": split.corrupt.count})
    if position.epoch != epoch and run.finetune and cfg.train.eval_each_epoch:
        _log_eval(run, log, epoch)
    return split.corrupt.count


def _resume(run: Run) -> Position:
    """Rank 0 picks the checkpoint and loads it; the other ranks take its counters, and its weights
    and moments by broadcast (another machine's output_dir need not hold the file)."""
    import mindspore as ms

    runtime = run.runtime
    found = runtime.decide("resume", lambda: _restore(run))
    if found is None:
        return Position()
    if runtime.world > 1:
        runtime.barrier("resume")
        checkpointing.broadcast_state(run.model, run.optimizer, run.scaler)
    position = Position(found["step"], found["epoch"], found["epoch_batch"])
    ms.set_seed(run.cfg.seed + position.step)
    runtime.say(f"resumed from {found['path']} at step {position.step} (epoch {position.epoch + 1}, "
                f"batch {position.epoch_batch})")
    return position


def _restore(run: Run) -> dict | None:
    path = checkpointing.resume_path(run.cfg)
    if path is None:
        return None
    counters = checkpointing.restore(path, run.model, run.optimizer, run.scaler)
    if counters["world"] != run.runtime.world:
        raise MaeconvError(f"{path}: written by {counters['world']} ranks, resuming on {run.runtime.world} would "
                           f"change the data order")
    return {"path": str(path), **counters}


def _finished_already(run: Run, position: Position) -> dict:
    """A finished run run again says so and leaves its summary as it was."""
    summary_path = run.output_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"steps": position.step}
    run.runtime.say(f"{run.output_dir}: already trained ({position.step} of {run.schedule.total_steps} steps); "
                    "nothing to do (raise --train.epochs, or start afresh with --checkpoint.resume null)")
    return summary


def _say_interrupted(run: Run, position: Position) -> None:
    saved = checkpointing.list_checkpoints(run.cfg.output_dir)
    where = f"the last checkpoint is {saved[-1]}" if saved else "no checkpoint was written yet"
    run.runtime.say(f"interrupted at step {position.step}: {where}; run the same command again to resume from it")


def _log_eval(run: Run, log: RunLog, epoch: int) -> dict:
    result = evaluate_model(run.model, run.cfg, run.config, run.runtime)
    run.model.set_train(True)
    log.event({"event": "eval", "epoch": epoch, **result})
    run.runtime.say(eval_line(result))
    return {"eval": result}


def _finish(run: Run, position: Position, log: RunLog, corrupt: int, seconds: float) -> dict:
    """Evaluation after fine-tuning, the curves, summary.json."""
    cfg, runtime = run.cfg, run.runtime
    run.model.set_train(False)
    summary = {"steps": position.step, "first_loss": log.first_loss, "seconds": round(seconds, 2),
               "corrupt_images_skipped": corrupt, "losses": [(r["step"], r["loss"]) for r in log.losses]}
    if log.losses:
        summary["last_loss"] = log.losses[-1]["loss"]
    if run.finetune and Path(cfg.data.path, cfg.data.val_split).is_dir():
        summary.update(_log_eval(run, log, position.epoch))
    if runtime.is_main:
        if cfg.log.plot and log.losses:
            plot_curves(log.losses, run.output_dir / PLOT_FILE)
        latest = checkpointing.list_checkpoints(cfg.output_dir)
        summary["checkpoint"] = str(latest[-1]) if latest else None
        write_file(run.output_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        runtime.say(f"done: {position.step} steps in {format_duration(seconds)}; loss {log.first_loss} -> "
                    f"{summary.get('last_loss')}; outputs in {run.output_dir}")
    return summary


def run_config(cfg: RunConfig, images: list | None = None) -> dict:
    """What the config's run_mode asks: train, finetune, eval or predict (of `images`, else of
    the val split's first)."""
    from .evaluation import run_eval, run_predict

    if cfg.run_mode in ("train", "finetune"):
        return train(cfg, finetune=cfg.run_mode == "finetune")
    if cfg.run_mode == "eval":
        return run_eval(cfg)
    return {"pictures": [str(path) for path in run_predict(cfg, images)]}
