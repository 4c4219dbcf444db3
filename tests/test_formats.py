"""maeconv's own readers and writers agree byte for byte with each framework's own."""
import argparse
import collections
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from maeconv.convert.formats import read_checkpoint
from maeconv.convert.formats import ckpt, safetensors as st_format, torchzip
from maeconv.convert.tensors import COPY_CHUNK, Span, TensorRef, all_finite, spans_equal

RNG = np.random.default_rng(0)
ARRAYS = {
    "a.weight": RNG.standard_normal((5, 3)).astype(np.float32),
    "b": np.arange(7, dtype=np.int64),
    "c.scalar": np.array(2.5, np.float32),
    "d.bf16": RNG.standard_normal((4, 2)).astype(ml_dtypes.bfloat16),
    "e.half": RNG.standard_normal((3,)).astype(np.float16),
    "f.double": RNG.standard_normal((2, 2)),
}


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _refs(arrays):
    return {name: TensorRef.of(a) for name, a in arrays.items()}


def test_safetensors_written_opens_with_the_safetensors_library(tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "x.safetensors"
    st_format.write(path, _refs(ARRAYS), {"format": "pt"})
    loaded = load_file(path)
    for name, array in ARRAYS.items():
        tensor = loaded[name]
        got = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if tensor.dtype == torch.bfloat16 \
            else tensor.numpy()
        assert _same(got, array), name


def test_safetensors_library_files_read_lazily(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "y.safetensors"
    tensors = {"w": torch.randn(4, 6), "h": torch.randn(3).to(torch.bfloat16), "i": torch.arange(5)}
    save_file(tensors, path, metadata={"format": "pt"})
    refs, metadata = st_format.read(path)
    assert metadata == {"format": "pt"}
    assert refs["h"].dtype.name == "bfloat16" and refs["w"].shape == (4, 6)
    assert refs["w"].load().tobytes() == tensors["w"].numpy().tobytes()
    assert refs["h"].load().view(np.int16).tobytes() == tensors["h"].view(torch.int16).numpy().tobytes()


def test_ckpt_written_loads_in_mindspore(tmp_path):
    import mindspore as ms

    path = tmp_path / "x.ckpt"
    ckpt.write(path, _refs(ARRAYS))
    loaded = ms.load_checkpoint(str(path))
    for name, array in ARRAYS.items():
        assert _same(loaded[name].asnumpy().view(array.dtype), array), name


def test_mindspore_written_ckpt_reads_lazily(tmp_path):
    import mindspore as ms

    path = tmp_path / "y.ckpt"
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in ARRAYS.items()], str(path),
                       append_dict={"epoch_num": 3, "tag": "run-1"})
    refs, extras = ckpt.read(path)
    assert extras == {"tag": "run-1"}
    assert int(refs["epoch_num"].load()) == 3
    for name, array in ARRAYS.items():
        assert _same(refs[name].load(), array), name


def test_sliced_ckpt_tensors_round_trip(tmp_path, monkeypatch):
    import mindspore as ms

    monkeypatch.setattr(ckpt, "SLICE_BYTES", 16)  # force the multi-record layout MindSpore uses over 512 MiB
    path = tmp_path / "sliced.ckpt"
    big = RNG.standard_normal((9, 4)).astype(np.float32)
    ckpt.write(path, _refs({"big": big, "after": ARRAYS["b"]}))
    assert _same(ms.load_checkpoint(str(path))["big"].asnumpy(), big)
    refs, _ = ckpt.read(path)
    assert _same(refs["big"].load(), big) and _same(refs["after"].load(), ARRAYS["b"])


def test_mindspore_safetensors_interoperate(tmp_path):
    import mindspore as ms

    theirs = tmp_path / "theirs.safetensors"
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in ARRAYS.items() if a.ndim], str(theirs),
                       format="safetensors")
    refs, _ = st_format.read(theirs)
    for name, array in ARRAYS.items():
        if array.ndim:
            assert _same(refs[name].load(), array), name
    mine = tmp_path / "mine.safetensors"
    st_format.write(mine, _refs(ARRAYS), {"format": "ms"})
    loaded = ms.load_checkpoint(str(mine), format="safetensors")
    assert _same(loaded["a.weight"].asnumpy(), ARRAYS["a.weight"])


