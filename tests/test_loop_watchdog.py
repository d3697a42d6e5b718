"""The loop watchdog lives outside rigd's loop: a stalled or dead rigd still gets the light turned off.

The watchdog process (rig/watchdog.py) is tested on its own against a beat file the test writes,
then inside real rigd sessions: a loop stalled by fault injection, and rigd SIGKILLed or SIGSTOPped
with the watchdog beside it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zmq

from rig import wire
from rig.watchdog import STATE_RUNNING, LoopBeat
from tests.rigd_process import REPO, free_port, measured_calibration, rigd

pytestmark = pytest.mark.slow


def _all_offs(sub: zmq.Socket[bytes], timeout_s: float) -> list[tuple[wire.Header, wire.LightCommandFields]]:
    """Every LIGHT_COMMAND that arrives within ``timeout_s`` after the first one (or none)."""
    out: list[tuple[wire.Header, wire.LightCommandFields]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sub.poll(50):
            if out:
                break
            continue
        h, p = sub.recv_multipart()
        hd = wire.unpack_header(h)
        if hd.kind == wire.Kind.LIGHT_COMMAND:
            out.append((hd, wire.unpack_light_command(p)))
    return out


@contextmanager
def watchdog(tmp_path: Path, beat: LoopBeat, watchdog_s: float = 0.5) -> Iterator[tuple[subprocess.Popen[str], str]]:
    log = tmp_path / "watchdog.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rig.watchdog", "--beat", str(beat.path), "--bind", "tcp://127.0.0.1:*",
         "--rig-ids", "1,7", "--watchdog-s", str(watchdog_s), "--parent-pid", str(os.getpid()),
         "--log", str(log)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        yield proc, ready["safety_endpoint"]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_watchdog_process_sends_all_off_to_every_rig_when_the_beat_stops_and_stands_down_on_stop(
        tmp_path: Path) -> None:
    beat = LoopBeat(tmp_path / "loop.beat")
    with watchdog(tmp_path, beat) as (proc, endpoint):
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        # a beating loop: no ALL_OFF however long it beats (here 1.5 s of 20 ms beats)
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            beat.beat(time.monotonic_ns(), STATE_RUNNING)
            time.sleep(0.02)
        assert _all_offs(sub, 0.3) == []
        # the loop stops beating: ALL_OFF for both configured rigs, from the watchdog's clock
        t_last = time.monotonic_ns()
        beat.beat(t_last, STATE_RUNNING)
        got = _all_offs(sub, 10.0)
        t_got = time.monotonic_ns()
        assert got, "no ALL_OFF after the beat stopped"
        assert {h.rig_id for h, _ in got} == {1, 7}
        assert all(c.action == wire.LightAction.ALL_OFF for _, c in got)
        assert (t_got - t_last) / 1e9 >= 0.5  # not before the limit
        # it says so in its log (the session directory's watchdog.jsonl)
        lines = [json.loads(x) for x in (tmp_path / "watchdog.jsonl").read_text().splitlines()]
        assert lines[0]["severity"] == "error" and "silent" in lines[0]["message"]
        # the loop beats again: it says that too, and sends nothing more
        deadline = time.monotonic() + 10
        while len((tmp_path / "watchdog.jsonl").read_text().splitlines()) < 2 and time.monotonic() < deadline:
            beat.beat(time.monotonic_ns(), STATE_RUNNING)
            time.sleep(0.02)
        assert "beating again" in (tmp_path / "watchdog.jsonl").read_text().splitlines()[1]
        # the loop ends on purpose: the watchdog exits 0 without any ALL_OFF
        sub.recv_multipart(zmq.NOBLOCK) if sub.poll(0) else None
        beat.stopped()
        assert proc.wait(10) == 0
        sub.close(0)
        ctx.term()


def _wait_for(pred, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Rig:
    """A minimal rig on raw sockets that also listens on rigd's safety endpoint (as RigClient does)."""

    def __init__(self, ingest: str, command: str) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.connect(ingest)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(command)
        self.safety: str | None = None
        self.seq = [0] * 4

    def send(self, kind: wire.Kind, payload: object, stream: int) -> None:
        now = time.monotonic_ns()
        h, p = wire.encode(kind, payload, rig_id=1, stream_id=stream, seq=self.seq[stream], t_rig_ns=now,
                           t_send_ns=now)
        self.seq[stream] += 1
        self.pub.send_multipart([h, bytes(p)])

    def handshake(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.send(wire.Kind.HEARTBEAT, wire.json_bytes({"n_units": 20, "units_left": 10}), 3)
            while self.sub.poll(100):
                h, p = self.sub.recv_multipart()
                hd = wire.unpack_header(h)
                if hd.kind == wire.Kind.HEARTBEAT:
                    body = wire.payload_json(hd, p)
                    if 1 in body.get("rigs", []):
                        self.safety = body.get("safety")
                        assert self.safety, f"rigd's heartbeat does not announce its safety endpoint: {body}"
                        self.sub.connect(self.safety)
                        return
        raise TimeoutError("no handshake")

    def frames(self, n: int) -> None:
        for _ in range(n):
            self.send(wire.Kind.SPIKE_COUNTS, np.ones(20, np.uint8), 0)

    def close(self) -> None:
        self.pub.close(0)
        self.sub.close(0)
        self.ctx.term()


def test_a_stalled_loop_gets_all_off_from_the_watchdog_process_and_an_alarm_then_the_session_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # fault injection: the loop thread sleeps 2 s after its 200th frame (rigd itself stays up)
    monkeypatch.setenv("RIGD_FAULT_LOOP_STALL", "200:2.0")
    ingest, command = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with rigd(tmp_path, "--rig", "external", "--ingest", ingest, "--command", command, "--no-ui",
              "--calibration", str(measured_calibration(tmp_path)), name="stall") as r:
        r.wait_ready()
        rig = _Rig(ingest, command)
        try:
            rig.handshake()
            rig.frames(250)  # the loop stalls after 200 of these
            got = _all_offs(rig.sub, 20.0)
            assert got and all(c.action == wire.LightAction.ALL_OFF for _, c in got)
            log = r.session_dir() / "watchdog.jsonl"
            _wait_for(lambda: log.exists() and "silent" in log.read_text(), 20, "the watchdog's alarm")
            # the loop resumes: rigd's own interlock watchdog noticed the stall too (alarm), and the
            # session keeps going: frames sent after the stall are processed
            _wait_for(lambda: "beating again" in log.read_text(), 20, "the watchdog's all-clear")
            before = r.status()["frames"]
            rig.frames(100)
            _wait_for(lambda: r.status()["frames"] >= before + 100, 20, "frames after the stall")
            st = r.status()
            assert st["state"] == "running"
            assert st["counters"].get("alarms.interlock", 0) >= 1  # the in-loop watchdog tripped on resume
            assert st["interlock"]["watchdog_tripped"] is False  # and re-armed
        finally:
            rig.close()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_rigd_killed_or_stopped_its_watchdog_turns_the_light_off(tmp_path: Path, how: str) -> None:
    ingest, command = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with rigd(tmp_path, "--rig", "external", "--ingest", ingest, "--command", command, "--no-ui",
              "--calibration", str(measured_calibration(tmp_path)), name=f"k{how}") as r:
        r.wait_ready()
        rig = _Rig(ingest, command)
        try:
            rig.handshake()
            rig.frames(50)
            t_kill = time.monotonic_ns()
            os.kill(r.proc.pid, getattr(signal, how))
            got = _all_offs(rig.sub, 20.0)
            t_off = time.monotonic_ns()
            assert got, f"no ALL_OFF after {how} of rigd"
            assert all(c.action == wire.LightAction.ALL_OFF and h.rig_id == 1 for h, c in got)
            # the watchdog polls every watchdog_s/10; the bound is generous for a loaded machine
            assert (t_off - t_kill) / 1e9 < 5.0
            log = r.session_dir() / "watchdog.jsonl"  # written right after the first ALL_OFF
            _wait_for(lambda: log.exists() and ("gone" if how == "SIGKILL" else "silent") in log.read_text(),
                      10, "the watchdog's record of why")
        finally:
            if how == "SIGSTOP":
                os.kill(r.proc.pid, signal.SIGKILL)
            rig.close()
