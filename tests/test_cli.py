"""The maeconv command line on checkpoints in the official layouts."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from maeconv.convert.formats import read_checkpoint
from maeconv.models import get_config, reference
from maeconv.models.torch.twin import torch_to_numpy
from maeconv.parity import twins as parity_twins
from maeconv.parity.compare import Tolerance
from maeconv.parity.twins import parity_inputs

from helpers import run_cli, TINY, TINY_CLS, kind_state, save_official, seeded_state


def run(*args):
    return run_cli(*args, catch_exceptions=False)


def test_torch_to_mindspore_and_back_is_bit_identical(tmp_path, tiny_pth, tiny_state):
    ckpt, back = tmp_path / "tiny.ckpt", tmp_path / "back.pth"
    assert run("torch2ms", tiny_pth, ckpt).exit_code == 0
    assert run("ms2torch", ckpt, back).exit_code == 0
    ms_names = set(read_checkpoint(ckpt).tensors)
    assert "blocks.0.norm1.gamma" in ms_names and "blocks.0.norm1.weight" not in ms_names
    obj = torch.load(back, weights_only=True)
    assert list(obj) == ["model", "args"]  # the settings ride along, as plain values weights_only loads
    assert obj["args"] == {"norm_pix_loss": True, "layer_norm_eps": 1e-6, "hidden_act": "gelu", "mask_ratio": 0.75,
                           "input_size": 32}
    assert list(obj["model"]) == list(tiny_state)
    for name, value in tiny_state.items():
        restored = obj["model"][name].numpy()
        assert restored.dtype == value.dtype and restored.tobytes() == value.tobytes(), name


def test_default_output_name_and_json(tmp_path, tiny_pth):
    result = run("torch2ms", tiny_pth, "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["output"] == str(tiny_pth.with_suffix(".ckpt")) and tiny_pth.with_suffix(".ckpt").exists()
    assert (info["preset"], info["kind"], info["tensors"]) == (TINY, "full", len(kind_state(TINY, "full")))


@pytest.mark.parametrize("kind,preset", [("full", TINY), ("encoder", TINY), ("classifier", TINY_CLS)])
def test_inspect(tmp_path, kind, preset):
    state = kind_state(TINY, kind) if kind != "classifier" else seeded_state(TINY_CLS)
    path = save_official(tmp_path / "x.pth", state)
    info = json.loads(run("inspect", path, "--json").stdout)
    assert (info["format"], info["scheme"], info["kind"], info["preset"]) == ("torch", "facebook", kind, preset)
    assert info["keys"] == len(state)
    assert info["parameters"] == sum(v.size for v in state.values())
    assert info["dtypes"] == {"float32": len(state)}
    assert info["extras"] == ["args", "epoch"]
    text = run("inspect", path).stdout
    assert re.search(rf"^preset +{preset}$", text, re.M) and re.search(r"^parameters +[\d,]+$", text, re.M)


def test_inspect_mindspore_file(tmp_path, tiny_pth):
    run("torch2ms", tiny_pth, tmp_path / "t.ckpt")
    info = json.loads(run("inspect", tmp_path / "t.ckpt", "--json").stdout)
    assert (info["format"], info["scheme"], info["preset"]) == ("mindspore", "mindspore", TINY)


@pytest.mark.parametrize("framework", ["torch", "mindspore"])
@pytest.mark.parametrize("flag, norm_pix_loss", [((), True), (("--no-norm-pix-loss",), False)])
def test_forward_saves_reference_outputs(tmp_path, tiny_pth, tiny_state, framework, flag, norm_pix_loss):
    config = get_config(TINY, norm_pix_loss=norm_pix_loss)  # the file's args say True; a flag overrides them
    images, noise = parity_inputs(config, batch=2, seed=5)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "n.npy", noise)
    out = tmp_path / "out.npz"
    result = run("forward", tiny_pth, "--images", tmp_path / "x.npy", "--noise", tmp_path / "n.npy",
                 "--out", out, "--framework", framework, *flag)
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    expected = reference.mae_forward(images, tiny_state, config, noise)
    assert sorted(saved.files) == sorted(expected)
    np.testing.assert_array_equal(saved["ids_restore"], expected["ids_restore"])
    np.testing.assert_array_equal(saved["mask"], expected["mask"])
    np.testing.assert_allclose(saved["pred"], expected["pred"], atol=1e-5)
    np.testing.assert_allclose(saved["loss"], expected["loss"], rtol=1e-6)


def test_forward_rejects_wrong_image_shape(tmp_path, tiny_pth):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 16, 16), np.float32))
    result = run("forward", tiny_pth, "--images", tmp_path / "x.npy", "--out", tmp_path / "o.npz")
    assert result.exit_code == 1 and "expected (N, 3, 32, 32)" in result.stderr
    assert not (tmp_path / "o.npz").exists()


def test_forward_on_encoder_only_is_refused(tmp_path):
    path = save_official(tmp_path / "enc.pth", kind_state(TINY, "encoder"))
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    result = run("forward", path, "--images", tmp_path / "x.npy", "--out", tmp_path / "o.npz")
    assert result.exit_code == 1 and "encoder only" in result.stderr


@pytest.mark.slow
def test_parity_command_text_and_json(tiny_pth):
    result = run("parity", tiny_pth, "--mode", "pynative")
    assert result.exit_code == 0
    assert "mindspore vs torch" in result.stdout and "result: PASS" in result.stdout
    assert "torch forward" in result.stdout and "mindspore forward" in result.stdout
    report = json.loads(run("parity", tiny_pth, "--json").stdout)
    assert report["passed"] and len(report["rows"]) == 15
    assert {"pair", "output", "max_abs", "max_rel", "tolerance", "passed"} == set(report["rows"][0])


def test_parity_classifier(tmp_path):
    path = save_official(tmp_path / "cls.pth", seeded_state(TINY_CLS))
    report = json.loads(run("parity", path, "--json").stdout)
    assert report["passed"] and {r["output"] for r in report["rows"]} == {"logits"}


@pytest.mark.slow
def test_parity_failure_exits_non_zero(tiny_pth, monkeypatch):
    impossible = dict(parity_twins.PRETRAIN_TOLERANCES, pred=Tolerance("abs", 0.0))
    monkeypatch.setattr(parity_twins, "PRETRAIN_TOLERANCES", impossible)
    result = run("parity", tiny_pth)
    assert result.exit_code == 1 and "FAIL" in result.stdout


@pytest.mark.slow
def test_console_script_demo_runs_tiny(tmp_path):
    result = subprocess.run([sys.executable, "-m", "maeconv", "demo", "--preset", TINY,
                             "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "all bit-identical" in result.stdout and "result: PASS" in result.stdout
    assert (tmp_path / f"{TINY}_seeded.ckpt").exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_round_trip_keeps_dtype_and_bytes(tmp_path, tiny_state, dtype):
    src = tmp_path / "half.pth"
    torch.save({"model": {k: torch.from_numpy(v).to(dtype) for k, v in tiny_state.items()}}, src)
    assert run("torch2ms", src, tmp_path / "half.ckpt").exit_code == 0
    assert run("ms2torch", tmp_path / "half.ckpt", tmp_path / "back.pth").exit_code == 0
    original = torch.load(src, weights_only=True)["model"]
    restored = torch.load(tmp_path / "back.pth", weights_only=True)["model"]
    for name, tensor in original.items():
        assert restored[name].dtype == dtype and torch.equal(restored[name].view(torch.int16),
                                                            tensor.view(torch.int16)), name
    info = json.loads(run("inspect", tmp_path / "half.ckpt", "--json").stdout)
    assert info["dtypes"] == {str(torch_to_numpy(next(iter(original.values()))).dtype): len(original)}


def test_training_state_is_skipped_with_a_note(tmp_path, tiny_state):
    import mindspore as ms

    from maeconv.convert.schemes import MINDSPORE as SCHEME, apply_from_canonical

    own = apply_from_canonical(SCHEME.plan_from_canonical(tiny_state), tiny_state)
    own = {n: ref.load() for n, ref in own.items()}
    entries = [{"name": n, "data": ms.Tensor(v)} for n, v in own.items()]
    entries += [{"name": f"adam_m.{n}", "data": ms.Tensor(v * 0)} for n, v in own.items()]
    entries += [{"name": "train.step", "data": ms.Tensor(np.array(5, np.int64))}]
    ms.save_checkpoint(entries, str(tmp_path / "train.ckpt"))
    result = run("ms2torch", tmp_path / "train.ckpt", tmp_path / "model.pth")
    assert result.exit_code == 0
    assert f"skipped {len(own) + 1} optimizer/training-state entries" in result.stderr
    restored = torch.load(tmp_path / "model.pth", weights_only=True)["model"]
    assert list(restored) == list(tiny_state)
    assert json.loads(run("inspect", tmp_path / "train.ckpt", "--json").stdout)["training_state"] == len(own) + 1


def test_torch_training_checkpoint_yields_its_model(tmp_path, tiny_state):
    model = {k: torch.from_numpy(v) for k, v in tiny_state.items()}
    optimizer = torch.optim.AdamW([torch.nn.Parameter(t.clone()) for t in model.values()])
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": model, "optimizer": optimizer.state_dict(), "epoch": 799, "scaler": {"scale": 65536.0},
                "args": __import__("argparse").Namespace(norm_pix_loss=True)}, path)
    result = run("torch2ms", path, tmp_path / "out.ckpt", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["skipped_training_state"] == 2 and info["tensors"] == len(tiny_state)


def test_a_conversion_exits_without_teardown_only_when_nothing_else_must_run(monkeypatch):
    """After a conversion the process ends at once (os._exit), skipping the interpreter's teardown,
    unless another thread is alive or a library registered an exit callback."""
    import atexit
    import threading

    from maeconv.cli import base

    exits = []
    monkeypatch.setattr(base.os, "_exit", exits.append)
    monkeypatch.setattr(base, "_EXIT_CALLBACKS_AT_LOAD", atexit._ncallbacks())
    base._exit_now(None)
    base._exit_now(1)
    assert exits == [0, 1]
    base._exit_now("a message click would print")
    registered = lambda: None  # noqa: E731
    atexit.register(registered)
    try:
        base._exit_now(0)
    finally:
        atexit.unregister(registered)
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        base._exit_now(0)
    finally:
        stop.set()
        worker.join()
    assert exits == [0, 1]
    import click

    monkeypatch.setattr(base, "_quick_exit", True)  # left over from an earlier run in this process
    monkeypatch.setattr(base, "handle_signals", lambda: None)
    monkeypatch.setattr(sys, "argv", ["noop"])
    with pytest.raises(SystemExit, match="0"):
        base.run(click.Command("noop", callback=lambda: None), "noop")
    assert exits == [0, 1]  # a command that did not ask for it exits as usual


def test_a_conversion_process_prints_everything_before_its_quick_exit(tmp_path, tiny_pth):
    for args, code, stream, says in [
            (["convert", str(tiny_pth), str(tmp_path / "out.ckpt"), "--json"], 0, "stdout", '"output"'),
            (["convert", str(tiny_pth), str(tmp_path / "out.ckpt")], 1, "stderr", "already exists")]:
        done = subprocess.run([sys.executable, "-m", "maeconv", *args], capture_output=True, text=True)
        assert done.returncode == code
        assert says in getattr(done, stream)
    assert json.loads(subprocess.run([sys.executable, "-m", "maeconv", "convert", str(tiny_pth),
                                      str(tmp_path / "out.safetensors"), "--json"],
                                     capture_output=True, text=True).stdout)["tensors"] > 0
