"""`maeconv.Trainer`: MindFormers' Trainer for MAE, over the same MindSpore training runtime as
runtimes/ascend/train.py (same recipes, overrides, outputs and resume):

    trainer = Trainer(task="masked_image_modeling", model="mae_vit_base_p16", train_dataset="imagenet/train")
    trainer.train()
    trainer.predict(input_data="dog.jpg", predict_checkpoint=True)

It runs in a notebook: nothing exits the process, progress is printed, and results come back as
Python objects.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import MaeconvError
from ...models.config import CLASSIFY, PRETRAIN, get_preset
from .checkpointing import list_checkpoints, resolve_checkpoint
from .config import RunConfig, config_dir, load_config, merge_trees

TASKS = {"masked_image_modeling": PRETRAIN, "image_classification": CLASSIFY}
# The shipped recipe for a preset and task: the reference recipe of its size, or the tiny synthetic one.
RECIPES = {
    ("mae_vit_base_patch16", PRETRAIN): "mae_vit_base_patch16_800ep.yaml",
    ("mae_vit_large_patch16", PRETRAIN): "mae_vit_large_patch16_800ep.yaml",
    ("mae_vit_huge_patch14", PRETRAIN): "mae_vit_huge_patch14_800ep.yaml",
    ("mae_vit_tiny_patch8", PRETRAIN): "mae_vit_tiny_patch8_synthetic.yaml",
    ("vit_base_patch16", CLASSIFY): "vit_base_patch16_finetune.yaml",
    ("vit_large_patch16", CLASSIFY): "vit_large_patch16_finetune.yaml",
    ("vit_huge_patch14", CLASSIFY): "vit_huge_patch14_finetune.yaml",
    ("vit_tiny_patch8", CLASSIFY): "vit_tiny_patch8_synthetic_finetune.yaml",
}


@dataclass
class TrainResult:
    """What a run of train() or finetune() did."""

    steps: int
    losses: list[tuple[int, float]]          # (optimizer step, mean loss since the previous entry)
    checkpoint: str | None                   # the last checkpoint written
    checkpoints: list[str]
    eval: dict | None = None                 # top-1 / top-5 after fine-tuning, where there is a val split
    summary: dict = field(default_factory=dict)


class Trainer:
    """Pretraining (task "masked_image_modeling") or fine-tuning and evaluation ("image_classification").

    `model` is a preset name (MindFormers' `mae_vit_base_p16` included) or a checkpoint to start
    from: a file, a Hugging Face directory or an official name. `train_dataset` and `eval_dataset`
    are ImageNet-layout folders: the dataset root (holding train/ and val/) or a split folder itself
    (holding class folders). `config` names a recipe (a path, or a file in runtimes/ascend/configs/);
    by default the shipped recipe for the model and task. Further keyword arguments override config
    keys by their dotted paths, written with "__" or as nested dicts: `train__epochs=2`,
    `train={"epochs": 2}`, `output_dir="runs/mae"`."""

    def __init__(self, task: str = "masked_image_modeling", model: str | os.PathLike = "mae_vit_base_patch16",
                 train_dataset: str | os.PathLike | None = None, eval_dataset: str | os.PathLike | None = None,
                 config: str | os.PathLike | None = None, **overrides):
        if task not in TASKS:
            raise MaeconvError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        self.task, self.model = task, model
        preset, checkpoint = _model(model, TASKS[task])
        tree = merge_trees({"model": {"preset": preset}}, card_overrides(train_dataset, eval_dataset, checkpoint))
        self.recipe = _recipe(config, preset, TASKS[task])
        self.overrides = merge_trees(tree, _tree(overrides))
        self.config(self._train_mode)  # refuses bad keys now, not when training starts

    @property
    def _train_mode(self) -> str:
        return "train" if TASKS[self.task] == PRETRAIN else "finetune"

    def config(self, run_mode: str, extra: dict | None = None) -> RunConfig:
        return load_config(self.recipe, merge_trees(merge_trees(self.overrides, extra or {}), {"run_mode": run_mode}))

    def train(self) -> TrainResult:
        """Pretraining for masked image modeling; fine-tuning for image classification."""
        return self._train(self._train_mode)

    def finetune(self, finetune_checkpoint: str | os.PathLike | None = None) -> TrainResult:
        """Fine-tuning a classifier from a pretrained encoder (`finetune_checkpoint`, else the model's)."""
        if TASKS[self.task] != CLASSIFY:
            raise MaeconvError("finetune() trains a classifier: make the Trainer with task='image_classification'")
        extra = {"model": {"checkpoint": str(finetune_checkpoint)}} if finetune_checkpoint else {}
        return self._train("finetune", extra)

    def evaluate(self, eval_checkpoint: str | os.PathLike | bool | None = None) -> dict:
        """Top-1 / top-5 (%) of a classifier on the eval split: a given checkpoint, else the run's
        latest, else the model the Trainer was made with."""
        from .evaluation import run_eval

        cfg = self.config("eval")
        cfg.eval.checkpoint = self._checkpoint(cfg, eval_checkpoint) or cfg.eval.checkpoint
        return run_eval(cfg)

    def predict(self, input_data, predict_checkpoint: str | os.PathLike | bool | None = None, **options):
        """The pipeline of this task on `input_data` (a path, URL, PIL image, array, or a list):
        with `predict_checkpoint=True` the run's latest checkpoint, a path for that checkpoint,
        otherwise the model the Trainer was made with."""
        from ..pipelines import pipeline

        cfg = self.config("predict")
        model = self._checkpoint(cfg, predict_checkpoint) if predict_checkpoint else self.model
        settings = {"norm_pix_loss": cfg.model.norm_pix_loss, "mask_ratio": cfg.model.mask_ratio} \
            if TASKS[self.task] == PRETRAIN else {}
        return pipeline(self.task, model, runtime="mindspore", **settings)(input_data, **options)

    def _train(self, run_mode: str, extra: dict | None = None) -> TrainResult:
        from .trainer import train

        cfg = self.config(run_mode, extra)
        summary = train(cfg, finetune=run_mode == "finetune")
        return TrainResult(summary.get("steps", 0), [tuple(pair) for pair in summary.get("losses", [])],
                           summary.get("checkpoint"), [str(p) for p in list_checkpoints(cfg.output_dir)],
                           summary.get("eval"), summary)

    @staticmethod
    def _checkpoint(cfg: RunConfig, wanted) -> str | None:
        """A given checkpoint; for True (or None) the run's latest (True: there must be one)."""
        if wanted not in (True, None, False):
            return str(wanted)
        found = list_checkpoints(cfg.output_dir)
        if wanted is True and not found:
            raise MaeconvError(f"{cfg.output_dir}: no checkpoint of this run yet; train() first")
        return str(found[-1]) if found and wanted is not False else None


def _model(model: str | os.PathLike, task: str) -> tuple[str, str | None]:
    """(preset, initial checkpoint): a preset name trains from scratch; a checkpoint (file,
    directory, official name) starts from its weights. An MAE model named for classification
    means its classifier."""
    try:
        return _preset_for(get_preset(str(model)).name, task), None
    except KeyError:
        from ...convert.pipeline import load_canonical

        return _preset_for(load_canonical(resolve_checkpoint(model)).detected.preset, task), str(model)


def _preset_for(name: str, task: str) -> str:
    if task == CLASSIFY:
        return name.removeprefix("mae_")
    return name if name.startswith("mae_") else f"mae_{name}"


def card_overrides(train_dataset_dir=None, eval_dataset_dir=None, load_checkpoint=None, device_id=None,
                   device_target=None, use_parallel=None, output_dir=None) -> dict:
    """The flags of MindFormers' run scripts (the model card's commands) as config keys."""
    tree: dict = {}
    for dataset, split in ((train_dataset_dir, "train_split"), (eval_dataset_dir, "val_split")):
        if dataset is not None:
            tree["data"] = merge_trees(tree.get("data", {}), _dataset(dataset, split))
    if load_checkpoint is not None:
        tree["model"] = {"checkpoint": str(load_checkpoint)}
    given = {"device_id": device_id, "device_target": device_target, "use_parallel": use_parallel,
             "output_dir": None if output_dir is None else str(output_dir)}
    return merge_trees(tree, {key: value for key, value in given.items() if value is not None})


def predict_inputs(predict_data: str | os.PathLike) -> list:
    """MindFormers' --predict_data: an image path, a URL, or a folder of images."""
    from .evaluation import IMAGE_SUFFIXES

    path = Path(predict_data)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise MaeconvError(f"{path}: holds no images")
        return found
    return [predict_data]


def _dataset(path: str | os.PathLike, split_key: str) -> dict:
    """A dataset root (train/, val/ inside) or one split folder (class folders inside)."""
    path = Path(path)
    if not path.is_dir() or (path / "train").is_dir() or (path / "val").is_dir():
        return {"path": str(path)}
    return {"path": str(path.parent), split_key: path.name}


def _recipe(config: str | os.PathLike | None, preset: str, task: str) -> Path:
    if config is not None:
        path = Path(config)
        return path if path.exists() or path.is_absolute() else config_dir() / path
    if (preset, task) not in RECIPES:
        raise MaeconvError(f"no shipped recipe for {preset} ({task}); give config=...")
    return config_dir() / RECIPES[preset, task]


def _tree(overrides: dict) -> dict:
    """train__epochs=2 or {"train.epochs": 2} -> {"train": {"epochs": 2}}; nested dicts as they are."""
    tree: dict = {}
    for key, value in overrides.items():
        *parents, leaf = key.replace("__", ".").split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = merge_trees(node.get(leaf, {}), value) if isinstance(value, dict) else value
    return tree
