"""Random and mutated files fed to every reader: only clean MaeconvErrors, never a crash or a hang; and
torch files rebuilt from arbitrary offsets, shapes and strides, read exactly as torch.load reads them."""
import math
import os

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from maeconv.cli import cli
from maeconv.errors import MaeconvError
from maeconv.convert.formats import torchpickle
from maeconv.convert.pipeline import load_canonical
from maeconv.convert.tensors import MAX_DIMS

from crafting import ITEMSIZE, assert_agrees_with_torch, crafted
from helpers import TINY, kind_state, save_official

SUFFIXES = (".pth", ".safetensors", ".ckpt")
FUZZ = settings(max_examples=int(os.environ.get("MAECONV_FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid_files(scratch):
    source = save_official(scratch / "v.pth", kind_state(TINY, "encoder"))
    files = {".pth": source.read_bytes()}
    for suffix in SUFFIXES[1:]:
        CliRunner().invoke(cli, ["convert", str(source), str(scratch / f"v{suffix}")])
        files[suffix] = (scratch / f"v{suffix}").read_bytes()
    return files


def _read_everything(data: bytes, suffix: str, folder) -> None:
    path = folder / f"f{suffix}"
    path.write_bytes(data)
    try:
        loaded = load_canonical(path)
        for ref in loaded.refs.values():
            ref.load()
    except MaeconvError:
        pass


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(scratch, data, suffix):
    _read_everything(data, suffix, scratch)


@FUZZ
@given(draw=st.data(), suffix=st.sampled_from(SUFFIXES))
def test_mutated_valid_files(scratch, valid_files, draw, suffix):
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
    _read_everything(bytes(data), suffix, scratch)


# Small numbers where tensors fit, and the edges where 64-bit arithmetic breaks.
EDGES = [1 << 31, 1 << 32, (1 << 62) - 1, 1 << 62, (1 << 63) - 1, 1 << 63, 1 << 64, -(1 << 63), -1]
INTS = st.one_of(st.integers(-2, 16), st.sampled_from(EDGES), st.integers(-(1 << 66), 1 << 66))
EXPANSION_LIMIT = 1 << 20  # views that repeat their bytes into more than this are refused


@pytest.fixture(scope="module")
def small_expansions():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchpickle, "MAX_EXPANSION_BYTES", EXPANSION_LIMIT)
        yield


def _maeconv_may_refuse_what_torch_reads(size, stride, numel, itemsize) -> bool:
    """The cases maeconv refuses on purpose: negative strides or dims (torch reads them where they
    multiply a zero), more dims than NumPy has, shapes NumPy cannot hold, views repeating their
    bytes beyond the expansion limit."""
    values = list(size) + list(stride or [])
    if any(v < 0 for v in values) or len(size) > MAX_DIMS:
        return True
    nonzero = math.prod(d for d in size if d) * itemsize
    return nonzero >= 1 << 63 or (0 not in size and nonzero > max(numel * itemsize, EXPANSION_LIMIT))


@FUZZ
@given(layout=st.sampled_from(["stored", "deflated", "legacy"]), offset=INTS,
       size=st.lists(INTS, max_size=4), stride=st.one_of(st.none(), st.lists(INTS, max_size=4)),
       numel=st.integers(0, 48), storage_type=st.sampled_from(["FloatStorage", "BFloat16Storage", "LongStorage"]),
       requires_grad=st.booleans(), stride_as_tuple=st.booleans())
def test_tensor_geometry_agrees_with_torch(scratch, small_expansions, layout, offset, size, stride, numel,
                                           storage_type, requires_grad, stride_as_tuple):
    stride = tuple(stride) if stride is not None and stride_as_tuple else stride
    path = crafted(scratch, layout, offset, tuple(size), stride, numel, requires_grad, storage_type)
    assert_agrees_with_torch(path, _maeconv_may_refuse_what_torch_reads(size, stride, numel, ITEMSIZE[storage_type]))
