"""The floor for the closed-loop benchmark: a raw pyzmq echo with rigd's socket pattern.

It binds a SUB (ingest) and a PUB (command) exactly as rigd does, and for every spike-count or
raw frame publishes the same 56 + 64-byte reply rigd's estimate has (header + 8 float64s with the
frame's seq and send time). It parses nothing else: it is what the transport alone costs.
"""

from __future__ import annotations

import argparse
import struct
import time

import numpy as np
import zmq

HEADER = struct.Struct("<4sHHBBHIIIIQqqI")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ingest", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--seconds", type=float, default=120.0)
    a = ap.parse_args()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 200_000)
    sub.bind(a.ingest)
    pub = ctx.socket(zmq.PUB)
    pub.bind(a.command)
    out = np.zeros(8, dtype=np.float64)
    seq = 0
    end = time.monotonic() + a.seconds
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    while time.monotonic() < end:
        if not poller.poll(100):
            continue
        while True:
            try:
                h, _p = sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            f = HEADER.unpack(h.buffer)
            kind = f[2]
            if kind in (1, 3):  # counts / raw: echo like rigd's estimate
                out[0] = f[10]
                out[1] = f[11]
                out[2] = f[12]
                hdr = HEADER.pack(b"RIGD", 1, 7, 7, 1, 0, 8, 0, f[8], 4, seq, f[11], time.monotonic_ns(), 64)
                seq += 1
                pub.send_multipart([hdr, out])
            elif kind == 8:  # heartbeat: answer so the rig's handshake completes
                pub.send_multipart([HEADER.pack(b"RIGD", 1, 8, 0, 0, 0, 0, 0, 0, 3, seq, 0, 0, 0), b""])
                seq += 1


if __name__ == "__main__":
    main()
