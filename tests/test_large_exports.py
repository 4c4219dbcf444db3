"""Exports whose weights live beside the graph (ONNX external data, MindIR variables), named after
the final output and moved as one set; half precision; and ViT-H through both runtimes (large).

The fast tests lower both size thresholds so a tiny model takes the large-model path."""
import json
import os
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from maeconv.convert import outputs
from maeconv.cli import cli
from maeconv.runtimes import runners
from maeconv.runtimes.registry import open_graph
from maeconv.runtimes.tasks import TASKS, random_inputs

from helpers import TINY_CLS, save_official, seeded_state

pytestmark = pytest.mark.slow  # every test here exports graphs (seconds each)

LAYOUT = {"onnx": ("h.onnx", "h.onnx.data"), "mindir": ("h.mindir", "h_variables")}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return save_official(tmp_path_factory.mktemp("ckpt") / "cls.pth", seeded_state(TINY_CLS))


@pytest.fixture
def split(monkeypatch):
    """Every model counts as large: weights beside the graph in both runtimes."""
    monkeypatch.setattr(runners, "SPLIT_BYTES", 0)


@pytest.mark.parametrize("fmt", ["onnx", "mindir"])
def test_large_export_is_one_set_named_after_the_output_and_moves_together(split, classifier, tmp_path, fmt):
    main, weights = LAYOUT[fmt]
    out = tmp_path / "out"
    out.mkdir()
    result = run("export", fmt, classifier, out / main, "--task", "classify", "--json")
    assert result.exit_code == 0, result.output
    assert "they move together" in " ".join(json.loads(result.stdout)["notes"])
    expected = [main, weights] + ([f"{weights}/data_0"] if fmt == "mindir" else [])
    assert tree(out) == sorted(expected)  # no staging folder, no h_graph.mindir, nothing else
    if fmt == "onnx":
        graph = onnx.load(out / main, load_external_data=False).graph
        locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {"h.onnx.data"}
        assert all(t.external_data and not t.raw_data for t in graph.initializer if len(t.dims) == 2)
    inputs = random_inputs(TASKS["classify"], open_graph(out / main, fmt).info.config, 2, np.random.default_rng(0))
    before = open_graph(out / main, fmt)(inputs)["logits"]
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in (main, weights):
        shutil.move(out / name, moved / name)
    np.testing.assert_array_equal(open_graph(moved / main, fmt)(inputs)["logits"], before)
    shown = json.loads(run("inspect", moved / main, "--json").stdout)
    assert (shown["task"], shown["precision"]) == ("classify", "fp32")
    assert [os.path.basename(f) for f in shown["files"]] == [main, "h.onnx.data" if fmt == "onnx" else "data_0"]
    (moved / main).rename(tmp_path / main)  # the graph alone: its weights stayed behind
    alone = run("inspect", tmp_path / main)
    assert alone.exit_code == 1 and "not beside it" in alone.stderr and "moved together" in alone.stderr


@pytest.mark.parametrize("fmt", ["onnx", "mindir"])
def test_failed_large_export_leaves_no_file_of_the_set(split, classifier, tmp_path, fmt):
    # MindIR matches its twin exactly, so fp16 asked to be exact is what fails in both runtimes.
    result = run("export", fmt, classifier, tmp_path / LAYOUT[fmt][0], "--task", "classify", "--dtype", "fp16",
                 "--min-cosine", "1")
    assert result.exit_code == 1 and "validation failed" in result.stderr
    assert tree(tmp_path) == []


@pytest.mark.parametrize("fmt", ["onnx", "mindir"])
def test_force_replaces_the_whole_set_and_only_it(split, classifier, tmp_path, monkeypatch, fmt):
    main, weights = LAYOUT[fmt]
    assert run("export", fmt, classifier, tmp_path / main, "--task", "classify").exit_code == 0
    first = tree(tmp_path)
    again = run("export", fmt, classifier, tmp_path / main, "--task", "features")
    assert again.exit_code == 1 and "--force" in again.stderr
    assert run("export", fmt, classifier, tmp_path / main, "--task", "features", "--force").exit_code == 0
    assert tree(tmp_path) == first and open_graph(tmp_path / main, fmt).info.task.name == "features"
    # A small model over a large one: the old weights go too, so no stale file poses as part of it.
    monkeypatch.setattr(runners, "SPLIT_BYTES", 1 << 30)
    assert run("export", fmt, classifier, tmp_path / main, "--task", "classify", "--force").exit_code == 0
    assert tree(tmp_path) == [main]
    # A weights name that holds what maeconv does not write is never replaced.
    (tmp_path / weights).mkdir() if fmt == "mindir" else (tmp_path / weights).write_bytes(b"")
    if fmt == "mindir":
        (tmp_path / weights / "notes.txt").write_text("mine")
        refused = run("export", fmt, classifier, tmp_path / main, "--task", "classify", "--force")
        assert refused.exit_code == 1 and "notes.txt" in refused.stderr
        assert (tmp_path / weights / "notes.txt").read_text() == "mine"


def test_a_failure_while_renaming_the_set_puts_everything_back(split, classifier, tmp_path, monkeypatch):
    assert run("export", "onnx", classifier, tmp_path / "h.onnx", "--task", "classify").exit_code == 0
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    real = outputs._rename

    def failing(source, destination):
        if destination.name == "h.onnx" and source.parent.name.startswith(".maeconv-"):  # the new main file
            raise OSError(28, "No space left on device", str(destination))
        real(source, destination)

    monkeypatch.setattr(outputs, "_rename", failing)
    result = run("export", "onnx", classifier, tmp_path / "h.onnx", "--task", "features", "--force")
    assert result.exit_code == 1 and "No space left" in result.stderr
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


