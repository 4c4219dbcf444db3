"""Every file maeconv writes arrives the same way: staged, then renamed into place, never over
something it must not replace.

- Outputs are written inside a private staging folder created exclusively in the target folder
  (`.maeconv-<pid>-<random>.tmp`, mode 0700), under their final names: a model whose weights
  sit in companion files (ONNX external data, MindIR variables) refers to them by the names
  they end up with, and nobody else can plant a link among them.
- The finished set is renamed out member by member without replacing anything
  (`renameat2(RENAME_NOREPLACE)`), so of two runs racing for one name the second fails instead
  of silently replacing the first; a failure half-way renames the moved members back.
- `--force` replaces a file, or a folder that holds nothing but what maeconv writes in such a
  folder; never an input, a folder above an input or above the working directory.
- SIGTERM and SIGHUP unwind like Ctrl-C (`handle_signals`), so the staging folder goes; one left
  by SIGKILL is recognisable by its name and is removed by the next run into that folder.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import signal
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from . import libc
from ..errors import MaeconvError

LOG = logging.getLogger("maeconv")
STAGING_PATTERN = re.compile(r"\.maeconv-(\d+)-[0-9a-f]{8}\.tmp\Z")


@dataclass(frozen=True)
class Companion:
    """A name beside an output that belongs to it: a file, or (with `members`, a pattern of the
    names a writer puts in it) a folder, such as MindSpore's `<name>_variables/` of `data_0`,
    `data_1`, ... `--force` replaces such a folder only if it holds nothing but such names."""

    name: str
    members: re.Pattern | None = None


@dataclass(frozen=True)
class Target:
    """One output as the user names it, and what else belongs to it.

    `folder_members`: the output is a folder holding files of these names (an HF directory);
    `--force` replaces an existing folder only if it holds nothing else. `companions`: files or
    folders in the same folder that belong to the output when they exist (ONNX external data,
    MindIR variables); `--force` replaces them together with it, and a run that writes only
    some of them removes the others, so a set never mixes two runs' files."""

    path: Path
    folder_members: frozenset[str] | re.Pattern | None = None
    companions: tuple[Companion | str, ...] = ()

    @property
    def is_folder(self) -> bool:
        return self.folder_members is not None

    @property
    def companion_of(self) -> dict[str, Companion]:
        return {c.name: c for c in (as_companion(c) for c in self.companions)}

    @property
    def members(self) -> list[Path]:
        """The paths the output is made of: its main name last."""
        return [*(self.path.parent / name for name in self.companion_of), self.path]


def as_companion(companion: Companion | str) -> Companion:
    return companion if isinstance(companion, Companion) else Companion(companion)


def as_target(target: Target | str | os.PathLike) -> Target:
    return target if isinstance(target, Target) else Target(Path(target))


# --- checks before any work ---

