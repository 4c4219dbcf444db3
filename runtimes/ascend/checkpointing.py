"""Training checkpoints: the model under the MindSpore twin's names, the AdamW moments
(adam_m./adam_v.), and the counters (train.*) that let a resumed run repeat exactly what an
uninterrupted one would have done."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...errors import MaeconvError, first_line
from ...convert.outputs import staged

CHECKPOINT_DIR = "checkpoints"
TRAIN_PREFIX = "train."


@dataclass
class Position:
    """Where a run is: stored in every checkpoint as train.<field>, with the seed and world size."""

    step: int = 0          # optimizer steps done
    epoch: int = 0
    epoch_batch: int = 0   # batches of this epoch already consumed (on each rank)


COUNTERS = (*Position.__dataclass_fields__, "seed", "world")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(output_dir) / f"step_{step:08d}.ckpt"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    folder = checkpoint_dir(output_dir)
    return sorted(folder.glob("step_*.ckpt")) if folder.is_dir() else []


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run's checkpoint folder standing for its latest checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("step_*.ckpt"))
        if not found:
            raise MaeconvError(f"{path}: folder holds no step_*.ckpt checkpoints")
        return found[-1]
    return path


def resume_path(cfg) -> Path | None:
    """The checkpoint a run continues from: the latest of its own (resume: auto), a given one, or none."""
    resume = cfg.checkpoint.resume
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(cfg.output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_file():
        raise MaeconvError(f"{path}: no such checkpoint to resume from")
    return path


def save(path: Path, model, optimizer, position: Position, seed: int, world: int, keep: int,
         scaler=None) -> None:
    """Written through a staging folder, then checkpoints older than the last `keep` removed."""
    import mindspore as ms

    counters = {**asdict(position), "seed": seed, "world": world}
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


def restore(path: Path, model, optimizer, scaler=None) -> dict[str, int]:
    """Loads model, moments and loss scale in place; returns the counters."""
    import mindspore as ms

    try:
        saved = ms.load_checkpoint(str(path))
    except Exception as error:
        raise MaeconvError(f"{path}: not a readable MindSpore checkpoint ({first_line(error)})") from None
    targets = _training_state(model, optimizer, scaler)
    missing = [name for name in targets if name not in saved]
    if missing:
        raise MaeconvError(f"{path}: not a training checkpoint of this model ({len(missing)} entries missing, "
                           f"e.g. {missing[0]})")
    for name, param in targets.items():
        if tuple(saved[name].shape) != tuple(param.shape):
            raise MaeconvError(f"{path}: {name} has shape {tuple(saved[name].shape)}, expected {tuple(param.shape)}")
        param.set_data(ms.Tensor(saved[name].asnumpy()))
    return {key: int(saved[TRAIN_PREFIX + key].asnumpy().reshape(-1)[0]) for key in COUNTERS}


def _training_state(model, optimizer, scaler=None) -> dict:
    """Checkpoint name -> Parameter of everything a resumed run restores."""
    targets = {name: param for name, param in model.parameters_and_names()}
    targets.update(optimizer.state())
    if scaler is not None:
        targets[TRAIN_PREFIX + "loss_scale"] = scaler.scale_value
    return targets


def broadcast_state(model, optimizer, scaler=None) -> None:
    """Every rank's weights, moments and loss scale made rank 0's (a collective)."""
    from .steps import FromRank0

    FromRank0(list(_training_state(model, optimizer, scaler).values()))()
