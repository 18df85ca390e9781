"""CPU threads on a shared machine: how many threads torch should use, set once per process by
minigen.train.pick_device.

torch starts one thread per core and assumes the cores are its own. On a shared machine (a classroom JupyterHub, a
laptop running something else) each parallel step then waits for its slowest thread, which waits for a core: 100
samples of notebook 03's GPT took 11.5-17.3 s with 2 threads and 1.1-1.2 s with 1 under the same load. In a
container torch also ignores the CPU quota and starts a thread per core of the host. `$MINIGEN_THREADS` sets the
count outright; without it pick_threads caps torch's choice by what this process may use and others leave free.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

THREADS_ENV = "MINIGEN_THREADS"
_threads_set = False  # pick_device sets the thread count once per process: later calls leave it (and the user's)


def threads_from_env(value: str) -> int:
    """$MINIGEN_THREADS as a thread count: a positive integer, else ValueError naming the variable."""
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"${THREADS_ENV} must be a positive integer (e.g. 1 on a shared CPU), got {value!r}")
    return n


def quota_cpus(text: str) -> int | None:
    """The CPUs a cgroup CPU quota allows, from cgroup v2's cpu.max ("200000 100000": 2; "max 100000": no limit) or
    cgroup v1's "QUOTA PERIOD" (cpu.cfs_quota_us and cpu.cfs_period_us; a quota of -1: no limit). Rounded down,
    at least 1; None for no limit or text that is not a quota."""
    parts = text.split()
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        return None  # "max 100000", or nothing readable
    quota, period = int(parts[0]), int(parts[1])
    return max(1, quota // period) if quota > 0 and period > 0 else None


def others_running(loadavg: str, own: int) -> int | None:
    """Threads of other processes running or waiting for a CPU now: /proc/loadavg's runnable count ("0.52 0.58
    0.59 3/467 12345": 3) less this process's `own` running threads; None for text that is not /proc/loadavg's.
    Not the load average itself: that remembers this process's own work (a previous notebook, the unit tests) for
    minutes, and would call a quiet machine busy."""
    fields = loadavg.split()
    runnable = fields[3].split("/")[0] if len(fields) >= 4 else ""
    return max(0, int(runnable) - own) if runnable.isdigit() else None


def choose_threads(
    default: int, cpus: int, quota: int | None = None, others: int = 0, machine: int | None = None
) -> int:
    """torch's `default` thread count, capped by the `cpus` this process may run on, the cgroup `quota` and the
    cores of the `machine` (default: `cpus`) that `others` threads of other processes leave free; at least 1."""
    if min(default, cpus, quota or 1, machine or 1) < 1 or others < 0:
        counts = f"default={default}, cpus={cpus}, quota={quota}, others={others}, machine={machine}"
        raise ValueError(f"thread and CPU counts must be at least 1 and others at least 0, got {counts}")
    free = (machine or cpus) - others
    return max(1, min(default, cpus, quota or cpus, free))


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:  # not Linux, no such cgroup file, or not ours to read
        return ""


def _cgroup_quota() -> int | None:
    """The tightest CPU quota on this process: cgroup v2 (the mount's and this process's group) or v1."""
    own = [line[3:].strip("/") for line in _read("/proc/self/cgroup").splitlines() if line.startswith("0::")]
    texts = [_read(f"/sys/fs/cgroup/{group}/cpu.max".replace("//", "/")) for group in {"", *own}]
    for v1 in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
        texts.append(f"{_read(v1 + '/cpu.cfs_quota_us').strip()} {_read(v1 + '/cpu.cfs_period_us').strip()}")
    quotas = [q for q in map(quota_cpus, texts) if q is not None]
    return min(quotas) if quotas else None


def _own_running() -> int:
    """This process's threads that are running now (this one at least; torch's own may still be spinning)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    states = [_read(f"/proc/self/task/{tid}/stat").rpartition(")")[2][:2] for tid in tasks]  # "pid (name) R ..."
    return max(1, sum(state == " R" for state in states))


def _others_running(readings: int = 5) -> int | None:
    """others_running, the median of a few readings 20 ms apart (a process that starts and ends in between is no
    load); None where there is no /proc/loadavg (macOS, Windows)."""
    counts = []
    for i in range(readings):
        counts.append(others_running(_read("/proc/loadavg"), _own_running()))
        if i + 1 < readings:
            time.sleep(0.02)
    counts = sorted(c for c in counts if c is not None)
    return counts[len(counts) // 2] if counts else None


def pick_threads() -> int:
    """How many threads torch should use on the CPU here: $MINIGEN_THREADS if set (checked: a positive integer);
    torch's own choice if $OMP_NUM_THREADS is set; else torch's own choice capped by the CPUs this process may use
    (its affinity and cgroup quota) and by the cores other processes keep busy right now (Linux only)."""
    if os.environ.get(THREADS_ENV, "").strip():
        return threads_from_env(os.environ[THREADS_ENV])
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    others = _others_running() if os.path.exists("/proc/loadavg") else None
    return choose_threads(torch.get_num_threads(), cpus, _cgroup_quota(), others or 0, os.cpu_count())


def use_cpu_threads() -> int:
    """Set torch's CPU thread count to pick_threads(), the first time only; returns the count in use."""
    global _threads_set
    if not _threads_set:
        n = pick_threads()  # may raise for a bad $MINIGEN_THREADS: then nothing is set, and the next call says it again
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        _threads_set = True
    return torch.get_num_threads()
