"""Exported graphs (ONNX, MindIR) per task, their validation, and `maeconv predict`."""
import json

import numpy as np
import onnx
import pytest
from PIL import Image

from maeconv.convert.pipeline import load_canonical
from maeconv.models import get_config, reference
from maeconv.parity.compare import ABS, EXACT, Tolerance, compare
from maeconv.runtimes.images import IMAGENET_MEAN, IMAGENET_STD, eval_transform, prepare_image, reconstruction_picture, \
    to_pixels
from maeconv.runtimes.registry import open_graph
from maeconv.runtimes.runners import twin_runner
from maeconv.runtimes.tasks import TASKS, random_inputs

from helpers import run_cli as run, TINY, TINY_CLS, kind_state, save_official, seeded_state

FLOAT64_TOL = 1e-4  # float32 runtimes against the float64 reference, tiny model




@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtimes")
    states = {"full": seeded_state(TINY), "encoder": kind_state(TINY, "encoder"), "classifier": seeded_state(TINY_CLS)}
    paths = {kind: save_official(root / f"{kind}.pth", state) for kind, state in states.items()}
    return root, paths, states


def expected_outputs(task, state, inputs):
    """The float64 reference's outputs of a task."""
    cfg = get_config(TINY_CLS if "head.weight" in state else TINY)
    if task == "pretrain":
        out = reference.mae_forward(inputs["images"], state, cfg.replace(norm_pix_loss=True), inputs["noise"])
        return {k: out[k] for k in ("loss", "pred", "mask")}
    if task == "features":
        return reference.features_forward(inputs["images"], state, cfg)
    return {"logits": reference.classifier_forward(inputs["images"], state, cfg)}


def tolerances(task):
    return {name: Tolerance(EXACT) if name == "mask" else Tolerance(ABS, FLOAT64_TOL) for name in TASKS[task].outputs}


# --- the twins' unmasked encoder pass against the float64 reference ---

@pytest.mark.parametrize("framework", ["torch", "mindspore"])
@pytest.mark.parametrize("kind", ["encoder", "classifier"])
def test_features_of_both_twins_match_reference(files, framework, kind):
    _, paths, states = files
    loaded = load_canonical(paths[kind])
    runner = twin_runner(loaded, TASKS["features"], framework)
    inputs = random_inputs(TASKS["features"], loaded.detected.config, 3, np.random.default_rng(1))
    rows = compare(framework, runner(inputs), expected_outputs("features", states[kind], inputs),
                   {"tokens": Tolerance(ABS, 1e-5), "pooled": Tolerance(ABS, 1e-5)})
    assert all(row.passed for row in rows), rows


def test_features_pool_the_cls_token_of_an_encoder_and_the_patch_mean_of_a_classifier(files):
    _, _, states = files
    images = random_inputs(TASKS["features"], get_config(TINY), 2, np.random.default_rng(2))["images"]
    encoder = reference.features_forward(images, states["encoder"], get_config(TINY))
    np.testing.assert_array_equal(encoder["pooled"], encoder["tokens"][:, 0])
    classifier = reference.features_forward(images, states["classifier"], get_config(TINY_CLS))
    cls = {k: np.float64(v) for k, v in states["classifier"].items()}
    mean = classifier["tokens"][:, 1:].mean(1)
    normed = reference.layer_norm(mean, cls["fc_norm.weight"], cls["fc_norm.bias"], 1e-6)
    np.testing.assert_allclose(classifier["pooled"], normed, atol=1e-12)


# --- export: one file per task and runtime, checked against the reference ---

EXPORTS = [("onnx", "pretrain", "full"), ("onnx", "features", "encoder"), ("onnx", "classify", "classifier"),
           ("mindir", "pretrain", "full"), ("mindir", "features", "classifier"), ("mindir", "classify", "classifier")]


@pytest.fixture(scope="module")
def exported(files):
    root, paths, _ = files
    done = {}
    for fmt, task, kind in EXPORTS:
        out = root / f"{kind}_{task}.{fmt}"
        result = run("export", fmt, paths[kind], out, "--task", task, "--json")
        done[fmt, task] = (out, result)
    return done


