"""maeconv demo --train: real photographs, the MindSpore trainer, conversion, exports and every
runtime's reconstructions of crops that no training crop touched."""
import json

import numpy as np
import pytest

from maeconv.runtimes import photos
from maeconv.runtimes.photos import DemoSize, held_out_box, run_photo_demo, training_crop

from helpers import run_cli


def test_training_crops_never_touch_the_held_out_square():
    rng = np.random.default_rng(0)
    for shape in [(400, 600, 3), (300, 451, 3), (512, 512, 3), (427, 640, 3)]:
        hx0, hy0, hx1, hy1 = held_out_box(shape)
        covered = np.zeros(shape[:2], bool)
        for _ in range(300):
            x, y, side = training_crop(shape, rng)
            assert 0 <= x and x + side <= shape[1] and 0 <= y and y + side <= shape[0]
            covered[y:y + side, x:x + side] = True
        assert not covered[hy0:hy1, hx0:hx1].any()
        assert covered.mean() > 0.6  # the rest of the photograph is trained on


def test_the_photographs_ship_with_scikit_image():
    found = photos.sample_photos()
    assert list(found) == list(photos.PHOTOS)
    assert all(image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 300
               for image in found.values())


@pytest.mark.slow
def test_the_photo_demo_learns_and_every_runtime_agrees(tmp_path, capfd):
    size = DemoSize(crops=2048, epochs=4)  # 256 steps at 64 pixels
    done = run_photo_demo(tmp_path, size, log=lambda _: None)
    untrained = done.losses.pop("untrained")
    assert set(done.losses) == {"torch", "mindspore", "onnx", "mindir"}
    for loss in done.losses.values():
        assert loss < 0.7 * untrained, (loss, untrained)
        assert loss == pytest.approx(done.losses["torch"], rel=1e-4)
    for name in ("untrained", *done.losses):
        assert len(done.pictures[name]) == 8 and all(p.stat().st_size > 0 for p in done.pictures[name])
    assert done.picture.stat().st_size > 0
    assert json.loads(done.files["results"].read_text())["losses"]["torch"] == done.losses["torch"]
    assert "deprecated" not in capfd.readouterr().err.lower()


@pytest.mark.slow
def test_a_second_run_reuses_the_finished_training(tmp_path, monkeypatch):
    args = ["demo", "--train", "--epochs", "1", "--workdir", tmp_path]
    small = dict(img_size=32, crops=256, batch_size=32, mindir=False)
    monkeypatch.setattr(photos, "DemoSize", lambda original=photos.DemoSize, **kw: original(**{**small, **kw}))
    first = run_cli(*args)
    second = run_cli(*args)
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "already trained" in second.output + second.stderr
    assert f"kept in {tmp_path}" in second.stdout
