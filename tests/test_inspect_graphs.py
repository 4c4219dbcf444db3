"""`maeconv inspect` on exported graphs: the metadata maeconv recorded (task, preset, kind,
settings, precision) and what the graph itself declares (opset, inputs and outputs with dtypes
and shapes), for ONNX and MindIR."""
import json

import pytest

from helpers import TINY, TINY_CLS, run_cli, save_official, seeded_state

pytestmark = pytest.mark.slow  # each export traces and validates a model


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    full = save_official(root / "full.pth", seeded_state(TINY))
    classifier = save_official(root / "cls.pth", seeded_state(TINY_CLS), with_args=False)
    made = {}
    for fmt, source, task, extra in (("onnx", full, "pretrain", ["--no-norm-pix-loss"]),
                                     ("mindir", classifier, "classify", ["--layer-norm-eps", "1e-5"])):
        out = root / f"{task}.{fmt}"
        result = run_cli("export", fmt, source, out, "--task", task, *extra)
        assert result.exit_code == 0, result.output
        made[fmt] = out
    return made


def test_onnx_graph_shows_its_metadata_and_signature(graphs):
    result = run_cli("inspect", graphs["onnx"], "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["task"], shown["preset"], shown["kind"], shown["precision"]) == ("pretrain", TINY, "full", "fp32")
    assert shown["settings"]["norm_pix_loss"] is False and shown["settings"]["layer_norm_eps"] == 1e-6
    assert shown["opset"] == 18 and shown["producer"].startswith("pytorch")
    assert shown["inputs"] == {"images": {"dtype": "float32", "shape": ["N", 3, 32, 32]},
                               "noise": {"dtype": "float32", "shape": ["N", 16]}}
    assert shown["outputs"] == {"loss": {"dtype": "float32", "shape": []},
                                "pred": {"dtype": "float32", "shape": ["N", 16, 192]},
                                "mask": {"dtype": "float32", "shape": ["N", 16]}}
    text = run_cli("inspect", graphs["onnx"]).stdout
    assert "images float32 [N, 3, 32, 32]" in text and "norm_pix_loss False" in text and "opset" in text


def test_mindir_graph_shows_its_metadata_and_signature(graphs):
    result = run_cli("inspect", graphs["mindir"], "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["task"], shown["preset"], shown["kind"]) == ("classify", TINY_CLS, "classifier")
    assert shown["settings"]["layer_norm_eps"] == 1e-5
    assert "opset" not in shown and shown["producer"].startswith("MindSpore")
    assert shown["inputs"] == {"images": {"dtype": "float32", "shape": ["N", 3, 32, 32]}}
    assert shown["outputs"] == {"logits": {"dtype": "float32", "shape": ["N", 10]}}


def test_a_graph_that_is_not_one_is_refused_in_one_line(tmp_path):
    for name in ("junk.onnx", "junk.mindir"):
        (tmp_path / name).write_bytes(b"\x08\x07garbage that is no protobuf model")
        result = run_cli("inspect", tmp_path / name)
        assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1


@pytest.mark.parametrize("fmt", ["onnx", "mindir"])
def test_what_a_graph_says_is_read_without_its_weights(graphs, fmt, monkeypatch):
    """inspect, predict and validation read a graph's metadata and signature; a one-file graph's
    weights are most of it and are skipped, not read (a process about to load the graph would
    otherwise hold them twice more)."""
    import onnx
    from mindspore.train.mind_ir_pb2 import ModelProto

    from maeconv.runtimes import inline

    path = graphs[fmt]
    model_type, tensors = (onnx.ModelProto, "initializer") if fmt == "onnx" else (ModelProto, "parameter")
    read = []
    original = inline._Walker.read
    monkeypatch.setattr(inline._Walker, "read", lambda self, start, end: read.append(end - start) or
                        original(self, start, end))
    skeleton = inline.read_skeleton(path, model_type, tensors)
    whole = model_type()
    whole.ParseFromString(path.read_bytes())
    weights = sum(len(t.raw_data) for t in getattr(whole.graph, tensors))
    assert weights > 0.3 * path.stat().st_size
    assert sum(read) <= path.stat().st_size - weights
    for tensor in getattr(whole.graph, tensors):
        tensor.ClearField("raw_data")
    assert skeleton == whole


@pytest.mark.parametrize("fmt", ["onnx", "mindir"])
def test_a_truncated_graph_is_refused_in_one_line(graphs, fmt, tmp_path):
    data = graphs[fmt].read_bytes()
    cut = tmp_path / graphs[fmt].name
    cut.write_bytes(data[:len(data) // 2])
    result = run_cli("inspect", cut)
    assert result.exit_code == 1 and result.output.startswith(f"Error: {cut}: not a readable")
    assert result.output.count("\n") == 1