@pytest.mark.slow
@pytest.mark.parametrize("fmt,task,kind", EXPORTS)
def test_export_validates_and_matches_reference(files, exported, fmt, task, kind):
    _, _, states = files
    out, result = exported[fmt, task]
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"]
    atol = {"onnx": 1e-4, "mindir": 1e-5}[fmt]
    assert {row["pair"] for row in report["rows"]} == {"batch 1", "batch 4" if fmt == "onnx" else "batch 2"}
    assert {row["output"] for row in report["rows"]} == set(TASKS[task].outputs)
    assert all(row["max_abs"] <= atol for row in report["rows"])
    runner = open_graph(out, fmt)
    assert (runner.info.task.name, runner.info.kind) == (task, kind)
    inputs = random_inputs(TASKS[task], runner.info.config, 5, np.random.default_rng(3))  # an unseen batch size
    rows = compare(fmt, runner(inputs), expected_outputs(task, states[kind], inputs), tolerances(task))
    assert all(row.passed for row in rows), rows


@pytest.mark.slow
@pytest.mark.parametrize("task", ["pretrain", "features", "classify"])
def test_onnx_signature(exported, task):
    out, _ = exported["onnx", task]
    model = onnx.load(out)
    assert [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")] == [18]
    assert [i.name for i in model.graph.input] == list(TASKS[task].inputs)
    assert [o.name for o in model.graph.output] == list(TASKS[task].outputs)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and all(d.dim_value > 0 for d in dims[1:])
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["maeconv.task"] == task and meta["maeconv.opset"] == "18"
    # noise is an input: no random op may draw a new mask inside the graph
    assert not {n.op_type for n in model.graph.node} & {"RandomUniform", "RandomUniformLike", "RandomNormal"}


@pytest.mark.slow
def test_pretrain_graph_is_deterministic_in_its_noise(exported):
    runner = open_graph(exported["onnx", "pretrain"][0], "onnx")
    inputs = random_inputs(TASKS["pretrain"], runner.info.config, 2, np.random.default_rng(4))
    first, second = runner(inputs), runner(inputs)
    np.testing.assert_array_equal(first["pred"], second["pred"])
    kept = runner.info.config.len_keep
    assert (first["mask"] == 0).sum(1).tolist() == [kept, kept]


@pytest.mark.slow
@pytest.mark.parametrize("task,kind", [("features", "encoder"), ("classify", "classifier")])
def test_int8_reports_drift(files, task, kind):
    root, paths, _ = files
    out = root / f"{task}_int8.onnx"
    result = run("export", "onnx", paths[kind], out, "--task", task, "--quantize", "int8", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    per_batch = [row for row in rows if row["pair"].startswith("batch")]
    assert len(per_batch) == 2 * len(TASKS[task].outputs)
    for row in per_batch:
        assert row["tolerance"].startswith("cosine >= 0.99 (") and row["passed"]
        assert 0.99 <= float(row["tolerance"].split("(")[1].rstrip(")")) <= 1.0
        assert row["max_abs"] > 1e-5  # int8 really drifts: the graph is not the fp32 one
    if task == "classify":
        assert rows[-1]["pair"] == "all 5 images" and rows[-1]["tolerance"].startswith("top1 >= 0.75")
    model = onnx.load(out)
    assert "MatMulInteger" in {n.op_type for n in model.graph.node}
    assert {p.key: p.value for p in model.metadata_props}["maeconv.precision"] == "int8"
    assert open_graph(out, "onnx").name == "onnxruntime int8"


@pytest.mark.slow
def test_failed_validation_removes_the_file_unless_kept(files):
    root, paths, _ = files
    out = root / "strict.onnx"
    result = run("export", "onnx", paths["classifier"], out, "--task", "classify", "--atol", "1e-12")
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "validation failed" in result.stderr.splitlines()[-1]
    assert not out.exists() and not list(root.glob(".strict*"))
    kept = run("export", "onnx", paths["classifier"], out, "--task", "classify", "--atol", "1e-12", "--keep-invalid")
    assert kept.exit_code == 1 and out.exists()
    assert "kept because of --keep-invalid" in kept.stderr


# --- predict ---

def write_image(path, size, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def pictures(files, exported):
    root, paths, _ = files
    images = [write_image(root / "wide.png", (48, 40), 1), write_image(root / "square.jpg", (32, 32), 2)]
    written = {}
    for runtime, model in (("torch", paths["full"]), ("mindspore", paths["full"]),
                           ("onnx", exported["onnx", "pretrain"][0]), ("mindir", exported["mindir", "pretrain"][0])):
        out = root / f"pictures_{runtime}"
        out.mkdir()
        result = run("predict", model, *images, "--runtime", runtime, "--out", out, "--seed", 7)
        assert result.exit_code == 0, result.output
        written[runtime] = [np.asarray(Image.open(out / f"{image.stem}_mae.png")) for image in images]
        assert "wide.png: 48x40 image resized" in result.stderr
    return images, written


@pytest.mark.slow
def test_predict_picture_has_the_four_demo_panels(files, pictures):
    _, paths, _ = files
    images, written = pictures
    cfg = get_config(TINY)
    size, p = cfg.img_size, cfg.patch_size
    for image, picture in zip(images, written["torch"]):
        assert picture.shape == (size, 4 * size, 3)
        original, masked, _, pasted = np.split(picture, 4, axis=1)
        np.testing.assert_array_equal(original, to_pixels(prepare_image(image, size)[0]))
        gray = np.clip(np.round(IMAGENET_MEAN * 255), 0, 255).astype(np.uint8)
        patches = [(i, j) for i in range(0, size, p) for j in range(0, size, p)]
        hidden = [(i, j) for i, j in patches if (masked[i:i + p, j:j + p] == gray).all()]
        assert len(hidden) == cfg.num_patches - cfg.len_keep
        for i, j in set(patches) - set(hidden):  # visible patches are pasted back unchanged
            np.testing.assert_array_equal(pasted[i:i + p, j:j + p], original[i:i + p, j:j + p])


@pytest.mark.slow
def test_predict_agrees_across_runtimes_and_seeds_reproduce(pictures):
    _, written = pictures
    for runtime in ("mindspore", "onnx", "mindir"):
        for a, b in zip(written[runtime], written["torch"]):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, runtime


def test_norm_pix_prediction_is_unnormalised_per_patch():
    cfg = get_config(TINY)
    image = random_inputs(TASKS["features"], cfg, 1, np.random.default_rng(5))["images"][0]
    target = reference.patchify(image[None].astype(np.float64), cfg.patch_size)[0]
    normalised = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    mask = np.ones(cfg.num_patches)
    picture = reconstruction_picture(image, normalised, mask, cfg, norm_pix=True)
    original, _, reconstruction, _ = np.split(picture, 4, axis=1)
    assert np.abs(reconstruction.astype(int) - original.astype(int)).max() <= 1
    raw = reconstruction_picture(image, normalised, mask, cfg, norm_pix=False)
    assert np.abs(np.split(raw, 4, axis=1)[2].astype(int) - original.astype(int)).max() > 10


def test_eval_transform_resizes_shorter_side_then_center_crops():
    wide = np.zeros((256, 512, 3), np.uint8)
    wide[:, 128:384] = 255  # a white center half: after the crop the whole picture is white
    array = eval_transform(Image.fromarray(wide), 224)
    assert array.shape == (3, 224, 224)
    np.testing.assert_allclose(array, ((1 - IMAGENET_MEAN) / IMAGENET_STD)[:, None, None] * np.ones((3, 224, 224)),
                               atol=1e-5)


def test_predict_classifier_prints_top5(files, tmp_path):
    _, paths, states = files
    image = write_image(tmp_path / "cat.png", (32, 32), 3)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class{k}" for k in range(10)))
    result = run("predict", paths["classifier"], image, "--labels", labels)
    assert result.exit_code == 0, result.output
    logits = reference.classifier_forward(prepare_image(image, 32)[0][None], states["classifier"], get_config(TINY_CLS))
    top = np.argsort(-logits[0])[:5]
    assert result.stdout.startswith(f"{image}: class{top[0]} ")
    assert [part.split()[0] for part in result.stdout.split(": ", 1)[1].split(", ")] == [f"class{k}" for k in top]
    assert list(tmp_path.glob("*.png")) == [image]


# --- bad input: one line, exit 1, nothing left behind ---

def _fails_cleanly(directory, args, *expected):
    before = set(directory.rglob("*"))
    result = run(*args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    assert "Traceback" not in result.output
    for text in expected:
        assert text in errors[0]
    assert set(directory.rglob("*")) == before
    return errors[0]


@pytest.mark.parametrize("fmt,task,kind,message", [
    ("onnx", "classify", "encoder", "needs a fine-tuned classifier"),
    ("mindir", "pretrain", "encoder", "needs a full"),
    ("onnx", "pretrain", "classifier", "is a fine-tuned classifier checkpoint"),
])
def test_export_wrong_kind(files, tmp_path, fmt, task, kind, message):
    _, paths, _ = files
    _fails_cleanly(tmp_path, ["export", fmt, paths[kind], tmp_path / f"x.{fmt}", "--task", task], message)


def test_export_bad_outputs(files, tmp_path):
    _, paths, _ = files
    _fails_cleanly(tmp_path, ["export", "onnx", paths["full"], tmp_path / "no" / "x.onnx", "--task", "features"],
                   "does not exist")
    _fails_cleanly(tmp_path, ["export", "mindir", paths["full"], tmp_path / "x.mdl", "--task", "features"],
                   "must end in .mindir")
    (tmp_path / "x.onnx").write_bytes(b"keep")
    _fails_cleanly(tmp_path, ["export", "onnx", paths["full"], tmp_path / "x.onnx", "--task", "features"], "--force")
    _fails_cleanly(tmp_path, ["export", "onnx", paths["full"], tmp_path / "y.onnx", "--task", "pretrain",
                              "--quantize", "int8"], "features and classify")


@pytest.mark.slow
def test_predict_bad_inputs(files, exported, tmp_path):
    _, paths, _ = files
    good = write_image(tmp_path / "good.png", (32, 32))
    (tmp_path / "text.jpg").write_text("not really a picture")
    _fails_cleanly(tmp_path, ["predict", paths["full"], good, tmp_path / "text.jpg", "--out", tmp_path],
                   "text.jpg", "not an image")
    _fails_cleanly(tmp_path, ["predict", paths["full"], good, tmp_path / "gone.png", "--out", tmp_path],
                   "gone.png", "no such file")
    _fails_cleanly(tmp_path, ["predict", paths["encoder"], good, "--out", tmp_path], "encoder only")
    _fails_cleanly(tmp_path, ["predict", paths["full"], good, "--runtime", "onnx", "--out", tmp_path],
                   "export the checkpoint first")
    _fails_cleanly(tmp_path, ["predict", exported["onnx", "features"][0], good, "--out", tmp_path],
                   "predict needs a pretrain or classify graph")
    _fails_cleanly(tmp_path, ["predict", paths["full"], good, "--out", good], "good.png", "not a directory")
    np.save(tmp_path / "noise.npy", np.zeros((3, 5), np.float32))
    _fails_cleanly(tmp_path, ["predict", paths["full"], good, "--noise", tmp_path / "noise.npy", "--out", tmp_path],
                   "noise.npy", "expected (1, 16)")
    (tmp_path / "good_mae.png").write_bytes(b"keep")
    _fails_cleanly(tmp_path, ["predict", paths["full"], good, "--out", tmp_path], "good_mae.png", "--force")


def test_predict_writes_all_pictures_or_none(files, tmp_path, monkeypatch):
    from maeconv.runtimes import predict as predict_module

    _, paths, _ = files
    images = [write_image(tmp_path / f"{name}.png", (32, 32)) for name in ("first", "second")]
    calls = []

    def failing_save(pixels, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        Image.fromarray(pixels).save(path, format="PNG")

    monkeypatch.setattr(predict_module, "save_png", failing_save)
    _fails_cleanly(tmp_path, ["predict", paths["full"], *images, "--out", tmp_path], "second_mae.png",
                   "No space left")


@pytest.mark.slow
def test_predict_classifier_through_exported_graphs_matches_the_checkpoint(files, exported, tmp_path):
    _, paths, _ = files
    image = write_image(tmp_path / "dog.png", (40, 36), 4)
    ranked = {}
    for model in (paths["classifier"], exported["onnx", "classify"][0], exported["mindir", "classify"][0]):
        result = run("predict", model, image, "--json")
        assert result.exit_code == 0, result.output
        ranked[model.suffix] = [k for k, _ in json.loads(result.stdout)["top5"][0]]
    assert ranked[".onnx"] == ranked[".pth"] == ranked[".mindir"]


@pytest.mark.slow
def test_base_encoder_exports_to_onnx_within_tolerance_of_the_reference(tmp_path, base_state):
    """ViT-B, the size people deploy: the exported features graph against the float64 reference."""
    from maeconv.models.config import ENCODER, checkpoint_shapes

    config = get_config("mae_vit_base_patch16")
    encoder = {k: v for k, v in base_state.items() if k in checkpoint_shapes(config, ENCODER)}
    path = save_official(tmp_path / "mae_pretrain_vit_base.pth", encoder)
    result = run("export", "onnx", path, tmp_path / "base.onnx", "--task", "features", "--json")
    assert result.exit_code == 0, result.output
    assert all(row["max_abs"] <= 1e-4 for row in json.loads(result.stdout)["rows"])
    inputs = random_inputs(TASKS["features"], config, 1, np.random.default_rng(6))
    actual = open_graph(tmp_path / "base.onnx", "onnx")(inputs)
    rows = compare("onnx", actual, reference.features_forward(inputs["images"], encoder, config),
                   {"tokens": Tolerance(ABS, 1e-4), "pooled": Tolerance(ABS, 1e-4)})
    assert all(row.passed for row in rows), rows


def test_predict_makes_its_out_folder_and_says_each_picture_once(files, tmp_path):
    _, paths, _ = files
    image = write_image(tmp_path / "cat.png", (32, 32))
    out = tmp_path / "new" / "pictures"
    result = run("predict", paths["full"], image, "--out", out, "--seed", 1)
    assert result.exit_code == 0, result.output
    assert (out / "cat_mae.png").is_file()
    assert result.output.count("cat_mae.png") == 1


def test_predict_takes_a_hugging_face_directory(files, tmp_path):
    _, paths, _ = files
    folder = tmp_path / "hf"
    assert run("convert", paths["full"], folder).exit_code == 0
    image = write_image(tmp_path / "cat.png", (32, 32))
    by_dir = run("predict", folder, image, "--out", tmp_path / "a", "--seed", 3)
    by_file = run("predict", paths["full"], image, "--out", tmp_path / "b", "--seed", 3)
    assert by_dir.exit_code == 0 and by_file.exit_code == 0, by_dir.output + by_file.output
    assert (tmp_path / "a" / "cat_mae.png").read_bytes() == (tmp_path / "b" / "cat_mae.png").read_bytes()


def test_predict_labels_must_name_every_class(files, tmp_path):
    _, paths, _ = files
    image = write_image(tmp_path / "cat.png", (32, 32))
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {k}\n" for k in range(9)))
    _fails_cleanly(tmp_path, ["predict", paths["classifier"], image, "--labels", labels],
                   "9 class names, but the model has 10 classes")
    labels.write_text("".join(f"class {k}\n" for k in range(10)))
    result = run("predict", paths["classifier"], image, "--labels", labels)
    assert result.exit_code == 0 and result.stdout.startswith(f"{image}: class ")
