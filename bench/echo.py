"""The floor for the closed-loop benchmark: a raw pyzmq echo with rigd's socket pattern.

It binds a SUB (ingest) and a PUB (command) exactly as rigd does, and for every spike-count or
raw frame publishes the same 56 + 64-byte reply rigd's estimate has (header + 8 float64s with the
frame's seq and send time). It parses nothing else: it is what the transport alone costs.

It runs under the same scheduling as rigd's hot loop when given ``--realtime-priority`` (main
thread and its own ZeroMQ I/O thread under SCHED_FIFO), so the comparison is like for like. It
times its own recv → send on every frame (the transport's share of rigd's "internal" time) and
writes the percentiles to ``--stats`` when terminated. With ``--project`` it is the bare
prototype loop of issue 7: a numpy coding-direction projection of the counts before replying.
With ``--poll-ahead-us`` it waits for frames as rigd does with ``--poll-ahead-us``: asleep until
that long before the predicted next frame, then polling (yielding the CPU) until it comes.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from rig import wire

HEADER = wire.HEADER


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ingest", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--realtime-priority", type=int, default=0, help="SCHED_FIFO priority, as rigd's loop")
    ap.add_argument("--project", action="store_true", help="bare prototype: project the counts on a CD first")
    ap.add_argument("--poll-ahead-us", type=int, default=0, help="poll-ahead window, as rigd's")
    ap.add_argument("--stats", type=Path, help="write recv → send percentiles (µs) here at exit")
    a = ap.parse_args()
    ctx: Any = zmq.Context(io_threads=1)
    fifo = False
    if a.realtime_priority > 0:
        try:
            ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_FIFO)
            ctx.set(zmq.THREAD_PRIORITY, a.realtime_priority)
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(a.realtime_priority))
            fifo = True
        except (PermissionError, OSError):
            pass  # as rigd: without the privilege it runs at normal priority
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 200_000)
    sub.bind(a.ingest)
    pub = ctx.socket(zmq.PUB)
    pub.bind(a.command)
    out = np.zeros(8, dtype=np.float64)
    internal = np.zeros(1 << 21, dtype=np.float32)  # recv → send, µs, one per echoed frame
    n = 0
    seq = 0
    np_dtypes = {int(d): wire.np_dtype(d) for d in wire.DType if d != wire.DType.NONE}
    cd: dict[int, np.ndarray[Any, Any]] = {}  # coding direction per payload length (bare prototype)
    stop = {"now": False}

    def on_term(_signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    end = time.monotonic() + a.seconds
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    ahead = a.poll_ahead_us * 1000
    fd = int(sub.getsockopt(zmq.FD))
    t_last = period = 0
    polling = False

    def priority(rt: bool) -> None:  # poll at normal priority, answer under SCHED_FIFO (as rigd)
        if fifo:
            os.sched_setscheduler(0, *((os.SCHED_FIFO, os.sched_param(a.realtime_priority)) if rt
                                       else (os.SCHED_OTHER, os.sched_param(0))))

    while time.monotonic() < end and not stop["now"]:
        if ahead:  # as rig/loop.py's HotLoop._poll_ahead, for one rig
            if not sub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                now = time.monotonic_ns()
                t_next = t_last + period
                if period and t_next - ahead <= now < t_next + ahead:
                    if not polling:
                        polling = True
                        priority(False)
                    os.sched_yield()
                else:
                    if polling:
                        polling = False
                        priority(True)
                    select.select([fd], [], [], min((t_next - ahead - now) * 1e-9, 0.01) if now < t_next else 0.01)
                continue
            if polling:
                polling = False
                priority(True)
        elif not poller.poll(100):
            continue
        while True:
            try:
                h, p = sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            t_recv = time.monotonic_ns()
            if ahead and t_recv - t_last < 50_000_000:
                period += (t_recv - t_last - period) >> 4 if period else t_recv - t_last
            t_last = t_recv
            f = HEADER.unpack(h.buffer)
            kind = f[2]
            if kind in (1, 3):  # counts / raw: echo like rigd's estimate
                out[0] = f[10]
                out[1] = f[11]
                out[2] = f[12]
                if a.project:
                    x = np.frombuffer(p.buffer, dtype=np_dtypes[f[3]])
                    w = cd.get(x.size)
                    if w is None:
                        w = cd[x.size] = np.random.default_rng(0).normal(size=x.size)
                    out[4] = w @ x
                hdr = HEADER.pack(b"RIGD", 1, 7, 7, 1, 0, 8, 0, f[8], 4, seq, f[11], time.monotonic_ns(), 64)
                seq += 1
                pub.send_multipart([hdr, out])
                if n < internal.size:
                    internal[n] = (time.monotonic_ns() - t_recv) * 1e-3
                    n += 1
            elif kind == 8:  # heartbeat: answer as rigd does (listing the rig) so its handshake completes
                hb = b'{"rigs":[%d]}' % f[8]
                pub.send_multipart([HEADER.pack(b"RIGD", 1, 8, 1, 1, 0, len(hb), 0, 0, 3, seq, 0, 0, len(hb)), hb])
                seq += 1
    if a.stats is not None:
        v = internal[:n].astype(np.float64)
        pct = {q: float(np.percentile(v, x)) if n else float("nan")
               for q, x in (("p50", 50), ("p99", 99), ("p99_9", 99.9))}
        a.stats.write_text(json.dumps({"n": n, "internal_us": pct}))
    sub.close(0)
    pub.close(0)
    ctx.term()


if __name__ == "__main__":
    main()
