"""The light budget belongs to the animal: the ledger carries it across rigd restarts.

Unit level: the ledger's window, its clocks and its handling of unreadable lines, and an interlock
built from a ledger that refuses what the earlier light used up. Service level: rigd restarted on
the same subject mid-budget still holds the limit.
"""

import json
import time
from pathlib import Path

import pytest

from controllers.base import LightRequest
from hardware.calibration import SafetyLimits
from hardware.interlock import LightInterlock
from hardware.ledger import LightLedger, ledger_path
from hardware.light_source import RecordingLightSource
from tests.rigd_process import measured_calibration, rigd

NS = 1_000_000_000


def _request(trial: int, power: float = 10.0, duration: float = 1.2) -> LightRequest:
    return LightRequest(trial=trial, hemisphere="bilateral", power_mw_per_spot=power, duration_s=duration,
                        ramp_down_s=0.1, waveform="constant", freq_hz=0.0, spots_left=0b1111,
                        spots_right=0b1111, condition="bilateral")


def _interlock(limits: SafetyLimits, ledger: LightLedger, now: int) -> LightInterlock:
    il = LightInterlock(limits, RecordingLightSource(), lambda a: None, ledger=ledger,
                        history=ledger.load(limits.energy_window_s, now_ns=now))
    il.heartbeat(now)
    return il


def _approve(il: LightInterlock, trial: int, now: int) -> bool:
    il.heartbeat(now)
    il.on_trial_start(trial, now)
    return il.request(_request(trial), now_ns=now, cause_seq=0, cause_t_rig_ns=now, cause_t_send_ns=now,
                      deadline_rig_ns=now + NS).approved


def test_an_interlock_built_from_the_ledger_refuses_what_earlier_light_used_up(tmp_path: Path) -> None:
    limits = SafetyLimits(energy_budget_j=0.1)  # one trial of 4 spots × 10 mW × 1.2 s = 48 mJ per side
    path = ledger_path(tmp_path, "mouse-7", 1)
    now = time.monotonic_ns()
    led = LightLedger(path, "mouse-7", 1)
    il = _interlock(limits, led, now)
    assert _approve(il, 0, now) and _approve(il, 1, now + NS)
    led.close()
    # "restart": a new ledger object and interlock on the same file, a minute later
    led2 = LightLedger(path, "mouse-7", 1)
    il2 = _interlock(limits, led2, now + 60 * NS)
    st = il2.status()
    assert st["before_restart"]["perturbed"] == 2 and st["perturbed"] == 2 and st["trials"] == 2
    assert st["energy_used_j"]["left"] == pytest.approx(0.096, rel=1e-3)
    assert not _approve(il2, 0, now + 61 * NS)
    assert il2.refusals["energy_left"] == 1
    led2.close()
    # the same file read past the window: the budget is whole again
    led3 = LightLedger(path, "mouse-7", 1)
    il3 = _interlock(limits, led3, now + int(limits.energy_window_s * NS) + 2 * NS)
    assert il3.status()["before_restart"]["perturbed"] == 0
    assert _approve(il3, 0, now + int(limits.energy_window_s * NS) + 3 * NS)
    led3.close()
    # another animal on the same rig has its own ledger
    assert ledger_path(tmp_path, "mouse-8", 1) != path


def test_unreadable_ledger_lines_are_counted_and_the_good_ones_still_count(tmp_path: Path) -> None:
    path = ledger_path(tmp_path, "m", 2)
    led = LightLedger(path, "m", 2)
    now = time.monotonic_ns()
    led.record_light(now, 0, 1, (0.2, 0.0))
    led.close()
    with open(path, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"kind": "light", "t_wall_ns": time.time_ns(), "joules_left": float("nan")}) + "\n")
        f.write(json.dumps({"kind": "photons", "t_wall_ns": time.time_ns()}) + "\n")
    hist = LightLedger(path, "m", 2).load(600.0)
    assert hist.bad_lines == 3
    assert hist.perturbed == 1 and [e[1:] for e in hist.energy] == [(0, 0.2)]
    assert "3 unreadable lines" in hist.describe()


def test_the_subject_id_cannot_escape_the_ledger_directory(tmp_path: Path) -> None:
    p = ledger_path(tmp_path, "../../etc/passwd", 1)
    assert p.parent == tmp_path and "/" not in p.name


PROTOCOL = """
[protocol]
name = "ledger test: bilateral on a quarter of trials"
kind = "block"
seed = 3

[session]
trial_period_s = 120.0

[light]
power_mw_per_spot = 1.5
waveform = "constant"
spots_per_hemisphere = 4

[window]
aligned_to = "go_cue"
onset_s = -1.7
duration_s = 0.8

[randomisation]
block_size = 4
max_run_perturbed = 1

[[conditions]]
name = "control"
fraction = 0.75

[[conditions]]
name = "bilateral_alm"
hemisphere = "bilateral"
fraction = 0.25
"""


@pytest.mark.slow
def test_rigd_restarted_on_the_same_subject_keeps_the_energy_limit(tmp_path: Path) -> None:
    # budget for one trial: 4 spots × 1.5 mW × 0.8 s = 4.8 mJ per hemisphere; 7 mJ allowed
    cal = measured_calibration(tmp_path, energy_budget_j=0.007)
    proto = tmp_path / "p.toml"
    proto.write_text(PROTOCOL)
    ledgers = tmp_path / "ledgers"
    common = ["--rig", "sim", "--subject", "mouse-42", "--ledger-dir", str(ledgers), "--calibration", str(cal),
              "--protocol", str(proto), "--iti-s", "0.3", "--no-ui"]

    def run_until(name: str, done: str) -> dict[str, object]:
        with rigd(tmp_path, *common, name=name) as r:
            r.wait_ready()
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                il = r.status()["interlock"]
                if (il.get("approved", 0) >= 1) if done == "approved" else \
                        (il.get("refusals", {}).get("energy_left", 0) >= 1):
                    r.cli("stop", "--name", name)
                    assert r.wait(60) == 0, r.output()
                    return dict(il)
                time.sleep(0.2)
            raise AssertionError(f"{name}: no {done} light within 180 s:\n{r.output()}")

    first = run_until("first", "approved")
    assert first["before_restart"]["perturbed"] == 0  # type: ignore[index]
    second = run_until("second", "energy")
    assert second["before_restart"]["perturbed"] >= 1  # type: ignore[index]
    assert second["approved"] == 0  # the restart did not give the animal a fresh budget
    lines = (ledgers / "mouse-42-rig1.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["kind"] == "light" for x in lines) == first["approved"]