# --- half precision ---

def weight_bytes(path, fmt):
    if fmt == "onnx":
        return sum(len(t.raw_data) for t in onnx.load(path).graph.initializer if t.data_type in (1, 10))
    from maeconv.runtimes.ascend.mindir import read_mindir

    return sum(len(p.raw_data) for p in read_mindir(path, weights=True).graph.parameter)


@pytest.mark.parametrize("fmt", ["onnx", "mindir"])
def test_fp16_export_halves_the_weights_keeps_float32_inputs_and_reports_drift(classifier, tmp_path, fmt):
    full, half = tmp_path / f"full.{fmt}", tmp_path / f"half.{fmt}"
    assert run("export", fmt, classifier, full, "--task", "classify").exit_code == 0
    result = run("export", fmt, classifier, half, "--task", "classify", "--dtype", "fp16", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    per_batch = [r for r in rows if r["pair"].startswith("batch")]
    assert len(per_batch) == 2 and all(r["tolerance"].startswith("cosine >= 0.99 (") for r in per_batch)
    assert all(0.99 <= float(r["tolerance"].split("(")[1].rstrip(")")) <= 1.0 for r in per_batch)
    assert all(r["max_abs"] > 1e-5 for r in per_batch)  # half precision really drifts: not the fp32 graph
    assert rows[-1]["tolerance"].startswith("top1 >= 0.75") and rows[-1]["passed"]
    assert weight_bytes(half, fmt) * 2 == weight_bytes(full, fmt)
    runner = open_graph(half, fmt)
    inputs = random_inputs(TASKS["classify"], runner.info.config, 3, np.random.default_rng(1))
    logits = runner(inputs)["logits"]
    assert logits.dtype == np.float32 and logits.shape == (3, runner.info.config.num_classes)
    assert json.loads(run("inspect", half, "--json").stdout)["precision"] == "fp16"
    if fmt == "onnx":
        graph = onnx.load(half)
        assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert {t.data_type for t in graph.graph.initializer if len(t.dims) == 2} == {onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize("fmt", ["onnx", "mindir"])
def test_bf16_is_refused_in_one_line(classifier, tmp_path, fmt):
    result = run("export", fmt, classifier, tmp_path / f"x.{fmt}", "--task", "classify", "--dtype", "bf16")
    assert result.exit_code == 1 and result.stderr.count("Error: ") == 1 and "use --dtype fp16" in result.stderr
    assert tree(tmp_path) == []


# --- ViT-H, as a user runs it (on demand: minutes and ~7 GB each) ---

@pytest.fixture(scope="module")
def huge_full(tmp_path_factory):
    return save_official(tmp_path_factory.mktemp("huge") / "huge_full.pth", seeded_state("mae_vit_huge_patch14"))


@pytest.mark.large
@pytest.mark.parametrize("fmt", ["onnx", "mindir"])
@pytest.mark.parametrize("task", ["features", "pretrain"])
def test_huge_exports_and_validates(huge_full, tmp_path, fmt, task):
    main, weights = LAYOUT[fmt]
    result = run("export", fmt, huge_full, tmp_path / main, "--task", task, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([main, weights])
    shown = json.loads(run("inspect", tmp_path / main, "--json").stdout)
    assert shown["task"] == task and shown["preset"] == "mae_vit_huge_patch14"
    assert shown["bytes"] > (2_500_000_000 if task == "pretrain" else 2_400_000_000)


# --- the source side in a child process (what every model over ISOLATE_BYTES gets) ---

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "mindir"])
def test_isolated_export_reports_progress_and_validates(classifier, tmp_path, monkeypatch, fmt):
    from maeconv.runtimes import export as export_module

    monkeypatch.setattr(export_module, "ISOLATE_BYTES", 0)
    lines = []
    done = export_module.export(classifier, tmp_path / f"c.{fmt}", fmt, "classify", log=lines.append)
    assert done.report.passed and tree(tmp_path) == [f"c.{fmt}"]
    assert lines[0].startswith("building the ") and lines[-1].startswith("validating ")  # the child's, then ours
    if fmt == "mindir":  # each validation batch in a process of its own
        assert done.report.rows and "a process per batch" in done.report.title


@pytest.mark.slow
def test_an_error_in_the_child_comes_back_as_one_line_naming_the_output(tmp_path):
    from maeconv.errors import MaeconvError
    from maeconv.runtimes.export import SourceJob, write_from_twin
    from maeconv.runtimes.isolate import run_in_child

    job = SourceJob(str(tmp_path / "gone.pth"), "onnx", "classify", settings={}, info={}, dtype="fp32", batches=(1,),
                    seed=0, options={})
    with pytest.raises(MaeconvError, match="gone.pth: no such file"):
        run_in_child(write_from_twin, (job, tmp_path / "x.onnx"), lambda _: None, tmp_path / "x.onnx")
    assert tree(tmp_path) == []


def test_a_renamed_graph_still_finds_and_lists_its_weights(split, classifier, tmp_path):
    assert run("export", "onnx", classifier, tmp_path / "h.onnx", "--task", "features").exit_code == 0
    (tmp_path / "h.onnx").rename(tmp_path / "renamed.onnx")
    shown = json.loads(run("inspect", tmp_path / "renamed.onnx", "--json").stdout)
    assert [os.path.basename(f) for f in shown["files"]] == ["renamed.onnx", "h.onnx.data"]
    assert open_graph(tmp_path / "renamed.onnx", "onnx").info.task.name == "features"