def test_torch_zip_reader_matches_torch_load(tmp_path):
    base = torch.randn(6, 4)
    state = collections.OrderedDict(
        w=torch.randn(3, 5), transposed=base.t(), sliced=base[2:5, 1:3], half=torch.randn(4).half(),
        bf=torch.randn(2, 3).to(torch.bfloat16), count=torch.tensor(7), shared=base)
    path = tmp_path / "x.pth"
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1), "epoch": 4}, path)
    obj = torchzip.read(path)
    assert obj["epoch"] == 4 and obj["args"].lr == 0.1
    reference = torch.load(path, weights_only=False)  # test-only: the file is the test's own
    for name, tensor in reference["model"].items():
        ref = obj["model"][name]
        expected = tensor.contiguous()
        if expected.dtype == torch.bfloat16:
            expected = expected.view(torch.int16)
            got = ref.load().view(np.int16)
        else:
            got = ref.load()
        assert got.shape == tuple(expected.shape) and got.tobytes() == expected.numpy().tobytes(), name


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("zip64", [False, True])
def test_torch_zip_written_loads_in_torch(tmp_path, mmap, zip64, monkeypatch):
    """Every entry's CRC-32 (computed by the read-back thread) checks out, in zip's own reader and in
    torch's; with zip64 fields (checkpoints over 4 GiB need them: here lowered to 64 bytes) too."""
    if zip64:
        monkeypatch.setattr(torchzip, "ZIP64_FROM", 64)
    arrays = {**ARRAYS, "bool": np.array([True, False]), "empty": np.zeros((0, 4), np.float16),
              "wide": np.arange(70_000, dtype=np.int32), "long": RNG.standard_normal(3 * COPY_CHUNK // 8)}
    path = tmp_path / "w.pth"
    verdicts = torchzip.write(path, _refs(arrays))
    assert all(v.equal for v in verdicts.values())
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert any(i.extra.startswith(b"\x01\x00") for i in infos) == zip64  # a zip64 extra field
    read_back = torchzip.read(path)["model"]
    assert all(_same(read_back[name].load(), array) for name, array in arrays.items() if name != "d.bf16")
    state = torch.load(path, weights_only=True, mmap=mmap)["model"]  # mmap needs the aligned entries
    assert isinstance(state, collections.OrderedDict) and list(state) == list(arrays)
    for name, array in arrays.items():
        tensor = state[name]
        got = tensor.view(torch.int16).numpy().view(array.dtype) if tensor.dtype == torch.bfloat16 else tensor.numpy()
        assert _same(got, array), name


def test_torch_zip_writing_needs_no_torch(tmp_path):
    script = (f"import sys, numpy as np; from maeconv.convert.formats import torchzip; "
              f"from maeconv.convert.tensors import TensorRef; "
              f"torchzip.write({str(tmp_path / 'w.pth')!r}, {{'w': TensorRef.of(np.ones(3, np.float32))}}); "
              f"assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", script], check=True)
    assert torch.load(tmp_path / "w.pth", weights_only=True)["model"]["w"].tolist() == [1.0, 1.0, 1.0]


def test_legacy_torch_pickles_still_read(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"model": {"w": torch.arange(6.0).reshape(2, 3)}}, path, _use_new_zipfile_serialization=False)
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "torch"
    np.testing.assert_array_equal(checkpoint.tensors["w"].load(), np.arange(6.0, dtype=np.float32).reshape(2, 3))


def test_hf_directory_reads_config_and_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "vit_mae", "norm_pix_loss": true}')
    st_format.write(tmp_path / "model.safetensors", _refs({"x": ARRAYS["a.weight"]}))
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.format == "hf-dir" and checkpoint.metadata["norm_pix_loss"] is True
    assert _same(checkpoint.tensors["x"].load(), ARRAYS["a.weight"])


@pytest.mark.parametrize("values, finite", [
    (np.full(1000, 3e38, np.float32), True),  # the sum overflows to inf: the exact check decides
    (np.array([1, np.inf, -np.inf], np.float32), False),
    (np.array([0, np.nan], np.float32), False),
    (np.full(10, 60000, np.float16), True),
    (np.array([1, np.nan], ml_dtypes.bfloat16), False),
    (np.array([1, 2], ml_dtypes.bfloat16), True),
    (np.full(1000, -2e19, np.float32), True),  # each square overflows
    (np.full(1000, 1e300, np.float64), True),
    (np.array([-np.inf] + [0.5] * 9999, np.float32), False),
    (np.array([0.5] * 9999 + [np.nan], np.float64), False),
    (np.array([0x7F800001, 0x3F800000], np.uint32).view(np.float32), False),  # a signalling NaN
    (np.array([], np.float32), True),
])
def test_all_finite(values, finite, monkeypatch):
    from maeconv.convert import blas

    assert all_finite(values) is finite
    unaligned = np.frombuffer(b"x" + values.tobytes(), np.uint8)[1:].view(values.dtype)  # as at an odd file offset
    assert (values.size == 0 or not unaligned.flags.aligned) and all_finite(unaligned) is finite
    monkeypatch.setattr(blas, "ALIGNED_PIECE", 8)  # checked a few items at a time
    assert all_finite(unaligned) is finite


