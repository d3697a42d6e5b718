"""A lab rig written only from docs/wire-protocol.md: raw pyzmq and struct, no project import.

Used by tests (and usable by hand): streams 1 ms spike-count bins and delay-task trial events to
rigd, answers light commands with acknowledgements, and reports what came back as JSON.

    python tests/thirdparty_rig.py INGEST COMMAND --trials N [--units 80] [--send-garbage]
"""

import argparse
import json
import random
import struct
import sys
import time

import zmq

HEADER = struct.Struct("<4sHHBBHIIIIQqqI")  # docs/wire-protocol.md, "Header"
COMMAND = struct.Struct("<QQqqqqIBBBBffff")  # "Light commands"
ACK = struct.Struct("<QQqqqB7x")  # "Light acknowledgements"
SPIKE_COUNTS, TRIAL_EVENT, LIGHT_COMMAND, LIGHT_ACK, HEARTBEAT = 1, 4, 5, 6, 8
U8 = 1


_T0 = time.monotonic_ns()


def clock_ns() -> int:
    """This rig's own clock: nanoseconds since the rig process started (not rigd's clock)."""
    return time.monotonic_ns() - _T0


def header(kind: int, n_bytes: int, rig_id: int, stream: int, seq: int, t_ns: int, ndim: int = 1) -> bytes:
    return HEADER.pack(b"RIGD", 1, kind, U8 if ndim else 0, ndim, 0, n_bytes if ndim else 0, 0, rig_id,
                       stream, seq, t_ns, t_ns, n_bytes)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("ingest")
    ap.add_argument("command")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--units", type=int, default=80)
    ap.add_argument("--rig-id", type=int, default=1)
    ap.add_argument("--until-light", action="store_true", help="stop after the first applied command")
    args = ap.parse_args()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.connect(args.ingest)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(args.command)
    seqs = {0: 0, 1: 0, 2: 0, 3: 0}

    def send(kind: int, stream: int, payload: bytes, t_ns: int | None = None) -> None:
        now = clock_ns() if t_ns is None else t_ns
        pub.send_multipart([header(kind, len(payload), args.rig_id, stream, seqs[stream], now), payload])
        seqs[stream] += 1

    desc = json.dumps({"rig": "thirdparty", "n_units": args.units, "units_left": args.units // 2,
                       "units_right": args.units - args.units // 2, "bin_s": 0.001}).encode()
    # handshake: heartbeats until rigd's heartbeat lists this rig id (then both directions are up)
    deadline = time.monotonic() + 20
    up = False
    while time.monotonic() < deadline and not up:
        send(HEARTBEAT, 3, desc)
        while not up and sub.poll(100):
            hb, payload = sub.recv_multipart()
            up = HEADER.unpack(hb)[2] == HEARTBEAT and args.rig_id in json.loads(payload or b"{}").get("rigs", [])
    if not up:
        print(json.dumps({"error": "rigd did not list this rig"}))
        return 1
    rng = random.Random(1)
    commands: list[dict] = []
    heartbeats_from_rigd = 0
    frames = 0
    last_hb = time.monotonic()
    for trial in range(args.trials):
        # compressed but real timing: 0.5 s pre-sample, 1.3 s sample, 1.7 s delay, then outcome
        t0 = clock_ns()
        t_sample, t_delay, t_go = t0 + 500_000_000, t0 + 1_800_000_000, t0 + 3_500_000_000
        side = rng.choice(["left", "right"])
        ev = {"event": "trial_start", "trial": trial, "instructed": side, "delay_s": 1.7,
              "t_sample_ns": t_sample, "t_delay_ns": t_delay, "t_go_ns": t_go}
        send(TRIAL_EVENT, 1, json.dumps(ev).encode(), t0)
        sent = {"sample_on": False, "delay_on": False, "go_cue": False}
        next_bin = t0 + 1_000_000
        while True:
            now = clock_ns()
            if now >= next_bin:
                counts = bytes(rng.randrange(0, 2) for _ in range(args.units))
                send(SPIKE_COUNTS, 0, counts, next_bin)
                frames += 1
                next_bin += 1_000_000
            for name, t in (("sample_on", t_sample), ("delay_on", t_delay), ("go_cue", t_go)):
                if not sent[name] and now >= t:
                    send(TRIAL_EVENT, 1, json.dumps({"event": name, "trial": trial}).encode(), t)
                    sent[name] = True
            if now >= t_go + 200_000_000:
                break
            if time.monotonic() - last_hb > 0.4:
                send(HEARTBEAT, 3, desc)
                last_hb = time.monotonic()
            while sub.poll(0):
                hb, payload = sub.recv_multipart()
                h = HEADER.unpack(hb)
                if h[2] == HEARTBEAT:
                    heartbeats_from_rigd += 1
                elif h[2] == LIGHT_COMMAND and h[8] == args.rig_id:
                    f = COMMAND.unpack(payload)
                    t_rx = clock_ns()
                    status = 1 if t_rx > f[4] and f[7] == 1 else (4 if f[7] != 1 else 0)
                    send(LIGHT_ACK, 2, ACK.pack(f[0], f[1], f[3], t_rx, t_rx if status != 1 else 0, status))
                    commands.append({"command_id": f[0], "cause_seq": f[1], "trial": f[6], "action": f[7],
                                     "spots_left": f[9], "spots_right": f[10], "power_mw_per_spot": f[11],
                                     "duration_s": f[12], "ramp_down_s": f[13], "freq_hz": f[14],
                                     "latency_us": (t_rx - f[3]) / 1e3, "status": status})
            time.sleep(0.0002)
        choice = side if rng.random() < 0.8 else ("left" if side == "right" else "right")
        for name, extra in (("lick", {"side": choice}),
                            ("outcome", {"outcome": "hit" if choice == side else "error", "choice": choice,
                                         "reaction_time_s": 0.1}), ("trial_end", {})):
            send(TRIAL_EVENT, 1, json.dumps({"event": name, "trial": trial, **extra}).encode())
        if args.until_light and any(c["action"] == 1 for c in commands):
            break
    time.sleep(0.3)
    print(json.dumps({"frames": frames, "commands": commands, "heartbeats_from_rigd": heartbeats_from_rigd,
                      "trials": trial + 1}))
    pub.close(linger=1000)
    sub.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
