"""The README's multi-node commands on two simulated machines (network namespaces, see netns.py):
2 machines x 1 worker and 2 x 2, one machine 35 s late, weights against one machine and one
process, resume, and the faults (a worker killed, a machine that never arrives, another world size).
CPU and MindSpore's mccl collectives only."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import netns
from maeconv.parity.compare import REL, Tolerance, compare

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "runtimes" / "ascend" / "configs" / "mae_vit_tiny_patch8_synthetic.yaml"
BIN = Path(sys.executable).parent
OUTPUT = Path("output") / "mae_vit_tiny_patch8_synthetic"  # the config's output_dir, relative
DATA = Path("data") / "synthetic_imagenet"                  # the config's data.path, relative
# deterministic inputs (no augmentation), so ranks x batch and one process x global batch agree
RECIPE = ["--data.augment", "none", "--train.lr", "2e-3", "--train.warmup_epochs", "0", "--log.log_steps", "1",
          "--checkpoint.save_steps", "4", "--checkpoint.keep", "0", "--log.plot", "false"]
MAECONV = [str(BIN / "maeconv")]  # the README's .venv/bin/maeconv
GLOBAL_BATCH = 16
STEPS = 16
LATE_S = 35


def env():
    return {**os.environ, "GLOG_v": "3", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def late_env():
    """Machine 1's environment when it is to be late: the test hook on its PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(netns.LATE_NODE_HOOK), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "MAECONV_TEST_LATE_S": str(LATE_S)}


def readme_command(net, node, workers, port, *overrides):
    """The README's two-machine command, for machine `node`."""
    return [*MAECONV, "train", "--workers", str(workers), "--nodes", "2", "--node_rank", str(node),
            "--master_addr", net.master_addr, "--master_port", str(port), "--config", str(TINY_CONFIG),
            *map(str, overrides)]


def two_machines(net, place, workers, *overrides, node_env=None, timeout=300, on_poll=None, port=None):
    port = port or netns.free_port_pair()
    commands = {node: readme_command(net, node, workers, port, *overrides) for node in (0, 1)}
    start = time.monotonic()
    job = netns.run_job(net, place, commands, port, env(), node_env, timeout, on_poll)
    print(f"2 machines x {workers}: exit {job.rc} after {job.seconds} s (wall {time.monotonic() - start:.0f} s)")
    return job


