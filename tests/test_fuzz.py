"""Random and mutated files fed to every reader: only clean MaeconvErrors, never a crash or a hang."""
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from maeconv.convert.cli import cli
from maeconv.convert.errors import MaeconvError
from maeconv.convert.pipeline import load_canonical

from helpers import TINY, kind_state, save_official

SUFFIXES = (".pth", ".safetensors", ".ckpt")
FUZZ = settings(max_examples=int(__import__("os").environ.get("MAECONV_FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def valid_files():
    folder = Path(tempfile.mkdtemp(prefix="maeconv-fuzz-"))
    source = save_official(folder / "v.pth", kind_state(TINY, "encoder"))
    files = {".pth": source.read_bytes()}
    for suffix in SUFFIXES[1:]:
        CliRunner().invoke(cli, ["convert", str(source), str(folder / f"v{suffix}")])
        files[suffix] = (folder / f"v{suffix}").read_bytes()
    return files


def _read_everything(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"f{suffix}"
        path.write_bytes(data)
        try:
            loaded = load_canonical(path)
            for ref in loaded.refs.values():
                ref.load()
        except MaeconvError:
            pass


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(data, suffix):
    _read_everything(data, suffix)


@FUZZ
@given(draw=st.data(), suffix=st.sampled_from(SUFFIXES))
def test_mutated_valid_files(valid_files, draw, suffix):
    data = bytearray(valid_files[suffix])
    mutation = draw.draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
    if mutation == "truncate":
        data = data[:draw.draw(st.integers(0, len(data) - 1))]
    elif mutation == "insert":
        at = draw.draw(st.integers(0, len(data)))
        data[at:at] = draw.draw(st.binary(min_size=1, max_size=64))
    else:  # flip bytes anywhere, or in the first 512 bytes where the headers are
        end = 512 if mutation == "header" else len(data)
        for _ in range(draw.draw(st.integers(1, 8))):
            at = draw.draw(st.integers(0, min(end, len(data)) - 1))
            data[at] ^= draw.draw(st.integers(1, 255))
    _read_everything(bytes(data), suffix)
