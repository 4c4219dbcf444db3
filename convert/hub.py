"""The official MAE checkpoints by name (facebookresearch/mae's, MindFormers' and MindCV's):
downloaded with resume into a cache that only ever holds complete files, checked by md5 or sha256
prefix (where published) and by parsing as the expected preset and kind; the close official names
for a mistyped one."""
from __future__ import annotations

import difflib
import fcntl
import hashlib
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

from ..models.config import CLASSIFIER, ENCODER, FULL, checkpoint_shapes, get_preset
from .formats import FORMATS, SUFFIX_FORMATS
from ..errors import MaeconvError

if TYPE_CHECKING:  # the network stack (http.client, ssl, email: some 40 ms) loads only for a download
    from .transfer import Limits

BASE_URL = "https://dl.fbaipublicfiles.com/mae"


@dataclass(frozen=True)
class Official:
    path: str                # under `base`
    md5_prefix: str | None   # as published beside the links; None where none is published
    preset: str
    kind: str
    base: str = BASE_URL     # the publisher's download root (MAECONV_BASE_URL replaces it: a mirror)
    sha256_prefix: str | None = None  # as the publisher names its files (MindCV: <name>-<sha256[:8]>.ckpt)


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
# MindFormers' own file (its model card's link; MindFormerBook's 'mae_vit_base_p16'): the base
# encoder, converted from mae_pretrain_vit_base.pth by MindFormers' convert_weight.py. No checksum
# is published.
MINDFORMERS_BASE_URL = "https://ascend-repo-modelzoo.obs.cn-east-2.myhuaweicloud.com"
CHECKPOINTS["mae_vit_base_p16"] = Official("XFormer_for_mindspore/mae/mae_vit_base_p16.ckpt", None,
                                           "mae_vit_base_patch16", ENCODER, base=MINDFORMERS_BASE_URL)
# MindCV's fine-tuned ViT-B (mindcv.models.mae, default_cfgs), named with its sha256 prefix.
MINDCV_BASE_URL = "https://download.mindspore.cn/toolkits"
CHECKPOINTS["mae_b_16_224_finetune"] = Official("mindcv/mae/mae_b_16_224_finetune-cc05b899.ckpt", None,
                                                "vit_base_patch16", CLASSIFIER, base=MINDCV_BASE_URL,
                                                sha256_prefix="cc05b899")


# How alike (difflib ratio) a typed name must be to an official one to be offered, and how far
# behind the closest another may be and still be offered beside it.
CLOSE_RATIO = 0.75
CLOSE_SPREAD = 0.03


def cache_dir() -> Path:
    return Path(os.environ.get("MAECONV_CACHE", Path.home() / ".cache" / "maeconv"))


def url_of(name: str) -> str:
    entry = CHECKPOINTS[name]
    return f"{os.environ.get('MAECONV_BASE_URL', entry.base).rstrip('/')}/{entry.path}"


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
    return digest_of(path, hashlib.md5(usedforsecurity=False))


def digest_of(path: Path, digest) -> str:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def size_cap(entry: Official) -> int:
    """The largest file the entry can be: its fp32 tensor bytes plus a generous allowance for the
    pickle and zip structure around them (a few hundred bytes per tensor in practice)."""
    shapes = checkpoint_shapes(get_preset(entry.preset).config, entry.kind)
    tensor_bytes = 4 * sum(math.prod(shape) for shape in shapes.values())
    return tensor_bytes + tensor_bytes // 8 + (1 << 20)


def limits_for(entry: Official) -> Limits:
    """The download's timeouts and size cap; the environment can set each (tests use seconds)."""
    from .transfer import Limits
    return Limits(stall_s=_env_number("MAECONV_DOWNLOAD_STALL_S", 60.0),
                  deadline_s=_env_number("MAECONV_DOWNLOAD_DEADLINE_S", 6 * 3600.0),
                  max_bytes=int(_env_number("MAECONV_DOWNLOAD_MAX_BYTES", size_cap(entry))))


def _env_number(variable: str, default: float) -> float:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 < value < math.inf):
        raise MaeconvError(f"{variable}: expected a positive number, got {text!r}")
    return value


def head_check(entry: Official) -> Callable[[bytes], str | None]:
    """What is wrong with a file's first bytes for the entry's format, or None."""
    from .transfer import HEAD_BYTES
    fmt = FORMATS[SUFFIX_FORMATS[Path(entry.path).suffix.lower()]]

    def problem(head: bytes) -> str | None:
        if not head:
            return f"empty body, not a {fmt.label}"
        return None if fmt.starts(head, None) else f"not a {fmt.label}: it starts with {head[:HEAD_BYTES]!r}"
    return problem