def weights(path):
    from maeconv.convert.formats import read_checkpoint

    state = {k: r.load() for k, r in read_checkpoint(path).tensors.items()}
    # the key bias gets a zero gradient, its AdamW update is rounding noise (see test_training.py)
    return {k: (np.delete(v, np.s_[len(v) // 3: 2 * len(v) // 3]) if k.endswith("qkv.bias") else v)
            for k, v in state.items() if not k.startswith(("adam_", "train."))}


def assert_same_weights(what, path, reference):
    got, want = weights(path), weights(reference)
    rows = compare(what, got, want, dict.fromkeys(want, Tolerance(REL, 1e-5)))
    assert all(r.passed for r in rows), [(r.output, r.max_rel) for r in rows if not r.passed]
    print(f"{what}: max rel weight error {max(r.max_rel for r in rows):.2e}")


def losses(output_dir):
    lines = (Path(output_dir) / "log.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, filter(None, lines)) if "loss" in r}


def checkpoint(output_dir, step):
    return Path(output_dir) / "checkpoints" / f"step_{step:08d}.ckpt"


@pytest.fixture(scope="module")
def net():
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    try:
        with netns.network() as network:
            yield network
    except PermissionError as error:
        pytest.skip(f"cannot create network namespaces here: {error}")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One process at the global batch, and one machine with 2 workers, all steps."""
    root = tmp_path_factory.mktemp("references")
    common = ["--config", str(TINY_CONFIG), *RECIPE, "--train.max_steps", str(STEPS)]
    port = netns.free_port_pair()
    for command in ([*MAECONV, "train", *common, "--output_dir", "one", "--train.batch_size", str(GLOBAL_BATCH)],
                    [*MAECONV, "train", "--workers", "2", "--master_port", str(port), *common, "--output_dir", "two",
                     "--train.batch_size", str(GLOBAL_BATCH // 2)]):
        run = subprocess.run(command, cwd=root, env=env(), capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return root / "one", root / "two"


@pytest.fixture(scope="module")
def killed(net, tmp_path_factory):
    """2 machines x 1 worker; machine 1's worker killed once the step-4 checkpoint is written.
    Each machine makes its own synthetic data (the config's data.path is relative)."""
    place, port, kill = netns.Place.make(tmp_path_factory.mktemp("pair")), netns.free_port_pair(), {}

    def kill_after_step_4(job, start):
        if not kill and checkpoint(place.on(0) / OUTPUT, 4).exists():
            for pid in netns.job_pids(port, "MS_WORKER", rank=1):
                os.kill(pid, signal.SIGKILL)
                kill["at"] = time.monotonic() - start

    job = two_machines(net, place, 1, *RECIPE, "--train.batch_size", GLOBAL_BATCH // 2, "--train.max_steps", STEPS,
                       port=port, on_poll=kill_after_step_4)
    job.events.update(kill)
    return place, job


@pytest.fixture(scope="module")
def resumed(net, killed):
    """The same command again: rank 0 resumes; machine 1 has no checkpoint (its output_dir is its own)."""
    place, _ = killed
    return two_machines(net, place, 1, *RECIPE, "--train.batch_size", GLOBAL_BATCH // 2, "--train.max_steps", STEPS)


def test_killing_one_machines_worker_ends_every_machine(killed):
    place, job = killed
    assert "at" in job.events, f"the worker was not killed: {job.rc} {job.output[0][-2000:]}"
    assert job.rc.get(0, 0) != 0 and job.rc.get(1, 0) != 0, (job.rc, job.seconds)
    after = {node: round(seconds - job.events["at"], 1) for node, seconds in job.seconds.items()}
    print(f"machine 1's worker killed: machines exit {job.rc}, {after} s after the kill")
    assert max(after.values()) < 120


def test_two_machines_one_worker_each_train_as_one_machine_and_one_process(killed, references):
    place, job = killed
    # data made once per machine: rank 0 on machine 0, then the first worker of machine 1 there
    assert "making a synthetic ImageNet-layout dataset" in job.logs[0]
    assert "absent on this machine: making the synthetic dataset there too" in job.logs[1]
    assert (place.on(1) / DATA / ".complete").exists()
    one, two = references
    assert_same_weights("2 machines x 1 vs 1 machine x 2", checkpoint(place.on(0) / OUTPUT, 4), checkpoint(two, 4))
    assert_same_weights("2 machines x 1 vs 1 process", checkpoint(place.on(0) / OUTPUT, 4), checkpoint(one, 4))


def test_a_resumed_two_machine_run_continues_exactly(killed, resumed, references):
    place, _ = killed
    assert resumed.rc == {0: 0, 1: 0}, resumed.logs[0][-3000:] + resumed.logs[1][-3000:]
    assert re.search(r"resumed from output/mae_vit_tiny_patch8_synthetic/checkpoints/step_\d+.ckpt at step [1-9]",
                     resumed.logs[0]), resumed.logs[0][-3000:]
    # rank 0 alone writes outputs
    assert (place.on(0) / OUTPUT / "summary.json").exists() and not (place.on(1) / "output").exists()
    one, two = references
    assert losses(place.on(0) / OUTPUT) == losses(two)
    assert_same_weights("resumed 2 x 1 vs 1 machine x 2", checkpoint(place.on(0) / OUTPUT, STEPS),
                        checkpoint(two, STEPS))
    assert_same_weights("resumed 2 x 1 vs 1 process", checkpoint(place.on(0) / OUTPUT, STEPS),
                        checkpoint(one, STEPS))


def test_resuming_on_another_number_of_ranks_is_refused(killed, resumed, tmp_path):
    place, _ = killed
    shutil.copytree(place.on(0) / OUTPUT, tmp_path / "run")
    run = subprocess.run([*MAECONV, "train", "--config", str(TINY_CONFIG), *RECIPE, "--output_dir",
                          tmp_path / "run", "--data.path", place.on(0) / DATA, "--train.max_steps", str(2 * STEPS)],
                         env=env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        f"Error: {tmp_path / 'run'}/checkpoints/step_{STEPS:08d}.ckpt: written by 2 ranks, resuming on 1 would "
        "change the data order")


def test_a_machine_35_s_late_does_not_fail_two_machines_x_2(net, tmp_path, references):
    """Machine 1's workers sleep 35 s after init (data staging, say); the collectives' own timeout
    is mccl's default 30 s here, so only the rendezvous keeps the job alive."""
    place = netns.Place.make(tmp_path)
    job = two_machines(net, place, 2, *RECIPE, "--train.batch_size", GLOBAL_BATCH // 4, "--train.max_steps", 4,
                       "--cluster.collective_timeout", 30, node_env={1: late_env()})
    assert job.rc == {0: 0, 1: 0}, job.logs[0][-3000:] + job.logs[1][-3000:]
    assert f"{LATE_S} s late after init" in job.logs[1]
    waited = [float(w) for w in re.findall(r"rank 0: .*waited ([\d.]+) s for the other ranks", job.logs[0])]
    print(f"rank 0 waited {waited} s for machine 1")
    assert sum(waited) > LATE_S - 5, job.logs[0][-3000:]
    # machine 1's second worker waited for its first worker's data
    assert job.logs[1].count("absent on this machine") == 1
    one, _ = references
    assert_same_weights("2 machines x 2 (one late) vs 1 process", checkpoint(place.on(0) / OUTPUT, 4),
                        checkpoint(one, 4))


def test_a_machine_that_never_arrives_fails_every_machine_naming_its_ranks(net, tmp_path):
    place = netns.Place.make(tmp_path)
    never = {**late_env(), "MAECONV_TEST_LATE_S": "100000"}
    job = two_machines(net, place, 1, "--train.max_steps", 4, "--cluster.barrier_timeout", 10,
                       node_env={1: never}, timeout=240)
    assert job.rc.get(0, 0) != 0 and job.rc.get(1, 0) != 0, (job.rc, job.seconds)
    assert "Error: rank(s) 1 of 2 did not reach 'data made by rank 0' within 10 s" in job.logs[0]
    print(f"a machine never arriving (barrier_timeout 10 s): machines exit {job.rc} at {job.seconds} s")
