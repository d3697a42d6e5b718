"""The live view's compiled span tap shows exactly what its per-record tap shows.

Both taps of one :class:`LiveState` each are fed by a real :class:`Recorder` writing a real session
directory; the stream mixes what a session can hold: the raster rig's frames in every integer
wire dtype (negative int16 counts included), another rig's frames, float32 counts (refused and
counted), a frame at rig time 0, a layout change by frame size and back by a rig description,
large frames (which bypass the ring), trial events, a decoder chunk, and a record rigd could not
parse. The span path must have folded most frames itself, and the recorded counts must sum into
the columns.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rig import wire
from rig.live_state import LiveState
from rig.loop import DECODER_FIELDS
from rig.session import Recorder, Session

MS = 1_000_000


def _put(rec: Recorder, h: bytes, p: Any) -> None:
    while not rec.put(h, p, time.monotonic_ns()):
        time.sleep(0.001)


def _stream(rng: np.random.Generator) -> list[tuple[bytes, Any]]:
    out: list[tuple[bytes, Any]] = []
    seq = 0

    def msg(kind: wire.Kind, payload: Any, t: int, rig: int = 1, stream: int = 0) -> None:
        nonlocal seq
        out.append(wire.encode(kind, payload, rig_id=rig, stream_id=stream, seq=seq, t_rig_ns=t, t_send_ns=t))
        seq += 1

    def desc(n: int, left: int, t: int) -> None:
        msg(wire.Kind.HEARTBEAT, wire.json_bytes({"rig": "t", "n_units": n, "units_left": left}), t, stream=3)

    desc(80, 30, 1)
    t = 5 * MS
    dtypes = [np.uint8, np.uint16, np.int16, np.int32, np.uint32]
    for i in range(3000):
        t += MS
        if i == 1200:  # the rig's frames change size: the layout follows them
            for _ in range(60):
                t += MS
                msg(wire.Kind.SPIKE_COUNTS, rng.integers(0, 4, 120).astype(np.uint8), t)
            desc(80, 50, t)  # and a description brings it back, split differently
        if i == 2000:  # large frames go to the per-record tap, from outside the ring
            for _ in range(5):
                t += MS
                msg(wire.Kind.SPIKE_COUNTS, rng.integers(0, 3, 5000).astype(np.uint8), t)
            desc(80, 40, t)
        dt = dtypes[(i // 100) % len(dtypes)]
        lo = -2 if dt in (np.int16, np.int32) else 0
        msg(wire.Kind.SPIKE_COUNTS, rng.integers(lo, 5, 80).astype(dt), t)
        if i % 7 == 0:
            msg(wire.Kind.SPIKE_COUNTS, rng.integers(0, 5, 64).astype(np.uint8), t, rig=2)
        if i % 500 == 3:
            msg(wire.Kind.SPIKE_COUNTS, rng.random(80).astype(np.float32), t)  # refused: float counts
        if i == 900:
            msg(wire.Kind.SPIKE_COUNTS, np.ones(80, np.uint8), 0)  # no rig time
        if i % 250 == 0:
            msg(wire.Kind.TRIAL_EVENT, wire.json_bytes({"event": "trial_start", "trial": i // 250}), t, stream=1)
        if i == 1500:
            rows = np.zeros((1000, len(DECODER_FIELDS)))
            rows[:, 1] = t - np.arange(1000)[::-1] * MS
            rows[:, 5] = np.arange(1000)  # "left": the row's index
            msg(wire.Kind.DECODER_OUTPUT, rows, t, rig=0)
        if i == 1700:
            h, p = wire.encode(wire.Kind.SPIKE_COUNTS, np.ones(80, np.uint8), rig_id=1, seq=0, t_rig_ns=t,
                               t_send_ns=t)
            out.append((b"XXXX" + h[4:], p))  # bad magic: neither tap shows it
    return out


@pytest.mark.parametrize("flush_s", [0.001, 0.05])
def test_span_tap_shows_exactly_what_the_per_record_tap_shows(tmp_path: Path, flush_s: float) -> None:
    by_record, by_span = LiveState(window_s=30.0, column_s=0.02), LiveState(window_s=30.0, column_s=0.02)
    rec_a = Recorder(tmp_path / "a", flush_interval_s=flush_s, ring_bytes=256 << 10)
    rec_b = Recorder(tmp_path / "b", flush_interval_s=flush_s, ring_bytes=256 << 10)
    rec_a.add_tap(by_record.on_record)
    rec_b.add_tap(by_span.on_record, span=by_span.on_span)
    stream = _stream(np.random.default_rng(7))
    for i, (h, p) in enumerate(stream):
        _put(rec_a, h, p)
        _put(rec_b, h, p)
        if i % 400 == 0:
            time.sleep(0.003)  # let the writers drain in the middle of runs: spans split anywhere
    rec_a.close()
    rec_b.close()
    a, b = by_record.snapshot(), by_span.snapshot()
    assert a == b
    assert by_record.errors == by_span.errors == 6  # the float32 frames, counted by both
    assert rec_a.tap_errors == rec_b.tap_errors == 0
    # the decoder trace keeps the last row of each 20 ms column of the recorded chunk
    session = Session.open(tmp_path / "b")
    (chunk,) = [wire.payload_array(r.header, r.payload) for r in session.records(wire.Kind.DECODER_OUTPUT)]
    col_of_row = chunk[:, 1] // by_span.column_ns
    last = [i for i in range(len(chunk)) if i == len(chunk) - 1 or col_of_row[i + 1] != col_of_row[i]]
    want_left = [float(chunk[i, 5]) for i in last]
    assert len(want_left) in (50, 51) and b["decoder"]["left"] == want_left
    n_frames = a["records"]["SPIKE_COUNTS"]
    assert by_span.span_folded > 0.9 * n_frames and by_record.span_folded == 0
    # the last layout's columns hold the recorded counts of the raster rig's frames
    frames = [(r.header.t_rig_ns, wire.payload_array(r.header, r.payload).astype(np.int64))
              for r in session.records(wire.Kind.SPIKE_COUNTS, rig_id=1) if r.header.dtype != wire.DType.F32]
    cols = np.array(b["raster"]["cols"])
    assert cols.shape[1] == 40 + 40
    assert by_span.t0_ns is not None
    last_col = (by_span.t0_ns + round(b["raster"]["t"][-1] * 1e9)) // by_span.column_ns - 1
    in_last = [c for t, c in frames if c.size == 80 and t // by_span.column_ns == last_col]
    assert len(in_last) == 20  # 20 ms columns of 1 ms frames
    assert cols[-1, :40].sum() == sum(c[:40].sum() for c in in_last) > 0
