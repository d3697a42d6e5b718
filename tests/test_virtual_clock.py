"""The virtual clock: a simulated rig in lockstep with rigd (``rigd start --rig sim --clock rig``).

The rig waits for rigd's estimate of each frame (``RigClient.wait_estimate``) and obeys the light
commands that came before it before computing its next bin: a session runs as fast as rigd keeps
up, every frame is processed, and each command is obeyed at the end of the bin of the frame that
caused it. Also the pieces: ``wait_estimate`` against a real ZeroMQ PUB, and the guard's watchdog
on wall time while light spans stay on the rig's clock.
"""

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from rig import wire
from rig.client import EstimateTimeoutError, LightGuard, Received, RigClient
from rig.session import Session
from tests.rigd_process import free_port, rig_summary, rigd

NS = 1_000_000_000


# -- the guard: rigd's silence on wall time, light on the rig's clock ----------------------------


def _start(command_id: int = 1, duration_s: float = 1.0) -> wire.LightCommandFields:
    return wire.LightCommandFields(command_id, 0, 0, 0, 0, 0, 0, wire.LightAction.START, wire.Waveform.CONSTANT,
                                   0b1111, 0, 1.5, duration_s, 0.1, 0.0)


def test_the_guard_measures_rigds_silence_on_its_silence_clock_and_light_on_the_rig_clock() -> None:
    wall = [0]
    g = LightGuard(clock_ns=lambda: 0, silence_clock_ns=lambda: wall[0])
    g.note_rigd_heartbeat()  # at wall 0
    assert g.admit(_start(), 0).status == wire.AckStatus.APPLIED
    # 0.9 s of rig time (the light is still on) in 0.1 s of wall time: rigd is not silent
    wall[0] = NS // 10
    assert g.check(9 * NS // 10) is None and g.light_on(9 * NS // 10)
    assert g.rigd_silence_ns() == NS // 10
    # the light ends on the rig clock, whatever the wall clock does
    assert not g.light_on(NS)
    # 0.6 s of wall silence with light on: the watchdog trips, though the rig clock stood still
    assert g.admit(_start(2), NS).status == wire.AckStatus.APPLIED
    wall[0] = 7 * NS // 10
    off = g.check(NS)
    assert off is not None and off.command_id == 2 and g.trips == 1
    assert g.last_trip_silence_ns == 7 * NS // 10


# -- RigClient.wait_estimate against a real PUB --------------------------------------------------


class FakeRigd:
    """A PUB bound on a free loopback port, sending what rigd's command socket sends."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.pub.bind(self.endpoint)
        self.seq = 0

    def send(self, kind: wire.Kind, payload: Any, rig_id: int = 0) -> None:
        h, p = wire.encode(kind, payload, rig_id=rig_id, stream_id=4, seq=self.seq, t_rig_ns=0, t_send_ns=0)
        self.seq += 1
        self.pub.send_multipart([h, bytes(p)])

    def heartbeat(self) -> None:
        self.send(wire.Kind.HEARTBEAT, wire.json_bytes({"rigs": [1]}))

    def estimate(self, seq: int, rig_id: int = 1, value: float = 0.25) -> None:
        row = np.array([seq, 1000 + seq, 7, -1.5, value, 0.5, -0.125, 0.375], dtype=np.float64)
        self.send(wire.Kind.DECODER_OUTPUT, row, rig_id=rig_id)

    def command(self, command_id: int, rig_id: int = 1) -> None:
        self.send(wire.Kind.LIGHT_COMMAND, _start(command_id).pack(), rig_id=rig_id)

    def close(self) -> None:
        self.pub.close()
        self.ctx.term()


@pytest.fixture
def fake() -> Any:
    f = FakeRigd()
    clients: list[RigClient] = []

    def client() -> RigClient:
        c = RigClient(1, f"tcp://127.0.0.1:{free_port()}", f.endpoint, description={"n_units": 4})
        clients.append(c)
        deadline = time.monotonic() + 10
        while True:  # ready when a heartbeat gets through (PUB/SUB joins asynchronously)
            f.heartbeat()
            if c.poll(20).heartbeats:
                return c
            assert time.monotonic() < deadline, "the client never heard the PUB"

    yield f, client
    for c in clients:
        c.close()
    f.close()


def test_wait_estimate_returns_the_frames_estimate_with_the_commands_sent_before_it(fake: Any) -> None:
    f, client = fake
    c = client()
    f.command(11)
    f.command(12, rig_id=2)  # another rig's: not this rig's business
    f.estimate(5, rig_id=2)  # another rig's estimate of its frame 5
    f.estimate(4)  # this rig's previous frame
    f.estimate(5, value=0.75)
    got = c.wait_estimate(5, timeout_s=10)
    assert got.estimate is not None and got.estimate.seq == 5
    assert got.estimate == (5, 1005, 7, -1.5, 0.75, 0.5, -0.125, 0.375)
    assert [e.seq for e in got.estimates] == [4, 5]
    assert [cmd.command_id for cmd in got.commands] == [11]
    assert c.estimates_received == 2 and c.last_estimate == got.estimate
    # already in: a second wait for the same frame returns at once
    assert c.wait_estimate(5, timeout_s=0.01).estimate == got.estimate


def test_wait_estimate_calls_idle_while_it_waits_and_stops_when_idle_says_so(fake: Any) -> None:
    f, client = fake
    c = client()
    calls: list[int] = []

    def idle(rec: Received) -> bool:
        calls.append(rec.heartbeats)
        f.heartbeat()  # rigd alive, but no estimate
        return len(calls) < 4

    got = c.wait_estimate(9, timeout_s=30, idle=idle, idle_s=0.02)
    assert got.estimate is None and len(calls) == 4
    assert got.heartbeats >= 3  # the heartbeats sent from idle were collected (they feed the guard)


def test_wait_estimate_says_why_no_estimate_came(fake: Any) -> None:
    f, client = fake
    c = client()
    c.poll(50)  # drain the heartbeats of the join
    # rigd silent altogether
    with pytest.raises(EstimateTimeoutError, match="sent nothing at all"):
        c.wait_estimate(0, timeout_s=0.2)
    # rigd alive (heartbeats) but publishing no estimates: say how to start it
    with pytest.raises(EstimateTimeoutError, match=r"no decoder estimate.*--clock rig"):
        c.wait_estimate(0, timeout_s=0.3, idle=lambda rec: f.heartbeat() is None, idle_s=0.02)
    # estimates published, but not this frame's
    f.estimate(3)
    assert c.wait_estimate(3, timeout_s=10).estimate is not None
    with pytest.raises(EstimateTimeoutError, match=r"last for this rig: frame seq 3.*dropped"):
        c.wait_estimate(4, timeout_s=0.3, idle=lambda rec: f.heartbeat() is None, idle_s=0.02)


# -- a whole session in lockstep ------------------------------------------------------------------


def test_a_40_trial_lockstep_session_processes_every_frame_on_the_rigs_own_clock(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with rigd(tmp_path, "--rig", "sim", "--clock", "rig", "--trials", "40", "--no-ui", "--iti-s", "0.5",
              "--seed", "11") as r:
        info = r.wait_ready()
        assert r.wait(600) == 0, r.output()
    wall_s = time.monotonic() - t0  # the whole rigd process: start, 40 trials, shutdown
    session = Path(info["session_dir"])
    manifest = json.loads((session / "manifest.json").read_text())
    summary = rig_summary(session)
    s = Session.open(session)
    seq, t_rig, _ = s.counts()
    rig_s = (int(t_rig[-1]) - int(t_rig[0])) / NS
    print(f"40 trials: {rig_s:.1f} s of rig time in {wall_s:.1f} s of wall time ({rig_s / wall_s:.2f}x); "
          f"rig summary {summary}")

    assert manifest["config"]["clock"] == "rig" and manifest["config"]["publish_estimates"] is True
    assert manifest["trials_done"] == 40 and summary["trials"] == 40 and summary["stop_reason"] == "trials"
    assert summary["lockstep"] is True and summary["paced"] is False
    # every frame the rig sent was processed by rigd, and the rig waited for each one's estimate
    assert summary["bins"] == manifest["counters"]["frames"] == summary["estimates"] == seq.size
    assert len(s.decoder_outputs()) == seq.size
    assert np.array_equal(seq, np.arange(seq.size))
    assert manifest["counters"].get("ingest.missing_seq", 0) == 0
    # the rig clock advances one bin per frame, whatever the wall clock did (how much faster than real
    # time that runs is a benchmark figure, printed above and in docs/simulator.md, not asserted here)
    assert rig_s == pytest.approx((seq.size - 1) * summary["bin_s"], rel=1e-6)
    # light was delivered on the default protocol, each command obeyed at the end of the bin of its cause frame
    commands = {c.command_id: c for _, c in s.light_commands()}
    applied = [a for _, a in s.light_acks() if a.status == wire.AckStatus.APPLIED]
    assert applied, f"no light applied in 40 trials: acks {[a for _, a in s.light_acks()]}"
    assert summary["acks"]["APPLIED"] == len(applied)
    for a in applied:
        cmd = commands[a.command_id]
        assert a.t_received_rig_ns == cmd.cause_t_rig_ns, (a, cmd)
        assert a.t_light_change_rig_ns == max(cmd.cause_t_rig_ns, cmd.t_start_rig_ns)
    assert summary["watchdog_trips"] == 0
