"""``rigd start`` refuses what would put an animal at risk before anything starts (issue 20, 8 and 9).

* A protocol that ``rigd protocol check`` rejects does not start: the same errors, a non-zero exit,
  no session directory, no runtime file. The check uses the calibration the session would run on.
* ``--rig external`` refuses the placeholder calibration (hardware/calibration_default.toml) unless
  the lab's measured ``--calibration FILE`` is given; ``--bench-test-calibration`` allows it with a
  banner and an alarm the running service raises. ``--rig sim`` runs on it silently.

Every case runs the real ``rigd`` console script as a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.rigd_process import REPO, RIGD, free_port, rigd

pytestmark = pytest.mark.slow
DEFAULT_CAL = REPO / "hardware" / "calibration_default.toml"
CHEN = REPO / "protocols" / "chen2021_early_delay.toml"


def run_start(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RIGD_RUNTIME_DIR": str(tmp / "runtime")}
    return subprocess.run([*RIGD, "start", "--name", "refused", "--session-dir", str(tmp / "sessions"),
                           "--no-live", "--no-ui", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=REPO)


def measured(tmp: Path, name: str = "measured.toml", max_power_mw: float | None = None) -> Path:
    """The shipped calibration as a lab would have measured it (optionally a weaker source)."""
    text = DEFAULT_CAL.read_text().replace('"placeholder - measure on your rig"',
                                           '"2024-05-02, power meter under the objective"')
    if max_power_mw is not None:
        text = text.replace("max_power_mw = 10.0", f"max_power_mw = {max_power_mw}")
    path = tmp / name
    path.write_text(text)
    return path


def errors(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.startswith("ERROR")]


def assert_nothing_started(tmp: Path) -> None:
    assert not (tmp / "sessions").exists()  # no session directory
    runtime = tmp / "runtime"
    assert not runtime.exists() or not list(runtime.glob("*.json"))  # no running instance announced


def test_start_refuses_a_protocol_that_fails_the_check(tmp_path: Path) -> None:
    bad = tmp_path / "too_strong.toml"
    bad.write_text(CHEN.read_text().replace("power_mw_per_spot = 1.5", "power_mw_per_spot = 12.0")
                   .replace("duration_s = 0.8 ", "duration_s = 1.5 "))
    check = subprocess.run([*RIGD, "protocol", "check", str(bad)], capture_output=True, text=True, timeout=120,
                           cwd=REPO)
    assert check.returncode == 1
    want = errors(check.stdout)
    assert len(want) >= 2 and any("power_mw_per_spot" in e for e in want) and any("duration_s" in e for e in want)
    for rig in ("sim", "external"):
        extra = ("--calibration", str(measured(tmp_path))) if rig == "external" else ()
        res = run_start(tmp_path, "--rig", rig, "--protocol", str(bad), "--trials", "2", *extra)
        assert res.returncode == 1, res.stdout + res.stderr
        assert errors(res.stderr) == want, res.stderr  # exactly what `rigd protocol check` says
        assert "REJECTED" in res.stderr and "nothing started" in res.stderr
        assert_nothing_started(tmp_path)


def test_the_protocol_is_checked_against_the_calibration_the_session_runs_on(tmp_path: Path) -> None:
    # Chen 2021 (1.5 mW per spot) passes on the default calibration but not on a rig whose spots
    # deliver at most 1 mW: the default protocol (no --protocol) is checked too
    weak = measured(tmp_path, "weak.toml", max_power_mw=1.0)
    check = subprocess.run([*RIGD, "protocol", "check", str(CHEN), "--calibration", str(weak)],
                           capture_output=True, text=True, timeout=120, cwd=REPO)
    assert check.returncode == 1 and errors(check.stdout)
    res = run_start(tmp_path, "--rig", "external", "--calibration", str(weak))
    assert res.returncode == 1, res.stdout + res.stderr
    assert errors(res.stderr) == errors(check.stdout)
    assert_nothing_started(tmp_path)


def test_external_rig_refuses_the_placeholder_calibration(tmp_path: Path) -> None:
    res = run_start(tmp_path, "--rig", "external")
    assert res.returncode == 1, res.stdout + res.stderr
    msg = " ".join(res.stderr.split())
    assert "placeholder" in msg and "--calibration FILE" in msg and "--bench-test-calibration" in msg
    assert_nothing_started(tmp_path)
    # the placeholder passed explicitly (or a copy of it) is still the placeholder
    copy = tmp_path / "copy.toml"
    copy.write_text(DEFAULT_CAL.read_text())
    for cal in (DEFAULT_CAL, copy):
        res = run_start(tmp_path, "--rig", "external", "--calibration", str(cal))
        assert res.returncode == 1 and "placeholder" in res.stderr, res.stdout + res.stderr
        assert_nothing_started(tmp_path)


def test_bench_test_flag_runs_on_the_placeholder_with_a_banner_and_an_alarm(tmp_path: Path) -> None:
    ingest, command = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with rigd(tmp_path, "--rig", "external", "--bench-test-calibration", "--no-ui", "--ingest", ingest,
              "--command", command, name="bench") as r:
        r.wait_ready()
        assert re.search(r"BENCH TEST: placeholder calibration .*Not for an animal", r.output()), r.output()
        deadline = time.monotonic() + 15  # the status is republished every second
        while True:
            st = r.status()
            alarms = [a for a in st["last_alarms"] if a.get("source") == "calibration"]
            if alarms or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert alarms and "placeholder" in alarms[0]["message"], st["last_alarms"]
        assert r.cli("stop", "--name", "bench").returncode == 0
        assert r.wait(30) == 0
    from rig.session import Session

    assert any(a.get("source") == "calibration" for a in Session.open(r.session_dir()).alarms())


def test_a_measured_calibration_starts_an_external_rig_and_sim_needs_none(tmp_path: Path) -> None:
    cal = measured(tmp_path)
    ingest, command = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with rigd(tmp_path, "--rig", "external", "--calibration", str(cal), "--no-ui", "--ingest", ingest,
              "--command", command, name="lab") as r:
        r.wait_ready()
        assert r.status()["state"] in ("starting", "running")
        assert r.cli("stop", "--name", "lab").returncode == 0
        assert r.wait(30) == 0
    assert "BENCH TEST" not in r.output() and "placeholder" not in r.output()
    with rigd(tmp_path, "--rig", "sim", "--no-ui", name="sim") as r:  # the simulated mouse has no tissue
        r.wait_ready()
        assert r.cli("stop", "--name", "sim").returncode == 0
        assert r.wait(30) == 0
    assert "BENCH TEST" not in r.output() and "placeholder" not in r.output()
