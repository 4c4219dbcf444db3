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


def _crafted_onnx(path, config_changes=None, weights_at=None, raw_config=None):
    """A one-node ONNX file carrying maeconv's metadata for the tiny preset (changed as asked), with
    its one initializer stored at `weights_at` if given: what a hostile or damaged export looks like."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from maeconv.models import get_config
    from maeconv.runtimes.tasks import get_task, metadata

    values = metadata(get_task("features"), TINY, "full", get_config(TINY))
    if config_changes:
        values["maeconv.config"] = json.dumps({**json.loads(values["maeconv.config"]), **config_changes})
    if raw_config is not None:
        values["maeconv.config"] = raw_config
    initializers = []
    if weights_at is not None:
        weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1], data_location=TensorProto.EXTERNAL)
        weight.external_data.add(key="location", value=weights_at)
        initializers.append(weight)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializers)
    model = helper.make_model(graph)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
    return path


def _refused(path, *expected):
    result = run_cli("inspect", path)
    assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
    assert result.output.count("\n") == 1 and all(text in result.output for text in expected), result.output


@pytest.mark.parametrize("location", ["/etc/hostname", "/nonexistent/weights.bin", "../elsewhere/weights.bin"])
def test_a_graph_whose_weights_lie_elsewhere_is_refused(tmp_path, location):
    _refused(_crafted_onnx(tmp_path / "g.onnx", weights_at=location), "not beside it", repr(location))


@pytest.mark.parametrize("changes, raw, expected", [
    ({"img_size": -5}, None, "image size -5"),
    ({"embed_dim": 10**12}, None, "embed_dim 1000000000000, where"),
    ({"num_classes": 0}, None, "num_classes 0"),
    (None, "[" * 100000, "nested too deeply"),
    (None, '{"img_size": 32, "img_size": 64}', "appears twice"),
])
def test_recorded_metadata_the_twins_cannot_run_is_refused(tmp_path, changes, raw, expected):
    _refused(_crafted_onnx(tmp_path / "g.onnx", changes, raw_config=raw), "metadata", expected)


def test_a_crafted_graph_with_its_weights_beside_it_is_shown(tmp_path):
    """The control for the two tests above: the same crafted file, sound, is inspected."""
    (tmp_path / "w.bin").write_bytes(b"\0" * 4)
    result = run_cli("inspect", _crafted_onnx(tmp_path / "g.onnx", weights_at="w.bin"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["preset"] == TINY
