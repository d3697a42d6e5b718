"""The loop watchdog: a small process of its own that turns the light off when rigd's loop stalls.

A loop cannot watch itself: a stalled hot loop stalls any check it runs, and a stall that holds
the interpreter (the GIL) stalls every thread of rigd with it. This module owns the check that does
not depend on rigd's loop, threads or interpreter:

* :class:`LoopBeat` — a 32-byte file mapped into memory (in the runtime directory). The hot loop
  writes ``CLOCK_MONOTONIC`` into it at every heartbeat (10 Hz, one ``pack_into``, no system call)
  and marks it *running* / *stopped*; CLOCK_MONOTONIC is one clock for every process on the host.
* ``python -m rig.watchdog`` — the watchdog process rigd starts beside itself. It binds its own
  command socket (the *safety endpoint*, announced in rigd's heartbeats; rig clients connect their
  command SUB to it as well) and polls the beat every ``watchdog_s / 10``. When the loop is
  *running* and its beat is older than ``watchdog_s`` — or rigd's process is gone without having
  marked the loop stopped — it sends ALL_OFF to every configured rig (repeated while the stall
  lasts), publishes an alarm on MQTT, and appends it to ``watchdog.jsonl`` in the session directory.
  When the beat resumes it says so; when rigd is gone it exits after its last ALL_OFF.

ALL_OFF only ever reduces light: it is the one light command rigd's interlock does not need to
approve, and the only one this process can send. It is a second line: every rig still runs its own
0.5 s watchdog on rigd's heartbeat (rig/client.py), which needs nothing of rigd at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import signal
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from rig import wire

_BEAT = struct.Struct("<qqqq")  #: beat_ns, state, pid, sequence of writes
BEAT_SIZE = 32
STATE_STARTING, STATE_RUNNING, STATE_STOPPED = 0, 1, 2
NS = 1_000_000_000
WATCHDOG_RIG_ID = 0  #: the watchdog's messages carry rigd's own id
#: the watchdog's command ids have the top bit set: a rig's acks for them never collide with the
#: interlock's ids, which count up from 1
WATCHDOG_COMMAND_ID_BASE = 1 << 63


class LoopBeat:
    """The hot loop's side of the beat file (see the module docstring); one writer, the loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"\0" * BEAT_SIZE)
        self._f = open(path, "r+b")  # noqa: SIM115 - closed in close()
        self._mm = mmap.mmap(self._f.fileno(), BEAT_SIZE)
        self._n = 0
        self._pid = os.getpid()
        self.beat(time.monotonic_ns(), STATE_STARTING)

    def beat(self, now_ns: int, state: int = STATE_RUNNING) -> None:
        """The loop is alive at ``now_ns`` (CLOCK_MONOTONIC)."""
        self._n += 1
        _BEAT.pack_into(self._mm, 0, now_ns, state, self._pid, self._n)

    def stopped(self) -> None:
        """The loop ended on purpose: the watchdog stands down."""
        self.beat(time.monotonic_ns(), STATE_STOPPED)

    def close(self) -> None:
        """Unmap (the file stays until the runtime directory is cleaned)."""
        self._mm.close()
        self._f.close()


def read_beat(mm: mmap.mmap) -> tuple[int, int, int, int]:
    """(beat_ns, state, pid, n) as last written."""
    beat_ns, state, pid, n = _BEAT.unpack_from(mm, 0)
    return int(beat_ns), int(state), int(pid), int(n)


def safety_endpoint_for(command_endpoint: str) -> str:
    """Where the watchdog binds, next to rigd's command endpoint (tcp: a free port on the same host)."""
    if command_endpoint.startswith("tcp://"):
        host = command_endpoint[len("tcp://"):].rsplit(":", 1)[0]
        return f"tcp://{host}:*"
    if command_endpoint.startswith("ipc://"):
        return command_endpoint + ".safety"
    return "tcp://127.0.0.1:*"


def all_off_message(rig_id: int, seq: int, command_id: int) -> list[bytes]:
    """A complete LIGHT_COMMAND ALL_OFF for ``rig_id`` (header + payload)."""
    now = time.monotonic_ns()
    cmd = wire.LightCommandFields(command_id, 0, 0, 0, 0, 0, 0, wire.LightAction.ALL_OFF,
                                  wire.Waveform.CONSTANT, 0, 0, 0.0, 0.0, 0.0, 0.0)
    h, p = wire.encode(wire.Kind.LIGHT_COMMAND, cmd.pack(), rig_id=rig_id, stream_id=2, seq=seq,
                       t_rig_ns=now, t_send_ns=now)
    return [h, bytes(p)]


