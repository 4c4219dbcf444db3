"""Checkpoints on the Hugging Face Hub, by repo id (`facebook/vit-mae-base`,
`timm/vit_base_patch16_224.mae`, `org/name@revision`), through `huggingface_hub`: its cache
(`HF_HUB_CACHE`, `HF_HOME`), `HF_HUB_OFFLINE`, revisions (branch, tag or commit).

How a name is told from a path (`resolve` in pipeline applies it):
1. `hf://org/name[@rev]` is always a Hub repo.
2. A local file or folder that exists is that file or folder, even if it reads like a repo id.
3. An official checkpoint name is downloaded from its publisher (convert/hub.py).
4. `org/name[@rev]`, exactly one slash, of the Hub's repo-id characters and not ending in a
   checkpoint suffix (`.pth`, `.safetensors`, ...), is a Hub repo; anything else is a path.

Only the files the model needs are fetched: config.json and the weights, the first of
model.safetensors, its sharded index and shards, pytorch_model.bin, its index and shards (the
order transformers looks for them). They land in huggingface_hub's own cache, which keeps only
complete files (it downloads to `.incomplete` and renames); nothing goes into maeconv's cache.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import MaeconvError
from .jsontext import strict_json
from .formats.base import member_of
from .formats.sharded import SAFETENSORS_INDEX, TORCH_INDEX

PREFIX = "hf://"
# huggingface_hub's repo-id grammar (validate_repo_id), with the namespace required here.
REPO_ID = re.compile(r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?/[\w.-]{1,96}")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".safetensors", ".ckpt", ".json", ".onnx", ".mindir",
                       ".npy", ".npz", ".yaml", ".yml")
SINGLE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WEIGHTS_ORDER = ("model.safetensors", SAFETENSORS_INDEX, "pytorch_model.bin", TORCH_INDEX)


@dataclass(frozen=True)
class RepoRef:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse(source: str, explicit: bool = False) -> RepoRef | None:
    """The repo a name means, or None when it is not one (`explicit`: it came with hf://, so a
    malformed one is an error)."""
    text = source[len(PREFIX):] if source.startswith(PREFIX) else source
    repo_id, at, revision = text.partition("@")
    well_formed = (REPO_ID.fullmatch(repo_id) is not None and "--" not in repo_id and ".." not in repo_id
                   and (not at or revision.strip() == revision != ""))
    if not well_formed:
        if explicit:
            raise MaeconvError(f"{source}: not a Hugging Face Hub repo id (expected hf://org/name or "
                               "hf://org/name@revision)")
        return None
    return RepoRef(repo_id, revision or None)


def repo_of(source: str | os.PathLike) -> RepoRef | None:
    """The Hub repo `source` names, by the rules above (without looking at local files: the caller
    has found none)."""
    if not isinstance(source, str):
        return None
    if source.startswith(PREFIX):
        return parse(source, explicit=True)
    if source.startswith(("/", "./", "../", "~")) or source.lower().endswith(CHECKPOINT_SUFFIXES):
        return None
    return parse(source)


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, looked up now (tests set it after import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def cache_dir() -> Path:
    """huggingface_hub's cache as the environment sets it now: HF_HUB_CACHE, else HF_HOME/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def fetch(ref: RepoRef, log=None) -> Path:
    """The local path of a Hub repo's model: its snapshot folder when config.json is a transformers
    config, else its weights file (timm's repos keep timm's own config.json); fetched if needed."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise MaeconvError(f"{ref}: reading a Hugging Face Hub repo needs huggingface_hub "
                           "(pip install huggingface_hub)") from None
    folder = _in_cache(_snapshot(ref, log), ref)
    weights = _weights_in(folder, ref)
    config = folder / "config.json"
    if config.is_file() and _is_transformers_config(config):
        return folder
    if not member_of(folder / weights, folder):
        raise MaeconvError(f"{ref}: the cached {weights} is a link to {(folder / weights).resolve()}, outside the "
                           "repo's cache folder")
    return folder / weights


def _in_cache(folder: Path, ref: RepoRef) -> Path:
    """The snapshot folder, if it is one of the repo's in the cache: a revision's ref file names a
    folder there, not a path elsewhere (`../..`, or absolute)."""
    snapshots = (cache_dir() / f"models--{ref.repo_id.replace('/', '--')}" / "snapshots").resolve()
    if folder.resolve().parent != snapshots:
        raise MaeconvError(f"{ref}: the Hugging Face cache's revision leads to {folder}, not to a snapshot "
                           f"in {snapshots}")
    return folder


def _snapshot(ref: RepoRef, log) -> Path:
    """The snapshot folder of the revision, holding (links to) the files the model needs."""
    from huggingface_hub import snapshot_download

    local_only = offline()
    try:
        if local_only:
            return Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache_dir(),
                                          local_files_only=True))
        wanted = _wanted_online(ref)
        if log:
            log(f"fetching {', '.join(wanted)} of {ref} from the Hugging Face Hub (cache {cache_dir()})")
        return Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache_dir(),
                                      allow_patterns=wanted))
    except MaeconvError:
        raise
    except Exception as error:  # huggingface_hub's errors: not found, offline, network, gated
        raise MaeconvError(_problem(ref, error, local_only)) from None


def _wanted_online(ref: RepoRef) -> list[str]:
    """The files to fetch, chosen from the repo's listing (and its index, when sharded)."""
    from huggingface_hub import HfApi, hf_hub_download

    files = set(HfApi().list_repo_files(ref.repo_id, revision=ref.revision))
    weights = next((name for name in WEIGHTS_ORDER if name in files), None)
    if weights is None:
        raise MaeconvError(f"{ref}: the repo holds no model weights maeconv reads ({', '.join(WEIGHTS_ORDER)})")
    wanted = [name for name in ("config.json", weights) if name in files]
    if weights not in SINGLE_WEIGHTS:
        index = hf_hub_download(ref.repo_id, weights, revision=ref.revision, cache_dir=cache_dir())
        wanted += sorted(set(_shards_named(Path(index))) & files)
    return wanted


