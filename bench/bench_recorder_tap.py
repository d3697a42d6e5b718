"""Writer-thread cost of the web live view's recorder tap: per record vs one compiled call per span.

Run:  .venv/bin/python bench/bench_recorder_tap.py [--units 384 1000 10000] [--frames 1000]

Puts one second of a 1 kHz session into a real :class:`rig.session.Recorder` (a rig description,
``--frames`` spike-count frames of ``--units`` uint8 units, the decoder-output record and a few
trial events, in a temporary directory) and times ``Recorder._drain`` — seal, write, taps — for
three recorders fed the same records: without a tap (the floor), with the live view's tap record
by record (how it ran before: Python per frame, under the GIL), and with its span tap (what
``rigd start --ui`` registers now). Rounds alternate between the three and each keeps its best;
the table gives ms per second of session and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from rig import wire
from rig.live_state import LiveState
from rig.loop import DECODER_FIELDS
from rig.session import Recorder

RIG = 1
BIN_NS = 1_000_000


def session_second(n_units: int, n_frames: int, second: int) -> list[tuple[bytes, bytes | np.ndarray]]:
    """The messages of one second of a 1 kHz session (frames, one decoder chunk, trial events)."""
    rng = np.random.default_rng(second)
    t0 = (second + 1) * n_frames * BIN_NS
    out: list[tuple[bytes, bytes | np.ndarray]] = []
    desc = {"rig": "bench", "n_units": n_units, "units_left": n_units // 2, "bin_s": 0.001}
    out.append(wire.encode(wire.Kind.HEARTBEAT, wire.json_bytes(desc), rig_id=RIG, stream_id=3, seq=0,
                           t_rig_ns=t0, t_send_ns=t0))
    counts = rng.poisson(0.05, (n_frames, n_units)).astype(np.uint8)
    for i in range(n_frames):
        t = t0 + i * BIN_NS
        out.append(wire.encode(wire.Kind.SPIKE_COUNTS, counts[i], rig_id=RIG, stream_id=0, seq=i,
                               t_rig_ns=t, t_send_ns=t))
        if i % 250 == 0:
            ev = {"event": "delay_on" if i else "trial_start", "trial": second}
            out.append(wire.encode(wire.Kind.TRIAL_EVENT, wire.json_bytes(ev), rig_id=RIG, stream_id=1,
                                   seq=i, t_rig_ns=t, t_send_ns=t))
    rows = np.zeros((n_frames, len(DECODER_FIELDS)))
    rows[:, 1] = t0 + np.arange(n_frames) * BIN_NS
    out.append(wire.encode(wire.Kind.DECODER_OUTPUT, rows, rig_id=0, stream_id=0, seq=second,
                           t_rig_ns=0, t_send_ns=0))
    return out


def drain_ms(rec: Recorder, msgs: list[tuple[bytes, bytes | np.ndarray]]) -> float:
    """Put the messages, then time one drain of them (what the writer thread does each flush)."""
    for h, p in msgs:
        rec.put(h, p, time.monotonic_ns())
    t = time.perf_counter()
    rec._drain()  # the writer thread's work, timed on this thread (the thread itself idles: 1 h flush)
    return (time.perf_counter() - t) * 1e3


def run(n_units: int, n_frames: int, rounds: int, root: Path) -> dict[str, float]:
    """Best drain time (ms per second of session) of each configuration, interleaved rounds."""
    recs: dict[str, Recorder] = {}
    states: dict[str, LiveState] = {}
    for name in ("no tap (floor)", "tap per record", "span tap (compiled)"):
        recs[name] = Recorder(root / f"{n_units}-{len(recs)}", flush_interval_s=3600.0)
    states["tap per record"] = LiveState()
    recs["tap per record"].add_tap(states["tap per record"].on_record)
    states["span tap (compiled)"] = LiveState()
    recs["span tap (compiled)"].add_tap(states["span tap (compiled)"].on_record,
                                        span=states["span tap (compiled)"].on_span)
    best = dict.fromkeys(recs, float("inf"))
    for r in range(rounds + 1):
        msgs = session_second(n_units, n_frames, r)
        for name, rec in recs.items():
            ms = drain_ms(rec, msgs)
            if r:  # round 0 warms up (compiles, first layout)
                best[name] = min(best[name], ms)
    a, b = states["tap per record"].snapshot(), states["span tap (compiled)"].snapshot()
    if a["raster"] != b["raster"] or a["frames"] != b["frames"] or a["records"] != b["records"]:
        raise SystemExit("the two taps disagree: the benchmark's figures would be meaningless")
    for rec in recs.values():
        rec.close()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, nargs="+", default=[384, 1000, 2000])
    ap.add_argument("--frames", type=int, default=1000, help="frames per second of session (1 kHz)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"{platform.node()} · Python {platform.python_version()} · numpy {np.__version__} · "
          f"{args.frames} frames per round, best of {args.rounds}\n")
    print("| units | tap | drain, ms per s of session | ratio to no tap |")
    print("|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.units:
            best = run(n, args.frames, args.rounds, Path(tmp))
            floor = best["no tap (floor)"]
            for name, ms in best.items():
                print(f"| {n:,} | {name} | {ms:.2f} | {ms / floor:.2f}× |")


if __name__ == "__main__":
    main()
