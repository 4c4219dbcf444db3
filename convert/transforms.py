"""Changes `maeconv convert` can make on the canonical state: dtype, image size, checkpoint kind."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..models.config import CLASSIFIER, ENCODER, FULL, checkpoint_shapes
from ..models.pos_embed import sincos_2d
from .detect import Detected
from ..errors import MaeconvError
from .tensors import TensorRef, dtype_by_name

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class Changed:
    """The canonical state after the changes asked for, and notes on what each did."""

    refs: dict[str, TensorRef]
    detected: Detected
    notes: list[str] = field(default_factory=list)


def apply(loaded, options, target=None) -> Changed:
    """The changes `options` ask for; `target`, the scheme to be written, decides which tensors a
    --dtype casts (its library's per-tensor precision; all floating ones by default)."""
    changed = Changed(dict(loaded.refs), loaded.detected)
    if options.fc_norm_from_norm and options.kind != CLASSIFIER:
        raise MaeconvError("--fc-norm-from-norm goes with --kind classifier")
    if options.kind == CLASSIFIER and changed.detected.kind != CLASSIFIER:
        changed = to_classifier(changed, options.fc_norm_from_norm)
    elif options.kind == ENCODER and changed.detected.kind == FULL:
        changed = to_encoder(changed)
    elif options.kind not in (None, changed.detected.kind):
        raise MaeconvError(f"{loaded.checkpoint.path}: cannot turn a {changed.detected.kind} checkpoint into "
                           f"{options.kind}")
    if options.img_size and options.img_size != changed.detected.config.img_size:
        changed = resize_positions(changed, options.img_size)
    if options.dtype:
        changed = cast(changed, options.dtype, target)
    return changed


def cast(changed: Changed, dtype_name: str, target=None) -> Changed:
    """Floating tensors cast to the dtype, but for those the target's library keeps in float32."""
    dtype = dtype_by_name(DTYPES[dtype_name])
    floating = {name for name, ref in changed.refs.items() if ref.dtype.kind == "f" or ref.dtype.name == "bfloat16"}
    kept = [name for name in floating if dtype.name != "float32" and target is not None and not target.casts(name)]
    refs = {name: ref.cast(dtype) if name in floating and name not in kept else ref
            for name, ref in changed.refs.items()}
    refs.update({name: changed.refs[name].cast(dtype_by_name("float32")) for name in kept})
    notes = list(changed.notes)
    if kept:
        notes.append(f"kept {len(kept)} tensors float32, as {target.name} builds them whatever its parameter "
                     f"precision (tokens, position tables, LayerNorms, ...): {', '.join(sorted(kept)[:3])}, ...")
    return Changed(refs, changed.detected, notes)


def to_encoder(changed: Changed) -> Changed:
    """The encoder of a full checkpoint, as mae_pretrain_vit_*.pth holds it: decoder and mask token left out."""
    refs, detected = changed.refs, changed.detected
    encoder = {k: refs[k] for k in checkpoint_shapes(detected.config, ENCODER)}
    notes = [*changed.notes, f"dropped {len(refs) - len(encoder)} decoder tensors (the decoder and mask token)"]
    return Changed(encoder, replace(detected, kind=ENCODER), notes)


def to_classifier(changed: Changed, fc_norm_from_norm: bool) -> Changed:
    """A fine-tuning initialisation, as the reference fine-tuning starts: the encoder without its
    final norm, fc_norm fresh (or copied from norm on request), and a fresh head."""
    from ..models.config import get_preset

    refs, detected, notes = changed.refs, changed.detected, list(changed.notes)
    preset = detected.preset.removeprefix("mae_")
    config = detected.config.replace(global_pool=True)
    dim = config.embed_dim
    encoder = {k: v for k, v in refs.items() if k in checkpoint_shapes(config, ENCODER) and not k.startswith("norm.")}
    if fc_norm_from_norm:
        encoder["fc_norm.weight"], encoder["fc_norm.bias"] = refs["norm.weight"], refs["norm.bias"]
        notes.append("fc_norm copied from the pretrained norm")
    else:
        dtype = refs["norm.weight"].dtype
        encoder["fc_norm.weight"] = TensorRef.of(np.ones(dim, dtype))
        encoder["fc_norm.bias"] = TensorRef.of(np.zeros(dim, dtype))
        notes.append("fc_norm freshly initialised (ones/zeros), as the reference fine-tuning starts")
    rng = np.random.default_rng(0)
    head = np.clip(rng.normal(0, 2e-5, (config.num_classes, dim)), -2.0, 2.0).astype(refs["norm.weight"].dtype)
    encoder["head.weight"] = TensorRef.of(head)
    encoder["head.bias"] = TensorRef.of(np.zeros(config.num_classes, head.dtype))
    notes.append(f"head ({config.num_classes} classes) freshly initialised (trunc-normal std 2e-5, as the "
                 "reference fine-tuning): train it before use")
    dropped = len(refs) - len([k for k in refs if k in encoder])
    notes.append(f"dropped {dropped} pretraining-only tensors (decoder, mask token, final norm)")
    get_preset(preset)  # the classifier preset of the same architecture must exist
    ordered = {k: encoder[k] for k in checkpoint_shapes(config, CLASSIFIER)}
    return Changed(ordered, Detected(preset, CLASSIFIER, config), notes)


def resize_positions(changed: Changed, img_size: int) -> Changed:
    """pos_embed resized for another resolution the reference way (2-D bicubic, cls row kept);
    the decoder's fixed sin-cos table rebuilt for the new grid, as the reference model builds it."""
    config = changed.detected.config
    new = config.replace(img_size=img_size)
    try:
        new.check()  # before any table of the new size is planned
    except ValueError as error:
        raise MaeconvError(f"--img-size {img_size}: {error}") from None
    refs, notes = dict(changed.refs), list(changed.notes)
    source = refs["pos_embed"]
    refs["pos_embed"] = TensorRef(source.dtype, (1, 1 + new.num_patches, config.embed_dim),
                                  lambda: interpolate_pos_embed(source.load(), new.grid_size))
    notes.append(f"pos_embed resized {config.grid_size}x{config.grid_size} -> {new.grid_size}x{new.grid_size} "
                 "(bicubic, cls row kept)")
    if "decoder_pos_embed" in refs:
        dtype = refs["decoder_pos_embed"].dtype
        refs["decoder_pos_embed"] = TensorRef(dtype, (1, 1 + new.num_patches, config.decoder_embed_dim),
                                              lambda: sincos_2d(config.decoder_embed_dim, new.grid_size)[None].astype(dtype))
        notes.append("decoder_pos_embed rebuilt as the fixed sin-cos table of the new grid")
    return Changed(refs, replace(changed.detected, config=new), notes)


def interpolate_pos_embed(table: np.ndarray, grid: int) -> np.ndarray:
    """The reference's interpolate_pos_embed: torch bicubic, align_corners=False, on the patch rows."""
    import torch
    import torch.nn.functional as F

    from ..models.torch.twin import numpy_to_torch, torch_to_numpy

    tensor = numpy_to_torch(table)
    cls, patches = tensor[:, :1], tensor[:, 1:]
    old = math.isqrt(patches.shape[1])
    dim = patches.shape[-1]
    patches = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(tensor.dtype)
    return torch_to_numpy(torch.cat([cls, patches], dim=1)).copy()
