"""Run configuration: a YAML recipe over built-in defaults, then command-line overrides.

Overrides name any key by its dotted path: `--train.epochs 2` or `--train.epochs=2`. Values are
read as YAML (`--train.clip_grad null`, `--train.betas [0.9,0.95]`). An unknown key is an error,
so a typo never passes silently.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ...convert.errors import first_line

RUN_MODES = ("train", "finetune", "eval", "predict")

DEFAULTS: dict = {
    "run_mode": "train",
    "seed": 0,
    "device_target": "CPU",      # CPU, GPU or Ascend
    "mode": "graph",             # graph (compiled) or pynative
    "output_dir": "output",      # relative paths are relative to the working directory
    "model": {
        "preset": "mae_vit_base_patch16",
        "norm_pix_loss": True,
        "mask_ratio": 0.75,
        "layer_norm_eps": None,  # default: the initial checkpoint's, else 1e-6
        "hidden_act": None,      # default: the initial checkpoint's, else exact gelu
        "drop_path_rate": 0.0,
        "global_pool": True,
        "num_classes": None,     # fine-tuning: default is the number of class folders
        "checkpoint": None,      # initial weights: any checkpoint maeconv reads
    },
    "data": {
        "path": "data/imagenet",
        "train_split": "train",
        "val_split": "val",
        "num_workers": 2,
        "augment": None,         # default: pretrain / finetune / eval by run mode; "none" disables it
        "shuffle": True,
        "synthetic": None,       # {classes, train_per_class, val_per_class, size}: made when data.path is absent
    },
    "train": {
        "epochs": 800,
        "warmup_epochs": 40,
        "batch_size": 64,        # per device
        "accum_iter": 1,
        "blr": 1.5e-4,           # base lr: lr = blr x global batch / 256
        "lr": None,              # absolute lr, overrides blr
        "min_lr": 0.0,
        "weight_decay": 0.05,
        "betas": [0.9, 0.95],
        "eps": 1.0e-8,
        "clip_grad": None,
        "layer_decay": None,     # fine-tuning: 0.65 (B), 0.75 (L, H)
        "max_steps": None,       # stop after this many optimizer steps (smoke runs)
        "precision": "fp32",     # fp32, or fp16 / bf16 mixed precision where the device has it
        "loss_scale": "auto",    # auto (dynamic with fp16/bf16, none with fp32), dynamic, none, or a number
        "eval_each_epoch": False,
    },
    "finetune": {
        "mixup": 0.8,
        "cutmix": 1.0,
        "mixup_prob": 1.0,
        "switch_prob": 0.5,
        "smoothing": 0.1,
        "randaug_ops": 2,
        "randaug_magnitude": 9,
        "reprob": 0.25,
    },
    "checkpoint": {
        "save_steps": 1000,      # optimizer steps between checkpoints; one more at the end
        "keep": 3,
        "resume": "auto",        # auto (latest in output_dir), a path, or null
    },
    "log": {
        "log_steps": 10,
        "plot": True,
    },
    "eval": {
        "checkpoint": None,      # classifier checkpoint; default model.checkpoint
        "batch_size": 64,
    },
    "predict": {
        "checkpoint": None,      # pretraining checkpoint; default model.checkpoint or the latest run's
        "images": 8,
        "mask_seed": 0,
    },
}


class ConfigError(ValueError):
    pass


def merge(base: dict, update: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in out:
            raise ConfigError(f"unknown config key {path!r}")
        if isinstance(out[key], dict) and value is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path!r} is a section, got {value!r}")
            out[key] = merge(out[key], value, path + ".")
        else:
            out[key] = value
    return out


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
        node[leaf] = _value(raw)
    return tree


def _value(raw: str):
    """YAML scalars, plus the floats YAML 1.1 reads as strings (2e-3, 1e5)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        try:
            recipe = yaml.safe_load(path.read_text()) or {}
        except OSError as error:
            raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({first_line(error)})") from None
        if not isinstance(recipe, dict):
            raise ConfigError(f"{path}: not a config (expected YAML keys such as model:, data:, train:)")
        try:
            cfg = merge(cfg, recipe)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    if overrides:
        cfg = merge(cfg, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    if cfg["run_mode"] not in RUN_MODES:
        raise ConfigError(f"run_mode {cfg['run_mode']!r}; expected one of {', '.join(RUN_MODES)}")
    return cfg


def config_dir() -> Path:
    """The recipes shipped with maeconv."""
    return Path(__file__).parent / "configs"
