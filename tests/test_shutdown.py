"""Shutdown is bounded: whatever hangs, rigd exits within its limit with the session closed.

A hang is injected into the shutdown sequence (``RIGD_FAULT_SHUTDOWN_HANG_S``); rigd must still end
on its own after ``SHUTDOWN_LIMIT_S``, or at once on a second signal, leaving a manifest that says
``stopped`` and why, and a recording that reads back.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from rig.session import Session
from rig.supervisor import FORCED_EXIT_CODE, SHUTDOWN_LIMIT_S
from tests.rigd_process import Rigd, free_port, measured_calibration, rigd

pytestmark = pytest.mark.slow


def _start(tmp_path: Path, name: str) -> tuple[list[str], str]:
    ingest, command = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    return ["--rig", "external", "--ingest", ingest, "--command", command, "--no-ui",
            "--calibration", str(measured_calibration(tmp_path))], name


def _closed_session(r: Rigd) -> dict[str, object]:
    manifest = json.loads((r.session_dir() / "manifest.json").read_text())
    assert manifest["state"] == "stopped"
    assert Session.open(r.session_dir()).verify() == 0  # the recording reads back, every CRC good
    assert not (r.runtime / f"{r.name}.json").exists()  # `rigd status` no longer finds it
    return manifest


def _wait_stopping(r: Rigd) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if r.status().get("state") == "stopping":
            return
        time.sleep(0.1)
    raise AssertionError("rigd never said it was stopping")


def test_a_hung_shutdown_is_cut_off_at_its_limit_with_the_session_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIGD_FAULT_SHUTDOWN_HANG_S", "600")
    args, name = _start(tmp_path, "hang")
    with rigd(tmp_path, *args, name=name) as r:
        r.wait_ready()
        t0 = time.monotonic()
        os.kill(r.proc.pid, signal.SIGTERM)
        rc = r.wait(SHUTDOWN_LIMIT_S + 30)
        took = time.monotonic() - t0
        assert rc == FORCED_EXIT_CODE, r.output()
        assert SHUTDOWN_LIMIT_S - 1 <= took < SHUTDOWN_LIMIT_S + 30
        m = _closed_session(r)
        assert "signal SIGTERM" in str(m["stop_reason"]) and "forced exit" in str(m["stop_reason"])
        assert f"within {SHUTDOWN_LIMIT_S:.0f} s" in str(m["stop_reason"])


def test_a_second_signal_during_shutdown_exits_at_once_with_the_session_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIGD_FAULT_SHUTDOWN_HANG_S", "600")
    args, name = _start(tmp_path, "twice")
    with rigd(tmp_path, *args, name=name) as r:
        r.wait_ready()
        os.kill(r.proc.pid, signal.SIGTERM)
        _wait_stopping(r)
        t0 = time.monotonic()
        os.kill(r.proc.pid, signal.SIGINT)
        rc = r.wait(30)
        took = time.monotonic() - t0
        assert rc == FORCED_EXIT_CODE, r.output()
        assert took < SHUTDOWN_LIMIT_S - 2  # not the guard's timer: the second signal
        m = _closed_session(r)
        assert "SIGINT during shutdown" in str(m["stop_reason"])
