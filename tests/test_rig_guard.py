"""The rig's side of safety: rig.client.LightGuard (watchdog, deadline, limits), RigClient's
identification and heartbeat feeding, and the simulated rig against a real rigd that is killed or
frozen while its light is on."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from rig import wire
from rig.client import LightGuard, RigClient, RigLightLimits
from rig.session import Session
from sim.config import MouseConfig
from sim.mouse import SimulatedMouse
from tests.rigd_process import REPO, Rigd, free_port, measured_calibration, rigd

MS = 1_000_000
S = 1_000_000_000


def _start(command_id: int = 1, *, left: int = 0b1111, right: int = 0b1111, power: float = 1.5,
           duration: float = 1.2, ramp: float = 0.1, freq: float = 40.0, deadline: int = 0,
           t_start: int = 0) -> wire.LightCommandFields:
    return wire.LightCommandFields(command_id, 0, 0, 0, deadline, t_start, 3, wire.LightAction.START,
                                   wire.Waveform.SINE, left, right, power, duration, ramp, freq)


def _stop(action: wire.LightAction, *, ramp: float = 0.0, deadline: int = 0) -> wire.LightCommandFields:
    return wire.LightCommandFields(99, 0, 0, 0, deadline, 0, 3, action, wire.Waveform.CONSTANT, 0, 0,
                                   0.0, 0.0, ramp, 0.0)


class Clock:
    """A settable rig clock (ns)."""

    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        return self.t


# -- the guard: watchdog ------------------------------------------------------------------------


def test_watchdog_turns_light_off_after_half_a_second_of_rigd_silence_and_only_then() -> None:
    clock = Clock()
    g = LightGuard(clock_ns=clock)
    g.note_rigd_heartbeat()  # at 0, on the guard's clock
    assert g.admit(_start(1)) == (wire.AckStatus.APPLIED, 0, "")
    assert g.light_on()
    clock.t = 400 * MS
    assert g.check() is None
    g.note_rigd_heartbeat()  # rigd beats at 400 ms: silence restarts
    clock.t = 900 * MS
    assert g.check() is None  # exactly 0.5 s of silence: still allowed
    clock.t = 900 * MS + 1
    off = g.check()
    assert off is not None and off.command_id == 1
    assert not g.light_on() and g.trips == 1 and g.last_trip_silence_ns == 500 * MS + 1
    assert g.check() is None  # off already: nothing more to switch off
    assert g.check(10 * S) is None  # rigd still silent but no light: nothing to do


def test_watchdog_is_configurable_and_trips_on_a_scheduled_start_and_when_rigd_never_beat() -> None:
    g = LightGuard(watchdog_s=0.2)
    g.note_rigd_heartbeat(0)
    assert g.admit(_start(1, t_start=1 * S), 100 * MS) == (wire.AckStatus.APPLIED, 1 * S, "")
    assert g.light_on(150 * MS)  # scheduled: counts as on (it will light unless stopped)
    assert g.check(200 * MS) is None
    assert g.check(200 * MS + 1) is not None and not g.light_on(1 * S + 1)  # the pending start cancelled
    silent = LightGuard()
    silent.admit(_start(2), 5 * S)
    assert silent.rigd_silence_ns(5 * S) is None
    assert silent.check(5 * S) is not None  # light but never a rigd heartbeat: off at once
    with pytest.raises(ValueError, match="watchdog_s"):
        LightGuard(watchdog_s=0.0)
    with pytest.raises(ValueError, match="watchdog_s"):
        LightGuard(watchdog_s=math.nan)


@settings(max_examples=200, deadline=None)
@given(beats=st.lists(st.integers(0, 3000), max_size=12), checks=st.lists(st.integers(0, 3000), min_size=1,
                                                                         max_size=12),
       duration_ms=st.integers(100, 1300))
def test_watchdog_property_trips_exactly_when_light_is_on_and_rigd_silent_over_the_limit(
        beats: list[int], checks: list[int], duration_ms: int) -> None:
    g = LightGuard()
    g.note_rigd_heartbeat(0)
    g.admit(_start(1, duration=duration_ms / 1000), 0)
    events = sorted([(t * MS, 0) for t in beats] + [(t * MS, 1) for t in checks])
    last_hb, on_until = 0, duration_ms * MS
    for t, what in events:
        if what == 0:
            g.note_rigd_heartbeat(t)
            last_hb = max(last_hb, t)
            continue
        expect = t < on_until and t - last_hb > 500 * MS
        assert (g.check(t) is not None) == expect, (t, last_hb, on_until)
        if expect:
            on_until = t


# -- the guard: deadline and limits -------------------------------------------------------------


def test_a_start_after_its_deadline_is_late_and_not_executed_stops_are_never_late() -> None:
    g = LightGuard()
    g.note_rigd_heartbeat(0)
    now = 10 * S
    late = g.admit(_start(1, deadline=now - 1), now)
    assert late.status == wire.AckStatus.LATE and late.t_light_change_ns == 0 and "deadline" in late.reason
    assert not g.light_on(now)
    # scheduled to begin after its deadline: LATE too (the deadline bounds when light may start)
    assert g.admit(_start(2, deadline=now + MS, t_start=now + 2 * MS), now).status == wire.AckStatus.LATE
    assert g.admit(_start(3, deadline=now), now) == (wire.AckStatus.APPLIED, now, "")  # on the deadline: ok
    # light off is always obeyed, whatever its deadline
    assert g.admit(_stop(wire.LightAction.ALL_OFF, deadline=1), now + 5 * MS) == \
        (wire.AckStatus.STOPPED, now + 5 * MS, "")
    assert not g.light_on(now + 5 * MS)


def test_ramp_down_shortens_a_running_light_cancels_a_scheduled_one_and_is_checked() -> None:
    g = LightGuard()
    g.admit(_start(1, duration=1.2), 0)
    assert g.admit(_stop(wire.LightAction.RAMP_DOWN, ramp=0.1, deadline=1), 200 * MS) == \
        (wire.AckStatus.STOPPED, 200 * MS, "")
    assert g.light_on(299 * MS) and not g.light_on(300 * MS)
    g.admit(_start(2, t_start=2 * S), 1 * S)
    assert g.admit(_stop(wire.LightAction.RAMP_DOWN, ramp=0.1), 1500 * MS).status == wire.AckStatus.STOPPED
    assert not g.light_on(1500 * MS) and not g.light_on(2 * S)  # not begun: cancelled
    for bad in (math.nan, math.inf, -0.1, 1.31):
        v = g.admit(_stop(wire.LightAction.RAMP_DOWN, ramp=bad), 3 * S)
        assert v.status == wire.AckStatus.INVALID and "ramp-down" in v.reason


@pytest.mark.parametrize(("fields", "word"), [
    ({"power": 0.0}, "power"), ({"power": 10.01}, "power"), ({"power": math.nan}, "non-finite"),
    ({"power": math.inf}, "non-finite"), ({"duration": 0.0}, "duration"), ({"duration": 1.31}, "duration"),
    ({"duration": math.nan}, "non-finite"), ({"ramp": 0.05}, "ramp-down"),
    ({"duration": 0.2, "ramp": 0.3}, "ramp-down"), ({"ramp": -math.inf}, "non-finite"),
    ({"left": 0b10000}, "spots_left"), ({"right": 0b100000}, "spots_right"),
    ({"left": 0, "right": 0}, "no spot"), ({"freq": -1.0}, "frequency"), ({"freq": 100.5}, "frequency"),
    ({"freq": math.nan}, "non-finite"),
])
def test_each_local_limit_makes_a_start_invalid_and_not_executed(fields: dict[str, Any], word: str) -> None:
    g = LightGuard()
    g.note_rigd_heartbeat(0)
    v = g.admit(_start(1, **fields), 0)
    assert v.status == wire.AckStatus.INVALID and v.t_light_change_ns == 0 and word in v.reason, v
    assert not g.light_on(0) and g.active is None


def test_limits_are_the_rigs_own_stricter_ones_and_are_checked_for_sense() -> None:
    lim = RigLightLimits(max_power_mw_per_spot=2.0, max_duration_s=0.8, n_spots_left=2, n_spots_right=0)
    g = LightGuard(lim)
    assert g.admit(_start(1, power=2.5, right=0), 0).status == wire.AckStatus.INVALID
    assert g.admit(_start(2, duration=1.0, right=0), 0).status == wire.AckStatus.INVALID
    assert g.admit(_start(3, left=0b100, right=0), 0).status == wire.AckStatus.INVALID  # spot 2 of 2
    assert g.admit(_start(4, right=0b1, left=0b11), 0).status == wire.AckStatus.INVALID  # no right spots
    assert g.admit(_start(5, power=2.0, duration=0.8, left=0b11, right=0), 0).status == wire.AckStatus.APPLIED
    for bad in ({"max_power_mw_per_spot": math.nan}, {"max_duration_s": -1.0},
                {"min_ramp_down_s": 2.0, "max_duration_s": 1.0}, {"n_spots_left": 9}, {"max_freq_hz": 0.0}):
        with pytest.raises(ValueError, match="RigLightLimits"):
            RigLightLimits(**bad)


_finite = st.floats(-1.0, 20.0)
_any_float = st.one_of(_finite, st.sampled_from([math.nan, math.inf, -math.inf]))


@settings(max_examples=300, deadline=None)
@given(power=_any_float, duration=_any_float, ramp=_any_float, freq=_any_float,
       left=st.integers(0, 255), right=st.integers(0, 255))
def test_property_a_start_is_applied_exactly_when_it_is_within_every_limit(
        power: float, duration: float, ramp: float, freq: float, left: int, right: int) -> None:
    cmd = _start(1, power=power, duration=duration, ramp=ramp, freq=freq, left=left, right=right)
    # what the rig would execute: the values as they travel (float32 on the wire)
    cmd = wire.unpack_light_command(cmd.pack())
    p, d, r, f = cmd.power_mw_per_spot, cmd.duration_s, cmd.ramp_down_s, cmd.freq_hz
    within = (all(math.isfinite(x) for x in (p, d, r, f)) and 0 < p <= 10.0 and 0 < d <= 1.3
              and 0.1 <= r <= d and 0 <= f <= 100.0 and left < 16 and right < 16 and (left or right))
    v = LightGuard().admit(cmd, 0)
    assert (v.status == wire.AckStatus.APPLIED) == bool(within), (cmd, v)
    assert v.status in (wire.AckStatus.APPLIED, wire.AckStatus.INVALID)


# -- the simulated mouse uses the guard; the client feeds it and identifies the rig -------------


def test_the_simulated_mouse_obeys_through_its_guard_with_its_configs_limits() -> None:
    m = SimulatedMouse(MouseConfig(max_power_mw=5.0, max_light_s=1.0, units_per_hemisphere=5), 1)
    assert m.guard.limits.max_power_mw_per_spot == 5.0 and m.guard.limits.max_duration_s == 1.0
    assert m.apply_light(_start(1, power=6.0), 0) == (wire.AckStatus.INVALID, 0)
    assert m.apply_light(_start(2, duration=1.2), 0) == (wire.AckStatus.INVALID, 0)
    assert m.apply_light(_start(3, duration=1.0), 0) == (wire.AckStatus.APPLIED, 0)
    assert m.light_on() and m.guard.light_on(0) and m.guard.active is not None
    m.note_rigd_heartbeat(0)
    assert m.watchdog(600 * MS) is not None and not m.light.is_on(600 * MS) and m.watchdog_trips == 1
    shared = LightGuard()
    assert SimulatedMouse(MouseConfig(units_per_hemisphere=5), 1, guard=shared).guard is shared


class FakeRigdSockets:
    """rigd's command PUB (and a loop-watchdog PUB) on free ports, and its ingest SUB."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.command = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.safety_pub = self.ctx.socket(zmq.PUB)
        self.safety = f"tcp://127.0.0.1:{self.safety_pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.ingest = f"tcp://127.0.0.1:{self.sub.bind_to_random_port('tcp://127.0.0.1')}"
        self.seq = 0

    def send(self, pub: zmq.Socket[Any], kind: wire.Kind, payload: bytes, rig_id: int = 0) -> None:
        h, p = wire.encode(kind, payload, rig_id=rig_id, stream_id=2, seq=self.seq, t_rig_ns=1, t_send_ns=1)
        self.seq += 1
        pub.send_multipart([h, bytes(p)])

    def close(self) -> None:
        for s in (self.pub, self.safety_pub, self.sub):
            s.close(0)
        self.ctx.term()


