"""The Python front door: `import maeconv` with pipeline, load_image, Trainer and convert, as the
model card's users expect them, and the README's examples run as they are written."""
import http.server
import importlib
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import maeconv
from maeconv.models import get_config, reference
from maeconv.runtimes.ascend.api import card_overrides, predict_inputs
from maeconv.runtimes.images import prepare_image

from helpers import TINY, TINY_CLS, kind_state, run_cli, save_official, seeded_state

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "runtimes" / "ascend" / "configs" / "mae_vit_tiny_patch8_synthetic.yaml"


def picture(path, size=(40, 36), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    full = save_official(root / "full.pth", seeded_state(TINY))
    return {"root": root, "full": full, "classifier": save_official(root / "cls.pth", seeded_state(TINY_CLS)),
            "encoder": save_official(root / "enc.pth", kind_state(TINY, "encoder"))}


def test_the_front_door_imports_no_framework():
    done = subprocess.run([sys.executable, "-c", "import sys, maeconv; print(sorted(maeconv.__all__)); "
                           "print('torch' in sys.modules, 'mindspore' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    names, frameworks = done.stdout.splitlines()
    assert set(eval(names)) >= {"from_pretrained", "AutoConfig", "AutoModel", "Trainer", "pipeline", "load_image",
                                "convert"}
    assert frameworks == "False False"


def test_convert_is_callable_from_the_front_door(models, tmp_path):
    done = maeconv.convert(models["full"], tmp_path / "out.ckpt")
    assert done.output.exists() and done.scheme == "mindspore"
    pipeline_module = importlib.import_module("maeconv.convert.pipeline")  # the package stays the package
    assert callable(maeconv.convert) and pipeline_module.convert is not None


# --- pipelines ---

def test_each_task_answers_like_the_reference(models, tmp_path):
    image = picture(tmp_path / "dog.png")
    features = maeconv.pipeline("feature_extraction", model=models["encoder"])(image)
    expected = reference.features_forward(prepare_image(image, 32)[0][None],
                                          kind_state(TINY, "encoder"), get_config(TINY))
    np.testing.assert_allclose(features.tokens, expected["tokens"][0], atol=1e-5)
    np.testing.assert_allclose(features.pooled, expected["pooled"][0], atol=1e-5)
    ranked = maeconv.pipeline("image_classification", model=models["classifier"])(image, top_k=3)
    logits = reference.classifier_forward(prepare_image(image, 32)[0][None],
                                          seeded_state(TINY_CLS), get_config(TINY_CLS))[0]
    assert [label for label, _ in ranked] == list(np.argsort(-logits)[:3])
    assert abs(sum(score for _, score in maeconv.pipeline("image_classification", model=models["classifier"])(
        image, top_k=10)) - 1) < 1e-6


def test_masked_image_modeling_gives_pictures_mask_and_per_image_loss(models, tmp_path):
    images = [picture(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    task = maeconv.pipeline("masked_image_modeling", model=models["full"], framework="mindspore")
    results = task(images, seed=4)
    assert len(results) == 3
    batch = np.stack([prepare_image(p, 32)[0] for p in images])
    noise = np.random.default_rng(4).random((3, 16), dtype=np.float32)
    expected = reference.mae_forward(batch, seeded_state(TINY), get_config(TINY, norm_pix_loss=True), noise)
    assert np.mean([r.loss for r in results]) == pytest.approx(float(expected["loss"]), rel=1e-5)
    for result, mask in zip(results, expected["mask"]):
        np.testing.assert_array_equal(result.mask, mask)
        assert result.picture.size == (4 * 32, 32) and result.reconstruction.size == (32, 32)


def test_inputs_may_be_paths_urls_pil_images_arrays_or_lists(models, tmp_path):
    path = picture(tmp_path / "cat.png", size=(32, 32))
    pixels = np.asarray(Image.open(path))
    handler = type("Handler", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cat.png"
        task = maeconv.pipeline("image_classification", model=models["classifier"])
        answers = [task(source) for source in (path, str(path), url, Image.open(path), pixels)]
        assert all(answer == answers[0] for answer in answers)
        for batched in task([path, url]):  # a batch of two: the same up to float rounding
            assert [label for label, _ in batched] == [label for label, _ in answers[0]]
            np.testing.assert_allclose([p for _, p in batched], [p for _, p in answers[0]], rtol=1e-5)
        assert np.array_equal(np.asarray(maeconv.load_image(url)), pixels)
    finally:
        server.shutdown()


def test_load_image_offline_is_a_clear_error():
    with pytest.raises(maeconv.MaeconvError, match="cannot fetch .* offline"):
        maeconv.load_image("http://127.0.0.1:9/nothing.png")  # the discard port: nobody listens


def test_a_preset_name_runs_with_fresh_weights_and_imagenet_names_come_with_1000_classes(tmp_path):
    image = picture(tmp_path / "x.png", size=(32, 32))
    result = maeconv.pipeline("masked_image_modeling", model=TINY)(image, seed=0)
    assert result.picture.size == (128, 32) and result.mask.sum() == 12
    from maeconv.runtimes.pipelines import imagenet_labels

    names = imagenet_labels()
    assert len(names) == 1000 and names[:2] == ["tench", "goldfish"] and names[-1] == "toilet tissue"


def test_pipelines_refuse_what_the_model_cannot_do(models):
    with pytest.raises(maeconv.MaeconvError, match="masked_image_modeling needs full"):
        maeconv.pipeline("masked_image_modeling", model=models["encoder"])
    with pytest.raises(maeconv.MaeconvError, match="unknown task"):
        maeconv.pipeline("segmentation", model=models["full"])
    with pytest.raises(maeconv.MaeconvError, match="disagree"):
        maeconv.pipeline("feature_extraction", model=models["full"], framework="torch", runtime="mindspore")


@pytest.fixture(scope="module")
def exported(models):
    root = models["root"]
    files = {}
    for runtime in ("onnx", "mindir"):
        for task, kind in (("pretrain", "full"), ("classify", "classifier"), ("features", "encoder")):
            out = root / f"{kind}_{task}.{runtime}"
            assert run_cli("export", runtime, models[kind], out, "--task", task, "--seed", 0).exit_code == 0
            files[runtime, task] = out
    return files


@pytest.mark.slow
@pytest.mark.parametrize("task, kind, graph", [("masked_image_modeling", "full", "pretrain"),
                                               ("image_classification", "classifier", "classify"),
                                               ("feature_extraction", "encoder", "features")])
def test_every_runtime_gives_the_same_answer(models, exported, tmp_path, task, kind, graph):
    images = [picture(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    answers = {runtime: maeconv.pipeline(task, model=models[kind], runtime=runtime)(images, seed=2)
               for runtime in ("torch", "mindspore")}
    answers.update({runtime: maeconv.pipeline(task, model=exported[runtime, graph])(images, seed=2)
                    for runtime in ("onnx", "mindir")})
    for runtime, answer in answers.items():
        for mine, theirs in zip(answer, answers["torch"]):
            if task == "image_classification":
                assert mine[0][0] == theirs[0][0], runtime
            elif task == "feature_extraction":
                np.testing.assert_allclose(mine.pooled, theirs.pooled, atol=1e-4)
            else:
                np.testing.assert_array_equal(mine.mask, theirs.mask)
                assert mine.loss == pytest.approx(theirs.loss, abs=1e-4), runtime


@pytest.mark.slow
def test_a_pipeline_on_an_onnx_graph_imports_neither_framework(exported, tmp_path):
    image = picture(tmp_path / "x.png")
    script = ("import sys\n"
              "sys.modules['torch'] = None; sys.modules['mindspore'] = None  # importing either fails\n"
              "import maeconv\n"
              f"print(maeconv.pipeline('image_classification', model={str(exported['onnx', 'classify'])!r})"
              f"({str(image)!r})[0][0])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit()


# --- the Trainer and the card's flags ---

def test_the_cards_flags_are_config_keys(tmp_path):
    root = tmp_path / "imagenet"
    (root / "train" / "n01").mkdir(parents=True)
    (root / "val" / "n01").mkdir(parents=True)
    assert card_overrides(train_dataset_dir=root / "train", eval_dataset_dir=root, load_checkpoint="w.ckpt",
                          device_id=3, device_target="Ascend", use_parallel=True, output_dir="runs/x") == {
        "data": {"path": str(root), "train_split": "train"}, "model": {"checkpoint": "w.ckpt"}, "device_id": 3,
        "device_target": "Ascend", "use_parallel": True, "output_dir": "runs/x"}
    picture(root / "val" / "n01" / "a.png")
    assert predict_inputs(root / "val") == [root / "val" / "n01" / "a.png"]
    assert predict_inputs("http://host/dog.jpg") == ["http://host/dog.jpg"]


def test_the_trainer_refuses_unknown_keys_and_tasks():
    with pytest.raises(maeconv.MaeconvError, match="unknown task"):
        maeconv.Trainer(task="segmentation", model=TINY)
    with pytest.raises(ValueError, match="train.epoch"):
        maeconv.Trainer(task="masked_image_modeling", model=TINY, train__epoch=2)


@pytest.mark.slow
def test_the_trainer_trains_finetunes_evaluates_and_predicts_like_train_py(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = maeconv.Trainer(task="masked_image_modeling", model="mae_vit_tiny_patch8", output_dir="api",
                              train__epochs=12, log__log_steps=8)
    result = trainer.train()
    assert result.steps == 96 and result.losses[-1][1] <= 0.5 * result.losses[0][1]
    script = ROOT / "runtimes" / "ascend" / "train.py"
    done = subprocess.run([sys.executable, str(script), "--config", str(TINY_RECIPE), "--output_dir", "script",
                           "--train.epochs", "12", "--log.log_steps", "8"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert [tuple(pair) for pair in json.loads(Path("script/summary.json").read_text())["losses"]] == result.losses
    reconstruction = trainer.predict(input_data=next(Path("data").rglob("*.JPEG")), predict_checkpoint=True, seed=0)
    assert reconstruction.picture.size == (128, 32) and reconstruction.loss < result.losses[0][1]
    classifier = maeconv.Trainer(task="image_classification", model=result.checkpoint, output_dir="cls",
                                 train__epochs=4, eval_dataset="data/synthetic_imagenet/val")
    tuned = classifier.train()
    assert tuned.eval["top1"] >= 75.0
    assert classifier.evaluate()["top1"] == tuned.eval["top1"]
    ranked = classifier.predict(sorted(Path("data/synthetic_imagenet/val/class_002").iterdir())[0],
                                predict_checkpoint=True)
    assert ranked[0][0] == 2


@pytest.mark.slow
def test_maeconv_train_workers_runs_without_an_activated_environment(tmp_path):
    bin_folder = Path(sys.executable).parent
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GLOG_v": "3"}
    done = subprocess.run([str(bin_folder / "maeconv"), "train", "--workers", "2", "--config", str(TINY_RECIPE),
                           "--output_dir", "two", "--train.max_steps", "2", "--master_port", "8250",
                           "--log_dir", "two/msrun_log"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["steps"] == 2
    failing = subprocess.run([str(bin_folder / "maeconv"), "train", "--workers", "2", "--config", str(TINY_RECIPE),
                              "--output_dir", "bad", "--data.path", "nowhere", "--data.synthetic", "null",
                              "--master_port", "8260",
                              "--log_dir", "bad/msrun_log"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
    assert failing.returncode != 0


@pytest.mark.slow
def test_the_readme_python_examples_run_as_written(tmp_path, monkeypatch):
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "dog.jpg", size=(64, 48))
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
