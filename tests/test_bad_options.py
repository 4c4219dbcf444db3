"""Every command with a bad value for each of its options: exit status 1 (or click's 2 for a
usage error), exactly one `Error:` line, no traceback, and no file created or changed anywhere."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maeconv.cli import cli

from helpers import TINY, TINY_CLS, kind_state, save_official, seeded_state


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    files = {
        "full": save_official(root / "full.pth", seeded_state(TINY)),
        "encoder": save_official(root / "encoder.pth", kind_state(TINY, "encoder")),
        "classifier": save_official(root / "classifier.pth", seeded_state(TINY_CLS)),
        "image": root / "dog.png", "text": root / "notes.txt", "x": root / "x.npy", "noise": root / "n.npy",
        "bad_noise": root / "bad_noise.npy", "labels3": root / "labels3.txt", "file": root / "a_file",
    }
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(files["image"])
    files["text"].write_text("not an image\n")
    np.save(files["x"], np.zeros((1, 3, 32, 32), np.float32))
    np.save(files["noise"], np.arange(16, dtype=np.float32)[None] / 16)
    np.save(files["bad_noise"], np.zeros((1, 5), np.float32))
    files["labels3"].write_text("cat\ndog\nfish\n")
    files["file"].write_bytes(b"")
    return root, files


SETTINGS_BAD = [("--mask-ratio", "1.5"), ("--mask-ratio", "nan"), ("--mask-ratio", "-0.1"), ("--layer-norm-eps", "0"),
                ("--layer-norm-eps", "inf"), ("--hidden-act", "relu")]

# (command line with {placeholders}, status): {out} is a fresh folder per case, the rest are inputs.
CASES = [
    ("torch2ms {missing}", 1), ("torch2ms {full} {out}/.", 1), ("torch2ms {full} {out}/..", 1),
    ("torch2ms {full} {out}/no/dir.ckpt", 1), ("torch2ms {full} {full} --force", 1),
    ("torch2ms {full} {out}/o.ckpt --from nope", 2), ("ms2torch {text} {out}/o.pth", 1),
    ("torch2ms {full} {file}/o.ckpt", 1), ("torch2ms {full} {out}/" + "x" * 300, 1),
    ("convert {full} .", 1), ("convert {full} {out}/o.xyz", 1), ("convert {full} {out}/o.pth --to nope", 2),
    ("convert {full} {out}/o.pth --dtype fp8", 2), ("convert {full} {out}/o.pth --img-size 0", 2),
    ("convert {full} {out}/o.pth --img-size -5", 2), ("convert {full} {out}/o.pth --img-size 36", 1),
    ("convert {full} {out}/o.pth --img-size 100000", 2), ("convert {full} {out}/o.pth --img-size 100000 --dry-run", 2),
    ("convert {full} {out}/o.pth --img-size 36 --dry-run", 1), ("convert {full} {out}/o.pth --kind decoder", 2),
    ("convert {classifier} {out}/o.pth --kind encoder", 1), ("convert {full} {out}/o.pth --to timm", 1),
    ("convert {full} {out}/o.pth --kind encoder --fc-norm-from-norm", 1),
    ("convert {full} {out}/o.pth --from mmpretrain", 1), ("inspect {classifier} --from openmmlab", 1),
    ("convert {full} {out}/o.pth --fc-norm-from-norm", 1), ("convert {full} {out}/o.pth --keep-optimizer", 1),
    ("convert {full} {out}/o.pth --mask-ratio 0.99", 1),
    *((f"convert {{full}} {{out}}/o.pth {flag} {value}", 2) for flag, value in SETTINGS_BAD),
    ("inspect {missing}", 1), ("inspect {full} --from nope", 2), ("inspect {out}", 1), ("inspect {text}", 1),
    ("download mae_pretrain_vit_bsae", 1), ("download nothing_like_it", 1),
    ("forward {full} --images {missing} --out {out}/o.npz", 1),
    ("forward {full} --images {text} --out {out}/o.npz", 1),
    ("forward {full} --images {noise} --out {out}/o.npz", 1),
    ("forward {full} --images {x} --noise {bad_noise} --out {out}/o.npz", 1),
    ("forward {full} --images {x} --out {out}/o.npz --framework jax", 2),
    ("forward {full} --images {x} --out {out}/o.npz --mode eager", 2),
    ("forward {full} --images {x} --out {out}/no/o.npz", 1),
    ("forward {full} --images {x} --out {x}", 1),
    ("forward {encoder} --images {x} --out {out}/o.npz", 1),
    *((f"forward {{full}} --images {{x}} --out {{out}}/o.npz {flag} {value}", 2) for flag, value in SETTINGS_BAD),
    ("parity {full} --batch 0", 2), ("parity {full} --batch 100000", 2), ("parity {full} --seed -1", 2),
    ("parity {full} --seed 99999999999", 2), ("parity {full} --mask-ratio nan", 2), ("parity {full} --mode eager", 2),
    ("parity {missing}", 1),
    ("demo --preset nope", 2), ("demo --preset vit_base_patch16", 2), ("demo --workdir {file}", 2),
    ("demo --workdir /proc/maeconv-demo", 1),
    ("export onnx {full} {out}/o.onnx --task nope", 2), ("export onnx {full} {out}/o.onnx", 2),
    ("export onnx {full} {out}/o.mindir --task features", 1), ("export mindir {full} {out}/o.onnx --task features", 1),
    ("export onnx {full} {out}/o.onnx --task features --atol -1", 2),
    ("export onnx {full} {out}/o.onnx --task features --atol nan", 2),
    ("export onnx {full} {out}/o.onnx --task features --seed -1", 2),
    ("export onnx {full} {out}/o.onnx --task features --quantize int8 --min-cosine 2", 2),
    ("export onnx {full} {out}/o.onnx --task features --quantize int8 --min-top1 -0.5", 2),
    ("export onnx {full} {out}/o.onnx --task pretrain --quantize int8", 1),
    ("export mindir {full} {out}/o.mindir --task features --quantize int8", 2),
    ("export onnx {encoder} {out}/o.onnx --task classify", 1),
    ("export onnx {full} {full} --task features --force", 1),
    ("export onnx {full} {out}/no/o.onnx --task features", 1),
    *((f"export onnx {{full}} {{out}}/o.onnx --task pretrain {flag} {value}", 2) for flag, value in SETTINGS_BAD),
    ("predict {full} {missing}", 1), ("predict {full} {text} --out {out}", 1),
    ("predict {full} {image} --runtime jax", 2), ("predict {full} {image} --runtime onnx", 1),
    ("predict {full} {image} --out {file}", 1), ("predict {full} {image} --out {file}/sub", 1),
    ("predict {full} {image} --out {out} --noise {bad_noise}", 1), ("predict {full} {image} --seed -1", 2),
    ("predict {classifier} {image} --labels {labels3}", 1), ("predict {full} {image} --out {out} --labels {labels3}", 1),
    ("predict {encoder} {image} --out {out}", 1), ("predict {missing} {image} --out {out}", 1),
    *((f"predict {{full}} {{image}} --out {{out}} {flag} {value}", 2) for flag, value in SETTINGS_BAD),
    ("train --config {missing}", 1), ("train --config {text}", 1),
]


def snapshot(*folders):
    return {p: (p.read_bytes() if p.is_file() else None) for folder in folders for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("line, status", CASES, ids=[line for line, _ in CASES])
def test_bad_value_gets_one_error_line_and_writes_nothing(inputs, tmp_path, monkeypatch, line, status):
    root, files = inputs
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    values = {name: str(path) for name, path in files.items()}
    args = line.format(out=out, missing=root / "missing.pth", **values).split()
    before = snapshot(root, tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == status, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [text for text in result.stderr.splitlines() if text.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert snapshot(root, tmp_path) == before


def test_a_demo_whose_round_trip_differs_fails(tmp_path, monkeypatch):
    from maeconv.parity import demo
    from maeconv.parity.compare import Report, Row

    passing = Report("twins agree", [Row("torch vs reference", "loss", 0.0, 0.0, "rel 1e-06", True)])
    monkeypatch.setattr(demo, "check_pretrain", lambda *args, **kwargs: passing)
    monkeypatch.setattr(demo, "same_tensors", lambda *args: ["blocks.0.attn.qkv.weight"])
    result = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path), "--preset", TINY, "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert not report["passed"] and any(not row["passed"] for row in report["rows"])


def test_an_empty_report_is_a_failure():
    from maeconv.parity.compare import Report

    assert not Report("nothing compared").passed
