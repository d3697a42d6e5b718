"""CPU placement: ``rigd start --loop-cpu N`` runs the hot loop (and its ZeroMQ I/O thread) on CPU N
and keeps every other rigd thread, and the simulated rig it starts, off it (read back from /proc)."""

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.rigd_process import Rigd, rigd


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _threads(pid: int) -> dict[int, tuple[str, set[int]]]:
    """tid → (thread name, allowed CPUs) for every thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines() if ":\t" in line)
        out[int(task.name)] = (status["Name"].strip(), _cpus(status["Cpus_allowed_list"]))
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def _status_after_frames(r: Rigd, n: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """rigd's status once it has processed ``n`` frames (or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    st = r.status()
    while st["frames"] < n and time.monotonic() < deadline:
        time.sleep(0.5)
        st = r.status()
    return st


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="placement needs two CPUs this process may use")
def test_loop_cpu_pins_the_hot_loop_and_keeps_everything_else_off_it(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    with rigd(tmp_path, "--rig", "sim", "--loop-cpu", str(cpu), name="pin") as r:
        r.wait_ready()
        st = _status_after_frames(r, 200)  # the sim is up and frames flow
        assert st["loop_cpu"] == cpu and st["frames"] >= 200, st
        threads = _threads(r.proc.pid)
        on_cpu = {tid: name for tid, (name, cpus) in threads.items() if cpus == {cpu}}
        # the loop thread and its ZeroMQ context's threads (one I/O thread, the idle reaper), nothing else
        assert st["loop_tid"] in on_cpu, (st["loop_tid"], threads)
        zmq_names = sorted(n for tid, n in on_cpu.items() if tid != st["loop_tid"])
        assert len(zmq_names) == 2 and zmq_names[0].startswith("ZMQbg/IO/") and zmq_names[1] == "ZMQbg/Reaper", threads
        others = {tid: v for tid, v in threads.items() if tid not in on_cpu}
        assert others and all(cpu not in cpus for _, cpus in others.values()), threads
        sims = _children(r.proc.pid)
        assert sims, "the simulated rig runs as a child process"
        for child in sims:
            assert all(cpu not in cpus for _, cpus in _threads(child).values()), _threads(child)
        assert r.cli("stop", "--name", "pin").returncode == 0


def _cpu_s(pid: int, tid: int) -> float:
    """CPU time (s) thread ``tid`` of ``pid`` has used."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="placement needs two CPUs this process may use")
def test_poll_ahead_picks_up_frames_without_sleeping_through_the_whole_period(tmp_path: Path) -> None:
    """``--poll-ahead-us``: most 1-ms frames of a steady rig arrive while the loop polls for them,
    and between windows it still sleeps (its thread uses well under a whole CPU)."""
    cpu = max(os.sched_getaffinity(0))
    with rigd(tmp_path, "--rig", "sim", "--loop-cpu", str(cpu), "--poll-ahead-us", "300", name="ahead") as r:
        r.wait_ready()
        st = _status_after_frames(r, 1000)
        assert st["poll_ahead_us"] == 300 and st["frames"] >= 1000, st
        pid, tid = r.proc.pid, st["loop_tid"]
        f0, a0, c0, t0 = st["frames"], st["counters"]["frames_polled_ahead"], _cpu_s(pid, tid), time.monotonic()
        time.sleep(3.0)
        st = r.status()
        frames, ahead = st["frames"] - f0, st["counters"]["frames_polled_ahead"] - a0
        busy = (_cpu_s(pid, tid) - c0) / (time.monotonic() - t0)
        assert frames >= 2000, st  # 1-ms bins kept flowing
        assert ahead > 0.25 * frames, (ahead, frames)  # the prediction catches most frames (~95 % here)
        assert busy < 0.9, busy  # a window around each frame, not a spin through the period
        assert r.cli("stop", "--name", "ahead").returncode == 0
    with rigd(tmp_path, "--rig", "sim", name="asleep") as r:  # off by default: every frame wakes the loop
        r.wait_ready()
        st = _status_after_frames(r, 1000)
        assert st["frames"] >= 1000 and st["counters"]["frames_polled_ahead"] == 0, st
        assert r.cli("stop", "--name", "asleep").returncode == 0
