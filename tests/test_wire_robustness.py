"""Wire robustness against the real ``rigd start`` (subprocess, real sockets): bad count values,
absurd unit counts, rig restarts, sequence resynchronisation and a duplicate rig id.

Each test drives rigd as a lab rig would (raw ZeroMQ sockets speaking docs/wire-protocol.md) and
reads the outcome from what rigd publishes (``rigd status``) and records (the session on disk).
"""

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from decoders.online import OnlineDecoder
from rig import wire
from rig.client import RigClient
from rig.session import Session
from rig.streams import RESYNC_RUN
from tests.rigd_process import Rigd, external_rigd
from tests.test_wire_fuzz import _decoder, close_hot, make_hot

pytestmark = pytest.mark.slow
N_UNITS = 80


class Rig:
    """One rig process's sockets: sends anything, numbers each stream itself, marks each frame."""

    def __init__(self, ingest: str, command: str, boot_id: int | None = None, host: str = "rig-host",
                 pid: int = 4242) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.connect(ingest)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(command)
        self.seq = {0: 0, 1: 0, 2: 0, 3: 0}
        self.identity = {} if boot_id is None else {"boot_id": boot_id, "host": host, "pid": pid}

    def send(self, kind: wire.Kind, payload: Any, stream: int = 0, seq: int | None = None, t_rig_ns: int = 0) -> int:
        s = self.seq[stream] if seq is None else seq
        self.seq[stream] = s + 1
        now = time.monotonic_ns()
        h, p = wire.encode(kind, payload, rig_id=1, stream_id=stream, seq=s, t_rig_ns=t_rig_ns or now,
                           t_send_ns=now)
        self.pub.send_multipart([h, bytes(p) if not isinstance(p, bytes) else p])
        return s

    def frame(self, marker: int, counts: np.ndarray | None = None, seq: int | None = None) -> int:
        """A SPIKE_COUNTS frame whose t_rig_ns is ``marker`` (to find it in the recording)."""
        c = np.ones(N_UNITS, np.float32) if counts is None else counts
        return self.send(wire.Kind.SPIKE_COUNTS, c, seq=seq, t_rig_ns=marker)

    def heartbeat(self, n_units: int = N_UNITS) -> None:
        desc = {"rig": "raw", "n_units": n_units, "units_left": n_units // 2, "bin_s": 0.001, **self.identity}
        self.send(wire.Kind.HEARTBEAT, wire.json_bytes(desc), stream=3)

    def handshake(self, timeout: float = 30.0) -> None:
        """Heartbeats until rigd's heartbeat lists rig 1, and this process's boot_id if it has one
        (docs/wire-protocol.md: a restarted rig is listed by id already)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.heartbeat()
            while self.sub.poll(100):
                h, p = self.sub.recv_multipart()
                hd = wire.unpack_header(h)
                if hd.kind != wire.Kind.HEARTBEAT:
                    continue
                body = wire.payload_json(hd, p)
                if 1 in body.get("rigs", []) and body.get("boot_ids", {}).get("1") == self.identity.get("boot_id"):
                    return
        raise TimeoutError("rigd did not list rig 1 (and this boot) in its heartbeat")

    def close(self) -> None:
        self.pub.close(linger=2000)
        self.sub.close()
        self.ctx.term()


def wait_status(r: Rigd, ok: Any, timeout: float = 60.0) -> dict[str, Any]:
    """rigd's status (republished at 1 Hz) once ``ok(status)`` holds; readiness, not a fixed sleep."""
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = r.status()
        if ok(st):
            return st
        time.sleep(0.2)
    raise TimeoutError(f"status never satisfied the condition: counters {st.get('counters')}")


def stop_and_open(r: Rigd, name: str) -> Session:
    assert r.cli("stop", "--name", name).returncode == 0
    r.wait(60)
    return Session.open(r.session_dir())


def recorded_markers(s: Session) -> set[int]:
    _, t_rig, _ = s.counts()
    return {int(t) for t in t_rig}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_non_finite_negative_and_huge_counts_are_rejected_per_frame_and_valid_frames_all_go_through(
        tmp_path: Path) -> None:
    bad_f32 = [float("nan"), float("inf"), -float("inf"), -1.0, 1e30, 65536.0]
    with external_rigd(tmp_path, "values") as (r, ingest, command):
        rig = Rig(ingest, command)
        rig.handshake()
        valid: set[int] = set()
        n_bad = 0
        marker = 1_000_000
        for i in range(300):  # float32 frames: every 5th carries a bad value at unit 7
            marker += 1
            c = np.full(N_UNITS, 2.0, np.float32)
            if i % 5 == 4:
                c[7] = bad_f32[n_bad % len(bad_f32)]
                n_bad += 1
            else:
                valid.add(marker)
            rig.frame(marker, c)
        for i in range(60):  # int32 frames (a new dtype: learned afresh), negative and huge ones among them
            marker += 1
            c32 = np.full(N_UNITS, 3, np.int32)
            if i % 3 == 2:
                c32[i % N_UNITS] = -5 if i % 2 else 70_000
                n_bad += 1
            else:
                valid.add(marker)
            rig.frame(marker, c32)
        st = wait_status(r, lambda s: s["frames"] + s["counters"].get("errors.ingest.counts_value", 0)
                         >= len(valid) + n_bad)
        c = st["counters"]
        assert c["errors.ingest.counts_value"] == n_bad
        assert st["frames"] == len(valid)
        assert "errors.loop.internal" not in c and c.get("ingest.missing_seq", 0) == 0
        rig.close()
        s = stop_and_open(r, "values")
    assert recorded_markers(s) == valid  # every valid frame recorded, no rejected one
    outputs = s.decoder_outputs()
    assert {int(t) for t in outputs[:, 1]} == valid  # and every valid frame went through the loop
    msgs = [d["message"] for d in s.logs("input_error") if d["reason"] == "counts_value"]
    assert "rig 1 frame seq 4: unit 7 is nan; expected finite counts in [0, 65535]" in msgs
    assert any("unit 7 is inf" in m for m in msgs) and any("unit 7 is -1" in m for m in msgs)


def test_an_absurd_unit_count_is_refused_at_the_handshake_and_allocates_nothing(tmp_path: Path) -> None:
    with external_rigd(tmp_path, "units") as (r, ingest, command):
        wait_status(r, lambda s: s["state"] == "running")
        rss_before = rss_bytes(r.proc.pid)
        huge = RigClient(1, ingest, command, {"rig": "huge", "n_units": 10**9})
        with pytest.raises(TimeoutError, match="does not list rig 1"):
            huge.connect(timeout_s=3.0)
        huge.close()
        st = wait_status(r, lambda s: s["counters"].get("errors.heartbeat.n_units", 0) >= 2)
        rss_after = rss_bytes(r.proc.pid)
        assert rss_after - rss_before < 300 * 2**20, (rss_before, rss_after)  # 10⁹ units would be ≥ 4 GB
        assert "errors.loop.internal" not in st["counters"]
        alarms = [a["message"] for a in st["last_alarms"]]
        assert sum("n_units=1000000000" in m for m in alarms) == 1  # one alarm, not one per heartbeat
        assert any("maximum of 200000 units" in m and "--max-units" in m for m in alarms)
        # the id is not burned: the rig, restarted with a sane description, connects and streams
        ok = RigClient(1, ingest, command, {"rig": "ok", "n_units": N_UNITS, "units_left": 40})
        ok.connect(timeout_s=20)
        for _ in range(20):
            ok.send_counts(np.ones(N_UNITS, np.uint8))
        wait_status(r, lambda s: s["frames"] >= 20)
        ok.close()


def test_max_units_is_set_on_the_command_line(tmp_path: Path) -> None:
    with external_rigd(tmp_path, "maxu", "--max-units", "50") as (r, ingest, command):
        rig = RigClient(1, ingest, command, {"rig": "eighty", "n_units": N_UNITS})
        with pytest.raises(TimeoutError, match="does not list rig 1"):
            rig.connect(timeout_s=3.0)
        rig.close()
        st = wait_status(r, lambda s: s["counters"].get("errors.heartbeat.n_units", 0) >= 1)
        assert any("maximum of 50 units" in a["message"] for a in st["last_alarms"])
    bad = rigd_refuses(tmp_path, "--max-units", "0")
    assert "max_units" in bad


def rigd_refuses(tmp_path: Path, *args: str) -> str:
    import subprocess

    from tests.rigd_process import REPO, RIGD

    res = subprocess.run([*RIGD, "start", "--session-dir", str(tmp_path / "never"), *args], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert res.returncode != 0
    return res.stderr + res.stdout


def test_a_restarted_rig_is_followed_and_a_second_sender_with_the_same_id_is_named(tmp_path: Path) -> None:
    with external_rigd(tmp_path, "restart") as (r, ingest, command):
        first = Rig(ingest, command, boot_id=111, host="host-a", pid=1001)
        first.handshake()
        before = {10_000 + i for i in range(50)}
        for m in sorted(before):
            first.frame(m)
        first.send(wire.Kind.TRIAL_EVENT, wire.json_bytes({"event": "trial_start", "trial": 7}), stream=1)
        wait_status(r, lambda s: s["frames"] >= 50)
        first.close()  # the rig process dies ...
        second = Rig(ingest, command, boot_id=222, host="host-a", pid=1002)  # ... and comes back: seqs from 0
        second.handshake()  # until rigd's heartbeat lists boot 222 for rig 1
        after = {20_000 + i for i in range(200)}
        for m in sorted(after):
            second.frame(m)
        second.send(wire.Kind.TRIAL_EVENT, wire.json_bytes({"event": "trial_start", "trial": 0}), stream=1)
        second.send(wire.Kind.TRIAL_EVENT, wire.json_bytes({"event": "trial_end", "trial": 0}), stream=1)
        st = wait_status(r, lambda s: s["frames"] >= 250)
        assert st["frames"] == 250 and st["counters"]["rigs.restarts"] == 1
        for k in ("errors.ingest.out_of_order_seq", "errors.ingest.duplicate_seq", "events.after_trial_end"):
            assert st["counters"].get(k, 0) == 0, (k, st["counters"])
        # a second process claiming rig 1 (boot_id 333 on another host) while 222 is alive: the two alternate
        intruder = Rig(ingest, command, boot_id=333, host="host-b", pid=2002)

        def diagnosed(s: dict[str, Any]) -> bool:
            intruder.heartbeat()
            second.heartbeat()
            return bool(s["counters"].get("errors.ingest.duplicate_rig", 0) >= 3)

        st = wait_status(r, diagnosed)
        assert st["counters"]["rigs.duplicate_ids"] == 1
        later = {40_000 + i for i in range(50)}
        for m in sorted(later):  # rigd follows the first holder (222): its frames still count
            second.frame(m)
        wait_status(r, lambda s: s["frames"] >= 300)
        intruder.close()
        second.close()
        s = stop_and_open(r, "restart")
    assert before | after | later <= recorded_markers(s)  # nothing after the restart lost
    alarms = [a["message"] for a in s.alarms()]
    assert "rig 1 restarted (boot_id 111 → 222)" in alarms
    dup = [m for m in alarms if "claimed by two senders" in m]
    assert len(dup) == 1, alarms  # once, not per heartbeat
    for needle in ("boot_id 222", "host-a", "pid 1002", "boot_id 333", "host-b", "pid 2002", "follows the first"):
        assert needle in dup[0], dup[0]
    restarts = [lg for lg in s.logs("rig") if lg.get("event") == "restarted"]
    assert restarts and restarts[0]["boot_id_before"] == 111 and restarts[0]["boot_id"] == 222
    assert any(t["trial"] == 0 for t in s.trials())  # the new process's trial 0 counts (numbering restarted)


def test_without_boot_ids_a_seq_reset_resynchronises_and_a_stray_far_seq_costs_one_frame(tmp_path: Path) -> None:
    with external_rigd(tmp_path, "resync") as (r, ingest, command):
        rig = Rig(ingest, command)  # a third-party rig: no boot_id in its heartbeats
        rig.handshake()
        first = {30_000 + i for i in range(100)}
        for m in sorted(first):
            rig.frame(m)  # seqs 0 … 99
        stray = rig.frame(39_999, seq=99 + 10**6)  # one stray frame far ahead
        rig.seq[0] = 100
        more = {31_000 + i for i in range(100)}
        for m in sorted(more):
            rig.frame(m)  # seqs 100 … 199: the stream goes on
        st = wait_status(r, lambda s: s["frames"] >= 200)
        assert st["counters"]["errors.ingest.seq_jump"] == 1 and st["counters"].get("ingest.resyncs", 0) == 0
        rig.seq[0] = 0  # the rig restarted (no boot id): back to seq 0
        again = {32_000 + i for i in range(100)}
        for m in sorted(again):
            rig.frame(m)
        st = wait_status(r, lambda s: s["frames"] >= 300 - (RESYNC_RUN - 1))
        c = st["counters"]
        assert st["frames"] == 300 - (RESYNC_RUN - 1)
        assert c["ingest.resyncs"] == 1 and c["errors.ingest.out_of_order_seq"] == RESYNC_RUN - 1
        rig.close()
        s = stop_and_open(r, "resync")
    got = recorded_markers(s)
    assert first | more <= got and 39_999 not in got and stray == 99 + 10**6
    assert again - got == {32_000 + i for i in range(RESYNC_RUN - 1)}  # only the run before the resync
    alarms = [a["message"] for a in s.alarms()]
    assert (f"rig 1 stream 0 resynchronised at seq 0 after {RESYNC_RUN} off-sequence messages: "
            "restarted or a stray sender?") in alarms


def test_decoders_are_built_off_the_loop_thread_and_frames_before_them_are_counted(tmp_path: Path) -> None:
    release = threading.Event()
    built_on: list[str] = []

    def slow_decoder(desc: dict[str, Any]) -> OnlineDecoder:
        built_on.append(threading.current_thread().name)
        assert release.wait(30)  # the build takes as long as the test wants
        return _decoder(desc)

    hot = make_hot(tmp_path / "session", slow_decoder)
    seqs = {0: 0, 3: 0}

    def send(kind: wire.Kind, payload: Any, stream: int) -> None:
        h, p = wire.encode(kind, payload, rig_id=1, stream_id=stream, seq=seqs[stream], t_rig_ns=1, t_send_ns=1)
        seqs[stream] += 1
        hot._on_message([zmq.Frame(h), zmq.Frame(bytes(p) if not isinstance(p, bytes) else p)], time.monotonic_ns())

    try:
        send(wire.Kind.HEARTBEAT, wire.json_bytes({"n_units": N_UNITS}), 3)
        for _ in range(5):  # the decoder is being built: the loop runs on without one
            send(wire.Kind.SPIKE_COUNTS, np.ones(N_UNITS, np.uint8), 0)
        pl = hot.pipelines[1]
        assert hot.frames == 5 and pl.pipeline.decoder is None
        assert hot.counters.snapshot()["frames.without_decoder"] == 5
        release.set()
        fut = pl.pipeline.decoder_future
        assert fut is not None
        fut.result(30)  # readiness: the build has finished
        send(wire.Kind.SPIKE_COUNTS, np.ones(N_UNITS, np.uint8), 0)  # installed between frames
        assert pl.pipeline.decoder is not None and pl.pipeline.decoder.n_units == N_UNITS
        assert hot.counters.snapshot()["frames.without_decoder"] == 5
        release.clear()
        send(wire.Kind.HEARTBEAT, wire.json_bytes({"n_units": 40}), 3)  # the rig re-describes its units
        assert pl.pipeline.decoder is None and pl.n_units == 40  # never the old decoder on new units
        send(wire.Kind.SPIKE_COUNTS, np.ones(40, np.uint8), 0)
        assert hot.frames == 7 and hot.counters.snapshot()["frames.without_decoder"] == 6
        release.set()
        assert built_on and all(name.startswith("rigd-build") for name in built_on)
        assert threading.current_thread().name not in built_on
    finally:
        release.set()
        close_hot(hot)