def check_target(target: Target | str | os.PathLike, force: bool = False,
                 inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Fails, before any work is done, if the output cannot or must not be written."""
    target = as_target(target)
    path = target.path
    _check_name(path)
    parent = path.parent
    if not parent.is_dir():
        raise MaeconvError(f"{path}: directory {parent} does not exist" if not parent.exists()
                           else f"{path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MaeconvError(f"{path}: directory {parent} is not writable")
    protected = _protected(inputs)
    for member in reversed(target.members):
        if not os.path.lexists(member):
            continue
        if _same_as_any(member, protected) or _holds_any(member, protected):
            raise MaeconvError(f"{path}: output would overwrite the input")
        if not force:
            raise MaeconvError(f"{member}: already exists (use --force to overwrite)")
        _check_replaceable(member, target, protected)


def _check_name(path: Path) -> None:
    name = path.name
    if name in ("", ".", "..") or str(path).endswith(os.sep):
        raise MaeconvError(f"{path}: not a usable output name (name a file or a new folder)")
    if len(os.fsencode(name)) > _name_max(path.parent):
        raise MaeconvError(f"{path}: file name too long")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _check_replaceable(member: Path, target: Target, protected: list[Path]) -> None:
    """--force replaces files and links, or a folder holding only what maeconv writes there."""
    mode = os.lstat(member).st_mode
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return
    if not stat.S_ISDIR(mode):
        raise MaeconvError(f"{member}: not a regular file; --force replaces files only")
    resolved = member.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise MaeconvError(f"{member}: is the working directory or a folder above it; not replaced")
    companion = target.companion_of.get(member.name) if member != target.path else None
    allowed = target.folder_members if member == target.path else companion.members if companion else None
    if allowed is None:
        raise MaeconvError(f"{member}: is a folder; --force replaces only an output maeconv wrote")
    with os.scandir(member) as entries:
        foreign = sorted(entry.name for entry in entries
                         if not _allowed(entry.name, allowed) or entry.is_dir(follow_symlinks=False))
    if foreign:
        raise MaeconvError(f"{member}: holds {foreign[0]!r}, which maeconv does not write there; "
                           "--force replaces only an output maeconv wrote")


def _allowed(name: str, allowed: frozenset[str] | re.Pattern) -> bool:
    return bool(allowed.fullmatch(name)) if isinstance(allowed, re.Pattern) else name in allowed


def _protected(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The inputs as real paths: a folder input protects the files in it too."""
    paths = []
    for given in inputs:
        path = Path(given)
        if not path.exists():
            continue
        paths.append(path.resolve())
        if path.is_dir():
            paths += [entry.resolve() for entry in path.iterdir()]
    return paths


def _same_as_any(member: Path, protected: list[Path]) -> bool:
    real = member.resolve()
    for path in protected:
        with contextlib.suppress(OSError):
            if real == path or os.path.samefile(member, path):
                return True
    return False


def _holds_any(member: Path, protected: list[Path]) -> bool:
    """Whether `member` is a folder at or above an input (replacing it would take the input along)."""
    if not member.is_dir():
        return False
    real = member.resolve()
    return any(real in path.parents for path in protected)


# --- staging and committing ---

class Stage:
    """The staging folder of one or more outputs; `path(target)` is where each is to be written."""

    def __init__(self, folder: Path, targets: Sequence[Target]):
        self.folder = folder
        self.targets = list(targets)

    def path(self, index: int = 0) -> Path:
        return self.folder / self.targets[index].path.name


@contextlib.contextmanager
def staged(*targets: Target | str | os.PathLike, force: bool = False,
           inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Stage]:
    """Yields a Stage whose paths the block writes; once it returns, every file and folder in the
    staging folder is renamed into the targets' folder together, or none is."""
    targets = [as_target(t) for t in targets]
    inputs = list(inputs)
    folder = targets[0].path.parent
    if any(t.path.parent != folder for t in targets):
        raise ValueError("staged outputs must share one folder")
    for target in targets:
        check_target(target, force, inputs)
    sweep_stale(folder)
    staging = _make_staging(folder, targets[0].path)
    try:
        yield Stage(staging, targets)
        with _signals_blocked():
            _commit(staging, targets, force, inputs)
    except OSError as error:
        shown = _final_name(error.filename, staging) or targets[0].path
        raise MaeconvError(f"{shown}: cannot write ({error.strerror or error})") from None
    finally:
        remove_written(staging)


def _final_name(filename, staging: Path) -> Path | None:
    """The name the user gave for a staged path an error names."""
    if not filename:
        return None
    with contextlib.suppress(ValueError):
        return staging.parent / Path(os.fsdecode(filename)).relative_to(staging)
    return None


def write_file(path: str | os.PathLike, data: bytes | str, force: bool = True) -> Path:
    """A small file (a summary, a config) written whole or not at all."""
    with staged(path, force=force) as stage:
        target = stage.path()
        target.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def _make_staging(folder: Path, shown: Path) -> Path:
    for _ in range(100):
        staging = folder / f".maeconv-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            os.mkdir(staging, 0o700)
            return staging
        except FileExistsError:
            continue
        except OSError as error:
            raise MaeconvError(f"{shown}: cannot write ({error.strerror or error})") from None
    raise MaeconvError(f"{shown}: cannot create a staging folder in {folder}")


def _commit(staging: Path, targets: Sequence[Target], force: bool, inputs: list) -> None:
    """Renames every staged entry into place; replaced entries are moved aside first and
    restored if a later rename fails."""
    folder = targets[0].path.parent
    if force:  # again: what --force would replace may have changed during the work
        for target in targets:
            check_target(target, force, inputs)
    named = {t.path.name for t in targets}
    entries = sorted(os.listdir(staging), key=lambda name: (name in named, name))  # companions first
    companions = {name for t in targets for name in t.companion_of}
    undeclared = sorted(set(entries) - named - companions)
    if undeclared:  # a writer that changed its layout: --force never checked such names
        raise MaeconvError(f"{folder / undeclared[0]}: written beside {targets[0].path.name} but not part of "
                           "the output maeconv declares; nothing written")
    aside = staging / ".replaced"
    moved: list[tuple[Path, Path]] = []  # (from, to), undone in reverse on failure
    try:
        if force:
            os.mkdir(aside, 0o700)
            for name in sorted({*entries, *companions} - {".replaced"}):
                existing = folder / name
                if os.path.lexists(existing):
                    _rename(existing, aside / name)
                    moved.append((existing, aside / name))
        for name in entries:
            _apply_default_mode(staging / name)
            _rename(staging / name, folder / name)
            moved.append((staging / name, folder / name))
    except BaseException as error:  # an interrupt too: never leave half a set
        for source, destination in reversed(moved):
            with contextlib.suppress(OSError):
                _rename(destination, source)
        if isinstance(error, OSError) and error.errno == errno.EEXIST:
            raise MaeconvError(f"{error.filename or targets[0].path}: appeared while maeconv was "
                               "writing (another run?); nothing replaced") from None
        raise


def _rename(source: Path, destination: Path) -> None:
    """Atomic rename that fails with EEXIST rather than replace anything."""
    if not libc.rename_noreplace(source, destination):  # no renameat2: link + unlink is as exclusive, for files
        if source.is_dir() and not source.is_symlink():
            if os.path.lexists(destination):
                raise FileExistsError(errno.EEXIST, "File exists", str(destination))
            os.rename(source, destination)
        else:
            os.link(source, destination, follow_symlinks=False)
            os.unlink(source)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_default_mode(path: Path, mask: int | None = None) -> None:
    """The mode a file or folder gets when the user creates it (staged ones are private, and
    some writers make theirs read-only). Links are left alone."""
    mask = _umask() if mask is None else mask
    mode = os.lstat(path).st_mode
    if stat.S_ISDIR(mode):
        os.chmod(path, 0o777 & ~mask)
        for entry in os.listdir(path):
            _apply_default_mode(path / entry, mask)
    elif stat.S_ISREG(mode):
        os.chmod(path, 0o666 & ~mask)


def remove_written(path: Path) -> None:
    """Removes a staging folder and what maeconv wrote into it, never following a link out."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
        with os.scandir(path) as entries:
            for entry in entries:
                remove_written(Path(entry.path))
        os.rmdir(path)


def sweep_stale(folder: Path) -> list[Path]:
    """Removes staging folders that runs killed outright (SIGKILL, power loss) left in `folder`:
    maeconv's by their name, this user's, and no longer owned by a live process."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = STAGING_PATTERN.match(entry.name)
            if not match or not entry.is_dir(follow_symlinks=False) or int(match[1]) == os.getpid():
                continue
            if entry.stat(follow_symlinks=False).st_uid != os.getuid() or _alive(int(match[1])):
                continue
            remove_written(Path(entry.path))
            removed.append(Path(entry.path))
            LOG.warning("removed %s, left by an interrupted maeconv run", entry.path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- signals ---

class Interrupted(BaseException):
    """A termination signal, raised where the program is so that cleanups run as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


TERMINATING = (signal.SIGTERM, signal.SIGHUP)
_held: list[int] | None = None  # signals that arrived while a set of renames ran


def handle_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread, so that every cleanup runs
    as it does for Ctrl-C; during the renames that publish an output they wait until the set is
    complete. (Without these handlers, as in the Python API, Ctrl-C raises KeyboardInterrupt.)"""
    def interrupt(signum, _frame):
        if _held is not None:
            _held.append(signum)
            return
        raise Interrupted(signum)

    for signum in (signal.SIGINT, *TERMINATING):
        signal.signal(signum, interrupt)


@contextlib.contextmanager
def _signals_blocked():
    """Holds signals back while a set of renames runs, so it is not cut in two."""
    global _held
    outer, _held = _held, []
    try:
        yield
    finally:
        arrived, _held = _held, outer
        if arrived:
            raise Interrupted(arrived[0])
