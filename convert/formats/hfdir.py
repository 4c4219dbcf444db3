"""Hugging Face model directories: config.json beside model.safetensors (or pytorch_model.bin, or
either sharded with its index), as transformers' save_pretrained writes them for ViTMAE."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

from ...models.config import ENCODER, MAEConfig
from ...errors import MaeconvError
from ..jsontext import strict_json
from ..settings import settings_record
from ..tensors import TensorRef, Verdict
from . import pytorch, safetensors, sharded
from .base import Checkpoint, member_of

NAME = "hf-dir"
# The weights, in the order transformers looks for them: the first one present is the model.
WEIGHTS = {"model.safetensors": safetensors.read_file, sharded.SAFETENSORS_INDEX: sharded.read_index,
           "pytorch_model.bin": pytorch.read, sharded.TORCH_INDEX: sharded.read_index}
# All that --force may replace in one: what maeconv writes there, a single file or shards.
WRITTEN = re.compile(r"config\.json|model\.safetensors|model\.safetensors\.index\.json|"
                     + sharded.SHARD_NAME.pattern)


def read(path: Path) -> Checkpoint:
    config_path = path / "config.json"
    weights = [path / name for name in WEIGHTS if (path / name).is_file()]
    if not config_path.is_file() or not weights:
        raise MaeconvError(f"{path}: not a Hugging Face model directory (needs config.json and one of "
                           f"{', '.join(WEIGHTS)})")
    outside = [file for file in (config_path, weights[0]) if not member_of(file, path)]
    if outside:
        raise MaeconvError(f"{path}: its {outside[0].name} is a link to {outside[0].resolve()}, outside the folder")
    try:
        config = strict_json(config_path.read_bytes())
    except ValueError as error:
        raise MaeconvError(f"{config_path}: not valid JSON ({str(error):.200})") from None
    if not isinstance(config, dict):
        raise MaeconvError(f"{config_path}: not a model config (JSON {json.dumps(config)[:40]}, not an object)")
    inner = WEIGHTS[weights[0].name](weights[0])
    return Checkpoint(path, NAME, inner.tensors, inner.extras, config)


def write(path: Path, tensors: Mapping[str, TensorRef], extras: Mapping, *, verify) -> dict[str, Verdict]:
    """The folder: config.json, then model.safetensors written by `verify` (which reads it back), or,
    over extras' `max_shard_size` bytes of tensors, shards of at most that much and their index."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(extras["config"], indent=2) + "\n")
    metadata = {"format": "pt"}
    limit = extras.get("max_shard_size")
    if limit is not None and sum(ref.nbytes for ref in tensors.values()) > limit:
        return sharded.write_shards(path, tensors, limit, metadata, verify)
    verify(path / "model.safetensors", safetensors.NAME, {"metadata": metadata}, tensors)
    return {}


def extras_for(config: MAEConfig, kind: str, tag: str) -> dict:
    return {"config": config_json(config, kind)}


def config_json(config: MAEConfig, kind: str) -> dict:
    """config.json of transformers' ViTMAE, with the model's settings under transformers' names."""
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
