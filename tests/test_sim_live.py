"""The simulated rig as a real subprocess against real zmq sockets (what rigd's ingest sees)."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from rig import wire

ROOT = Path(__file__).resolve().parents[1]
RIG_ID = 3


def _cmd(command_id: int, *, deadline_ns: int = 0, duration_s: float = 0.8, trial: int = 0,
         action: wire.LightAction = wire.LightAction.START) -> wire.LightCommandFields:
    return wire.LightCommandFields(command_id, 0, 0, time.monotonic_ns(), deadline_ns, 0, trial, action,
                                   wire.Waveform.SINE, 0b1111, 0, 1.5, duration_s, 0.1, 40.0)


class FakeRigd:
    """The two sockets of rigd's data plane, bound on free local ports."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 0)
        port_in = self.sub.bind_to_random_port("tcp://127.0.0.1")
        self.pub = self.ctx.socket(zmq.PUB)
        port_cmd = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.ingest = f"tcp://127.0.0.1:{port_in}"
        self.command = f"tcp://127.0.0.1:{port_cmd}"
        self.hb_seq = 0
        self.cmd_seq = 0
        self.counts: list[tuple[int, int, int]] = []  # seq, t_rig_ns, n_units
        self.events: list[dict[str, Any]] = []
        self.heartbeats: list[tuple[int, dict[str, Any]]] = []  # receipt ns, body
        self.acks: list[wire.LightAckFields] = []

    def heartbeat(self) -> None:
        # like rigd's: lists the rigs whose description arrived (the rig's handshake waits for that)
        rigs = [RIG_ID] if self.heartbeats else []  # (pump asserts every message is from RIG_ID)
        h, p = wire.encode(wire.Kind.HEARTBEAT, wire.json_bytes({"rigs": rigs}), rig_id=0,
                           seq=self.hb_seq, t_rig_ns=time.monotonic_ns(), t_send_ns=time.monotonic_ns())
        self.hb_seq += 1
        self.pub.send_multipart([h, p])

    def send_command(self, cmd: wire.LightCommandFields) -> None:
        h, p = wire.encode(wire.Kind.LIGHT_COMMAND, cmd.pack(), rig_id=RIG_ID, seq=self.cmd_seq,
                           t_rig_ns=0, t_send_ns=time.monotonic_ns())
        self.cmd_seq += 1
        self.pub.send_multipart([h, p])

    def pump(self, seconds: float, *, heartbeats: bool = True) -> None:
        """Receive for ``seconds`` while sending rigd heartbeats at 10 Hz (unless told not to)."""
        end = time.monotonic() + seconds
        next_hb = 0.0
        while time.monotonic() < end:
            if heartbeats and time.monotonic() >= next_hb:
                self.heartbeat()
                next_hb = time.monotonic() + 0.1
            if not self.sub.poll(20):
                continue
            while True:
                try:
                    frames = self.sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                hdr = wire.unpack_header(frames[0])
                assert hdr.rig_id == RIG_ID
                if hdr.kind == wire.Kind.SPIKE_COUNTS:
                    arr = wire.payload_array(hdr, frames[1])
                    self.counts.append((hdr.seq, hdr.t_rig_ns, arr.shape[0]))
                elif hdr.kind == wire.Kind.TRIAL_EVENT:
                    self.events.append({**wire.payload_json(hdr, frames[1]), "_t": hdr.t_rig_ns})
                elif hdr.kind == wire.Kind.HEARTBEAT:
                    self.heartbeats.append((time.monotonic_ns(), wire.payload_json(hdr, frames[1])))
                elif hdr.kind == wire.Kind.LIGHT_ACK:
                    self.acks.append(wire.unpack_light_ack(frames[1]))

    def wait_ack(self, command_id: int, seconds: float = 2.0, *, heartbeats: bool = True
                 ) -> wire.LightAckFields:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.pump(0.05, heartbeats=heartbeats)
            for a in self.acks:
                if a.command_id == command_id:
                    return a
        raise AssertionError(f"no ack for command {command_id}; acks {self.acks}")

    def close(self) -> None:
        self.sub.close(0)
        self.pub.close(0)
        self.ctx.term()


