"""Soak: rigd for a long session at 1 kHz × 1,000 units with one rig restart and one broker restart.

Runs the real processes: a private Mosquitto on a free port, ``rigd start --rig external`` on it,
and the simulated rig (``python -m sim.rig_process``, 1,000 units, 1 ms bins, the delay task with
light) as a lab rig would connect. At 1/3 of the run the rig is stopped and a new rig process starts
(a new boot: its sequence numbers start again at 0); at 2/3 the broker is stopped for 5 s and
started again on the same port. It checks:

* frames: every frame each rig process says it sent (its summary's ``bins``) was processed by rigd
  (``frames`` in rigd's final status) — the restart gap is the time between the two rig processes,
  in which nothing is sent, so "lost outside the gap" is sent − processed;
* memory: rigd's RSS, sampled every 5 s: the median of the first ``--rss-window-s`` after warm-up
  against the median of the last ``--rss-window-s`` (growth in %), and the peak. Medians, because a
  decoder refit (every 20 trials) holds a few hundred MB for its few seconds at 1,000 units: a
  single sample taken during one is a refit, not growth;
* the restart and the broker outage as rigd saw them (alarms and counters), and that the loop kept
  running (``errors.loop.internal``).

Prints one JSON object; ``--markdown`` also prints the row for docs/benchmarks.md.

    .venv/bin/python -m bench.soak --minutes 60 --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RIGD = str(Path(sys.executable).parent / "rigd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Broker:
    """A private Mosquitto that can be stopped and started again on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def _status(env: dict[str, str], name: str) -> dict[str, Any]:
    r = subprocess.run([RIGD, "status", "--name", name, "--json"], check=False, capture_output=True, text=True,
                       env=env,
                       timeout=60, cwd=REPO)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def _rig(ingest: str, command: str, seed: int, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sim.rig_process", "--ingest", ingest, "--command", command,
                             "--seed", str(seed), "--units-per-hemisphere", "500", "--bin-ms", "1",
                             "--connect-timeout", "60"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True)


def _stop_rig(p: subprocess.Popen[str]) -> dict[str, Any]:
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": out[-500:]}


def main() -> int:
    """Run the soak and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--warmup-s", type=float, default=60.0, help="RSS baseline taken after this long")
    ap.add_argument("--rss-window-s", type=float, default=300.0, help="RSS medians over this long")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    total = a.minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="rigd-soak-"))
    env = {**os.environ, "RIGD_RUNTIME_DIR": str(tmp / "runtime"), "RIGD_STATE_DIR": str(tmp / "state")}
    cal = tmp / "calibration.toml"
    cal.write_text((REPO / "hardware" / "calibration_default.toml").read_text().replace(
        'measured_on = "placeholder - measure on your rig"', 'measured_on = "soak bench"'))
    broker = Broker(tmp)
    broker.start()
    ingest, command = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    name = "soak"
    rigd_log = open(tmp / "rigd.log", "w")  # noqa: SIM115
    rigd = subprocess.Popen([RIGD, "start", "--rig", "external", "--name", name, "--no-ui", "--no-live",
                             "--session-dir", str(tmp / "sessions"), "--ingest", ingest, "--command", command,
                             "--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--calibration", str(cal),
                             "--trials", "100000"],  # runs until stopped, not the protocol's n_trials
                            stdout=rigd_log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    runtime = tmp / "runtime" / f"{name}.json"
    while not runtime.exists():
        if rigd.poll() is not None:
            raise RuntimeError((tmp / "rigd.log").read_text())
        time.sleep(0.1)
    t0 = time.monotonic()
    rig = _rig(ingest, command, 1, tmp / "rig1.log")
    samples: list[tuple[float, float]] = []  # (s since start, RSS MB)
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(5.0):
            with contextlib.suppress(OSError):
                samples.append((time.monotonic() - t0, _rss_mb(rigd.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summaries: list[dict[str, Any]] = []
    time.sleep(max(0.0, total / 3 - (time.monotonic() - t0)))
    summaries.append(_stop_rig(rig))
    rig = _rig(ingest, command, 2, tmp / "rig2.log")
    time.sleep(max(0.0, 2 * total / 3 - (time.monotonic() - t0)))
    broker.stop()
    time.sleep(5.0)
    broker.start()
    time.sleep(max(0.0, total - (time.monotonic() - t0)))
    summaries.append(_stop_rig(rig))
    sampling.set()
    sampler.join()
    end = samples[-1][0] if samples else total
    first = [m for t, m in samples if a.warmup_s <= t < a.warmup_s + a.rss_window_s]
    last = [m for t, m in samples if t >= end - a.rss_window_s]
    rss0 = statistics.median(first) if first else float("nan")
    rss1 = statistics.median(last) if last else float("nan")
    peak = max((m for _, m in samples), default=float("nan"))
    time.sleep(2.0)  # the last frames and acks arrive
    st = _status(env, name)
    rigd.send_signal(signal.SIGTERM)
    rc = rigd.wait(60)
    broker.stop()
    manifest = json.loads(next((tmp / "sessions").iterdir()).joinpath("manifest.json").read_text())
    counters = manifest.get("counters", {})
    sent = sum(int(s.get("bins", 0)) for s in summaries)
    processed = int(counters.get("frames", st.get("frames", 0)))
    out = {
        "minutes": a.minutes, "units": 1000, "rate_hz": 1000, "frames_sent": sent, "frames_processed": processed,
        "frames_lost": sent - processed,
        "rss_after_warmup_mb": round(rss0, 1), "rss_end_mb": round(rss1, 1),
        "rss_growth_pct": round(100 * (rss1 - rss0) / rss0, 2), "rss_peak_mb": round(peak, 1),
        "rss_window_s": a.rss_window_s, "warmup_s": a.warmup_s,
        "rig_restarts_seen": counters.get("rigs.restarts", 0),
        "control_plane_reconnects": counters.get("control_plane.reconnects", 0),
        "loop_internal_errors": counters.get("errors.loop.internal", 0),
        "recorder_dropped": counters.get("recorder_dropped", 0),
        "ingest_missing_seq": counters.get("ingest.missing_seq", 0),
        "trials": manifest.get("trials_done"), "rigd_exit": rc, "session": str(tmp / "sessions"),
        "rig_summaries": [{k: s.get(k) for k in ("bins", "trials", "slip_p99_ms", "error")} for s in summaries],
    }
    print(json.dumps(out, indent=2))
    if a.markdown:
        print(f"| {a.minutes:.0f} min | {sent:,} | {processed:,} | {sent - processed} | {out['rig_restarts_seen']} | "
              f"{out['control_plane_reconnects']} | "
              f"{rss0:.0f} → {rss1:.0f} MB ({out['rss_growth_pct']:+.1f} %), peak {peak:.0f} MB | "
              f"{out['loop_internal_errors']} |")
    return 0 if sent == processed and out["rss_growth_pct"] < 5 else 1


if __name__ == "__main__":
    sys.exit(main())
