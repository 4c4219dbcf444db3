"""The Python API in the style of the seed's AutoModel/AutoConfig: names or paths in, models out."""
from __future__ import annotations

import os
import warnings

from ..models.config import MAEConfig, get_preset
from ..errors import MaeconvError
from .pipeline import load_canonical
from .settings import SETTING_FIELDS
from .twins import TORCH, create_model, load_state, task_of


def from_pretrained(name_or_path: str | os.PathLike, framework: str = TORCH, **config_overrides):
    """A twin model with the weights of a checkpoint file, directory or official name loaded strictly.

    The preset and kind are detected from the file. An encoder-only checkpoint gives the
    pretraining model with its decoder reported absent (a warning, and `model.decoder_absent`)."""
    loaded = load_canonical(name_or_path)
    settings = {name: config_overrides.pop(name) for name in SETTING_FIELDS if name in config_overrides}
    config = _checked(loaded.settings(**settings).config.replace(**config_overrides), name_or_path)
    model = create_model(config, task_of(loaded.detected.kind), framework)
    report = load_state(model, loaded.refs, framework, str(name_or_path))
    model.decoder_absent = report.decoder_absent
    if report.decoder_absent:
        warnings.warn(f"{name_or_path}: encoder-only checkpoint; the decoder is left as initialised, not trained",
                      stacklevel=2)
    return model


class AutoConfig:
    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike) -> MAEConfig:
        """The config of a preset name (e.g. 'mae_vit_base_p16'), or of a checkpoint file, directory or
        official checkpoint name."""
        try:
            return get_preset(str(name_or_path)).config
        except KeyError:
            return load_canonical(name_or_path).detected.config


class AutoModel:
    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, framework: str = TORCH, **config_overrides):
        """A model with pretrained weights, or, for a preset name, freshly initialised."""
        try:
            preset = get_preset(str(name_or_path))
        except KeyError:
            return from_pretrained(name_or_path, framework, **config_overrides)
        return create_model(_checked(preset.config.replace(**config_overrides), name_or_path), preset.task, framework)


def _checked(config: MAEConfig, source) -> MAEConfig:
    try:
        return config.check()
    except ValueError as error:
        raise MaeconvError(f"{source}: {error}") from None