def _until(what: str, fn: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if fn():
            return
    raise AssertionError(f"timed out waiting for {what}")


def test_client_heartbeats_identify_the_instance_and_rigd_heartbeats_feed_the_guard() -> None:
    f = FakeRigdSockets()
    a = RigClient(1, f.ingest, f.command, {"rig": "lab", "n_units": 8, "host": "ignored?"})
    b = RigClient(1, f.ingest, f.command, {"rig": "lab", "n_units": 8})
    try:
        assert a.identity["boot_id"] != b.identity["boot_id"]
        assert all(0 <= c.identity["boot_id"] < 2**63 for c in (a, b))
        got: list[dict[str, Any]] = []

        def heard() -> bool:
            a.heartbeat(state="running")
            if f.sub.poll(50):
                h, p = f.sub.recv_multipart()
                got.append(wire.payload_json(wire.unpack_header(h), p))
            return bool(got)

        _until("the rig's heartbeat", heard)
        body = got[0]
        assert body["rig"] == "lab" and body["n_units"] == 8 and body["state"] == "running"
        assert body["boot_id"] == a.identity["boot_id"] and body["pid"] == os.getpid()
        assert isinstance(body["host"], str) and body["host"] != "ignored?"  # the instance's own host
        # rigd's heartbeat feeds the guard (on the guard's clock), and names the loop watchdog's endpoint
        assert a.guard.last_rigd_heartbeat_ns is None

        def fed() -> bool:
            f.send(f.pub, wire.Kind.HEARTBEAT, wire.json_bytes({"rigs": [1], "safety": f.safety}))
            return a.poll(50).heartbeats > 0

        _until("rigd's heartbeat at the rig", fed)
        assert a.guard.last_rigd_heartbeat_ns is not None
        assert a.safety_endpoints == [f.safety]
        # the loop watchdog's ALL_OFF reaches the rig through the same poll
        off = _stop(wire.LightAction.ALL_OFF).pack()

        def all_off() -> bool:
            f.send(f.safety_pub, wire.Kind.LIGHT_COMMAND, off, rig_id=1)
            return any(c.action == wire.LightAction.ALL_OFF for c in a.poll(50).commands)

        _until("ALL_OFF from the safety endpoint", all_off)
    finally:
        a.close()
        b.close()
        f.close()


# -- real processes: rigd killed or frozen while the simulated rig's light is on ----------------

PROTOCOL = """
[protocol]
name = "long bilateral early-delay light (rig guard test)"
kind = "block"
seed = 3

[session]
n_trials = 400
trial_period_s = 12.5
expects_delay_s = 1.7

[light]
power_mw_per_spot = 1.5
waveform = "sine"
freq_hz = 40.0
ramp_down_s = 0.1
spots_per_hemisphere = 4

[window]
aligned_to = "go_cue"
onset_s = -1.7
duration_s = 1.2

[randomisation]
block_size = 10
max_fraction_perturbed = 0.3
max_run_perturbed = 3
no_repeat_site = false
redraw_after_early_lick = true

[[conditions]]
name = "control"
fraction = 0.7

[[conditions]]
name = "bilateral_alm"
hemisphere = "bilateral"
fraction = 0.3
"""
#: the guard trips on the first loop pass after 0.5 s of silence; the rig's loop runs every 1 ms,
#: and a shared 2-core machine may hold the rig process back a little more than that
SLACK_S = 0.05


class RigLog:
    """The simulated rig's ``--log`` file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._pos = 0

    def read(self) -> list[dict[str, Any]]:
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                fh.seek(self._pos)
                while (line := fh.readline()).endswith("\n"):
                    self.records.append(json.loads(line))
                    self._pos = fh.tell()
        return self.records

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], what: str, proc: subprocess.Popen[str],
                 timeout: float, start: int = 0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for rec in self.read()[start:]:
                if pred(rec):
                    return rec
            if proc.poll() is not None and not any(pred(r) for r in self.read()[start:]):
                raise AssertionError(f"the rig exited ({proc.returncode}) before {what}: {self.records[-5:]}")
            time.sleep(0.01)  # polling interval, not a proof
        raise AssertionError(f"timed out after {timeout} s waiting for {what}: {self.records[-5:]}")


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid`` (recursively), from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@contextmanager
def _rigd_and_rig(tmp: Path) -> Iterator[tuple[Rigd, subprocess.Popen[str], RigLog]]:
    proto = tmp / "long_bilateral.toml"
    proto.write_text(PROTOCOL)
    ingest, command = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with rigd(tmp, "--rig", "external", "--ingest", ingest, "--command", command, "--no-ui",
              "--protocol", str(proto), "--calibration", str(measured_calibration(tmp)), name="guard") as r:
        r.wait_ready()
        log = RigLog(tmp / "rig.jsonl")
        rig = subprocess.Popen(
            [sys.executable, "-m", "sim.rig_process", "--ingest", ingest, "--command", command, "--rig-id", "1",
             "--seed", "11", "--units-per-hemisphere", "20", "--iti-s", "0.3", "0.5", "--duration", "600",
             "--rigd-lost-s", "3", "--log", str(log.path)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=open(tmp / "rig.stderr", "w"), text=True)  # noqa: SIM115
        try:
            yield r, rig, log
        finally:
            for pid in [*_descendants(r.proc.pid), r.proc.pid]:  # a stopped rigd cannot take SIGTERM
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if rig.poll() is None:
                rig.kill()
            rig.communicate(timeout=30)


def _light_on_with_time_left(log: RigLog, rig: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for a light the test can act on while ≥ 0.8 s of it remain (later lights if need be)."""
    log.wait_for(lambda e: e["event"] == "connected", "the handshake", rig, 60)
    seen = 0
    while True:
        on = log.wait_for(lambda e: e["event"] == "light_on", "light on", rig, 180, start=seen)
        seen = log.records.index(on) + 1
        if time.monotonic_ns() < on["t_off_ns"] - 800 * MS:
            return on


def _assert_rigs_watchdog_turned_it_off(log: RigLog, rig: subprocess.Popen[str], on: dict[str, Any],
                                        t_hit: int) -> dict[str, Any]:
    wd = log.wait_for(lambda e: e["event"] == "watchdog_off", "WATCHDOG_OFF", rig, 10)
    assert wd["command_id"] == on["command_id"]
    # measured on the rig's clock: the light went off 0.5 s after rigd's last heartbeat
    # its receipt: sent before rigd was hit (it may arrive a moment later)
    assert wd["last_rigd_heartbeat_ns"] <= t_hit + SLACK_S * S
    silent = (wd["t_off_ns"] - wd["last_rigd_heartbeat_ns"]) / S
    assert wd["rigd_silent_s"] == pytest.approx(silent, abs=1e-6)
    assert 0.5 < silent <= 0.5 + SLACK_S, wd
    assert wd["t_off_ns"] < on["t_off_ns"]  # the light was cut short, not ended by its duration
    dark = log.wait_for(lambda e: e["event"] == "light_off", "light off", rig, 5, start=log.records.index(wd))
    assert dark["t_off_ns"] == wd["t_off_ns"] and dark["command_id"] == on["command_id"]
    return wd


def _assert_rig_stopped_on_its_own(log: RigLog, rig: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = rig.communicate(timeout=30)  # the rig notices rigd is gone after --rigd-lost-s (3 s)
    assert rig.returncode == 4, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stop_reason"] == "rigd_lost" and "rigd lost" in summary["reason"]
    assert summary["acks"]["WATCHDOG_OFF"] == 1 and summary["watchdog_trips"] == 1
    recs = log.read()
    lost = next(e for e in recs if e["event"] == "rigd_lost")
    assert lost["rigd_silent_s"] > 3.0
    assert (recs[-1]["event"], recs[-1]["reason"]) == ("stopped", "rigd_lost")
    return lost


def test_rigd_killed_while_light_is_on_the_rigs_own_watchdog_turns_it_off_and_the_session_survives(
        tmp_path: Path) -> None:
    with _rigd_and_rig(tmp_path) as (r, rig, log):
        on = _light_on_with_time_left(log, rig)
        assert on["spots_left"] == on["spots_right"] == 0b1111 and on["duration_s"] == pytest.approx(1.2)
        # rigd's whole process tree dies (its loop watchdog too): only the rig's own guard is left
        helpers = _descendants(r.proc.pid)
        for pid in helpers:
            os.kill(pid, signal.SIGKILL)
        os.kill(r.proc.pid, signal.SIGKILL)
        t_kill = time.monotonic_ns()
        wd = _assert_rigs_watchdog_turned_it_off(log, rig, on, t_kill)
        lost = _assert_rig_stopped_on_its_own(log, rig)
        assert lost["last_rigd_heartbeat_ns"] <= t_kill + SLACK_S * S
        r.proc.wait(10)
    # the session rigd left on disk is readable, and lost at most 1 s of frames before the kill
    s = Session.open(r.session_dir())
    seq, t_rig, counts = s.counts()
    assert seq.size > 1000 and counts.shape[1] == 40 and s.bad_records == 0
    assert np.all(np.diff(seq) == 1)  # no gap inside what was recorded
    frames = [e for e in log.records if e["event"] == "frames"]
    at_kill = [e for e in frames if e["t_ns"] <= t_kill][-1]  # the last frame sent ≤ 100 ms before the kill
    after = next(e for e in frames if e["t_ns"] > t_kill)
    assert at_kill["seq"] - int(seq[-1]) <= 1000, (at_kill, int(seq[-1]))  # 1 ms bins: ≤ 1 s lost
    assert at_kill["t_rig_ns"] - int(t_rig[-1]) <= 1 * S
    assert int(seq[-1]) <= after["seq"]  # and nothing recorded that the rig had not sent
    assert s.rig_description().get("boot_id") is not None  # the identification reached rigd's record
    assert wd["t_off_ns"] > t_kill


def test_rigd_frozen_while_light_is_on_the_rigs_own_watchdog_turns_it_off(tmp_path: Path) -> None:
    with _rigd_and_rig(tmp_path) as (r, rig, log):
        on = _light_on_with_time_left(log, rig)
        # SIGSTOP: rigd (and its loop watchdog) hang without closing a socket, the hardest case to see
        for pid in _descendants(r.proc.pid):
            os.kill(pid, signal.SIGSTOP)
        os.kill(r.proc.pid, signal.SIGSTOP)
        t_stop = time.monotonic_ns()
        _assert_rigs_watchdog_turned_it_off(log, rig, on, t_stop)
        _assert_rig_stopped_on_its_own(log, rig)
        # the fixture SIGKILLs the frozen rigd


def test_rigd_alone_killed_while_light_is_on_light_is_off_within_half_a_second_by_either_line(
        tmp_path: Path) -> None:
    # only rigd's main process dies: its loop watchdog (rig/watchdog.py) may send ALL_OFF first
    # (the rig's client listens on the safety endpoint rigd announces); the rig's own guard is the
    # line behind it. Either way the light is off within 0.5 s of rigd's last heartbeat.
    with _rigd_and_rig(tmp_path) as (r, rig, log):
        on = _light_on_with_time_left(log, rig)
        os.kill(r.proc.pid, signal.SIGKILL)
        t_kill = time.monotonic_ns()
        dark = log.wait_for(lambda e: e["event"] == "light_off", "light off", rig, 10,
                            start=log.records.index(on))
        out, _ = rig.communicate(timeout=30)
        assert rig.returncode == 4 and json.loads(out.strip().splitlines()[-1])["stop_reason"] == "rigd_lost"
        lost = next(e for e in log.read() if e["event"] == "rigd_lost")
        assert lost["last_rigd_heartbeat_ns"] <= t_kill + SLACK_S * S
        assert dark["t_off_ns"] - lost["last_rigd_heartbeat_ns"] <= (0.5 + SLACK_S) * S, (dark, lost)
        assert dark["t_off_ns"] < on["t_off_ns"]
        by = {e["event"] for e in log.records[log.records.index(on):log.records.index(dark)]}
        assert by & {"watchdog_off", "light_stop"}, by  # cut short by a watchdog, not by its duration
