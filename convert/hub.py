"""The official MAE checkpoints by name: download with resume into a cache, checked by md5 prefix;
the close official names for a mistyped one."""
from __future__ import annotations

import difflib
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..models.config import CLASSIFIER, ENCODER, FULL
from .errors import MaeconvError

BASE_URL = "https://dl.fbaipublicfiles.com/mae"


@dataclass(frozen=True)
class Official:
    path: str                # under BASE_URL
    md5_prefix: str | None   # as published beside the links; None where none is published
    preset: str
    kind: str


# md5 prefixes as published beside the official links (pretrained and fine-tuned tables).
PRETRAIN_MD5 = {"base": "8cad7c", "large": "b8b06e", "huge": "9bdbb0"}
FINETUNED_MD5 = {"base": "1b25e9", "large": "51f550", "huge": "2541f2"}
ARCHITECTURES = {"base": "vit_base_patch16", "large": "vit_large_patch16", "huge": "vit_huge_patch14"}

CHECKPOINTS: dict[str, Official] = {}
for _size, _arch in ARCHITECTURES.items():
    CHECKPOINTS.update({
        f"mae_pretrain_vit_{_size}": Official(f"pretrain/mae_pretrain_vit_{_size}.pth", PRETRAIN_MD5[_size],
                                              f"mae_{_arch}", ENCODER),
        f"mae_pretrain_vit_{_size}_full": Official(f"pretrain/mae_pretrain_vit_{_size}_full.pth", None,
                                                   f"mae_{_arch}", FULL),
        f"mae_visualize_vit_{_size}": Official(f"visualize/mae_visualize_vit_{_size}.pth", None, f"mae_{_arch}", FULL),
        f"mae_finetuned_vit_{_size}": Official(f"finetune/mae_finetuned_vit_{_size}.pth", FINETUNED_MD5[_size],
                                               _arch, CLASSIFIER),
    })
# MindFormers' model card names the base encoder after its preset.
CHECKPOINTS["mae_vit_base_p16"] = CHECKPOINTS["mae_pretrain_vit_base"]


# How alike (difflib ratio) a typed name must be to an official one to be offered, and how far
# behind the closest another may be and still be offered beside it.
CLOSE_RATIO = 0.75
CLOSE_SPREAD = 0.03


def cache_dir() -> Path:
    return Path(os.environ.get("MAECONV_CACHE", Path.home() / ".cache" / "maeconv"))


def url_of(name: str) -> str:
    return f"{os.environ.get('MAECONV_BASE_URL', BASE_URL).rstrip('/')}/{CHECKPOINTS[name].path}"


def close_names(source: str) -> list[str]:
    """The official names a mistyped one most likely meant: the closest few, as typed or without its
    directory and suffix, and only those about as close as the closest."""
    scored = {}
    for typed in {str(source), Path(source).stem}:
        for name in CHECKPOINTS:
            ratio = difflib.SequenceMatcher(None, typed, name).ratio()
            scored[name] = max(ratio, scored.get(name, 0.0))
    best = max(scored.values(), default=0.0)
    if best < CLOSE_RATIO:
        return []
    ranked = sorted((name for name, ratio in scored.items() if ratio >= best - CLOSE_SPREAD),
                    key=lambda name: -scored[name])
    return ranked[:3]


def did_you_mean(source: str) -> str:
    """'; did you mean a or b?' for `source`, or '' when no official name is close."""
    names = close_names(source)
    if not names:
        return ""
    return f"; did you mean {', '.join(names[:-1]) + ' or ' if len(names) > 1 else ''}{names[-1]}?"


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(name: str, log: Callable[[str], None] | None = None, progress=None, force: bool = False) -> Path:
    """The cached file of an official checkpoint, downloading (or resuming) it first if needed."""
    if name not in CHECKPOINTS:
        raise MaeconvError(f"{name}: not an official checkpoint name"
                           + (did_you_mean(name) or "; `maeconv download --list` lists them"))
    entry = CHECKPOINTS[name]
    target = cache_dir() / Path(entry.path).name
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    url = url_of(name)
    if log:
        log(f"downloading {name} from {url}")
    _download(url, partial, progress)
    if entry.md5_prefix:
        digest = md5_of(partial)
        if not digest.startswith(entry.md5_prefix):
            partial.unlink()
            raise MaeconvError(f"{url}: md5 {digest[:6]}... does not match the published {entry.md5_prefix}; "
                               "file refused and removed")
    os.replace(partial, target)
    return target


def _download(url: str, partial: Path, progress=None) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = response.status == 206
            total = int(response.headers.get("Content-Length", 0)) + (have if resumed else 0)
            if progress:
                progress(total, have if resumed else 0)
            with open(partial, "ab" if resumed else "wb") as out:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    if progress:
                        progress(total, len(chunk))
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the partial file is already complete
            return
        raise MaeconvError(f"{url}: download failed (HTTP {error.code} {error.reason})") from None
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise MaeconvError(f"{url}: download failed ({getattr(error, 'reason', error)}); "
                           f"run the command again to resume") from None
