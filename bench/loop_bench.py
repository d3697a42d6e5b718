"""Closed-loop benchmark: rigd against the raw pyzmq floor, measured in the same run.

For each unit count it runs (a) the floor: bench/rig_load.py ↔ bench/echo.py, a raw pyzmq echo
with rigd's socket pattern and reply size, and (b) rigd: ``rigd start --rig external`` with the CD
decoder (fitted beforehand), the default Chen 2021 scheduler, the interlock and recording on,
publishing its estimate for every frame, ↔ the same rig_load. It prints a markdown table with
p50/p99/p99.9 of both, their ratios, rigd's internal time and every drop counter, and with
``--write`` puts it into docs/benchmarks.md (between markers).

    .venv/bin/python -m bench.loop_bench --units 1000 --seconds 60 --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
RIGD = str(Path(sys.executable).parent / "rigd")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TRANSPORT = {"kind": "tcp"}
#: CPU placement (``--pin``): the loop under test (echo or rigd) on the last CPU, the rig loads on the others
PIN: dict[str, int | None] = {"cpu": None}
#: poll-ahead window (µs) for rigd (``--poll-ahead``) and, with ``--poll-ahead-floor``, for the echo too
POLL_AHEAD = {"rigd": 0, "floor": 0}
UI = {"on": False}  #: rigd with its web live view (and so its recorder tap) on a free port


def _set_pinning(on: bool) -> None:
    n = os.cpu_count() or 1
    PIN["cpu"] = n - 1 if on and n >= 2 else None


def _taskset(loop: bool) -> list[str]:
    """``taskset`` prefix placing a process on the loop's CPU (``loop``) or on the others; [] unpinned."""
    cpu = PIN["cpu"]
    if cpu is None:
        return []
    return ["taskset", "-c", str(cpu) if loop else f"0-{cpu - 1}"]


def _endpoints() -> tuple[str, str]:
    if TRANSPORT["kind"] == "ipc":
        d = tempfile.mkdtemp(prefix="rigd-ipc-")
        return f"ipc://{d}/ingest", f"ipc://{d}/command"
    return f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"