class _Alarms:
    """Where the watchdog says what it did: a JSON-lines file and, if reachable, MQTT."""

    def __init__(self, log: Path | None, mqtt: str | None, topic: str | None) -> None:
        self.log = log
        self.mqtt = mqtt
        self.topic = topic

    def __call__(self, severity: str, message: str, **fields: Any) -> None:
        rec = {"source": "loop_watchdog", "severity": severity, "message": message,
               "t_local_ns": time.monotonic_ns(), "t_wall": time.time(), **fields}
        line = json.dumps(rec)
        if self.log is not None:
            try:
                with open(self.log, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError:
                pass
        if self.mqtt and self.topic:
            # on a thread of its own: a broker that accepts the connection and never answers (a
            # stopped process) must not hold up the next ALL_OFF
            threading.Thread(target=self._publish, args=(line,), daemon=True).start()

    def _publish(self, line: str) -> None:
        assert self.mqtt is not None and self.topic is not None
        try:
            from paho.mqtt import publish

            host, _, port = self.mqtt.split("://", 1)[1].rpartition(":")
            publish.single(self.topic, line, qos=1, hostname=host or "127.0.0.1", port=int(port),
                           keepalive=5)
        except Exception as exc:  # the broker may be the thing that failed: the file still has it
            with contextlib.suppress(OSError):  # stderr: the session's watchdog.log
                sys.stderr.write(json.dumps({"source": "loop_watchdog", "mqtt_error": repr(exc)}) + "\n")
                sys.stderr.flush()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return os.getppid() == pid


def run(args: argparse.Namespace) -> int:
    """The watchdog process's loop (see the module docstring)."""
    ctx = zmq.Context(io_threads=1)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.bind(args.bind)
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    alarm = _Alarms(Path(args.log) if args.log else None, args.mqtt, args.topic)
    f = open(args.beat, "r+b")  # noqa: SIM115 - the process's lifetime
    mm = mmap.mmap(f.fileno(), BEAT_SIZE)
    # the one line on stdout: rigd reads it, then may be gone (what the watchdog does goes to --log)
    print(json.dumps({"ready": True, "safety_endpoint": endpoint, "pid": os.getpid()}), flush=True)
    with contextlib.suppress(OSError):
        sys.stdout.close()
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for rigd must not take its watchdog
    limit_ns = round(args.watchdog_s * NS)
    period = args.watchdog_s / 10
    seq, cid = 0, WATCHDOG_COMMAND_ID_BASE
    stalled_since = 0
    next_off = 0
    rigd_pid = args.parent_pid
    try:
        while not stop["now"]:
            time.sleep(period)
            now = time.monotonic_ns()
            beat_ns, state, _pid, _n = read_beat(mm)
            if state == STATE_STOPPED:
                return 0
            gone = not _alive(rigd_pid)
            stale = state == STATE_RUNNING and now - beat_ns > limit_ns
            if gone or stale:
                first = not stalled_since
                if first:
                    stalled_since = next_off = now
                if now >= next_off:  # PUB may drop: repeat, fast at first, then once a second
                    for r in args.rig_ids:
                        pub.send_multipart(all_off_message(r, seq, cid))
                        seq, cid = seq + 1, cid + 1
                    next_off = now + (NS // 10 if now - stalled_since < NS // 2 else NS)
                if first:  # said after the light is off, never before
                    why = (f"rigd (pid {rigd_pid}) is gone without ending its loop" if gone else
                           f"rigd's hot loop is silent for {(now - beat_ns) / NS:.3f} s "
                           f"(allowed {args.watchdog_s} s)")
                    alarm("error", f"{why}: ALL_OFF sent to rigs {args.rig_ids}", limit="watchdog",
                          value=(now - beat_ns) / NS, allowed=args.watchdog_s, rigs=args.rig_ids)
                if gone:
                    time.sleep(0.3)  # the last ALL_OFFs leave before the socket closes
                    for r in args.rig_ids:
                        pub.send_multipart(all_off_message(r, seq, cid))
                        seq, cid = seq + 1, cid + 1
                    return 0
            elif stalled_since:
                alarm("warning", f"rigd's hot loop is beating again after "
                                 f"{(now - stalled_since) / NS + args.watchdog_s:.3f} s",
                      limit="watchdog")
                stalled_since = 0
    finally:
        mm.close()
        f.close()
        pub.close()
        ctx.term()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rig.watchdog``."""
    ap = argparse.ArgumentParser(prog="python -m rig.watchdog", description=__doc__.split("\n")[0])
    ap.add_argument("--beat", required=True, help="the loop's beat file (LoopBeat)")
    ap.add_argument("--bind", required=True, help="the safety endpoint to bind (tcp://host:* picks a port)")
    ap.add_argument("--rig-ids", type=lambda s: [int(x) for x in s.split(",") if x], required=True)
    ap.add_argument("--watchdog-s", type=float, default=0.5)
    ap.add_argument("--parent-pid", type=int, required=True, help="rigd's pid")
    ap.add_argument("--log", default=None, help="JSON-lines file for what the watchdog did")
    ap.add_argument("--mqtt", default=None, help="mqtt://host:port for alarms")
    ap.add_argument("--topic", default=None, help="MQTT topic for alarms (rigd/<name>/alarms)")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
