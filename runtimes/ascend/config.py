"""Run configuration, typed: a YAML recipe over the defaults below, then overrides by dotted key.

Overrides name any key by its dotted path: `--train.epochs 2` or `--train.epochs=2` on the command
line, `train__epochs=2` or `{"train": {"epochs": 2}}` from Python. Values are read as YAML
(`--train.clip_grad null`, `--train.betas [0.9,0.95]`). An unknown key, or a value of the wrong
type, is an error, so a typo never passes silently.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ...errors import first_line

RUN_MODES = ("train", "finetune", "eval", "predict")


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    preset: str = "mae_vit_base_patch16"
    img_size: int | None = None           # default: the initial checkpoint's, else the preset's
    norm_pix_loss: bool = True
    mask_ratio: float = 0.75
    layer_norm_eps: float | None = None   # default: the initial checkpoint's, else 1e-6
    hidden_act: str | None = None         # default: the initial checkpoint's, else exact gelu
    drop_path_rate: float = 0.0
    global_pool: bool = True
    num_classes: int | None = None        # fine-tuning: default is the number of class folders
    checkpoint: str | None = None         # initial weights: any checkpoint maeconv reads


@dataclass
class DataConfig:
    path: str = "data/imagenet"
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 2
    augment: str | None = None            # default: pretrain / finetune / eval by run mode; "none" disables it
    shuffle: bool = True
    synthetic: dict | None = None         # {classes, train_per_class, val_per_class, size}: made when path is absent


@dataclass
class TrainConfig:
    epochs: int = 800
    warmup_epochs: float = 40
    batch_size: int = 64                  # per device
    accum_iter: int = 1
    blr: float = 1.5e-4                   # base lr: lr = blr x global batch / 256
    lr: float | None = None               # absolute lr, overrides blr
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1.0e-8
    clip_grad: float | None = None
    layer_decay: float | None = None      # fine-tuning: 0.65 (B), 0.75 (L, H)
    max_steps: int | None = None          # stop after this many optimizer steps (smoke runs)
    precision: str = "fp32"               # fp32, or fp16 / bf16 mixed precision where the device has it
    loss_scale: Union[str, float] = "auto"  # auto (dynamic with fp16/bf16, none with fp32), dynamic, none, a number
    eval_each_epoch: bool = False


@dataclass
class FinetuneConfig:
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.1
    randaug_ops: int = 2
    randaug_magnitude: int = 9
    reprob: float = 0.25


@dataclass
class CheckpointConfig:
    save_steps: int = 1000                # optimizer steps between checkpoints; one more at the end
    keep: int = 3
    resume: str | None = "auto"           # auto (latest in output_dir), a path, or null


@dataclass
class LogConfig:
    log_steps: int = 10
    plot: bool = True


@dataclass
class EvalConfig:
    checkpoint: str | None = None         # classifier checkpoint; default model.checkpoint
    batch_size: int = 64


@dataclass
class PredictConfig:
    checkpoint: str | None = None         # pretraining checkpoint; default model.checkpoint or the latest run's
    images: int = 8
    mask_seed: int = 0


@dataclass
class ClusterConfig:
    """Several workers (msrun): how long ranks wait for each other. Environment variables the user
    sets explicitly (MS_CPU_COMM_OP_TIMEOUT, HCCL_EXEC_TIMEOUT, HCCL_CONNECT_TIMEOUT) win."""

    barrier_timeout: float = 1800         # s every rank waits for the others at a rendezvous (data ready, first
                                          # step compiled); then an error naming the ranks that did not arrive
    collective_timeout: float = 1800      # s a collective waits for a peer: MS_CPU_COMM_OP_TIMEOUT (CPU, mccl),
                                          # HCCL_EXEC_TIMEOUT (Ascend); NCCL (GPU) has none in MindSpore 2.10
    connect_timeout: float = 600          # s Ascend links may take to set up: HCCL_CONNECT_TIMEOUT (120..7200)
    rendezvous_port: int | None = None    # the rendezvous store on the master host; default msrun's port - 1


@dataclass
class RunConfig:
    run_mode: str = "train"
    seed: int = 0
    device_target: str = "CPU"            # CPU, GPU or Ascend
    device_id: int | None = None          # the device of a single process (msrun and rank tables set their own)
    use_parallel: bool | None = None      # true: refuse to run unless started as one of several workers
    mode: str = "graph"                   # graph (compiled) or pynative
    output_dir: str = "output"            # relative paths are relative to the working directory
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> RunConfig:
    """The defaults, then the recipe at `path`, then the overrides (command-line words or a dict)."""
    tree: dict = {}
    if path is not None:
        tree = merge_trees(tree, _read_recipe(Path(path)))
    if overrides:
        tree = merge_trees(tree, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    cfg = _build(RunConfig, tree, "")
    if cfg.run_mode not in RUN_MODES:
        raise ConfigError(f"run_mode {cfg.run_mode!r}; expected one of {', '.join(RUN_MODES)}")
    return cfg


def _read_recipe(path: Path) -> dict:
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({first_line(error)})") from None
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: not a config (expected YAML keys such as model:, data:, train:)")
    return recipe


def merge_trees(base: dict, update: dict) -> dict:
    """`update` over `base`, section by section."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge_trees(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _build(cls, values: Any, where: str):
    """An instance of the dataclass `cls` from nested dicts: unknown keys and wrong types refused."""
    if not isinstance(values, dict):
        raise ConfigError(f"config key {where.rstrip('.')!r} is a section, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in values if key not in fields]
    if unknown:
        raise ConfigError(f"unknown config key {where + str(unknown[0])!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _checked(value, hint, f"{where}{name}")
    return cls(**kwargs)


def _checked(value: Any, hint, key: str):
    """`value` if it is of the type `hint` names (an int where a float is wanted becomes one)."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return None
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind in (int, str, bool, list, dict) and type(value) is kind:
            return value
        if kind is str and type(value) is int:  # a folder named 2024, read by YAML as a number
            return str(value)
    names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed)
    raise ConfigError(f"config key {key!r} is {value!r}; expected {names}")


def parse_overrides(args: list[str]) -> dict:
    """['--train.epochs', '2', '--seed=3'] -> {'train': {'epochs': 2}, 'seed': 3}."""
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"expected --key value, got {arg!r}")
        key, sep, raw = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise ConfigError(f"{arg} needs a value")
            raw = args[i + 1]
            i += 1
        i += 1
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--{key}: {part} is a value, not a section")
        node[leaf] = _value(raw)
    return tree


def _value(raw: str):
    """YAML scalars, plus the floats YAML 1.1 reads as strings (2e-3, 1e5)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def config_dir() -> Path:
    """The recipes shipped with maeconv."""
    return Path(__file__).parent / "configs"
