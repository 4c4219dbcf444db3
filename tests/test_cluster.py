"""Several ranks, in process: the collective timeouts taken from the config, the rendezvous
(barrier naming the missing ranks, rank 0's decisions), and the data path every machine must
agree on. The multi-machine runs themselves are in test_multinode.py."""
import subprocess
import sys
import textwrap
import time

import pytest

from maeconv.errors import MaeconvError
from maeconv.runtimes.ascend import runtime as runtime_lib
from maeconv.runtimes.ascend.config import ClusterConfig, ConfigError, load_config
from maeconv.runtimes.ascend.data import ensure_dataset
from maeconv.runtimes.ascend.rendezvous import Rendezvous, RendezvousError
from maeconv.runtimes.ascend.runtime import Runtime, collective_timeouts

import netns


def test_collective_timeouts_come_from_the_config_and_explicit_settings_win():
    cluster = load_config(None, ["--cluster.collective_timeout", "900", "--cluster.connect_timeout", "60"]).cluster
    assert collective_timeouts(cluster, {}) == {"MS_CPU_COMM_OP_TIMEOUT": "900", "HCCL_EXEC_TIMEOUT": "900",
                                                "HCCL_CONNECT_TIMEOUT": "120"}  # CANN's lowest
    user = {"MS_CPU_COMM_OP_TIMEOUT": "45", "HCCL_CONNECT_TIMEOUT": "300"}
    assert collective_timeouts(cluster, user) == {"HCCL_EXEC_TIMEOUT": "900"}
    # what `import mindspore` sets when the variable is unset is not the user's choice
    import mindspore  # noqa: F401

    assert "HCCL_CONNECT_TIMEOUT" in collective_timeouts(cluster, {"HCCL_CONNECT_TIMEOUT": "600"})
    forever = collective_timeouts(ClusterConfig(collective_timeout=0), {})
    assert forever["MS_CPU_COMM_OP_TIMEOUT"] == "-1" and forever["HCCL_EXEC_TIMEOUT"] == "0"
    with pytest.raises(ConfigError, match="cluster.barrier_timeout"):
        collective_timeouts(ClusterConfig(barrier_timeout=0), {})
    with pytest.raises(ConfigError, match="unknown config key 'cluster.timeout'"):
        load_config(None, ["--cluster.timeout", "3"])


RANK_1 = """
import json, sys
from maeconv.runtimes.ascend.rendezvous import Rendezvous
meet = Rendezvous(1, 2, "127.0.0.1", int(sys.argv[1]), 60)
meet.barrier("first")
print(json.dumps(meet.decide("path", lambda: "rank 1's")), flush=True)
meet.barrier("last")
"""


@pytest.mark.slow
def test_ranks_meet_take_rank_0s_decisions_and_a_missing_rank_is_named():
    # one store per process (MindSpore's TCPStore): rank 0 here, rank 1 in a child process
    port = netns.free_port_pair()
    rank1 = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RANK_1), str(port)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        meet = Rendezvous(0, 2, "127.0.0.1", port, 60)
        assert meet.barrier("first") >= 0
        assert meet.decide("path", lambda: {"path": "/data"}) == {"path": "/data"}
        meet.barrier("last")
        assert rank1.communicate(timeout=60)[0].strip().splitlines()[-1] == '{"path": "/data"}'
        meet.timeout = 1.5  # rank 1 has gone: it never reaches the next one
        start = time.monotonic()
        with pytest.raises(RendezvousError) as error:
            meet.barrier("first step")
        assert 1.5 <= time.monotonic() - start < 10
        assert str(error.value) == ("rank(s) 1 of 2 did not reach 'first step' within 2 s "
                                    "(cluster.barrier_timeout; rank 0 waited)")
    finally:
        rank1.kill()
        rank1.wait()


class Other(Runtime):
    """Rank 1 of 2, to whom rank 0 says what it decided."""

    def __init__(self, decided):
        super().__init__(rank=1, world=2)
        self.decided = decided

    def decide(self, name, compute):
        return self.decided

    def barrier(self, name):
        return 0.0


def test_a_data_path_that_means_another_folder_elsewhere_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MaeconvError) as error:
        ensure_dataset("data/x", None, Other("/elsewhere/data/x"))
    assert str(error.value) == (f"data.path 'data/x' resolves to /elsewhere/data/x on rank 0 but to "
                                f"{tmp_path}/data/x on rank 1: give an absolute path, the same on every machine")
    ensure_dataset("data/x", None, Other(str(tmp_path / "data" / "x")))  # the same folder: fine


def test_synthetic_data_is_made_once_per_machine(tmp_path, capsys):
    synthetic = {"classes": 2, "train_per_class": 2, "val_per_class": 1, "size": 8}
    ensure_dataset(str(tmp_path / "d"), synthetic, Runtime())  # rank 0 makes it
    assert (tmp_path / "d" / ".complete").exists() and "making a synthetic" in capsys.readouterr().out
    machine1 = Other(str(tmp_path / "m1"))
    ensure_dataset(str(tmp_path / "m1"), synthetic, machine1)  # machine 1's first worker: absent there
    assert (tmp_path / "m1" / "train").is_dir()
    second = Other(str(tmp_path / "m2"))
    second.local_rank = 1
    ensure_dataset(str(tmp_path / "m2"), synthetic, second)  # not the first worker of its machine: waits only
    assert not (tmp_path / "m2").exists()


def test_a_failure_flags_the_job_only_in_a_process_that_joined_one(monkeypatch):
    flagged = []
    monkeypatch.setattr(runtime_lib, "flag_failure", lambda: flagged.append(1))

    @runtime_lib.ends_job_on_error
    def run():
        raise MaeconvError("broken")

    with pytest.raises(MaeconvError):
        run()
    assert flagged == [1]
    monkeypatch.undo()
    runtime_lib.flag_failure()  # not joined: nothing to tell
