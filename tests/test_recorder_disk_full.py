"""A disk that fills up under a running session costs records, never the closed loop.

The session directory lives on a small tmpfs (a real filesystem with a real ENOSPC); once the
session is running the test fills it. The hot loop keeps decoding frames and deciding light,
the recorder counts what it cannot write and raises one alarm (not one per record), rigd stops
cleanly, and the session reads back whole up to the moment the disk filled.
"""

import errno
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from rig.session import Session
from tests.rigd_process import mosquitto, rigd
from tests.test_control_plane_faults import Msg, Watcher, _status

pytestmark = pytest.mark.slow


@contextmanager
def small_filesystem(path: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (the test runs as root, as in the lab's CI container)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


def fill(directory: Path) -> int:
    """Write a file until the filesystem says ENOSPC; returns the bytes it took."""
    n = 0
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    block = b"\0" * (1 << 16)
    try:
        while True:
            try:
                n += os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                block = block[: len(block) // 2]
                if not block:
                    return n
    finally:
        os.close(fd)


def _is(name: str, **want: int) -> Callable[[Msg], bool]:
    base = _status(name)

    def pred(m: Msg) -> bool:
        return base(m) and all(m[1]["counters"].get(k, 0) >= v for k, v in want.items())
    return pred


def test_disk_full_under_the_recorder_is_counted_once_and_the_loop_goes_on(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "sessions") as sessions, mosquitto(tmp_path) as (url, _), \
            rigd(tmp_path, "--rig", "sim", "--mqtt", url, name="full") as r:
        r.wait_ready()
        w = Watcher(url, "rigd/full/#")
        try:
            i, (_, before, _, _) = w.wait_for(_status("full", after_frames=1000), 60)
            w.wait_for(_status("full"), 10, start=i + 1)  # a second later: before's records are on disk
            assert before["counters"]["recorder_write_errors"] == 0
            took = fill(sessions)
            assert took > 0
            # the recorder notices, and says so once
            j, (_, failing, _, _) = w.wait_for(_is("full", recorder_write_failing=1), 30)
            # the loop does not: frames decoded, trials run and light decided for 8 s more of the sim's clock
            _, (_, later, _, _) = w.wait_for(_status("full", after_frames=failing["frames"] + 8000), 60, start=j)
            il0, il1 = before["interlock"], later["interlock"]
            assert il1["trials"] > il0["trials"] and later["trials_done"] > before["trials_done"]
            c = later["counters"]
            assert c["recorder_write_failing"] == 1 and c["recorder_write_errors"] >= 10  # retried, ~10/s
            assert c["recorder_lag_records"] > failing["counters"]["recorder_lag_records"]  # held, counted
            assert c.get("errors.loop.internal", 0) == 0
            assert r.proc.poll() is None
            alarms = [o for t, o, _, _ in w.msgs if t == "rigd/full/alarms" and o and o.get("source") == "recorder"]
            assert len(alarms) == 1 and alarms[0]["severity"] == "error", alarms
            assert "No space left on device" in alarms[0]["message"]
            assert any(a.get("source") == "recorder" for a in later["last_alarms"])
            stop = r.cli("stop", "--name", "full")
            assert stop.returncode == 0, stop.stderr + stop.stdout
            assert r.wait(60) == 0, r.output()[-3000:]
        finally:
            w.close()
        # what was lost is counted: every frame processed but not on disk is in recorder_dropped
        out = r.output()
        frames_total = int(re.findall(r"frames (\d+)", out)[-1])
        dropped_total = int(re.findall(r"drops (\d+)", out)[-1])
        s = Session.open(r.session_dir())
        seq, _, counts = s.counts()
        assert s.torn_bytes == 0 and s.bad_records == 0 and s.verify() == 0  # whole records only
        assert seq.size >= before["frames"] and np.all(np.diff(seq) == 1)  # all of it, up to the fill
        assert seq.size < later["frames"]
        assert counts.shape[0] == seq.size and counts.shape[1] > 0
        assert dropped_total >= frames_total - seq.size > 0
        assert s.manifest.get("state") in ("running", "stopped")  # the last manifest that fitted, whole
