"""A rig killed and restarted mid-session: rigd follows the new process and loses none of its frames.

Real processes: ``rigd start --rig external`` and the simulated rig (``python -m sim.rig_process``)
as a lab rig would run it. The first rig process is SIGKILLed mid-trial; a second one (a new
``boot_id``, sequence numbers from 0 again) connects. The session goes on, the restart is counted
and alarmed, and every frame the second process sent is in the recording, in order.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rig.session import Session
from tests.rigd_process import REPO, free_port, measured_calibration, rigd

pytestmark = pytest.mark.slow


def _rig(ingest: str, command: str, log: Path, seed: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sim.rig_process", "--ingest", ingest, "--command", command,
                             "--seed", str(seed), "--log", str(log), "--iti-s", "0.3", "0.3"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _frames_sent(log: Path) -> int:
    """The last frame count the rig logged (it logs its last seq every 100 ms)."""
    if not log.exists():
        return -1
    frames = [json.loads(x) for x in log.read_text().splitlines() if '"frames"' in x]
    return int(frames[-1]["seq"]) if frames else -1


def _wait(pred, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_rig_killed_and_restarted_is_followed_and_nothing_after_the_restart_is_lost(tmp_path: Path) -> None:
    ingest, command = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with rigd(tmp_path, "--rig", "external", "--ingest", ingest, "--command", command, "--no-ui",
              "--calibration", str(measured_calibration(tmp_path)), name="restart") as r:
        r.wait_ready()
        first = _rig(ingest, command, tmp_path / "rig1.jsonl", 1)
        try:
            _wait(lambda: _frames_sent(tmp_path / "rig1.jsonl") > 2000, 60, "the first rig's frames")
            os.kill(first.pid, signal.SIGKILL)  # mid-trial, without a goodbye
            first.wait(10)
            second = _rig(ingest, command, tmp_path / "rig2.jsonl", 2)
            _wait(lambda: _frames_sent(tmp_path / "rig2.jsonl") > 3000, 60, "the second rig's frames")
            second.send_signal(signal.SIGTERM)
            out, _ = second.communicate(timeout=30)
            summary = json.loads(out.strip().splitlines()[-1])
        finally:
            for p in (first, locals().get("second")):
                if p is not None and p.poll() is None:
                    p.kill()
        sent = int(summary["bins"])
        _wait(lambda: r.status()["frames"] >= sent, 30, "rigd to process the second rig's frames")
        st = r.status()
        assert st["state"] == "running"  # the session went on
        assert st["counters"].get("rigs.restarts") == 1
        assert any("restarted" in a.get("message", "") for a in st["last_alarms"])
        assert st["counters"].get("errors.loop.internal", 0) == 0
        r.cli("stop", "--name", "restart")
        assert r.wait(60) == 0, r.output()
    seq, _t, _counts = Session.open(r.session_dir()).counts()
    restart = int(np.flatnonzero(seq == 0)[-1])  # the second process counts from 0 again
    after = seq[restart:]
    # every frame the second process sent, in order: nothing after the restart was lost
    assert after.size == sent and np.array_equal(after, np.arange(sent))