def fit_decoder(n_units: int, path: Path) -> None:
    """A CD decoder for ``n_units`` fitted on synthetic labelled trials (the loop's real decoder)."""
    from decoders.coding_direction import CodingDirection
    from decoders.synthetic import make_trialset

    ts = make_trialset(n_trials=24, units_per_hemisphere=max(1, n_units // 2), seed=1, bin_s=0.1)
    dec = CodingDirection()
    dec.fit(ts)
    dec.save(path)


def run_loads(ingest: str, command: str, mode: str, units: int, seconds: float, rigs: int,
              raw_channels: int = 0) -> list[dict[str, Any]]:
    procs = []
    for r in range(rigs):
        args = [PY, "-m", "bench.rig_load", "--ingest", ingest, "--command", command, "--mode", mode,
                "--units", str(units), "--seconds", str(seconds), "--rig-id", str(r + 1)]
        if raw_channels:
            args += ["--raw-channels", str(raw_channels)]
        procs.append(subprocess.Popen(_taskset(loop=False) + args, stdout=subprocess.PIPE, text=True, cwd=REPO))
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=seconds + 120)
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _rigd_realtime_priority() -> int:
    """rigd's default SCHED_FIFO priority: the floor runs under the same scheduling."""
    from rig.config import ServiceConfig

    return int(ServiceConfig.model_fields["realtime_priority"].default)


def floor(units: int, seconds: float, tmp: Path, rigs: int = 1, raw_channels: int = 0, *, project: bool = False
          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The raw pyzmq echo (or, with ``project``, the bare prototype loop) under rigd's scheduling."""
    ingest, command = _endpoints()
    stats = tmp / f"echo-{units}-{rigs}-{raw_channels}-{int(project)}.json"
    args = [PY, "-m", "bench.echo", "--ingest", ingest, "--command", command, "--seconds", str(seconds + 60),
            "--realtime-priority", str(_rigd_realtime_priority()), "--stats", str(stats)]
    if POLL_AHEAD["floor"]:
        args += ["--poll-ahead-us", str(POLL_AHEAD["floor"])]
    echo = subprocess.Popen(_taskset(loop=True) + args + (["--project"] if project else []), cwd=REPO)
    try:
        time.sleep(0.5)
        loads = run_loads(ingest, command, "floor", units, seconds, rigs, raw_channels)
    finally:
        echo.terminate()
        echo.wait(10)
    return loads, json.loads(stats.read_text())


def rigd(units: int, seconds: float, tmp: Path, rigs: int = 1, raw_channels: int = 0
         ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    ingest, command = _endpoints()
    dec = tmp / f"cd-{units}.npz"
    if not dec.exists():
        fit_decoder(raw_channels or units, dec)
    cfg = tmp / "bench.toml"
    # a bench without an animal: the placeholder calibration is allowed, and said so
    cfg.write_text(f"rig_ids = {list(range(1, rigs + 1))}\nbench_test_calibration = true\n")
    runtime = tmp / "runtime"
    env = {**os.environ, "RIGD_RUNTIME_DIR": str(runtime)}
    log = open(tmp / f"rigd-{units}-{rigs}.log", "w")  # noqa: SIM115
    pin = [] if PIN["cpu"] is None else ["--loop-cpu", str(PIN["cpu"])]  # rigd places its own threads
    if POLL_AHEAD["rigd"]:
        pin += ["--poll-ahead-us", str(POLL_AHEAD["rigd"])]
    proc = subprocess.Popen([RIGD, "start", *pin, "--rig", "external", "--config", str(cfg), "--ingest", ingest,
                             "--command", command, "--publish-estimates", "--decoder-file", str(dec),
                             "--session-dir", str(tmp / "sessions"), "--ui" if UI["on"] else "--no-ui", "--no-live",
                             "--name", "bench"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (runtime / "bench.json").exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((tmp / f"rigd-{units}-{rigs}.log").read_text())
            time.sleep(0.1)
        info = json.loads((runtime / "bench.json").read_text())
        loads = run_loads(ingest, command, "rigd", units, seconds, rigs, raw_channels)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
    manifest = json.loads((Path(info["session_dir"]) / "manifest.json").read_text())
    return loads, manifest


def _fmt(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.0f}"


def row(units: int, rigs: int, fl: list[dict[str, Any]], fl_stats: dict[str, Any], rd: list[dict[str, Any]],
        m: dict[str, Any], label: str = "") -> dict[str, Any]:
    def agg(runs: list[dict[str, Any]], q: str) -> float:
        vals = [r["rtt_us"].get(q) for r in runs if r["rtt_us"]]
        return float(np.mean(vals)) if vals else float("nan")

    c = m["counters"]
    internal = m["latency_us"]["internal"]
    drops = (sum(r["missing_replies"] for r in rd) + c.get("ingest.missing_seq", 0) + c.get("recorder_dropped", 0)
             + c.get("late_decisions", 0))
    r = {"label": label or f"{units} units", "units": units, "rigs": rigs,
         "floor_p50": agg(fl, "p50"), "floor_p99": agg(fl, "p99"), "floor_p99_9": agg(fl, "p99_9"),
         "rigd_p50": agg(rd, "p50"), "rigd_p99": agg(rd, "p99"), "rigd_p99_9": agg(rd, "p99_9"),
         "echo_internal_p50": fl_stats["internal_us"]["p50"], "echo_internal_p99": fl_stats["internal_us"]["p99"],
         "internal_p50": internal["p50"], "internal_p99": internal["p99"], "internal_p99_9": internal["p99_9"],
         "decision_p50": m["latency_us"].get("decision", {}).get("p50", float("nan")),
         "decision_p99": m["latency_us"].get("decision", {}).get("p99", float("nan")),
         "frames": c.get("frames", 0), "missing_replies": sum(r["missing_replies"] for r in rd),
         "missing_seq": c.get("ingest.missing_seq", 0), "recorder_dropped": c.get("recorder_dropped", 0),
         "recorder_max_lag": c.get("recorder_max_lag_records", 0), "late_decisions": c.get("late_decisions", 0),
         "drops": drops, "floor_missing": sum(r["missing_replies"] for r in fl),
         "light_commands": sum(r["light_commands"] for r in rd)}
    for who, runs in (("floor", fl), ("rigd", rd)):
        for part in ("there", "back"):
            for q in ("p50", "p99", "p99_9"):
                vals = [x[f"{part}_us"][q] for x in runs if x.get(f"{part}_us")]
                r[f"{who}_{part}_{q}"] = float(np.mean(vals)) if vals else float("nan")
            vals = [x["slowest_1pct"][f"{part}_us"] for x in runs if x.get("slowest_1pct")]
            r[f"{who}_{part}_slow"] = float(np.mean(vals)) if vals else float("nan")
    r["ratio_p50"] = r["rigd_p50"] / r["floor_p50"]
    r["ratio_p99"] = r["rigd_p99"] / r["floor_p99"]
    return r


HEADER = ("| load | floor p50 / p99 / p99.9 (µs) | rigd p50 / p99 / p99.9 (µs) | ratio p50 | ratio p99 | "
          "echo recv → send p50 / p99 (µs) | rigd internal p50 / p99 / p99.9 (µs) | decision p50 / p99 (µs) | "
          "frames | dropped (rig-side missing / seq gaps / recorder / late) |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [HEADER]
    for r in rows:
        lines.append(
            f"| {r['label']} | {_fmt(r['floor_p50'])} / {_fmt(r['floor_p99'])} / {_fmt(r['floor_p99_9'])} | "
            f"{_fmt(r['rigd_p50'])} / {_fmt(r['rigd_p99'])} / {_fmt(r['rigd_p99_9'])} | {r['ratio_p50']:.2f} | "
            f"{r['ratio_p99']:.2f} | {_fmt(r['echo_internal_p50'])} / {_fmt(r['echo_internal_p99'])} | "
            f"{r['internal_p50']:.0f} / {r['internal_p99']:.0f} / "
            f"{r['internal_p99_9']:.0f} | {_fmt(r['decision_p50'])} / {_fmt(r['decision_p99'])} | {r['frames']} | "
            f"{r['missing_replies']} / {r['missing_seq']} / "
            f"{r['recorder_dropped']} / {r['late_decisions']} |")
    return "\n".join(lines)


HOPS_HEADER = ("| load | floor: there p50 / p99 / p99.9 | floor: back p50 / p99 / p99.9 | "
               "rigd: there p50 / p99 / p99.9 | rigd: back p50 / p99 / p99.9 | "
               "slowest 1 %: there / back, floor → rigd |\n|---|---|---|---|---|---|")


def hops_table(rows: list[dict[str, Any]]) -> str:
    """Each round trip split at the reply's send stamp: frame sent → reply sent ("there": the
    inbound hop, the wake-up and the processing) and reply sent → reply received ("back")."""
    def three(r: dict[str, Any], k: str) -> str:
        return " / ".join(_fmt(r[f"{k}_{q}"]) for q in ("p50", "p99", "p99_9"))

    lines = [HOPS_HEADER]
    for r in rows:
        lines.append(f"| {r['label']} | {three(r, 'floor_there')} | {three(r, 'floor_back')} | "
                     f"{three(r, 'rigd_there')} | {three(r, 'rigd_back')} | "
                     f"{_fmt(r['floor_there_slow'])} / {_fmt(r['floor_back_slow'])} → "
                     f"{_fmt(r['rigd_there_slow'])} / {_fmt(r['rigd_back_slow'])} |")
    return "\n".join(lines)


def prototype_table(units: int, proto: tuple[list[dict[str, Any]], dict[str, Any]], r: dict[str, Any]) -> str:
    """The bare prototype loop (pyzmq + a numpy CD projection, nothing else) next to rigd, same run."""
    loads, stats = proto

    def agg(q: str) -> float:
        return float(np.mean([x["rtt_us"][q] for x in loads if x["rtt_us"]]))

    pi = stats["internal_us"]
    return ("| loop, " + f"{units} units" + " | end to end p50 / p99 / p99.9 (µs) | internal p50 / p99 (µs) |\n"
            "|---|---|---|\n"
            f"| bare prototype (pyzmq + numpy CD projection) | {_fmt(agg('p50'))} / {_fmt(agg('p99'))} / "
            f"{_fmt(agg('p99_9'))} | {_fmt(pi['p50'])} / {_fmt(pi['p99'])} |\n"
            f"| rigd, everything on | {_fmt(r['rigd_p50'])} / {_fmt(r['rigd_p99'])} / {_fmt(r['rigd_p99_9'])} | "
            f"{_fmt(r['internal_p50'])} / {_fmt(r['internal_p99'])} |\n"
            f"| rigd ÷ prototype | {r['rigd_p50'] / agg('p50'):.2f} / {r['rigd_p99'] / agg('p99'):.2f} / – | "
            f"{r['internal_p50'] / pi['p50']:.2f} / {r['internal_p99'] / pi['p99']:.2f} |")


def write_doc(text: str, command: str, load: str) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    start, end = "<!-- loop-bench:start -->", "<!-- loop-bench:end -->"
    body = (f"{start}\n\nCommand: `{command}`  \nMachine: {platform.node()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"load average during the run {load}\n\n"
            f"{text}\n\n{end}")
    cur = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    if start in cur:
        cur = cur[: cur.index(start)] + body + cur[cur.index(end) + len(end):]
    else:
        cur = cur.rstrip() + "\n\n## Closed loop vs the raw pyzmq floor\n\n" + body + "\n"
    doc.write_text(cur)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, nargs="+", default=[384, 1000, 10_000, 100_000])
    ap.add_argument("--rigs", type=int, nargs="+", default=[1])
    ap.add_argument("--raw", action="store_true", help="also 384 channels × 30 kHz raw chunks (BRAND comparison)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    ap.add_argument("--prototype", type=int, default=None, metavar="UNITS",
                    help="also run the bare prototype loop (pyzmq + numpy CD projection) at this unit count")
    ap.add_argument("--pin", action="store_true",
                    help="CPU placement: the loop under test on the last CPU, the rig processes on the others")
    ap.add_argument("--poll-ahead", type=int, default=0, metavar="US",
                    help="rigd polls for each predicted frame from US µs before it (rigd start --poll-ahead-us)")
    ap.add_argument("--poll-ahead-floor", action="store_true",
                    help="give the raw echo floor (and the bare prototype) the same poll-ahead")
    ap.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                    help="tcp://127.0.0.1 (default) or ipc:// (Unix sockets, one host)")
    ap.add_argument("--ui", action="store_true",
                    help="run rigd with its web live view (rigd start's default; without it, --no-ui)")
    a = ap.parse_args()
    TRANSPORT["kind"] = a.transport
    UI["on"] = a.ui
    _set_pinning(a.pin)
    POLL_AHEAD["rigd"] = a.poll_ahead
    POLL_AHEAD["floor"] = a.poll_ahead if a.poll_ahead_floor else 0
    rows = []
    proto_text = ""
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="rigd-bench-") as td:
        tmp = Path(td)
        plan = [(u, 1, 0) for u in a.units] + [(1000, n, 0) for n in a.rigs if n > 1]
        if a.raw:
            plan.append((384, 1, 384))
        for units, rigs, raw in plan:
            label = (f"{units} units" + (f", {rigs} rigs" if rigs > 1 else "") + (" (raw 30 kHz chunks)" if raw else "")
                     + (", ipc" if a.transport == "ipc" else "") + (", live view" if a.ui else ""))
            print(f"… {label}: floor", file=sys.stderr, flush=True)
            fl, fl_stats = floor(units, a.seconds, tmp, rigs, raw)
            print(f"… {label}: rigd", file=sys.stderr, flush=True)
            rd, m = rigd(units, a.seconds, tmp, rigs, raw)
            rows.append(row(units, rigs, fl, fl_stats, rd, m, label))
            if a.prototype == units and rigs == 1 and not raw:
                print(f"… {label}: bare prototype", file=sys.stderr, flush=True)
                proto = floor(units, a.seconds, tmp, 1, 0, project=True)
                proto_text = prototype_table(units, proto, rows[-1])
            loads.append(os.getloadavg()[0])
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    text = table(rows) + "\n\nWhere the round trip goes (µs; \"there\" = frame sent → reply handed to its socket, " \
        "\"back\" = reply socket → rig):\n\n" + hops_table(rows)
    if proto_text:
        text += "\n\n" + proto_text
    print(text)
    print(json.dumps(rows, indent=1, default=float), file=sys.stderr)
    if a.write:
        write_doc(text, "python -m bench.loop_bench " + " ".join(sys.argv[1:]),
                  f"{min(loads):.1f}–{max(loads):.1f} (1-min, sampled between configurations)")


if __name__ == "__main__":
    main()