def _shards_named(index: Path) -> list[str]:
    try:
        weight_map = strict_json(index.read_bytes()).get("weight_map", {})
    except (OSError, ValueError, AttributeError):
        return []  # the reader reports a broken index in full
    return [shard for shard in weight_map.values() if isinstance(shard, str)] if isinstance(weight_map, dict) else []


def _weights_in(folder: Path, ref: RepoRef) -> str:
    for name in WEIGHTS_ORDER:
        if (folder / name).is_file():
            return name
    where = "the cached snapshot" if offline() else "the repo"
    raise MaeconvError(f"{ref}: {where} holds no model weights maeconv reads ({', '.join(WEIGHTS_ORDER)}) "
                       f"in {folder}")


def _is_transformers_config(path: Path) -> bool:
    try:
        config = strict_json(path.read_bytes())
    except (OSError, ValueError):
        return True  # the directory reader reports a broken config.json
    return not isinstance(config, dict) or "model_type" in config


def _problem(ref: RepoRef, error: Exception, local_only: bool) -> str:
    """One line for what huggingface_hub raised."""
    kind = type(error).__name__
    if kind == "RevisionNotFoundError":
        return f"{ref}: the Hugging Face Hub repo {ref.repo_id} has no revision {ref.revision!r}"
    if kind in ("RepositoryNotFoundError", "GatedRepoError"):
        return (f"{ref}: no such file, and no Hugging Face Hub repo {ref.repo_id} that can be read "
                f"({'gated: accept its terms and log in' if kind == 'GatedRepoError' else 'not found or private'})")
    if local_only or kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "IncompleteSnapshotError"):
        return f"{ref}: no such file, and {_cache_state(ref)}" + (
            " and HF_HUB_OFFLINE is set" if local_only else "; the Hub could not be reached")
    return f"{ref}: fetching from the Hugging Face Hub failed ({kind}: {str(error).splitlines()[0] if str(error) else ''})"


def _cache_state(ref: RepoRef) -> str:
    """What the cache lacks: the repo, or just that revision of it."""
    storage = cache_dir() / f"models--{ref.repo_id.replace('/', '--')}"
    if not storage.is_dir():
        return f"the Hugging Face cache ({cache_dir()}) does not hold {ref.repo_id}"
    revision = ref.revision or "main"
    return f"the Hugging Face cache ({cache_dir()}) holds {ref.repo_id} but not its revision {revision!r}"
