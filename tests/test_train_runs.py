"""End-to-end runs of runtimes/ascend/train.py on the tiny config: learning, fine-tuning, eval,
pictures, checkpoint conversion, resume after kill -9, and data-parallel training under msrun."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every test here trains in a subprocess

from maeconv.parity.compare import REL, Tolerance, compare
from netns import free_port_pair

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "runtimes" / "ascend" / "train.py"
CONFIGS = REPO / "runtimes" / "ascend" / "configs"
TINY_CONFIG = CONFIGS / "mae_vit_tiny_patch8_synthetic.yaml"
FINETUNE_CONFIG = CONFIGS / "vit_tiny_patch8_synthetic_finetune.yaml"
BIN = Path(sys.executable).parent


def env():
    # msrun starts `python` from PATH: the one of this environment.
    return {**os.environ, "GLOG_v": "3", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def train(cwd, config, *overrides, check=True, timeout=300):
    result = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), *map(str, overrides)],
                            cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def log_records(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines() if line.strip()]


def losses(output_dir):
    return {r["step"]: r["loss"] for r in log_records(output_dir) if "loss" in r}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The tiny config run as a user would on a fresh checkout, in an empty working directory."""
    cwd = tmp_path_factory.mktemp("pretrain")
    result = train(cwd, TINY_CONFIG, "--log.log_steps", 1)
    return cwd, result