# What a downloaded file is: (preset, kind), as the checkpoint reader detects them.
Identify = Callable[[Path], tuple[str, str]]


def fetch(name: str, identify: Identify, log: Callable[[str], None] | None = None, progress=None,
          force: bool = False) -> Path:
    """The cached file of an official checkpoint, downloading (or resuming) it first if needed.
    The cache only receives a complete file that `identify` finds to be the entry's preset and kind
    (the reader is handed in: it sits above this module)."""
    if name not in CHECKPOINTS:
        raise MaeconvError(f"{name}: not an official checkpoint name"
                           + (did_you_mean(name) or "; `maeconv download --list` lists them"))
    entry = CHECKPOINTS[name]
    target = cache_dir() / Path(entry.path).name
    if target.exists() and not force:
        return target
    limits = limits_for(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with _locked(partial, name, limits.deadline_s, log) as out:
        if target.exists() and not force:
            return target  # another process finished it while this one waited for the lock
        url = url_of(name)
        if log:
            log(f"downloading {name} from {url}")
        _download_verified(url, entry, identify, out, partial, limits, progress, log)
        os.replace(partial, target)
    return target


def _download_verified(url: str, entry: Official, identify: Identify, out: BinaryIO, partial: Path,
                       limits: Limits, progress, log) -> None:
    """Brings the partial file to complete and verified, or raises with what became of it."""
    from .transfer import DownloadError, download
    try:
        download(url, out, limits, head_check(entry), progress, log)
        _verify(partial, entry, identify)
    except DownloadError as error:
        out.flush()
        kept = 0 if error.drop else os.fstat(out.fileno()).st_size
        if not kept:
            partial.unlink(missing_ok=True)
        fate = (f"{kept} bytes kept in {partial}; run the command again to resume" if kept
                else "the file is removed" if error.drop else "nothing kept")
        raise MaeconvError(f"{url}: {error}; {fate}") from None


def _verify(partial: Path, entry: Official, identify: Identify) -> None:
    """The downloaded file is the entry: its published md5 prefix, and it parses as its preset and kind."""
    from .transfer import DownloadError
    for algorithm, prefix in (("md5", entry.md5_prefix), ("sha256", entry.sha256_prefix)):
        if prefix:
            digest = digest_of(partial, hashlib.new(algorithm, usedforsecurity=False))
            if not digest.startswith(prefix):
                raise DownloadError(f"{algorithm} {digest[:len(prefix)]}... does not match the published {prefix}",
                                    drop=True)
    try:
        preset, kind = identify(partial)
    except MaeconvError as error:
        raise DownloadError(f"the file does not parse: {str(error).removeprefix(f'{partial}: ')}",
                            drop=True) from None
    except Exception as error:  # the bytes came from the network: whatever a reader trips on, they go
        raise DownloadError(f"the file does not parse ({type(error).__name__})", drop=True) from None
    expected = get_preset(entry.preset).name
    if (preset, kind) != (expected, entry.kind):
        raise DownloadError(f"holds a {preset} {kind} checkpoint, not the expected "
                            f"{expected} {entry.kind}", drop=True)


@contextmanager
def _locked(partial: Path, name: str, wait_s: float, log) -> Iterator[BinaryIO]:
    """The partial file, open and exclusively locked, so that two downloads of one name never write
    into one file; an empty partial file is a leftover, not a start, and goes on the way out."""
    out = _open_locked(partial, name, wait_s, log)
    try:
        yield out
    finally:
        out.flush()
        if _is_file_at(out, partial) and os.fstat(out.fileno()).st_size == 0:
            partial.unlink()
        out.close()  # releases the lock


def _open_locked(partial: Path, name: str, wait_s: float, log) -> BinaryIO:
    """Waits (up to `wait_s`) while another download holds the partial file's lock."""
    give_up = time.monotonic() + wait_s
    waiting = False
    while True:
        out = os.fdopen(os.open(partial, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
        try:
            fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            out.close()
            if time.monotonic() > give_up:
                raise MaeconvError(f"{name}: another download of it is still writing {partial} "
                                   f"after {wait_s:g} s; try again when it ends") from None
            if log and not waiting:
                log(f"waiting for another download of {name} to finish")
            waiting = True
            time.sleep(0.1)
            continue
        if _is_file_at(out, partial):
            return out
        out.close()  # the holder renamed or removed it meanwhile: lock what the path holds now


def _is_file_at(out: BinaryIO, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(out.fileno()), os.stat(path))
    except FileNotFoundError:
        return False
