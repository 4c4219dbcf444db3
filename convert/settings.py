"""Model settings: what the weights alone do not say, decided by one rule everywhere.

    an explicit flag  >  what the file records  >  the preset

A setting is a field of MAEConfig. Files record settings under other names: a Hugging Face
config.json with transformers' names, the reference training code's pickled `args` with its
argparse names, and maeconv's own files (safetensors `__metadata__`, a `.ckpt` string entry) with
transformers' names as one JSON object. Every value is parsed strictly (the string "False" is not
true) and every resolved config is checked, so a setting the twins cannot honour is refused in one
line instead of being replaced.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..models.config import ACTIVATION_NAMES, GELU, GELU_TANH, MAEConfig
from ..errors import MaeconvError
from .jsontext import strict_json

# The key of maeconv's settings record in safetensors metadata and .ckpt string entries.
RECORD_KEY = "maeconv.settings"
FLAG, FILE, PRESET = "flag", "file", "preset"


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{value!r} is not true or false")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r:.40} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an int of hundreds of digits
        raise ValueError(f"{value!r:.40} is too large a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r:.40} is not a finite number")
    return number


def _size(value: Any) -> int:
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]  # (H, W) of a square image
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number of pixels")
    return value


def _activation(value: Any) -> str:
    if not isinstance(value, str) or value not in ACTIVATION_NAMES:
        raise ValueError(f"{value!r} is not an activation the twins compute ({', '.join(sorted(ACTIVATION_NAMES))})")
    return ACTIVATION_NAMES[value]


@dataclass(frozen=True)
class Setting:
    field: str                       # the MAEConfig field
    name: str                        # transformers' config name, also maeconv's record name
    args_name: str                   # facebookresearch/mae's argparse name (torch files' 'args')
    parse: Callable[[Any], Any]
    record: Callable[[Any], Any] = lambda value: value  # the value as written into a file


SETTINGS: tuple[Setting, ...] = (
    Setting("norm_pix_loss", "norm_pix_loss", "norm_pix_loss", _boolean),
    Setting("norm_eps", "layer_norm_eps", "layer_norm_eps", _number),
    Setting("activation", "hidden_act", "hidden_act", _activation,
            {GELU: "gelu", GELU_TANH: "gelu_pytorch_tanh"}.get),  # transformers' names for them
    Setting("mask_ratio", "mask_ratio", "mask_ratio", _number),
    Setting("img_size", "image_size", "input_size", _size),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}
SETTING_FIELDS = tuple(setting.field for setting in SETTINGS)


@dataclass(frozen=True)
class Resolved:
    config: MAEConfig
    sources: dict[str, str]  # field -> FLAG, FILE or PRESET


def parse_record(values: Mapping[str, Any], names: str, where: str) -> dict[str, Any]:
    """The settings a file records under `names` ('name' or 'args_name'), parsed strictly."""
    found = {}
    for setting in SETTINGS:
        key = getattr(setting, names)
        if key in values and values[key] is not None:
            try:
                found[setting.field] = setting.parse(values[key])
            except ValueError as error:
                raise MaeconvError(f"{where} {key}: {error}") from None
    return found


def recorded_settings(checkpoint, weights_config: MAEConfig) -> dict[str, Any]:
    """What a checkpoint records about its settings (empty where it records nothing), checked
    against what its weights fix: a recorded image size must be the one its position table has."""
    where = f"{checkpoint.path}:"
    if checkpoint.format == "hf-dir":
        recorded = parse_record(checkpoint.metadata, "name", f"{checkpoint.path / 'config.json'}:")
        _check_hf_architecture(checkpoint.metadata, weights_config, f"{checkpoint.path / 'config.json'}:")
    elif RECORD_KEY in checkpoint.metadata or RECORD_KEY in checkpoint.extras or RECORD_KEY in _meta(checkpoint):
        text = checkpoint.metadata.get(RECORD_KEY, checkpoint.extras.get(RECORD_KEY, _meta(checkpoint).get(RECORD_KEY)))
        recorded = parse_record(_json_object(text, f"{where} {RECORD_KEY}"), "name", f"{where} {RECORD_KEY}")
    elif "args" in checkpoint.extras:
        args = checkpoint.extras["args"]
        values = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, Mapping) else {}
        recorded = parse_record(values, "args_name", f"{where} args")
    else:
        recorded = {}
    size = recorded.get("img_size", weights_config.img_size)
    if size != weights_config.img_size:
        raise MaeconvError(f"{where} records image size {size}, but its position table is for "
                           f"{weights_config.img_size}")
    return recorded


def _meta(checkpoint) -> Mapping:
    """A torch file's 'meta' dict (OpenMMLab's), where maeconv keeps its settings in such files."""
    meta = checkpoint.extras.get("meta")
    return meta if isinstance(meta, dict) and all(type(k) is str for k in meta) else {}


def _json_object(text: Any, where: str) -> dict:
    try:
        value = strict_json(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise MaeconvError(f"{where}: not a JSON object")
    return value


# transformers' names for what the weights' shapes and the preset fix, and the config field each is.
HF_ARCHITECTURE = {"patch_size": "patch_size", "num_channels": "in_chans", "hidden_size": "embed_dim",
                   "num_hidden_layers": "depth", "num_attention_heads": "num_heads",
                   "decoder_hidden_size": "decoder_embed_dim", "decoder_num_hidden_layers": "decoder_depth",
                   "decoder_num_attention_heads": "decoder_num_heads"}


def _check_hf_architecture(config_json: Mapping, weights_config: MAEConfig, where: str) -> None:
    """A config.json that describes another model than its weights (the head count is not in the
    shapes at all) is refused rather than half believed."""
    for name, field in HF_ARCHITECTURE.items():
        if name in config_json and config_json[name] != getattr(weights_config, field):
            raise MaeconvError(f"{where} {name} is {config_json[name]!r}, but the weights are a "
                               f"{getattr(weights_config, field)!r} model (this preset's)")
    intermediate = config_json.get("intermediate_size")
    if intermediate is not None and intermediate != int(weights_config.embed_dim * weights_config.mlp_ratio):
        raise MaeconvError(f"{where} intermediate_size is {intermediate!r}, but the weights' MLP is "
                           f"{int(weights_config.embed_dim * weights_config.mlp_ratio)} wide")
    if config_json.get("qkv_bias", True) is not True:
        raise MaeconvError(f"{where} qkv_bias {config_json['qkv_bias']!r}: the twins always have query, key "
                           "and value biases (as the reference)")


def resolve_settings(weights_config: MAEConfig, recorded: Mapping[str, Any], where: str, **flags) -> Resolved:
    """The config to run: each setting from its flag if given (not None), else as the file
    records it, else the preset's; refused in one line if the twins cannot run it."""
    changes, sources = {}, {}
    for setting in SETTINGS:
        flag = flags.pop(setting.field, None)
        if flag is not None:
            changes[setting.field], sources[setting.field] = flag, FLAG
        elif setting.field in recorded:
            changes[setting.field], sources[setting.field] = recorded[setting.field], FILE
        else:
            sources[setting.field] = PRESET
    if flags:
        raise TypeError(f"not settings: {', '.join(flags)}")
    config = weights_config.replace(**changes)
    try:
        config.check()
    except ValueError as error:
        raise MaeconvError(f"{where}: {error}") from None
    return Resolved(config, sources)


def settings_record(config: MAEConfig) -> dict[str, Any]:
    """Every setting under transformers' names, as maeconv writes them into files."""
    return {setting.name: setting.record(getattr(config, setting.field)) for setting in SETTINGS}


def args_record(config: MAEConfig) -> dict[str, Any]:
    """Every setting under the reference training code's argparse names (a torch file's 'args')."""
    return {setting.args_name: setting.record(getattr(config, setting.field)) for setting in SETTINGS}
