"""What `maeconv forward` and `maeconv parity` do with a checkpoint file: run one twin on given
images and noise, or check both twins and the reference on seeded inputs."""
from __future__ import annotations

import numpy as np

from ..convert.pipeline import load_canonical
from ..errors import MaeconvError
from ..models.config import CLASSIFIER, ENCODER
from ..models.twins import GRAPH
from .compare import Report
from .twins import build_model, check_classifier, check_pretrain, run_pretrain


def require_full(loaded, checkpoint) -> None:
    """Refuses an encoder-only or classifier checkpoint where the decoder is needed."""
    if loaded.detected.kind == ENCODER:
        raise MaeconvError(f"{checkpoint}: holds the encoder only (no decoder); this needs a full checkpoint")
    if loaded.detected.kind == CLASSIFIER:
        raise MaeconvError(f"{checkpoint}: is a fine-tuned classifier; this needs a pretraining checkpoint")


def forward(checkpoint, images: np.ndarray, noise: np.ndarray | None, settings: dict | None = None,
            framework: str | None = None, mode: str = GRAPH, sources: tuple[str, str] = ("--images", "--noise")):
    """loss, pred, mask, ids_restore, latent of the pretraining model on `images` (N, C, H, W);
    random noise when none is given. Returns (outputs, framework, preset)."""
    loaded = load_canonical(checkpoint)
    config = loaded.settings(**(settings or {})).config
    require_full(loaded, checkpoint)
    images = np.asarray(images, np.float32)
    expected = (config.in_chans, config.img_size, config.img_size)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise MaeconvError(f"{sources[0]}: shape {images.shape}, expected (N, {', '.join(map(str, expected))})")
    if noise is None:
        noise = np.random.default_rng().random((images.shape[0], config.num_patches), dtype=np.float32)
    noise = np.asarray(noise, np.float32)
    if noise.shape != (images.shape[0], config.num_patches):
        raise MaeconvError(f"{sources[1]}: shape {noise.shape}, expected ({images.shape[0]}, {config.num_patches})")
    framework = framework or loaded.framework
    model = build_model(loaded.state, config, framework, mode)
    return run_pretrain(model, framework, images, noise), framework, loaded.detected.preset


def checkpoint_report(checkpoint, batch: int = 2, seed: int = 0, settings: dict | None = None,
                      mode: str = GRAPH) -> Report:
    """Both twins and the float64 reference on the checkpoint's own weights, titled with it."""
    loaded = load_canonical(checkpoint)
    config = loaded.settings(**(settings or {})).config
    if loaded.detected.kind == CLASSIFIER:
        report = check_classifier(loaded.state, config, batch, seed, mode)
    else:
        report = check_pretrain(loaded.state, config, batch, seed, mode, loaded.detected.kind == ENCODER)
    report.title = f"{checkpoint} ({loaded.detected.preset}, {loaded.detected.kind})\n{report.title}"
    return report
