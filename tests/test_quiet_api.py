"""Loading and running MindSpore models through the Python API prints no warning floods: maeconv
calls no deprecated MindSpore function (each says so on stderr at every call), with MindSpore's
log level and Python's warning filters left at their defaults (the CLI quiets MindSpore's log; a
notebook does not)."""
import os
import subprocess
import sys

import pytest

from maeconv.convert.pipeline import convert

from helpers import save_official

SCRIPT = """
import numpy as np
import maeconv

image = (np.arange(48 * 48 * 3) % 251).astype(np.uint8).reshape(48, 48, 3)
maeconv.AutoModel.from_pretrained("mae_vit_tiny_patch8", framework="mindspore")
maeconv.from_pretrained("tiny.ckpt", framework="mindspore")
maeconv.from_pretrained("tiny.pth", framework="mindspore")
maeconv.pipeline("masked_image_modeling", model="tiny.ckpt", framework="mindspore")(image, seed=0)
maeconv.pipeline("feature_extraction", model="tiny.pth", runtime="mindspore")(image)
print("done")
"""


@pytest.mark.slow
def test_loading_mindspore_models_through_the_api_prints_no_warnings(tmp_path, tiny_state):
    save_official(tmp_path / "tiny.pth", tiny_state)
    convert(tmp_path / "tiny.pth", tmp_path / "tiny.ckpt")
    env = {key: value for key, value in os.environ.items() if key != "GLOG_v"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "done"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert not [line for line in lines if "deprecated" in line.lower()], lines[:5]
    assert len(lines) <= 3, lines[:10]
