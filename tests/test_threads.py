"""CPU threads on a shared machine: torch's default of one thread per core is far slower than one thread when other
processes keep the cores busy (a classroom JupyterHub), and in a container it ignores the CPU quota. pick_device
sets the count once per process from $MINIGEN_THREADS, else from what the machine leaves free."""

import subprocess
import sys
import time

import pytest
import torch

from minigen import threads, train


@pytest.mark.parametrize(
    "text, cpus",
    [
        ("max 100000\n", None),  # cgroup v2, no limit
        ("200000 100000\n", 2),
        ("250000 100000", 2),  # 2.5 CPUs: rounded down
        ("50000 100000", 1),  # half a CPU: still one thread
        ("-1 100000", None),  # cgroup v1's "no limit"
        ("", None),  # no such file
        ("100000", None),
        ("lots 100000", None),
    ],
)
def test_a_cgroup_quota_reads_as_whole_cpus(text, cpus):
    assert threads.quota_cpus(text) == cpus


def test_the_tightest_quota_is_found_in_cgroup_v2_or_v1(monkeypatch):
    files = {"/proc/self/cgroup": "0::/hub/user7\n"}
    monkeypatch.setattr(threads, "_read", lambda path: files.get(path, ""))
    assert threads._cgroup_quota() is None  # none of the files: no quota
    files["/sys/fs/cgroup/cpu.max"] = "max 100000\n"
    files["/sys/fs/cgroup/hub/user7/cpu.max"] = "300000 100000\n"  # the process's own group, below the mount
    assert threads._cgroup_quota() == 3
    files["/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"] = "100000\n"
    files["/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us"] = "100000\n"
    assert threads._cgroup_quota() == 1


def test_other_processes_running_are_counted_from_proc_loadavg_without_this_one():
    assert threads.others_running("2.10 1.90 1.50 3/467 12345\n", own=1) == 2
    assert threads.others_running("2.10 1.90 1.50 3/467 12345\n", own=3) == 0  # our own threads are not others
    assert threads.others_running("2.10 1.90 1.50 1/467 12345\n", own=2) == 0
    assert threads.others_running("", own=1) is None
    assert threads.others_running("2.10 1.90 1.50 ?/467 12345", own=1) is None


def test_a_quiet_machine_keeps_torchs_threads_within_the_cpus_and_quota():
    assert threads.choose_threads(default=2, cpus=2) == 2
    assert threads.choose_threads(default=8, cpus=4) == 4  # affinity: 4 CPUs of 8
    assert threads.choose_threads(default=32, cpus=64, quota=2, machine=64) == 2  # a container on a big host
    assert threads.choose_threads(default=4, cpus=8, quota=None, others=0, machine=8) == 4


def test_a_busy_machine_gets_the_cores_left_free_and_at_least_one():
    assert threads.choose_threads(default=2, cpus=2, others=1) == 1  # one process busy on 2 cores
    assert threads.choose_threads(default=2, cpus=2, others=5) == 1
    assert threads.choose_threads(default=8, cpus=16, others=12, machine=16) == 4
    assert threads.choose_threads(default=2, cpus=64, quota=2, others=40, machine=64) == 2  # 24 cores still free
    with pytest.raises(ValueError, match="at least 1"):
        threads.choose_threads(default=0, cpus=2)
    with pytest.raises(ValueError, match="others at least 0"):
        threads.choose_threads(default=2, cpus=2, others=-1)


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", " "])
def test_a_bad_minigen_threads_is_refused_naming_the_variable(value):
    with pytest.raises(ValueError, match=r"\$MINIGEN_THREADS must be a positive integer"):
        threads.threads_from_env(value)


def test_minigen_threads_wins_then_omp_num_threads_then_the_machine(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # torch's default here
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    monkeypatch.setattr(threads, "_others_running", lambda: 1)  # one other process busy
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("MINIGEN_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.pick_threads() == 1
    monkeypatch.setattr(threads, "_others_running", lambda: 0)
    assert threads.pick_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "_others_running", lambda: 1)
    assert threads.pick_threads() == 2  # the user's own setting stands
    monkeypatch.setenv("MINIGEN_THREADS", "3")
    assert threads.pick_threads() == 3
    monkeypatch.setenv("MINIGEN_THREADS", "none")
    with pytest.raises(ValueError, match="MINIGEN_THREADS"):
        threads.pick_threads()


def test_pick_device_sets_the_threads_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(threads, "_threads_set", False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: calls[-1] if calls else 2)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setenv("MINIGEN_THREADS", "zero")
    with pytest.raises(ValueError, match="MINIGEN_THREADS"):  # refused before any work, and nothing set
        train.pick_device("cpu")
    assert calls == [] and threads._threads_set is False
    monkeypatch.setenv("MINIGEN_THREADS", "1")
    assert train.pick_device("cpu") == torch.device("cpu")
    assert train.device_name("cpu").endswith("cores, 1 thread)")  # the preset line says how it was timed
    monkeypatch.setenv("MINIGEN_THREADS", "2")
    train.pick_device()  # every notebook cell and library call after the first leaves the count alone
    train.pick_device("cpu")
    assert calls == [1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/loadavg is Linux's")
def test_a_process_burning_a_core_is_seen_as_busy():
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # started and spinning
        assert threads._others_running() >= 1
    finally:
        burner.kill()
        burner.wait()
