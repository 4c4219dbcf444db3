"""maeconv: the MAE vision transformer in PyTorch and MindSpore, its checkpoints between them and
every naming scheme and format in the wild, with proof that nothing changed.

    import maeconv
    model = maeconv.from_pretrained("mae_visualize_vit_base", framework="mindspore")
    maeconv.convert("mae_pretrain_vit_base.pth", "mae_pretrain_vit_base.ckpt")
    task = maeconv.pipeline("masked_image_modeling", model="mae_visualize_vit_base")
    trainer = maeconv.Trainer(task="masked_image_modeling", model="mae_vit_base_p16", train_dataset="imagenet/train")

Frameworks load only when something needs them: `import maeconv` imports neither torch nor MindSpore.
"""
# pytest collecting a checkout whose folder is not a Python name (`ci-check`) imports this file
# alone, as a top-level module `__init__`, where relative imports cannot work; it needs nothing here.
if __spec__ is None or __spec__.parent:
    from . import convert
    from .convert.api import AutoConfig, AutoModel, from_pretrained
    from .errors import MaeconvError

__all__ = ["AutoConfig", "AutoModel", "MaeconvError", "Trainer", "convert", "from_pretrained", "load_image",
           "pipeline"]

# Where the names that need the runtimes (and their heavier imports) live, fetched on first use.
_LAZY = {"Trainer": ("runtimes.ascend.api", "Trainer"), "pipeline": ("runtimes.pipelines", "pipeline"),
         "load_image": ("runtimes.images", "load_image")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'maeconv' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(f".{module}", __name__), attribute)


def __dir__():
    return sorted([*globals(), *_LAZY])