def test_a_read_back_checks_values_through_whichever_copy_is_aligned():
    from maeconv.convert.tensors import _aligned_of, _arrays_equal

    values = np.array([1, 2, np.nan], np.float32).tobytes()
    odd = np.frombuffer(b"x" + values, np.uint8)[1:]
    even = np.frombuffer(values, np.uint8)
    assert _aligned_of(odd, even, np.dtype(np.float32)) is even
    assert _aligned_of(even, odd, np.dtype(np.float32)) is even
    assert _aligned_of(odd, odd[:], np.dtype(np.float32)) is odd
    assert _arrays_equal(odd, even, np.dtype(np.float32), check_finite=True) == (True, False)
    assert _arrays_equal(even, odd, np.dtype(np.float32), check_finite=True) == (True, False)


def test_spans_compare_every_piece_of_a_tensor_larger_than_a_copy_chunk(tmp_path):
    array = RNG.standard_normal(COPY_CHUNK // 4 * 3 + 5).astype(np.float32)
    variants = {"same": array.copy(), "last_byte": array.copy(), "nan_at_end": array.copy()}
    variants["last_byte"].view(np.uint8)[-1] ^= 1
    variants["nan_at_end"][-1] = np.nan
    spans = {}
    for name, values in {"source": array, **variants}.items():
        path = tmp_path / name
        path.write_bytes(b"head" + values.tobytes())
        spans[name] = Span(str(path), 4)
    flagged = []
    for name in variants:
        equal, finite = spans_equal(spans["source"], spans[name], array.nbytes, array.dtype)
        assert equal == (name == "same"), name
        flagged += [name] if equal and not finite else []
    equal, finite = spans_equal(spans["nan_at_end"], spans["nan_at_end"], array.nbytes, array.dtype)
    assert equal and not finite
    assert flagged == []  # the NaN variant differs, so it is reported as different, not as non-finite
    assert not spans_equal(spans["source"], Span(spans["same"].path, 5), array.nbytes, array.dtype)[0]  # past the end


def _streamed(tmp_path, arrays):
    """Pieces for write_stream: a header, then each array once from a file span and once from memory."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"".join(a.tobytes() for a in arrays.values()))
    pieces, offset = [b"header"], 0
    for name, array in arrays.items():
        pieces.append((f"{name}.span", TensorRef.in_file(source, array.dtype, array.shape, offset)))
        pieces.append((f"{name}.memory", TensorRef.of(array)))
        offset += array.nbytes
    return pieces


def test_write_stream_reads_back_every_chunk(tmp_path, monkeypatch):
    from maeconv.convert import tensors

    monkeypatch.setattr(tensors, "COPY_CHUNK", 256)  # many chunks per tensor, more than the read-back queue holds
    arrays = {"big": RNG.standard_normal(3000).astype(np.float32), "nan": np.array([1, np.nan], np.float16),
              "ints": np.arange(100, dtype=np.int64), "empty": np.zeros((0, 3), np.float32)}
    pieces = _streamed(tmp_path, arrays)
    reported = []
    verdicts = tensors.write_stream(tmp_path / "out.bin", pieces, expected_size=1 << 20, check_finite=True,
                                    progress=reported.append)
    data = (tmp_path / "out.bin").read_bytes()
    assert len(data) == 6 + 2 * sum(a.nbytes for a in arrays.values())  # the reservation leaves the size alone
    for name, array in arrays.items():
        for where in ("span", "memory"):
            verdict = verdicts[f"{name}.{where}"]
            assert data[verdict.offset:verdict.offset + array.nbytes] == array.tobytes()
            assert verdict.equal and verdict.finite == (name != "nan")
    assert sorted(reported) == sorted(2 * [a.nbytes for a in arrays.values() for _ in range(2)])


def test_write_stream_judges_what_reached_the_file(tmp_path, monkeypatch):
    from maeconv.convert import tensors

    monkeypatch.setattr(tensors, "COPY_CHUNK", 256)
    original = tensors.write_all
    arrays = {"a": RNG.standard_normal(1000).astype(np.float32), "b": RNG.standard_normal(1000).astype(np.float32)}
    writes = []

    def losing_write(out, data):  # the 7th chunk (inside "a.memory") never reaches the disk intact
        writes.append(1)
        original(out, bytes(len(memoryview(data).cast("B"))) if len(writes) == 1 + 16 + 7 else data)

    monkeypatch.setattr(tensors, "write_all", losing_write)
    verdicts = tensors.write_stream(tmp_path / "out.bin", _streamed(tmp_path, arrays))
    assert {name: v.equal for name, v in verdicts.items()} == {
        "a.span": True, "a.memory": False, "b.span": True, "b.memory": True}


def test_write_stream_raises_a_read_back_failure_without_hanging(tmp_path, monkeypatch):
    from maeconv.convert import tensors

    monkeypatch.setattr(tensors, "COPY_CHUNK", 256)

    def broken(values):
        raise RuntimeError("read-back broke")

    monkeypatch.setattr(tensors, "all_finite", broken)
    with pytest.raises(RuntimeError, match="read-back broke"):
        tensors.write_stream(tmp_path / "out.bin", _streamed(tmp_path, {"a": np.ones(10_000, np.float32)}),
                             check_finite=True)


def test_write_stream_raises_a_failure_to_make_a_tensor_after_the_pieces_before_it(tmp_path):
    """Tensors' bytes are made ahead on another thread: a failure there reaches the caller, in
    order, and nothing waits forever."""
    from maeconv.errors import MaeconvError
    from maeconv.convert import tensors

    def truncated():
        raise MaeconvError("src.pth: file ends inside a tensor (truncated)")

    made = []
    good = TensorRef(np.dtype(np.float32), (4,), lambda: made.append("good") or np.ones(4, np.float32))
    pieces = [b"head", ("good", good), ("bad", TensorRef(np.dtype(np.float32), (4,), truncated)),
              ("never", TensorRef(np.dtype(np.float32), (4,), lambda: made.append("never") or np.ones(4, np.float32)))]
    with pytest.raises(MaeconvError, match="truncated"):
        tensors.write_stream(tmp_path / "out.bin", pieces)
    assert made[0] == "good"  # the next one may have been made ahead already; it is not written
    assert (tmp_path / "out.bin").read_bytes() == b"head" + np.ones(4, np.float32).tobytes()


@pytest.mark.parametrize("budget", [0, 40, 1 << 20])
def test_tensors_are_made_ahead_by_bytes_and_come_out_in_order(budget, monkeypatch):
    """Up to AHEAD_BYTES of tensors are handed to the other thread before the writer takes the first
    (a transpose after a bias must not wait for the bias to be written), in order, none twice."""
    from maeconv.convert import tensors

    monkeypatch.setattr(tensors, "AHEAD_BYTES", budget)
    pulled = []

    def pieces():
        yield b"head"
        for index in range(12):
            pulled.append(index)
            yield f"t{index}", TensorRef.of(np.full(4, index, np.float32))  # 16 bytes each

    stream = tensors._bytes_ahead(pieces())
    assert next(stream)[1] == b"head"
    piece, data = next(stream)
    assert piece[0] == "t0" and b"".join(map(bytes, data)) == np.full(4, 0, np.float32).tobytes()
    assert len(pulled) == min(12, 1 + max(1, -(-budget // 16)))  # t0 and the pieces covering the budget
    rest = list(stream)
    assert [p[0] for p, _ in rest] == [f"t{i}" for i in range(1, 12)]
    assert all(b"".join(map(bytes, d)) == np.full(4, i + 1, np.float32).tobytes() for i, (_, d) in enumerate(rest))


def test_a_mapped_tensor_is_the_file_bytes_read_only(tmp_path):
    array = RNG.standard_normal((3, 5)).astype(np.float32)
    (tmp_path / "t.bin").write_bytes(b"x" * 7 + array.tobytes())
    ref = TensorRef.in_file(tmp_path / "t.bin", array.dtype, array.shape, 7)
    mapped = ref.mapped()
    assert _same(mapped, array) and not mapped.flags.writeable
    assert _same(TensorRef.of(array).mapped(), array)  # no file: the data itself
    with pytest.raises(Exception, match="truncated"):
        TensorRef.in_file(tmp_path / "t.bin", array.dtype, (4, 5), 7).mapped()


def test_a_safetensors_header_whose_length_starts_like_a_pickle_reads_as_safetensors(tmp_path):
    """The 8-byte header length comes first: 0x80 there is a pickle's first byte too."""
    from safetensors.numpy import save_file

    tensor = RNG.standard_normal(3).astype(np.float32)
    path = tmp_path / "t.safetensors"
    for padding in range(256):
        save_file({"a": tensor}, str(path), metadata={"pad": "x" * padding})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "safetensors" and checkpoint.metadata["pad"].startswith("x")
    assert checkpoint.tensors["a"].load().tobytes() == tensor.tobytes()


def test_maeconv_works_where_the_c_library_cannot_be_loaded(tmp_path, tiny_pth):
    """Without libc (memcmp, fallocate, renameat2) maeconv falls back, and still converts exactly."""
    script = ("import ctypes, sys\n"
              "def no_libc(*args, **kwargs): raise OSError('no C library here')\n"
              "ctypes.CDLL = no_libc\n"
              "from maeconv.convert.pipeline import convert\n"
              "convert(sys.argv[1], sys.argv[2])\n")
    out = tmp_path / "out.ckpt"
    result = subprocess.run([sys.executable, "-c", script, str(tiny_pth), str(out)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    back = tmp_path / "back.pth"
    assert subprocess.run([sys.executable, "-m", "maeconv", "ms2torch", str(out), str(back)],
                          capture_output=True, timeout=120).returncode == 0
    expected, actual = read_checkpoint(tiny_pth).tensors, read_checkpoint(back).tensors
    assert all(actual[name].load().tobytes() == ref.load().tobytes() for name, ref in expected.items())


def test_scratch_sits_at_the_file_positions_offset_in_a_page():
    """The kernel copies between a file and memory slowly when the memory lies a few bytes past the
    file position within a page: scratch memory is lent at the position's own offset instead."""
    from maeconv.convert import tensors

    scratch = tensors.PagePhased(64)
    for position in (0, 5, 4095, 4096 + 100, (1 << 33) + 7):
        assert scratch.at(position, 10).ctypes.data % tensors.PAGE == position % tensors.PAGE
    chunk = np.arange(64, dtype=np.uint8)
    address = chunk.ctypes.data
    assert scratch.unaliased(chunk, address) is chunk  # the same offset in a page
    assert scratch.unaliased(chunk, address + 64) is chunk
    assert scratch.unaliased(chunk, address - 16) is chunk  # memory past the file position is fine
    copy = scratch.unaliased(chunk, address + 16)
    assert copy is not chunk and copy.tobytes() == chunk.tobytes()
    assert (copy.ctypes.data - (address + 16)) % tensors.PAGE == 0


def test_write_stream_writes_chunks_that_would_alias_exactly(tmp_path, monkeypatch):
    """An 8-byte header puts every chunk of a page-aligned source span 8 bytes past its map's offset:
    each goes out through scratch memory, and the file still holds the exact bytes."""
    from maeconv.convert import tensors

    monkeypatch.setattr(tensors, "COPY_CHUNK", 256)
    array = RNG.standard_normal(3000).astype(np.float32)
    (tmp_path / "source.bin").write_bytes(array.tobytes())
    copied = []
    unaliased = tensors.PagePhased.unaliased
    monkeypatch.setattr(tensors.PagePhased, "unaliased",
                        lambda self, chunk, position: copied.append(unaliased(self, chunk, position) is not chunk)
                        or unaliased(self, chunk, position))
    pieces = [b"8 bytes!", ("a", TensorRef.in_file(tmp_path / "source.bin", array.dtype, array.shape, 0))]
    verdicts = tensors.write_stream(tmp_path / "out.bin", pieces, check_finite=True)
    assert (tmp_path / "out.bin").read_bytes() == b"8 bytes!" + array.tobytes()
    assert verdicts["a"].equal and verdicts["a"].offset == 8
    assert len(copied) == -(-array.nbytes // 256) and all(copied)


def test_numpys_blas_runs_on_one_thread_while_a_file_is_written_and_as_before_after(tmp_path, monkeypatch):
    from maeconv.convert import blas, tensors

    controls = blas._thread_controls()
    if controls is None:
        pytest.skip("this NumPy build has no OpenBLAS of its own")
    get, set_ = controls
    initial = get()
    set_(2)  # where the machine has the cores for it
    before = get()
    seen = []
    original = tensors.tensor_bytes
    monkeypatch.setattr(tensors, "tensor_bytes", lambda ref: seen.append(get()) or original(ref))
    try:
        tensors.write_stream(tmp_path / "out.bin", [("a", TensorRef.of(np.ones(8, np.float32)))])
        assert seen == [1] and get() == before
    finally:
        set_(initial)
