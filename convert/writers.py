"""Writing the converted tensors: one file format or a Hugging Face directory, atomically, verified."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping


from ..models.config import ENCODER, MAEConfig
from .checkpoints import HF_DIR, MINDSPORE, SAFETENSORS, TORCH, output_target, write_checkpoint, write_verified
from .errors import MaeconvError
from .outputs import staged
from .settings import RECORD_KEY, args_record, settings_record
from .schemes import MINDFORMERS, MINDSPORE as MINDSPORE_SCHEME, Scheme, apply_from_canonical, apply_to_canonical
from .tensors import TensorRef

# Schemes whose files hold optimizer moments by parameter name (adam_m.<name>, adam_v.<name>).
NAMED_OPTIMIZER_SCHEMES = (MINDSPORE_SCHEME, MINDFORMERS)


def hf_config(config: MAEConfig, kind: str) -> dict:
    """config.json of transformers' ViTMAE, with the model's settings (layer_norm_eps: the reference's
    1e-6 unless the source said otherwise; Hub files say 1e-12)."""
    return {
        "architectures": ["ViTMAEModel" if kind == ENCODER else "ViTMAEForPreTraining"],
        "model_type": "vit_mae",
        "image_size": config.img_size,
        "patch_size": config.patch_size,
        "num_channels": config.in_chans,
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "intermediate_size": int(config.embed_dim * config.mlp_ratio),
        "decoder_hidden_size": config.decoder_embed_dim,
        "decoder_num_hidden_layers": config.decoder_depth,
        "decoder_num_attention_heads": config.decoder_num_heads,
        "decoder_intermediate_size": int(config.decoder_embed_dim * config.mlp_ratio),
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "qkv_bias": True,
        **settings_record(config),
    }


def write(dst: Path, tensors: dict[str, TensorRef], fmt: str, target: Scheme, detected, loaded, options,
          progress: Callable[[int], None] | None = None) -> list[str]:
    """Writes and verifies, the settings of `detected.config` recorded the way the format can;
    returns the names of tensors holding NaN or Inf (written as they are)."""
    nonfinite: list[str] = []
    inputs = [loaded.checkpoint.path]
    if fmt != HF_DIR:
        extras = settings_extras(fmt, target, detected.config)
        write_checkpoint(dst, tensors, fmt, options.force, extras, progress, nonfinite, inputs)
        return nonfinite
    with staged(output_target(dst, HF_DIR), force=options.force, inputs=inputs) as stage:
        folder = stage.path()
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(hf_config(detected.config, detected.kind), indent=2) + "\n")
        write_verified(folder / "model.safetensors", tensors, SAFETENSORS, {"metadata": {"format": "pt"}},
                       progress, nonfinite, shown_as=dst)
    return nonfinite


def settings_extras(fmt: str, target: Scheme, config: MAEConfig) -> dict:
    """What a file holds beside its tensors: the model's settings where the format can keep them
    (torch: a plain 'args' dict, loadable with weights_only; safetensors: metadata; .ckpt: a
    string entry), and the framework tag safetensors readers look for."""
    record = json.dumps(settings_record(config))
    if fmt == TORCH:
        return {"args": args_record(config)}
    if fmt == SAFETENSORS:
        return {"metadata": {"format": "ms" if target in NAMED_OPTIMIZER_SCHEMES else "pt", RECORD_KEY: record}}
    return {"strings": {RECORD_KEY: record}}


def carry_optimizer(loaded, target: Scheme, fmt: str, refs: Mapping[str, TensorRef], notes: list[str]) -> dict:
    """Optimizer moments renamed like their parameters, for targets that store them by name."""
    if fmt not in (MINDSPORE, SAFETENSORS) or target not in NAMED_OPTIMIZER_SCHEMES:
        raise MaeconvError(f"--keep-optimizer needs a MindSpore-family target (.ckpt, or safetensors with "
                           f"--to mindspore/mindformers); {target.name} {fmt} files keep no optimizer state by name")
    if loaded.scheme not in NAMED_OPTIMIZER_SCHEMES:
        raise MaeconvError(f"{loaded.checkpoint.path}: its optimizer state is not stored by parameter name; "
                           "only MindSpore/MindFormers training checkpoints carry over")
    from .pipeline import MOMENT_PREFIXES

    out = {}
    tensors = loaded.checkpoint.tensors
    for prefix in MOMENT_PREFIXES:
        moments = {n[len(prefix):]: ref for n, ref in tensors.items() if n.startswith(prefix)}
        if not moments:
            continue
        canonical = apply_to_canonical(loaded.scheme.plan_to_canonical(moments), moments)
        canonical = {n: r for n, r in canonical.items() if n in refs}
        foreign = apply_from_canonical(target.plan_from_canonical(canonical), canonical)
        out.update({prefix + n: ref for n, ref in foreign.items()})
    out.update({n: ref for n, ref in tensors.items() if n in loaded.skipped and not n.startswith(MOMENT_PREFIXES)})
    notes.append(f"kept {len(out)} optimizer/training-state entries")
    return out
