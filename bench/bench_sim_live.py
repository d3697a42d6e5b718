"""Live pacing of the simulated rig: timing slip at 1-ms bins vs units per hemisphere.

Runs the real rig process (``python -m sim.rig_process``, pinned to one core) against an in-process
stand-in for rigd's data plane (a SUB that drains every frame and a PUB that sends rigd heartbeats at
10 Hz), and reads the slip figures from the process's own JSON summary. The floor is the same loop
with one unit per hemisphere, measured in the same run; the 1,000-per-hemisphere row runs 60 s (the
acceptance figure: p99 < 1 ms), the sweep rows shorter, until the process stops keeping pace.

    .venv/bin/python bench/bench_sim_live.py [--duration 60] [--sweep-duration 10] [--cpu 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rig import wire  # noqa: E402


class Drain:
    """rigd's data plane, minimally: drain every frame, send heartbeats at 10 Hz."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.ingest = f"tcp://127.0.0.1:{self.sub.bind_to_random_port('tcp://127.0.0.1')}"
        self.pub = self.ctx.socket(zmq.PUB)
        self.command = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.frames = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        seq = 0
        next_hb = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_hb:
                h, p = wire.encode(wire.Kind.HEARTBEAT, wire.json_bytes({"rigs": [1]}), rig_id=0,
                                   seq=seq, t_rig_ns=time.monotonic_ns(), t_send_ns=time.monotonic_ns())
                self.pub.send_multipart([h, p])
                seq += 1
                next_hb = time.monotonic() + 0.1
            if self.sub.poll(10):
                while True:
                    try:
                        self.sub.recv_multipart(zmq.NOBLOCK, copy=False)
                        self.frames += 1
                    except zmq.Again:
                        break

    def close(self) -> None:
        self._stop.set()
        self._t.join()
        self.sub.close(0)
        self.pub.close(0)
        self.ctx.term()


def run_once(units: int, duration_s: float, cpu: int | None, realtime: bool) -> dict[str, Any]:
    drain = Drain()
    cmd = [sys.executable, "-m", "sim.rig_process", "--ingest", drain.ingest, "--command",
           drain.command, "--rig-id", "1", "--seed", "1", "--duration", str(duration_s),
           "--units-per-hemisphere", str(units), "--bin-ms", "1"]
    if realtime:
        cmd.append("--realtime")

    def pin() -> None:
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})

    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, preexec_fn=pin,
                             timeout=duration_s + 120, check=True)
    finally:
        drain.close()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds for the 1,000/hemisphere row")
    ap.add_argument("--sweep-duration", type=float, default=10.0)
    ap.add_argument("--sweep", type=int, nargs="*", default=[2000, 4000, 8000, 12000, 16000, 20000])
    ap.add_argument("--cpu", type=int, default=-1, help="core to pin the rig process to (-1: no pin)")
    ap.add_argument("--no-realtime", action="store_true", help="normal scheduling for the rig process")
    a = ap.parse_args()
    cpu = None if a.cpu < 0 else a.cpu
    rt = not a.no_realtime
    rows: list[tuple[int, float, dict[str, Any]]] = []
    floor = run_once(1, a.sweep_duration, cpu, rt)
    rows.append((1, a.sweep_duration, floor))
    rows.append((1000, a.duration, run_once(1000, a.duration, cpu, rt)))
    stop_at = None
    for u in a.sweep:
        r = run_once(u, a.sweep_duration, cpu, rt)
        rows.append((u, a.sweep_duration, r))
        if r["slip_p99_ms"] >= 1.0:
            stop_at = u
            break
    sched = "SCHED_FIFO" if rows[0][2].get("realtime") else "normal scheduling"
    print(f"\nSimulated rig live pacing, 1-ms bins, one process ({sched}, pinned to cpu {cpu}); "
          f"{os.cpu_count()} cores on this machine; python {sys.version.split()[0]}\n")
    print("| units/hemisphere | run (s) | bins | slip p50 (ms) | slip p99 (ms) | slip max (ms) "
          "| bins > 1 ms late | CPU / wall | p99 / floor | keeps pace (p99 < 1 ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for u, d, r in rows:
        ratio = r["slip_p99_ms"] / max(floor["slip_p99_ms"], 1e-3)
        print(f"| {u:,}{' (floor)' if u == 1 else ''} | {d:.0f} | {r['bins']:,} | {r['slip_p50_ms']:.2f} "
              f"| {r['slip_p99_ms']:.2f} | {r['slip_max_ms']:.1f} | {r['bins_late_over_1ms']:,} "
              f"| {r['cpu_per_wall']:.2f} | {ratio:.1f} | {'yes' if r['slip_p99_ms'] < 1.0 else 'no'} |")
    if stop_at is None:
        print(f"\nKept pace up to {rows[-1][0]:,} units per hemisphere (largest tried).")
    else:
        print(f"\nStops keeping pace (p99 >= 1 ms) at {stop_at:,} units per hemisphere.")


if __name__ == "__main__":
    main()
