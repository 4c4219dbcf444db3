"""maeconv's own readers and writers agree byte for byte with each framework's own."""
import argparse
import collections

import ml_dtypes
import numpy as np
import torch

from maeconv.convert.checkpoints import read_checkpoint
from maeconv.convert.formats import ckpt, safetensors as st_format, torchzip
from maeconv.convert.tensors import TensorRef

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