@pytest.mark.slow
def test_live_rig_process_streams_counts_events_acks_and_watchdog() -> None:
    rigd = FakeRigd()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.rig_process", "--ingest", rigd.ingest, "--command", rigd.command,
         "--rig-id", str(RIG_ID), "--seed", "5", "--iti-s", "0.5", "0.6", "--duration", "60"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rigd.pump(1.5)  # handshake + first frames
        assert rigd.heartbeats, "no rig heartbeat"
        desc = rigd.heartbeats[-1][1]
        assert desc["rig"] == "sim" and desc["n_units"] == 80 and desc["units_left"] == 40
        assert desc["bin_s"] == 0.001 and desc["spots_per_hemisphere"] == 4
        assert "slip_p99_ms" in desc and "slip_p50_ms" in desc

        # a command well inside its deadline: APPLIED, with the time the light changed
        t_send = time.monotonic_ns()
        rigd.send_command(_cmd(1, deadline_ns=t_send + 5 * 10**9, duration_s=0.5))
        ack = rigd.wait_ack(1)
        assert ack.status == wire.AckStatus.APPLIED
        assert ack.t_received_rig_ns >= t_send and ack.t_light_change_rig_ns >= ack.t_received_rig_ns
        assert ack.t_light_change_rig_ns - t_send < 50_000_000  # the light changes at once (< 50 ms)

        # a command past its deadline: LATE, not executed
        rigd.send_command(_cmd(2, deadline_ns=time.monotonic_ns() - 10**9))
        ack = rigd.wait_ack(2)
        assert ack.status == wire.AckStatus.LATE and ack.t_light_change_rig_ns == 0

        # light on, then rigd falls silent: the rig turns the light off 0.5 s later
        rigd.send_command(_cmd(3, duration_s=1.3))
        assert rigd.wait_ack(3).status == wire.AckStatus.APPLIED
        t_silent = time.monotonic_ns()
        deadline = time.monotonic() + 3.0
        wd = None
        while wd is None and time.monotonic() < deadline:
            rigd.pump(0.05, heartbeats=False)
            wd = next((a for a in rigd.acks if a.status == wire.AckStatus.WATCHDOG_OFF), None)
        assert wd is not None, "watchdog never turned the light off"
        assert wd.command_id == 3
        # 0.5 s watchdog + ≤ 0.1 s of heartbeat spacing + scheduling slack on a shared 2-core box
        assert 0.4e9 <= wd.t_light_change_rig_ns - t_silent <= 1.2e9

        # keep going until a whole trial has been seen
        end = time.monotonic() + 12.0
        while time.monotonic() < end and not any(e["event"] == "trial_end" for e in rigd.events):
            rigd.pump(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        rigd.pump(0.3)
        rigd.close()
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["acks"]["APPLIED"] == 2 and summary["acks"]["LATE"] == 1
    assert summary["acks"]["WATCHDOG_OFF"] == 1 and summary["stopped_by_signal"]

    # counts: one per bin, consecutive seq, t_rig_ns 1 ms apart
    seqs = [s for s, _, _ in rigd.counts]
    assert len(seqs) > 3000 and all(b - a == 1 for a, b in itertools.pairwise(seqs))
    ts = [t for _, t, _ in rigd.counts]
    assert all(b - a == 1_000_000 for a, b in itertools.pairwise(ts))
    assert {n for _, _, n in rigd.counts} == {80}
    # heartbeats at >= 2 Hz throughout, the last one says stopped
    hb_t = [t for t, _ in rigd.heartbeats]
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(hb_t)]
    assert max(gaps) < 0.5, f"heartbeat gap {max(gaps):.3f} s"
    assert rigd.heartbeats[-1][1]["state"] == "stopped"
    # one complete trial, events in contract order with rig-clock times
    names = [e["event"] for e in rigd.events if e["trial"] == 0]
    assert names[:4] == ["trial_start", "sample_on", "delay_on", "go_cue"] or "early_lick" in names
    assert "outcome" in names and names[-1] == "trial_end"
    start = next(e for e in rigd.events if e["event"] == "trial_start")
    assert start["instructed"] in ("left", "right")
    assert start["t_go_ns"] > start["t_delay_ns"] > start["t_sample_ns"]
    go = next(e for e in rigd.events if e["event"] == "go_cue")
    assert go["_t"] == start["t_go_ns"]
