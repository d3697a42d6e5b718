"""Rig-side load for the closed-loop benchmark: publishes frames at a set rate and times replies.

Mode ``rigd``: a lab rig talking to rigd (handshake, heartbeats, delay-task trial events every
``--trial-s``, acks for light commands); the per-frame reply is rigd's published estimate.
Mode ``floor``: the same frames to the raw pyzmq echo (bench/echo.py); the reply is the echo.
Either way the round trip of every frame is ``reply received − frame t_send`` on this process's
clock, and the JSON printed at the end has the percentiles, sent/received counts and gaps.
"""

from __future__ import annotations

import argparse
import json
import select
import time
from typing import Any

import numpy as np
import zmq

from rig import wire


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ingest", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--mode", choices=["rigd", "floor"], default="rigd")
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rig-id", type=int, default=1)
    ap.add_argument("--raw-channels", type=int, default=0, help="send int16 (30, channels) raw chunks instead")
    ap.add_argument("--trial-s", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    a = ap.parse_args()

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 1_000_000)
    pub.connect(a.ingest)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(a.command)
    seqs = [0] * 8

    def send(kind: wire.Kind, stream: int, payload: Any, t_rig: int | None = None) -> int:
        now = time.monotonic_ns()
        h, p = wire.encode(kind, payload, rig_id=a.rig_id, stream_id=stream, seq=seqs[stream],
                           t_rig_ns=now if t_rig is None else t_rig, t_send_ns=now)
        seqs[stream] += 1
        pub.send_multipart([h, p], copy=False)
        return now

    n_units = a.units
    if a.raw_channels:
        n_units = a.raw_channels  # one threshold-crossing "unit" per channel
    desc: dict[str, Any] = {"rig": "bench", "n_units": n_units, "units_left": n_units // 2,
                            "units_right": n_units - n_units // 2, "bin_s": 1.0 / a.rate}
    if a.raw_channels:
        desc.update(raw_channels=a.raw_channels, sample_rate_hz=30_000.0)
    hb = wire.json_bytes(desc)
    # handshake (docs/wire-protocol.md; both modes: the echo answers heartbeats as rigd does):
    # heartbeats until the other side's heartbeat lists this rig
    deadline = time.monotonic() + 30
    listed = False
    while time.monotonic() < deadline and not listed:
        send(wire.Kind.HEARTBEAT, 3, hb)
        while not listed and sub.poll(100):
            frames = sub.recv_multipart()
            h = wire.unpack_header(frames[0])
            if h.kind == wire.Kind.HEARTBEAT and h.payload_nbytes:
                listed = a.rig_id in wire.payload_json(h, frames[1]).get("rigs", [])
    if not listed:
        raise SystemExit("no answer from the other side")
    time.sleep(0.3)
    while sub.poll(0):
        sub.recv_multipart()

    rng = np.random.default_rng(a.rig_id)
    pool = [rng.poisson(0.005, n_units).astype(np.uint8) for _ in range(64)]
    raw = []
    for _ in range(8 if a.raw_channels else 0):  # 1 ms of 30 kHz noise (σ 20) with a few spikes
        x = rng.normal(0, 20, (30, a.raw_channels))
        x[rng.integers(0, 30, 8), rng.integers(0, a.raw_channels, 8)] -= 200
        raw.append(x.astype(np.int16))
    period = int(1e9 / a.rate)
    n_total = int(a.seconds * a.rate)
    n_warm = int(a.warmup_s * a.rate)
    rtt = np.full(n_total, np.nan)
    # the two hops of each round trip, split at the reply's own t_send stamp (CLOCK_MONOTONIC is
    # one clock for every process on the machine): frame sent → reply handed to its socket (the
    # inbound hop, the wake-up and the other side's processing), then reply socket → here
    there = np.full(n_total, np.nan)
    sent_at = np.zeros(n_total, dtype=np.int64)
    replies = 0
    acks = 0
    commands = 0
    trial = -1
    t_trial0 = 0
    t0 = time.monotonic_ns() + 10_000_000
    next_hb = t0
    events_sent: set[str] = set()

    def drain(block_ms: int) -> None:
        nonlocal replies, acks, commands
        if block_ms and not sub.poll(block_ms):
            return
        while True:
            try:
                h_b, p_b = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic_ns()
            h = wire.unpack_header(h_b)
            if h.kind == wire.Kind.DECODER_OUTPUT and h.rig_id == a.rig_id:
                row = np.frombuffer(p_b, dtype="<f8")
                k = int(row[0]) - first_seq
                if 0 <= k < n_total and sent_at[k]:
                    rtt[k] = (now - sent_at[k]) / 1e3
                    there[k] = (h.t_send_ns - sent_at[k]) / 1e3
                    replies += 1
            elif h.kind == wire.Kind.LIGHT_COMMAND and h.rig_id == a.rig_id:
                c = wire.unpack_light_command(p_b)
                commands += 1
                status = wire.AckStatus.LATE if now > c.deadline_rig_ns and c.action == wire.LightAction.START \
                    else wire.AckStatus.APPLIED
                ack = wire.LightAckFields(c.command_id, c.cause_seq, c.cause_t_send_ns, now, now, status)
                send(wire.Kind.LIGHT_ACK, 2, ack.pack())
                acks += 1

    fd = sub.getsockopt(zmq.FD)
    first_seq = seqs[5] if a.raw_channels else seqs[0]
    for k in range(n_total):
        t_due = t0 + k * period
        # trial events (rigd mode): the task clock the decoder and scheduler run on
        if a.mode == "rigd":
            if k % int(a.trial_s * a.rate) == 0:
                trial += 1
                t_trial0 = t_due
                events_sent.clear()
                side = "left" if trial % 2 else "right"
                send(wire.Kind.TRIAL_EVENT, 1, wire.json_bytes(
                    {"event": "trial_start", "trial": trial, "instructed": side, "delay_s": 1.7,
                     "t_sample_ns": t_due + 500_000_000, "t_delay_ns": t_due + 1_800_000_000,
                     "t_go_ns": t_due + 3_500_000_000}), t_due)
            elapsed = (t_due - t_trial0) / 1e9
            for name, at in (("sample_on", 0.5), ("delay_on", 1.8), ("go_cue", 3.5), ("outcome", 3.6),
                             ("trial_end", 4.0)):
                if elapsed >= at and name not in events_sent:
                    events_sent.add(name)
                    extra: dict[str, Any] = {}
                    if name == "outcome":
                        extra = {"outcome": "hit", "choice": "left" if trial % 2 else "right",
                                 "reaction_time_s": 0.1}
                    send(wire.Kind.TRIAL_EVENT, 1, wire.json_bytes({"event": name, "trial": trial, **extra}))
            if t_due >= next_hb:
                send(wire.Kind.HEARTBEAT, 3, hb)
                next_hb = t_due + 250_000_000
        # wait for the frame's due time blocked on the reply socket (its FD, µs timeouts), so a
        # reply is timestamped when it arrives, not when we next look
        while True:
            if sub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                drain(0)
                continue
            left_ns = t_due - time.monotonic_ns()
            if left_ns <= 0:
                break
            select.select([fd], [], [], left_ns / 1e9)
        if a.raw_channels:
            sent_at[k] = send(wire.Kind.RAW_SAMPLES, 5, raw[k % 8], t_due)
        else:
            sent_at[k] = send(wire.Kind.SPIKE_COUNTS, 0, pool[k % 64], t_due)
        drain(0)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        drain(50)
    r = rtt[n_warm:]
    ok = r[np.isfinite(r)]

    def percentiles(v: np.ndarray[Any, Any]) -> dict[str, float]:
        return {f"p{q}".replace(".", "_"): float(np.percentile(v, q)) for q in (50, 99, 99.9)} if v.size else {}

    pct = percentiles(ok)
    late_send = np.diff(sent_at[n_warm:]) / 1e3
    fin = np.isfinite(r)
    th, back = there[n_warm:][fin], (r - there[n_warm:])[fin]

    # where the slowest 1 % of round trips spent their time (medians over those frames)
    slow = ok >= np.percentile(ok, 99) if ok.size else ok.astype(bool)
    tail = {"there_us": float(np.median(th[slow])), "back_us": float(np.median(back[slow]))} if ok.size else {}
    print(json.dumps({"mode": a.mode, "units": n_units, "rate": a.rate, "rig_id": a.rig_id, "sent": n_total,
                      "measured": int(r.size), "replies": int(np.isfinite(r).sum()),
                      "missing_replies": int(r.size - np.isfinite(r).sum()), "rtt_us": pct,
                      "rtt_max_us": float(ok.max()) if ok.size else None,
                      "there_us": percentiles(th), "back_us": percentiles(back), "slowest_1pct": tail,
                      "send_interval_p99_us": float(np.percentile(late_send, 99)) if late_send.size else None,
                      "light_commands": commands, "acks": acks}))
    pub.close(linger=2000)
    sub.close()
    ctx.term()


if __name__ == "__main__":
    main()
