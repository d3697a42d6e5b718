r"""The replay rig: a recorded session's rig played back to rigd through the public wire protocol.

This module owns replaying a recording as a rig. It reads a session directory (rig/session.py:
``wire.rlog`` and ``manifest.json``), takes the rig-side messages of one recorded rig — its
heartbeats (with its description), SPIKE_COUNTS frames, TRIAL_EVENTs, SPIKE_EVENTS and
RAW_SAMPLES — and sends them with :class:`rig.client.RigClient`, in recorded order, with their
recorded ``t_rig_ns`` (the recorded rig's clock) and recorded sequence numbers on the data
streams, as that rig id of this session (the recording's rig → ``--rig-id``). The handshake and
``boot_id`` are RigClient's: the replay is a new rig process.

Pace (``--speed``): ``1`` sends each data message when the recorded rig clock says, in real time;
``4`` four times faster; ``max`` runs in lockstep (the virtual clock of docs/simulator.md): after
each frame it waits for rigd's estimate of it (:meth:`rig.client.RigClient.wait_estimate`; rigd
must publish estimates, ``rigd start --rig replay:DIR --speed max`` does) and answers the light
commands that came before it, then sends the next frame. Recorded heartbeats are sent where they
were recorded; the replay also heartbeats (≥ 4 Hz wall time) while it waits or paces.

A replay cannot change recorded neural data, but it answers rigd's light commands as a rig must:
each command is acknowledged with the status the recording holds for the same command (same
``command_id`` and the same cause frame, trial, action, spots, power, duration, ramp and
frequency), else APPLIED; a command the recording does not hold is counted **diverged** (the
replayed rigd decided differently from the recorded one), and recorded commands the replayed rigd
never sent are counted **missing**. Acks carry the replay's rig clock: the recorded ``t_rig_ns`` of
the latest frame sent (lockstep) or the recorded clock advanced by wall time × speed (paced).
The rig-side WATCHDOG_OFF acks of the recording are not replayed.

It stops at the end of the recording, on SIGTERM/SIGINT, or when rigd is lost (exit 4), sends a
final heartbeat with ``"state": "stopped"`` and prints one JSON summary line (``stop_reason``,
``bins``, ``trials``, ``commands``, ``acks``, ``diverged``, ``missing``…). It imports nothing of
``sim``.

:func:`replay_settings` is the service side: the settings ``rigd start --rig replay:DIR`` takes from
the recording (its protocol, seed and decoder settings unless given, the clock for the speed).

Usage::

    python -m rig.replay_rig --session sessions/<recorded> --ingest tcp://127.0.0.1:5555 \\
        --command tcp://127.0.0.1:5556 [--rig-id 1] [--source-rig N] [--speed 1|4|max] [--log replay.jsonl]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rig import wire
from rig.client import (
    STREAM_COUNTS,
    STREAM_EVENTS,
    STREAM_EVENTS_SPIKES,
    STREAM_RAW,
    EstimateTimeoutError,
    LightGuard,
    Received,
    RigClient,
)
from rig.session import RIGD_RIG_ID, Session

_NS = 1_000_000_000
HEARTBEAT_PERIOD_S = 0.25  #: the replay's own heartbeats while it waits or paces (4 Hz wall)
EXIT_RIGD_LOST = 4
EXIT_NO_ESTIMATE = 5
IDENTITY_FIELDS = ("boot_id", "host", "pid")  #: the recorded process's identity: the replay has its own
#: the rig-side kinds a replay sends, and the stream each goes out on
_DATA_STREAMS = {wire.Kind.SPIKE_COUNTS: STREAM_COUNTS, wire.Kind.TRIAL_EVENT: STREAM_EVENTS,
                 wire.Kind.SPIKE_EVENTS: STREAM_EVENTS_SPIKES, wire.Kind.RAW_SAMPLES: STREAM_RAW}
_REPLAYED = frozenset({*_DATA_STREAMS, wire.Kind.HEARTBEAT})
#: settings a replay takes from the recording's config unless given (they decide rigd's decisions)
CARRIED_SETTINGS = ("seed", "decoder", "decoder_mode", "n_fit_trials", "deadline_ms")
MAX_DIVERGED_LISTED = 20


def parse_speed(text: str | float) -> float | str:
    """``--speed``: "max" (lockstep) or a number > 0 (× the recorded rig clock); ValueError otherwise."""
    if isinstance(text, str) and text.strip().lower() == "max":
        return "max"
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"--speed {text!r}: expected 'max' or a number > 0 (1 = real time)") from None
    if not (math.isfinite(v) and 0.0 < v <= 1000.0):
        raise ValueError(f"--speed {text!r}: expected 'max' or a number 0 < x <= 1000 (1 = real time)")
    return v


def command_key(cmd: wire.LightCommandFields) -> tuple[Any, ...]:
    """What makes two light commands the same decision (not when rigd's clock sent it)."""
    return (cmd.command_id, cmd.cause_seq, cmd.trial, int(cmd.action), int(cmd.waveform), cmd.spots_left,
            cmd.spots_right, cmd.power_mw_per_spot, cmd.duration_s, cmd.ramp_down_s, cmd.freq_hz)


def _manifest(source: Path) -> dict[str, Any]:
    try:
        m = json.loads((source / "manifest.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{source}: no manifest.json (not a rigd session directory?)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{source}/manifest.json unreadable: {exc}") from None
    if not isinstance(m, dict) or not isinstance(m.get("config"), dict):
        raise ValueError(f"{source}/manifest.json holds no recorded config: cannot replay it")
    return m


def _recorded_protocol(source: Path, manifest: dict[str, Any], runtime: Path, name: str) -> Path:
    """The recorded protocol as a file: its recorded path if unchanged (same sha256), else a copy of its text."""
    p = manifest.get("protocol")
    if not isinstance(p, dict) or not isinstance(p.get("text"), str):
        raise ValueError(f"{source}/manifest.json holds no protocol text: give --protocol")
    text, sha = str(p["text"]), str(p.get("sha256", ""))
    path = Path(str(p.get("path") or ""))
    try:
        if str(path) and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha:
            return path
    except OSError:
        pass
    runtime.mkdir(parents=True, exist_ok=True)
    copy = runtime / f"{name}-replay-protocol{path.suffix if path.suffix in ('.toml', '.yaml', '.yml') else '.toml'}"
    copy.write_text(text, encoding="utf-8")
    return copy


def replay_settings(source: Path, *, speed: str | None, clock: str | None, given: set[str], runtime: Path,
                    name: str = "rigd") -> dict[str, Any]:
    """The config a session replaying ``source`` runs with (``rigd start --rig replay:DIR``).

    ``replay`` (the source, resolved), ``replay_speed``, ``clock`` ("rig" for speed max, else
    "wall"), ``publish_estimates`` (speed max); the recording's protocol (its recorded file when
    unchanged, else its recorded text written to ``runtime``) and :data:`CARRIED_SETTINGS` unless
    named in ``given``. No ``--speed`` means 1 (real time), or max with ``--clock rig``.
    Raises ValueError with what is wrong (no session there, speed and clock disagree).
    """
    src = source.expanduser().resolve()
    if not (src / "wire.rlog").is_file():
        raise ValueError(f"{source}: not a rigd session directory (no wire.rlog)")
    manifest = _manifest(src)
    pace: float | str = parse_speed(speed) if speed is not None else ("max" if clock == "rig" else 1.0)
    want = "rig" if pace == "max" else "wall"
    if clock is not None and clock != want:
        raise ValueError(f"--speed {pace} with --clock {clock}: a replay runs in lockstep on the rig's clock with "
                         f"--speed max (--clock rig), paced on wall time with a numeric --speed (--clock wall)")
    out: dict[str, Any] = {"replay": src, "replay_speed": pace, "clock": want}
    if pace == "max":
        out["publish_estimates"] = True
    recorded = manifest["config"]
    if "protocol" not in given:
        out["protocol"] = _recorded_protocol(src, manifest, runtime, name)
    for key in CARRIED_SETTINGS:
        if key not in given and recorded.get(key) is not None:
            out[key] = recorded[key]
    return out


# -- the rig process -------------------------------------------------------------------------


@dataclass
class Recording:
    """What a replay needs from a recorded session: one rig's messages and rigd's commands to it."""

    source: Path
    rig_id: int  #: the recorded rig replayed
    messages: list[tuple[wire.Kind, wire.Header, bytes]] = field(default_factory=list)
    #: command_id → (the recorded command's key, the status of the rig's first ack of it, or None)
    commands: dict[int, tuple[tuple[Any, ...], wire.AckStatus | None]] = field(default_factory=dict)
    #: commands recorded after the rig's last data message (rigd's light-off at the session's end):
    #: a replay ends before its rigd sends them, so they are not counted missing
    tail_commands: set[int] = field(default_factory=set)

    @classmethod
    def load(cls, source: Path, rig_id: int | None = None) -> Recording:
        """Read ``source``; ``rig_id`` None: the recorded config's first rig id that sent frames (else the first)."""
        s = Session.open(source)
        recorded_rigs = sorted({r.header.rig_id for r in s.records(wire.Kind.HEARTBEAT)} - {RIGD_RIG_ID})
        if rig_id is None:
            config = s.manifest.get("config")
            configured = [r for r in config.get("rig_ids", []) if r in recorded_rigs] \
                if isinstance(config, dict) else []
            rig_id = (configured or recorded_rigs or [1])[0]
        rec = cls(Path(source), rig_id)
        since_data: set[int] = set()  # commands recorded since the latest data message
        for r in s.records(rig_id=rig_id):
            kind = wire.Kind(r.header.kind)
            if kind in _REPLAYED:
                rec.messages.append((kind, r.header, bytes(r.payload)))
                if kind in _DATA_STREAMS:
                    since_data.clear()
            elif kind == wire.Kind.LIGHT_COMMAND:
                cmd = wire.unpack_light_command(r.payload)
                rec.commands.setdefault(cmd.command_id, (command_key(cmd), None))
                since_data.add(cmd.command_id)
            elif kind == wire.Kind.LIGHT_ACK:
                ack = wire.unpack_light_ack(r.payload)
                known = rec.commands.get(ack.command_id)
                if known is not None and known[1] is None:
                    rec.commands[ack.command_id] = (known[0], ack.status)
        rec.tail_commands = since_data
        if not any(k == wire.Kind.HEARTBEAT for k, _, _ in rec.messages):
            raise ValueError(f"{source}: rig {rig_id} has no recorded heartbeat (description): nothing to replay "
                             f"(rigs recorded: {recorded_rigs or 'none'})")
        return rec

    def first_description(self) -> dict[str, Any]:
        """The recorded rig's first description (without the recorded process's identity)."""
        for kind, h, p in self.messages:
            if kind == wire.Kind.HEARTBEAT:
                return strip_identity(wire.payload_json(h, p))
        return {}


def strip_identity(desc: dict[str, Any]) -> dict[str, Any]:
    """A recorded heartbeat without ``boot_id``/``host``/``pid`` (the replay's RigClient adds its own)."""
    return {k: v for k, v in desc.items() if k not in IDENTITY_FIELDS}


class ReplayLog:
    """``--log``: the replay's notable events as JSON lines (flushed per line, ``t_ns`` monotonic)."""

    def __init__(self, path: str | None) -> None:
        self._f: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def write(self, event: str, **fields: Any) -> None:
        """Append one event."""
        if self._f is not None:
            try:
                self._f.write(json.dumps({"event": event, "t_ns": time.monotonic_ns(), **fields}) + "\n")
                self._f.flush()
            except OSError:
                pass

    def close(self) -> None:
        """Close the file."""
        if self._f is not None:
            self._f.close()
            self._f = None


class Replay:
    """Plays one :class:`Recording` to rigd as rig ``client.rig_id`` (see the module docstring)."""

    def __init__(self, recording: Recording, ingest: str, command: str, *, rig_id: int,
                 speed: float | str = 1.0, rigd_lost_s: float = 3.0, estimate_timeout_s: float = 10.0,
                 connect_timeout_s: float = 10.0, log: ReplayLog | None = None) -> None:
        self.rec = recording
        self.speed = speed
        self.lockstep = speed == "max"
        self.rigd_lost_ns = round(rigd_lost_s * _NS)
        self.estimate_timeout_s = estimate_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.log = log or ReplayLog(None)
        self.t_rig_ns = 0  #: the replay's rig clock: the recorded t_rig_ns of the latest data message sent
        self._wall0 = 0
        self._rig0: int | None = None
        desc = {**recording.first_description(), "replay_of": str(recording.source)}
        # the rig's clock is the recorded one; rigd's silence is measured on wall time
        guard = LightGuard(clock_ns=self.rig_now, silence_clock_ns=time.monotonic_ns)
        self.client = RigClient(rig_id, ingest, command, description=desc, clock_ns=self.rig_now, guard=guard)
        self.stop_requested = False
        self.stop_reason = ""
        self.error = ""
        self.sent: dict[str, int] = {k.name: 0 for k in _REPLAYED}
        self.trials = 0
        self.commands = 0
        self.acks: dict[str, int] = {s.name: 0 for s in wire.AckStatus}
        self.diverged: list[dict[str, Any]] = []
        self.n_diverged = 0
        self._seen: set[int] = set()
        self.estimates = 0
        self._next_hb_wall = 0

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Signal handler: stop after the current message."""
        self.stop_requested = True

    def rig_now(self) -> int:
        """The replay's rig clock (recorded clock): frozen between frames in lockstep, advancing × speed when paced."""
        if self.lockstep or self._rig0 is None or isinstance(self.speed, str):
            return self.t_rig_ns
        return max(self.t_rig_ns, self._rig0 + round((time.monotonic_ns() - self._wall0) * self.speed))

    # -- rigd → replay ------------------------------------------------------------------------

    def rigd_lost(self) -> bool:
        """Whether rigd's heartbeat has been silent for ``rigd_lost_s`` (wall time: the guard's silence clock)."""
        silence = self.client.guard.rigd_silence_ns()
        return silence is not None and silence > self.rigd_lost_ns

    def _take(self, got: Received) -> None:
        """Answer rigd's light commands (emptying ``got.commands``); its heartbeats fed the guard already."""
        commands = list(got.commands)
        got.commands.clear()
        for cmd in commands:
            self._answer(cmd)

    def _answer(self, cmd: wire.LightCommandFields) -> None:
        """Acknowledge one command: the recorded status for the same command, else APPLIED (diverged)."""
        self.commands += 1
        self._seen.add(cmd.command_id)
        recorded = self.rec.commands.get(cmd.command_id)
        same = recorded is not None and recorded[0] == command_key(cmd)
        status = recorded[1] if same and recorded is not None and recorded[1] is not None else \
            wire.AckStatus.APPLIED if cmd.action == wire.LightAction.START else wire.AckStatus.STOPPED
        if not same:
            self.n_diverged += 1
            if len(self.diverged) < MAX_DIVERGED_LISTED:
                self.diverged.append({"command_id": cmd.command_id, "trial": cmd.trial, "cause_seq": cmd.cause_seq,
                                      "action": cmd.action.name, "recorded": recorded is not None})
            self.log.write("diverged", command_id=cmd.command_id, trial=cmd.trial, cause_seq=cmd.cause_seq,
                           action=cmd.action.name, recorded_id=recorded is not None)
        now = self.rig_now()
        if status == wire.AckStatus.APPLIED:
            change = max(now, cmd.t_start_rig_ns)
        elif status in (wire.AckStatus.STOPPED, wire.AckStatus.WATCHDOG_OFF):
            change = now
        else:
            change = 0
        self.acks[status.name] += 1
        self.client.send_ack(cmd, status, now, change)

    def _tick(self, got: Received) -> bool:
        """While waiting or pacing: answer, heartbeat (4 Hz wall); False to stop (signal, rigd lost)."""
        self._take(got)
        now = time.monotonic_ns()
        if now >= self._next_hb_wall:
            self.client.heartbeat(state="running")
            self._next_hb_wall = now + round(HEARTBEAT_PERIOD_S * _NS)
        return not (self.stop_requested or self.rigd_lost())

    def _wait_until_wall(self, due_ns: int) -> bool:
        """Paced: poll rigd until ``due_ns`` (monotonic); False to stop."""
        while (left := due_ns - time.monotonic_ns()) > 0:
            if not self._tick(self.client.poll(max(1, min(50, math.ceil(left / 1e6))))):
                return False
        return self._tick(self.client.poll(0))

    def _wait_estimate(self, seq: int) -> bool:
        """Lockstep: wait for rigd's estimate of frame ``seq``, answering commands; False to stop."""
        try:
            got = self.client.wait_estimate(seq, self.estimate_timeout_s, idle=self._tick)
        except EstimateTimeoutError as exc:
            self.stop_reason, self.error = "no_estimate", str(exc)
            self.log.write("no_estimate", seq=seq, reason=str(exc))
            return False
        self._take(got)
        if got.estimate is None:
            return False
        self.estimates += 1
        return not self.stop_requested

    # -- replay → rigd ------------------------------------------------------------------------

    def _send(self, kind: wire.Kind, h: wire.Header, payload: bytes) -> int:
        c = self.client
        if kind == wire.Kind.HEARTBEAT:
            fields = strip_identity(wire.payload_json(h, payload))
            c.description = {**fields, "replay_of": str(self.rec.source)}
            return c.heartbeat()
        stream = _DATA_STREAMS[kind]
        if h.seq >= c.next_seq(stream):  # the recorded numbering (a recorded restart counts on from here)
            c.set_next_seq(stream, h.seq)
        if kind == wire.Kind.TRIAL_EVENT:
            ev = wire.payload_json(h, payload)
            name, trial = str(ev.pop("event")), int(ev.pop("trial"))
            if name == "trial_end":
                self.trials += 1
            return c.send_event(name, trial, t_rig_ns=h.t_rig_ns, **ev)
        arr = wire.payload_array(h, payload)
        if kind == wire.Kind.SPIKE_COUNTS:
            return c.send_counts(arr, t_rig_ns=h.t_rig_ns)
        if kind == wire.Kind.SPIKE_EVENTS:
            return c.send_spikes(arr, t_rig_ns=h.t_rig_ns)
        return c.send_raw(arr, t_rig_ns=h.t_rig_ns)

    def run(self) -> dict[str, Any]:
        """Connect, replay to the end (or a stop), say goodbye; return the summary."""
        c = self.client
        first = next((h.t_rig_ns for k, h, _ in self.rec.messages if k in _DATA_STREAMS), 0)
        self.t_rig_ns = first
        c.connect(self.connect_timeout_s)
        wall_start = time.monotonic_ns()
        self._next_hb_wall = wall_start
        c.guard.note_rigd_heartbeat()
        self.log.write("connected", rig_id=c.rig_id, source=str(self.rec.source), source_rig=self.rec.rig_id,
                       speed=self.speed, **c.identity)
        self._wall0, self._rig0 = wall_start, first
        pending: int | None = None  # lockstep: the frame whose estimate comes before the next frame
        for kind, h, payload in self.rec.messages:
            if self.stop_requested:
                break
            if kind in (wire.Kind.SPIKE_COUNTS, wire.Kind.RAW_SAMPLES) and pending is not None:
                if not self._wait_estimate(pending):
                    break
                pending = None
            if kind in _DATA_STREAMS and not self.lockstep:
                due = self._wall0 + round((h.t_rig_ns - first) / float(self.speed))
                if due > time.monotonic_ns() and not self._wait_until_wall(due):
                    break
            if kind in _DATA_STREAMS:
                self.t_rig_ns = max(self.t_rig_ns, h.t_rig_ns)
            seq = self._send(kind, h, payload)
            self.sent[kind.name] += 1
            if self.lockstep and kind in (wire.Kind.SPIKE_COUNTS, wire.Kind.RAW_SAMPLES):
                pending = seq
            elif not self.lockstep:
                got = c.poll(0)
                if not self._tick(got):
                    break
        else:
            if pending is None or self._wait_estimate(pending):
                self.stop_reason = "end"
        return self._finish(wall_start)

    def _finish(self, wall_start: int) -> dict[str, Any]:
        wall_ns = time.monotonic_ns()
        if not self.stop_reason:
            if self.stop_requested:
                self.stop_reason = "signal"
            elif self.rigd_lost():
                self.stop_reason = "rigd_lost"
                self.error = (f"rigd lost: no rigd heartbeat for {self.rigd_lost_ns / _NS:g} s (rigd killed, hung "
                              "or unreachable); replay stopped")
        self._take(self.client.poll(0))
        self.client.heartbeat(state="stopped")
        missing = sorted(set(self.rec.commands) - self._seen - self.rec.tail_commands) \
            if self.stop_reason == "end" else []
        self.log.write("stopped", reason=self.stop_reason, diverged=self.n_diverged, missing=len(missing))
        wall = (wall_ns - wall_start) / _NS
        frames = self.sent[wire.Kind.SPIKE_COUNTS.name] + self.sent[wire.Kind.RAW_SAMPLES.name]
        rig_s = (self.t_rig_ns - (self._rig0 or 0)) / _NS
        out: dict[str, Any] = {
            "stop_reason": self.stop_reason, "replay_of": str(self.rec.source), "source_rig": self.rec.rig_id,
            "rig_id": self.client.rig_id, "speed": self.speed, "lockstep": self.lockstep, "bins": frames,
            "sent": self.sent, "trials": self.trials, "rig_s": rig_s, "wall_s": wall,
            "speedup": rig_s / wall if wall > 0 else 0.0, "estimates": self.estimates,
            "commands": self.commands, "acks": self.acks, "diverged": self.n_diverged,
            "diverged_first": self.diverged, "missing": len(missing), "missing_first": missing[:MAX_DIVERGED_LISTED],
            "recorded_commands": len(self.rec.commands)}
        if self.error:
            out["reason"] = self.error
        return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line interface (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m rig.replay_rig", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--session", required=True, help="the recorded session directory to replay")
    ap.add_argument("--ingest", required=True, help="rigd's ingest endpoint (the replay's PUB connects)")
    ap.add_argument("--command", required=True, help="rigd's command endpoint (the replay's SUB connects)")
    ap.add_argument("--rig-id", type=int, default=1, help="the rig id the replay speaks as")
    ap.add_argument("--source-rig", type=int, default=None, help="the recorded rig to replay (default: the first)")
    ap.add_argument("--speed", default="1", help="× the recorded rig clock (1 = real time), or 'max' (lockstep)")
    ap.add_argument("--rigd-lost-s", type=float, default=3.0, help="stop (exit 4) when rigd is silent this long")
    ap.add_argument("--estimate-timeout-s", type=float, default=10.0,
                    help="--speed max: stop (exit 5) when rigd's estimate of a frame is not in after this long")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--log", default=None, metavar="FILE", help="append the replay's events as JSON lines")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rig.replay_rig``."""
    a = parse_args(argv)
    try:
        speed = parse_speed(a.speed)
        if not (a.rigd_lost_s > 0 and a.estimate_timeout_s > 0):
            raise ValueError("--rigd-lost-s and --estimate-timeout-s must be > 0")
        recording = Recording.load(Path(a.session), a.source_rig)
    except (OSError, ValueError, wire.WireError) as exc:
        print(json.dumps({"error": f"cannot replay {a.session}: {exc}"}), flush=True)
        return 2
    log = ReplayLog(a.log)
    replay = Replay(recording, a.ingest, a.command, rig_id=a.rig_id, speed=speed, rigd_lost_s=a.rigd_lost_s,
                    estimate_timeout_s=a.estimate_timeout_s, connect_timeout_s=a.connect_timeout, log=log)
    signal.signal(signal.SIGTERM, replay.request_stop)
    signal.signal(signal.SIGINT, replay.request_stop)
    try:
        summary = replay.run()
    except TimeoutError as exc:
        print(json.dumps({"error": str(exc), "rig_id": a.rig_id}), flush=True)
        return 3
    finally:
        replay.client.close()
        log.close()
    print(json.dumps(summary), flush=True)
    return {"rigd_lost": EXIT_RIGD_LOST, "no_estimate": EXIT_NO_ESTIMATE}.get(summary["stop_reason"], 0)


if __name__ == "__main__":
    sys.exit(main())