def test_tiny_pretraining_makes_its_data_and_learns(pretrained):
    cwd, result = pretrained
    assert "making a synthetic ImageNet-layout dataset" in result.stdout
    assert (cwd / "data" / "synthetic_imagenet" / "train").is_dir()
    out = cwd / "output" / "mae_vit_tiny_patch8_synthetic"
    summary = json.loads((out / "summary.json").read_text())
    curve = losses(out)
    assert len(curve) == summary["steps"] == 320
    first, last = curve[1], np.mean([curve[s] for s in range(311, 321)])
    print(f"tiny pretraining loss: step 1 {first:.4f} -> last 10 steps {last:.4f} ({last / first:.1%})")
    assert last <= 0.5 * first
    assert "samples/s" in result.stdout and "ETA" in result.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000240.ckpt", "step_00000280.ckpt", "step_00000320.ckpt"]  # keep: 3
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_checkpoint_converts_and_loads_strictly_into_torch(pretrained, tmp_path):
    import torch

    from maeconv.convert.formats import read_checkpoint
    from maeconv.convert.twins import create_model
    from maeconv.models import PRETRAIN, get_config

    cwd, _ = pretrained
    ckpt = cwd / "output" / "mae_vit_tiny_patch8_synthetic" / "checkpoints" / "step_00000320.ckpt"
    names = read_checkpoint(ckpt).tensors
    assert any(n.startswith("adam_m.") for n in names) and "train.step" in names
    out = tmp_path / "tiny.pth"
    done = subprocess.run([str(BIN / "maeconv"), "ms2torch", str(ckpt), str(out)], env=env(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stderr
    state = torch.load(out, weights_only=True)["model"]
    model = create_model(get_config("mae_vit_tiny_patch8"), PRETRAIN, "torch")
    model.load_state_dict(state, strict=True)  # the facebook layout, every key accounted for
    assert np.array_equal(state["blocks.0.norm1.weight"].numpy(), names["blocks.0.norm1.gamma"].load())


def test_predict_writes_reconstruction_pictures(pretrained):
    from PIL import Image

    cwd, _ = pretrained
    result = train(cwd, TINY_CONFIG, "--run_mode", "predict", "--predict.images", 3)
    pictures = sorted((cwd / "output" / "mae_vit_tiny_patch8_synthetic" / "predict").glob("*.png"))
    assert len(pictures) == 3, result.stdout
    assert Image.open(pictures[0]).size == (4 * 32, 32)  # original | masked | reconstruction | pasted


def test_finetune_learns_the_classes_and_eval_reports_them(pretrained):
    cwd, _ = pretrained
    result = train(cwd, FINETUNE_CONFIG)
    out = cwd / "output" / "vit_tiny_patch8_synthetic_finetune"
    top1 = json.loads((out / "summary.json").read_text())["eval"]["top1"]
    print(f"fine-tuned top-1 on the 4-class synthetic val split: {top1:.2f}% (chance 25%)")
    assert top1 >= 75.0, result.stdout
    # eval of the fine-tuned checkpoint on a val folder with one corrupt image in it
    data = cwd / "data_with_corrupt"
    shutil.copytree(cwd / "data" / "synthetic_imagenet", data)
    (data / "val" / "class_000" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = train(cwd, FINETUNE_CONFIG, "--run_mode", "eval", "--data.path", data,
                   "--eval.checkpoint", out / "checkpoints")
    assert "top-1 " in result.stdout and "1 corrupt skipped" in result.stdout, result.stdout + result.stderr
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["images"] == 64 and evaluated["corrupt_images_skipped"] == 1
    assert evaluated["top1"] == pytest.approx(top1)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def logged_steps(output_dir):
    try:
        return max(losses(output_dir), default=0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_resume_after_kill_9_repeats_the_uninterrupted_losses(pretrained, tmp_path):
    cwd, _ = pretrained
    reference = losses(cwd / "output" / "mae_vit_tiny_patch8_synthetic")
    out = tmp_path / "run"
    args = [sys.executable, str(SCRIPT), "--config", str(TINY_CONFIG), "--output_dir", str(out), "--data.path",
            str(cwd / "data" / "synthetic_imagenet"), "--log.log_steps", "1", "--checkpoint.save_steps", "20",
            "--train.max_steps", "72"]
    process = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: logged_steps(out) >= 47, 120, "step 47")
    finally:
        process.kill()  # SIGKILL: no chance to clean up
        process.wait()
    assert max(losses(out)) < 72
    resumed = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 40" in resumed.stdout
    curve = losses(out)
    assert sorted(curve) == list(range(1, 73))
    steps = range(41, 73)
    assert [curve[s] for s in steps] == [reference[s] for s in steps]


def free_port():
    return free_port_pair()  # msrun's port, and the one below it for the trainer's rendezvous


def msrun(log_dir, *script_args):
    return [str(BIN / "msrun"), "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
            f"--log_dir={log_dir}", "--join=True", str(SCRIPT), *map(str, script_args)]


def test_two_ranks_equal_one_process_with_twice_the_batch(pretrained, tmp_path):
    from maeconv.convert.formats import read_checkpoint

    cwd, _ = pretrained
    common = ["--config", TINY_CONFIG, "--data.path", cwd / "data" / "synthetic_imagenet", "--data.augment", "none",
              "--train.max_steps", 3, "--train.lr", 2e-3, "--train.warmup_epochs", 0, "--log.log_steps", 1]
    done = subprocess.run(msrun(tmp_path / "msrun_log", *common, "--output_dir", tmp_path / "two",
                                "--train.batch_size", 8), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    train(cwd, TINY_CONFIG, *common[2:], "--output_dir", tmp_path / "one", "--train.batch_size", 16)
    two = {k: r.load() for k, r in read_checkpoint(tmp_path / "two" / "checkpoints" / "step_00000003.ckpt").tensors.items()}
    one = {k: r.load() for k, r in read_checkpoint(tmp_path / "one" / "checkpoints" / "step_00000003.ckpt").tensors.items()}
    model = [k for k in one if not k.startswith(("adam_", "train."))]
    # the key bias gets a zero gradient, its AdamW update is rounding noise (see test_training.py)
    strip = {k: (np.delete(one[k], np.s_[len(one[k]) // 3: 2 * len(one[k]) // 3]) if k.endswith("qkv.bias")
                 else one[k]) for k in model}
    other = {k: (np.delete(two[k], np.s_[len(two[k]) // 3: 2 * len(two[k]) // 3]) if k.endswith("qkv.bias")
                 else two[k]) for k in model}
    rows = compare("2 ranks x 8 vs 1 x 16", other, strip, dict.fromkeys(model, Tolerance(REL, 1e-5)))
    assert all(r.passed for r in rows), [(r.output, r.max_rel) for r in rows if not r.passed]
    print(f"2 ranks vs 1 process after 3 steps: max rel weight error {max(r.max_rel for r in rows):.2e}")
    # the loss each rank logs is the mean over ranks: that of the single process
    assert compare("loss", {"l": np.array(list(losses(tmp_path / "two").values()))},
                   {"l": np.array(list(losses(tmp_path / "one").values()))}, {"l": Tolerance(REL, 1e-5)})[0].passed


def worker_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "MS_ROLE=MS_WORKER" in environ:
            pids.append(int(entry.name))
    return pids


def test_a_dying_worker_fails_the_whole_run(pretrained, tmp_path):
    cwd, _ = pretrained
    out = tmp_path / "dying"
    command = msrun(tmp_path / "msrun_log", "--config", TINY_CONFIG, "--data.path",
                    cwd / "data" / "synthetic_imagenet", "--output_dir", out, "--log.log_steps", 1,
                    "--train.epochs", 10000)
    process = subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        wait_for(lambda: logged_steps(out) >= 3, 180, "training to start")
        victims = worker_pids(str(out))
        assert len(victims) == 2
        os.kill(victims[-1], signal.SIGKILL)
        start = time.monotonic()
        output, _ = process.communicate(timeout=240)
        print(f"msrun exited {process.returncode} {time.monotonic() - start:.1f} s after a worker was killed")
        assert process.returncode != 0
        assert "exception" in output.lower() or "error" in output.lower()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_maeconv_train_is_the_same_entry_point(tmp_path):
    shown = subprocess.run([str(BIN / "maeconv"), "train", "--help"], env=env(), capture_output=True, text=True)
    assert shown.returncode == 0 and "--run_mode" in shown.stdout and "--train.epochs" in shown.stdout
    typo = subprocess.run([str(BIN / "maeconv"), "train", "--config", str(TINY_CONFIG), "--train.epoch", "2"],
                          env=env(), capture_output=True, text=True, cwd=tmp_path)
    assert typo.returncode == 1 and "unknown config key 'train.epoch'" in typo.stderr
    assert not (tmp_path / "output").exists() and not (tmp_path / "data").exists()
