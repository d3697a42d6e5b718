"""What the fail-safe checks cost where they run, each beside a floor measured in the same run.

* per frame, on the hot thread: the count-value check of a 1,000-unit float32 frame
  (``wire.counts_valid``) against the floor ``np.frombuffer`` of the same payload; the beat the
  loop writes for the watchdog process (``LoopBeat.beat``, 10 Hz) against a bare ``struct.pack_into``;
  a locked ``Counters.inc`` against a bare dict increment;
* per snapshot (2 Hz, hot thread): ``LightInterlock.publish`` with a full energy window;
* per status (1 Hz, asyncio thread): ``strict_json`` of a rigd-sized status dict, all finite and
  with NaN in it, against ``json.dumps``.

Prints one line per figure (median of repeated timings, µs) and the ratio to its floor.

    .venv/bin/python bench/bench_failsafe.py
"""

from __future__ import annotations

import json
import struct
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import numpy as np

from hardware.calibration import SafetyLimits
from hardware.interlock import LightInterlock
from hardware.light_source import RecordingLightSource
from rig import wire
from rig.errors import Counters
from rig.session import strict_json
from rig.watchdog import LoopBeat


def _us(fn: Any, number: int) -> float:
    """Median over 7 repeats of the time per call (µs)."""
    return float(np.median(timeit.repeat(fn, number=number, repeat=7))) / number * 1e6


def _status() -> dict[str, Any]:
    """A status dict shaped like rigd's (about 3 KB of JSON)."""
    lat = {k: {"p50": 20.0, "p99": 60.0, "p999": 110.0, "max": 900.0, "n": 100_000} for k in
           ("e2e", "internal", "internal_commanded", "parse", "decode", "control", "send")}
    return {"state": "running", "frames": 1_234_567, "latency_us": lat,
            "counters": {f"errors.ingest.reason{i}": i for i in range(40)},
            "outcomes": {c: {"n": 40, "hit": 30, "error": 8, "early_lick": 2, "correct": 0.75}
                         for c in ("control", "left", "right", "bilateral")},
            "decoder": {"ready": True, "fit_accuracy": 0.81, "online_accuracy": 0.79, "provenance": {"day": 0}},
            "interlock": {"energy_used_j": {"left": 0.04, "right": 0.05}, "refusals": {"fraction": 2}},
            "last_alarms": [{"message": "x" * 80, "t_local_ns": 1} for _ in range(5)]}


def main() -> None:
    """Measure and print."""
    rows: list[tuple[str, float, str, float]] = []
    payload = np.random.default_rng(0).poisson(0.05, 1000).astype(np.float32).tobytes()
    limit = wire.count_limit(wire.DType.F32)
    assert limit is not None
    counts = np.frombuffer(payload, np.float32)
    rows.append(("count check, 1,000 × f32 frame", _us(lambda: wire.counts_valid(counts, limit), 20_000),
                 "np.frombuffer of the payload", _us(lambda: np.frombuffer(payload, np.float32), 20_000)))
    with tempfile.TemporaryDirectory() as d:
        beat = LoopBeat(Path(d) / "b.beat")
        buf = bytearray(32)
        st = struct.Struct("<qqqq")
        rows.append(("LoopBeat.beat (10 Hz)", _us(lambda: beat.beat(time.monotonic_ns()), 100_000),
                     "struct.pack_into + monotonic_ns",
                     _us(lambda: st.pack_into(buf, 0, time.monotonic_ns(), 1, 2, 3), 100_000)))
        beat.close()
    c = Counters()
    plain: dict[str, int] = {"x": 0}

    def bare() -> None:
        plain["x"] += 1

    rows.append(("Counters.inc (locked)", _us(lambda: c.inc("x"), 100_000), "dict increment", _us(bare, 100_000)))
    il = LightInterlock(SafetyLimits(), RecordingLightSource(), lambda a: None)
    now = time.monotonic_ns()
    il._energy.extend((now - i * 1_000_000_000, i % 2, 0.005) for i in range(120))  # a busy 10-min window
    il.heartbeat(now)
    rows.append(("LightInterlock.publish (2 Hz)", _us(il.publish, 2_000), "status() alone", _us(il.status, 2_000)))
    status = _status()
    nan_status = json.loads(json.dumps(status))
    nan_status["decoder"]["fit_accuracy"] = float("nan")
    for v in nan_status["latency_us"].values():
        v["p99"] = float("nan")
    floor = _us(lambda: json.dumps(status), 2_000)
    rows.append(("strict_json(status), all finite (1 Hz)", _us(lambda: strict_json(status), 2_000), "json.dumps",
                 floor))
    rows.append(("strict_json(status), NaN inside", _us(lambda: strict_json(nan_status), 2_000), "json.dumps", floor))
    print(f"{'what':42s} {'µs':>8s}   {'floor':32s} {'µs':>8s}  ratio")
    for what, t, fname, f in rows:
        print(f"{what:42s} {t:8.3f}   {fname:32s} {f:8.3f}  {t / f:5.2f}×")


if __name__ == "__main__":
    main()
