r"""The Open Ephys rig: the Open Ephys GUI's spikes, data and TTLs streamed to rigd as a rig.

This module owns the adapter process that ``rigd start --rig openephys`` launches (docs/openephys.md).
It is a rig like any other (docs/wire-protocol.md): a :class:`rig.client.RigClient` with its
handshake, heartbeats (the description built from the lab's map) and acknowledgements, and the
rig-side :class:`rig.client.LightGuard`. Its inputs are the GUI's ZMQ Interface plugin (continuous
data, spikes, TTL events; the adapter answers the plugin's heartbeat protocol on its listening port)
and optionally its Event Broadcaster (TTL events of every stream; when given, trial TTLs come from
there). The formats are in :mod:`hardware.openephys.formats`; what the stream means is the map
(:mod:`hardware.openephys.mapping`):

* **spikes** mode: spikes of the mapped electrodes are binned on the stream's sample grid and sent
  as SPIKE_COUNTS frames, ``t_rig_ns`` = the bin's end; **raw** mode: the mapped continuous channels
  are cut into bin-long float32 chunks and sent as RAW_SAMPLES for rigd's threshold detector.
* TTL edges on the mapped lines become trial events (:class:`hardware.openephys.mapping.TrialTTL`).

**The rig clock** is the Open Ephys stream's: ns since acquisition start (sample number / sample
rate), extrapolated on wall time between blocks for "now" (light-command deadlines, acknowledgement
times). Open Ephys delivers a block after it is complete, so a frame leaves ≥ one block (buffer
size / sample rate) after its bin's end: docs/openephys.md says what that means for deadlines.

**Light.** The adapter has no light of its own. Every command passes its LightGuard first (limits,
deadline, the watchdog on rigd's heartbeat) exactly as in any rig; a START the guard admits goes to
the lab's light output (``--light module:Class``, a :class:`LightOutput`), which lights or refuses.
The default :class:`RefuseLight` refuses every START (acknowledged INVALID, with why); light off
(ALL_OFF, RAMP_DOWN, the watchdog) is always obeyed and acknowledged STOPPED / WATCHDOG_OFF.

**Out.** With ``--broadcast ENDPOINT`` it binds a PUB socket that publishes, in the Event
Broadcaster's JSON format (u16 type 0, then a ``"ttl"`` JSON object), the trial events it sends,
each light command with its acknowledgement, and rigd's decoder estimates (rigd publishes them when
the broadcast is on): open-ephys-python-tools' ``EventListener`` listens to it unmodified.

**Recording.** With ``--record URL`` it starts the GUI's recording through its HTTP remote control
once connected (recording directory named ``--record-name``) and stops it at the end; an unreachable
GUI ends the adapter with exit code 6 and a one-line reason (rigd raises it as an alarm).

It stops on SIGTERM/SIGINT (exit 0), when rigd is silent for ``--rigd-lost-s`` (exit 4) or on an
Open Ephys fault (acquisition restarted, sample rate changed, recording unreachable: exit 6), sends
a last heartbeat with ``"state": "stopped"`` and prints one JSON summary line.

Usage::

    python -m rig.openephys_rig --ingest tcp://127.0.0.1:5555 --command tcp://127.0.0.1:5556 \\
        --map my_map.toml [--zmq tcp://127.0.0.1:5556] [--events tcp://127.0.0.1:5558] \\
        [--broadcast tcp://127.0.0.1:5560] [--record http://127.0.0.1:37497] [--bin-ms 1]
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import signal
import sys
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol, cast, runtime_checkable

import numpy as np
import numpy.typing as npt
import zmq

from hardware.openephys import formats
from hardware.openephys.mapping import (
    MapError,
    OpenEphysMap,
    RawChunker,
    SpikeBinner,
    TrialTTL,
    UnitMap,
    samples_to_ns,
)
from hardware.openephys.remote import OpenEphysRemote, RemoteControlError
from rig import wire
from rig.client import LightGuard, RigClient, RigLightLimits

NS = 1_000_000_000
EXIT_BAD_ARGS = 2
EXIT_RIGD_LOST = 4
EXIT_OPENEPHYS = 6
RIGD_HEARTBEAT_S = 0.25  #: the adapter's heartbeat to rigd (≥ 2 Hz required)
OE_HEARTBEAT_S = 2.0  #: the ZMQ Interface's recommended client heartbeat interval
OE_REPLY_TIMEOUT_S = 5.0  #: no answer to a heartbeat this long: reconnect the REQ socket (lazy pirate)
NO_DATA_ALARM_S = 3.0  #: no continuous data this long while connected: say so in the heartbeat
CLOCK_DRIFT = 1e-4  #: the stream-clock anchor decays 100 µs per s (absorbs ≤ 100 ppm clock drift)
RESTART_BACKSTEP_NS = NS  #: sample numbers going back more than this: Open Ephys acquisition restarted
APPLICATION = "rigd"  #: the name the ZMQ Interface's editor lists for this client
#: lines of rigd's broadcast (Event Broadcaster TTL format), docs/openephys.md
BROADCAST_LINES = {"trial_start": 0, "trial_end": 0, "sample_on": 1, "delay_on": 2, "go_cue": 3, "lick": 4,
                   "early_lick": 4, "outcome": 5, "light": 6, "decoder": 7}


class OpenEphysFaultError(RuntimeError):
    """Something on the Open Ephys side the adapter cannot carry on from (exit 6)."""


@runtime_checkable
class LightOutput(Protocol):
    """What a lab's light hardware does with light commands the rig's LightGuard admitted.

    ``start`` returns None when the light will start at ``t_on_rig_ns`` (rig clock) as commanded,
    or why it will not (the adapter then acknowledges INVALID). ``stop`` turns the light off (from
    ``t_rig_ns``, ramping over ``ramp_s``: 0 = at once); it must never fail silently.
    """

    name: str
    spots_left: int
    spots_right: int

    def start(self, cmd: wire.LightCommandFields, t_on_rig_ns: int) -> str | None:
        """Light as commanded from ``t_on_rig_ns`` (None), or say why not."""
        ...

    def stop(self, t_rig_ns: int, ramp_s: float) -> None:
        """Light off from ``t_rig_ns`` over ``ramp_s`` seconds."""
        ...


class RefuseLight:
    """The default: no light output wired to this adapter; every START is refused (INVALID)."""

    name = "none"
    spots_left = 4
    spots_right = 4

    def start(self, cmd: wire.LightCommandFields, t_on_rig_ns: int) -> str | None:
        """Refuse: nothing here can make light."""
        return "no light output is wired to the Open Ephys adapter (--light module:Class; docs/openephys.md)"

    def stop(self, t_rig_ns: int, ramp_s: float) -> None:
        """Nothing is lit: nothing to do."""


def load_light(spec: str | None) -> LightOutput:
    """``--light module:Class`` → an instance (its class called without arguments); the default refuses."""
    if not spec:
        return RefuseLight()
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ValueError(f"--light {spec!r}: expected module:Class")
    try:
        obj = getattr(importlib.import_module(mod), attr)()
    except (ImportError, AttributeError, TypeError) as exc:
        raise ValueError(f"--light {spec!r}: cannot load it ({exc})") from None
    if not isinstance(obj, LightOutput):
        raise ValueError(f"--light {spec!r}: {type(obj).__name__} lacks name, spots_left, spots_right, start or stop")
    return obj


class StreamClock:
    """The rig clock: Open Ephys stream time (ns since acquisition start), extrapolated on wall time.

    Each continuous block anchors it (the block's end, as it arrives): the offset to the monotonic
    clock is the freshest seen, decaying by :data:`CLOCK_DRIFT` so that a drifting sample clock is
    followed. Before the first block it counts from the adapter's start.
    """

    def __init__(self) -> None:
        self.offset = -time.monotonic_ns()
        self.anchored = False
        self._t_anchor = 0

    def anchor(self, t_stream_ns: int) -> None:
        """A block ending at stream time ``t_stream_ns`` arrived now."""
        mono = time.monotonic_ns()
        cand = t_stream_ns - mono
        if not self.anchored:
            self.offset, self.anchored = cand, True
        else:
            self.offset = max(cand, self.offset - int((mono - self._t_anchor) * CLOCK_DRIFT))
        self._t_anchor = mono

    def now(self) -> int:
        """Now on the stream's clock (ns)."""
        return time.monotonic_ns() + self.offset


def _finite(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None


class OpenEphysRig:
    """The adapter (see the module docstring)."""

    def __init__(self, oemap: OpenEphysMap, *, ingest: str, command: str, rig_id: int, zmq_endpoint: str,
                 zmq_heartbeat: str | None = None, events: str | None = None, broadcast: str | None = None,
                 record: str | None = None, record_name: str = "", bin_ms: float = 1.0,
                 light: LightOutput | None = None, rigd_lost_s: float = 3.0, connect_timeout_s: float = 20.0,
                 log: IO[str] | None = None) -> None:
        self.map = oemap
        self.bin_s = bin_ms * 1e-3
        self.light = light or RefuseLight()
        self.rigd_lost_ns = round(rigd_lost_s * NS)
        self.connect_timeout_s = connect_timeout_s
        self._log = log
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.data = self.ctx.socket(zmq.SUB)
        self.data.setsockopt(zmq.SUBSCRIBE, b"")
        self.data.setsockopt(zmq.RCVHWM, 200_000)
        self.data.setsockopt(zmq.LINGER, 0)
        self.data.connect(zmq_endpoint)
        self.zmq_endpoint = zmq_endpoint
        self.hb_endpoint = zmq_heartbeat or _listen_endpoint(zmq_endpoint)
        self._hb: zmq.Socket[bytes] | None = None
        self._hb_waiting_since: float | None = None
        self._hb_next = 0.0
        self.uuid = str(uuid.uuid4())
        self.events: zmq.Socket[bytes] | None = None
        if events:
            self.events = self.ctx.socket(zmq.SUB)
            self.events.setsockopt(zmq.SUBSCRIBE, b"")
            self.events.setsockopt(zmq.LINGER, 0)
            self.events.connect(events)
        self.bcast: zmq.Socket[bytes] | None = None
        if broadcast:
            self.bcast = self.ctx.socket(zmq.PUB)
            self.bcast.setsockopt(zmq.LINGER, 500)
            self.bcast.bind(broadcast)
        self.remote = OpenEphysRemote(record) if record else None
        self.record_name = record_name
        self._restore_mode: str | None = None
        self.clock = StreamClock()
        limits = RigLightLimits(n_spots_left=self.light.spots_left, n_spots_right=self.light.spots_right)
        guard = LightGuard(limits, clock_ns=self.clock.now, silence_clock_ns=time.monotonic_ns)
        self.client = RigClient(rig_id, ingest, command, description=self._description(), clock_ns=self.clock.now,
                                guard=guard)
        self.ttl = TrialTTL(oemap.ttl, oemap.task)
        self.units = UnitMap(oemap.units_left + oemap.units_right) if oemap.mode == "spikes" else None
        self.rate: float | None = None
        self.binner: SpikeBinner | None = None
        self.chunker: RawChunker | None = None
        self.progress = 0  #: samples of the stream received (end of the latest block)
        self.progress_ns = 0
        self._last_data = time.monotonic()
        self.stop_requested = False
        self.stop_reason = ""
        self.n: dict[str, int] = {k: 0 for k in (
            "frames", "blocks", "spikes", "ttl_edges", "trial_events", "trials", "commands", "estimates",
            "broadcast", "oe_heartbeats", "oe_replies", "oe_reconnects", "malformed", "other_stream",
            "unmapped_spikes", "before_data", "ignored")}
        self.acks: dict[str, int] = {s.name: 0 for s in wire.AckStatus}
        self.errors: list[str] = []

    # -- set-up --------------------------------------------------------------------------------

    def _description(self) -> dict[str, Any]:
        m = self.map
        desc: dict[str, Any] = {"rig": "openephys", "n_units": m.n_units, "units_left": m.n_left,
                                "units_right": m.n_units - m.n_left, "bin_s": self.bin_s,
                                "source": "Open Ephys GUI (ZMQ Interface)", "light": self.light.name,
                                "openephys": {"mode": m.mode, "zmq": self.zmq_endpoint, "map": m.source}}
        if m.mode == "raw":
            desc.update(raw_channels=m.n_units, sample_rate_hz=m.sample_rate_hz, threshold_sd=m.threshold_sd,
                        channels=list(m.raw_left + m.raw_right))
        else:
            desc["electrodes"] = list(m.units_left + m.units_right)
        return desc

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Signal handler: stop at the next loop."""
        self.stop_requested = True
        self.stop_reason = self.stop_reason or (f"signal {signal.Signals(signum).name}" if signum else "stop")

    def log(self, event: str, **fields: Any) -> None:
        """One JSON line to ``--log`` (the adapter's own record)."""
        if self._log is not None:
            self._log.write(json.dumps({"event": event, "t_ns": time.monotonic_ns(), **fields}, default=str) + "\n")
            self._log.flush()

    # -- Open Ephys in -------------------------------------------------------------------------

    def _oe_heartbeat(self, now: float) -> None:
        """The ZMQ Interface's client heartbeat (REQ to its listening port), reconnecting a silent socket."""
        if self._hb is not None and self._hb_waiting_since is not None:
            if self._hb.poll(0):
                self._hb.recv()
                self.n["oe_replies"] += 1
                self._hb_waiting_since = None
            elif now - self._hb_waiting_since > OE_REPLY_TIMEOUT_S:
                self._hb.close(0)  # a REQ socket cannot send again before its answer: start afresh
                self._hb = None
                self.n["oe_reconnects"] += 1
        if now < self._hb_next or self._hb_waiting_since is not None:
            return
        if self._hb is None:
            self._hb = self.ctx.socket(zmq.REQ)
            self._hb.setsockopt(zmq.LINGER, 0)
            self._hb.connect(self.hb_endpoint)
        self._hb.send(formats.heartbeat(APPLICATION, self.uuid))
        self.n["oe_heartbeats"] += 1
        self._hb_waiting_since = now
        self._hb_next = now + OE_HEARTBEAT_S

    def on_zmq_interface(self, parts: list[bytes]) -> None:
        """One ZMQ Interface message."""
        try:
            msg = formats.parse_zmq_interface(parts)
        except formats.FormatError as exc:
            self._malformed(str(exc))
            return
        if isinstance(msg, formats.ContinuousBlock):
            self._on_block(msg)
        elif isinstance(msg, formats.SpikeEvent):
            self._on_spike(msg)
        elif isinstance(msg, formats.TTLEvent):
            if self.events is not None:  # trial TTLs come from the Event Broadcaster: not twice
                self.n["ignored"] += 1
            elif self.rate is None:
                self.n["before_data"] += 1
            else:
                self._on_ttl(msg, self.rate)
        else:
            self.n["ignored"] += 1

    def on_event_broadcaster(self, parts: list[bytes]) -> None:
        """One Event Broadcaster message (TTLs are used; spikes come from the ZMQ Interface)."""
        try:
            msg = formats.parse_event_broadcaster(parts)
        except formats.FormatError as exc:
            self._malformed(str(exc))
            return
        if isinstance(msg, formats.TTLEvent) and msg.sample_rate is not None:
            self._on_ttl(msg, msg.sample_rate)
        else:
            self.n["ignored"] += 1

    def _malformed(self, why: str) -> None:
        self.n["malformed"] += 1
        if len(self.errors) < 20:
            self.errors.append(why)
            self.log("malformed", error=why)

    def _on_block(self, b: formats.ContinuousBlock) -> None:
        if self.map.stream and b.stream != self.map.stream:
            self.n["other_stream"] += 1
            return
        if self.rate is None:
            self._first_block(b)
        elif b.sample_rate != self.rate:
            raise OpenEphysFaultError(f"stream {b.stream!r} sample rate changed from {self.rate:g} to "
                                 f"{b.sample_rate:g} Hz: restart the session")
        assert self.rate is not None
        t0 = samples_to_ns(b.sample_num, self.rate)
        if t0 < self.progress_ns - RESTART_BACKSTEP_NS:
            raise OpenEphysFaultError(f"Open Ephys acquisition restarted (sample numbers went back from "
                                      f"{self.progress} to {b.sample_num}): restart the session")
        end = b.sample_num + b.samples.size
        self.n["blocks"] += 1
        self._last_data = time.monotonic()
        if end > self.progress:
            self.progress = end
            self.progress_ns = samples_to_ns(end, self.rate)
            self.clock.anchor(self.progress_ns)
        if self.binner is not None:
            self.binner.start(b.sample_num)
            for end_sample, counts in self.binner.advance(self.progress):
                self.client.send_counts(counts, t_rig_ns=samples_to_ns(end_sample, self.rate))
                self.n["frames"] += 1
        elif self.chunker is not None:
            for end_sample, chunk in self.chunker.add(b.sample_num, b.channel, b.samples):
                # float32 µV as Open Ephys sends them: RAW_SAMPLES allows f32 (docs/wire-protocol.md)
                t_end = samples_to_ns(end_sample, self.rate)
                self.client.send_raw(cast("npt.NDArray[np.int16]", chunk), t_rig_ns=t_end)
                self.n["frames"] += 1

    def _first_block(self, b: formats.ContinuousBlock) -> None:
        rate = b.sample_rate
        if self.map.mode == "raw" and rate != self.map.sample_rate_hz:
            raise OpenEphysFaultError(f"stream {b.stream!r} runs at {rate:g} Hz; the map's [raw] sample_rate_hz is "
                                 f"{self.map.sample_rate_hz:g} (rigd's detector is sized by it): fix the map")
        self.rate = rate
        bin_samples = max(1, round(rate * self.bin_s))
        if self.map.mode == "raw":
            self.chunker = RawChunker(self.map.raw_left + self.map.raw_right, bin_samples)
        else:
            self.binner = SpikeBinner(self.map.n_units, bin_samples, round(self.map.spike_lag_ms * 1e-3 * rate))
        self.log("stream", stream=b.stream, sample_rate=rate, first_sample=b.sample_num, bin_samples=bin_samples)

    def _on_spike(self, s: formats.SpikeEvent) -> None:
        if self.units is None or self.binner is None:
            self.n["before_data" if self.rate is None and self.units is not None else "ignored"] += 1
            return
        if self.map.stream and s.stream != self.map.stream:
            self.n["other_stream"] += 1
            return
        unit = self.units.unit(s.electrode, s.sorted_id)
        if unit is None:
            self.n["unmapped_spikes"] += 1
            return
        if self.binner.add(s.sample_num, unit):
            self.n["spikes"] += 1

    def _on_ttl(self, ev: formats.TTLEvent, rate: float) -> None:
        if self.map.ttl_stream and ev.stream != self.map.ttl_stream:
            self.n["other_stream"] += 1
            return
        self.n["ttl_edges"] += 1
        for te in self.ttl.edge(ev.line, ev.state, samples_to_ns(ev.sample_num, rate)):
            self.client.send_event(te.event, te.trial, t_rig_ns=te.t_ns, **te.fields)
            self.n["trial_events"] += 1
            self.n["trials"] += te.event == "trial_start"
            state = 0 if te.event == "trial_end" else 1
            self._broadcast("rigd trial events", BROADCAST_LINES[te.event], state, te.t_ns, "trial_event",
                            event=te.event, trial=te.trial, **te.fields)

    # -- rigd ----------------------------------------------------------------------------------

    def _on_rigd(self) -> None:
        got = self.client.poll(0)
        for cmd in got.commands:
            self._on_command(cmd)
        for est in got.estimates:
            self.n["estimates"] += 1
            self._broadcast("rigd decoder", BROADCAST_LINES["decoder"], 1 if est.value > 0 else 0, est.t_rig_ns,
                            "decoder", seq=est.seq, t_s=est.t_s, value=est.value, confidence=est.confidence,
                            left=est.left, right=est.right)
        for e in got.errors:
            self._malformed(f"from rigd: {e}")
        tripped = self.client.guard.check()
        if tripped is not None:
            now = self.clock.now()
            self.light.stop(now, 0.0)
            self._ack(tripped, wire.AckStatus.WATCHDOG_OFF, now, now, "rigd silent: the rig's watchdog")

    def _on_command(self, cmd: wire.LightCommandFields) -> None:
        self.n["commands"] += 1
        t_recv = self.clock.now()
        verdict = self.client.guard.admit(cmd, t_recv)
        status, t_change, reason = verdict.status, verdict.t_light_change_ns, verdict.reason
        if cmd.action == wire.LightAction.START and status == wire.AckStatus.APPLIED:
            why = self.light.start(cmd, t_change)
            if why is not None:
                self.client.guard.active = None  # nothing lights: the guard holds no light on
                status, t_change, reason = wire.AckStatus.INVALID, 0, why
        elif status == wire.AckStatus.STOPPED:
            self.light.stop(t_recv, cmd.ramp_down_s if cmd.action == wire.LightAction.RAMP_DOWN else 0.0)
        self._ack(cmd, status, t_recv, t_change, reason)

    def _ack(self, cmd: wire.LightCommandFields, status: wire.AckStatus, t_recv: int, t_change: int,
             reason: str) -> None:
        self.client.send_ack(cmd, status, t_recv, t_change)
        self.acks[status.name] += 1
        on = cmd.action == wire.LightAction.START and status == wire.AckStatus.APPLIED
        self._broadcast("rigd light", BROADCAST_LINES["light"], 1 if on else 0, t_change or t_recv, "light",
                        command_id=cmd.command_id, trial=cmd.trial, action=wire.LightAction(cmd.action).name,
                        status=status.name, reason=reason, power_mw_per_spot=cmd.power_mw_per_spot,
                        duration_s=cmd.duration_s, spots_left=cmd.spots_left, spots_right=cmd.spots_right)

    def _broadcast(self, channel: str, line: int, state: int, t_ns: int, kind: str, **fields: Any) -> None:
        """One message in the Event Broadcaster's JSON TTL format (docs/openephys.md, "rigd's broadcast")."""
        if self.bcast is None:
            return
        rate = self.rate or 1000.0
        body = {"stream": "rigd", "source_node": 0, "sample_rate": rate, "channel_name": channel,
                "sample_number": int(t_ns * rate // NS), "line": line, "state": state, "rigd": kind,
                "rig_id": self.client.rig_id, "t_rig_ns": t_ns, **{k: _finite(v) for k, v in fields.items()}}
        try:
            self.bcast.send_multipart(formats.event_broadcaster_ttl(body), zmq.NOBLOCK)
            self.n["broadcast"] += 1
        except zmq.Again:  # pragma: no cover - PUB drops rather than blocks
            pass

    # -- the loop ------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        status: dict[str, Any] = {"state": "running" if self.rate is not None else "waiting for Open Ephys data"}
        silent = time.monotonic() - self._last_data
        if silent > NO_DATA_ALARM_S:
            status["alarm"] = (f"no continuous data from Open Ephys ({self.zmq_endpoint}) for {silent:.0f} s: is "
                               "acquisition running, and is a channel selected in the ZMQ Interface?")
        self.client.heartbeat(**status)

    def run(self) -> int:
        """Connect, stream until stopped; returns the exit code."""
        poller = zmq.Poller()
        poller.register(self.data, zmq.POLLIN)
        if self.events is not None:
            poller.register(self.events, zmq.POLLIN)
        code = 0
        try:
            self._oe_heartbeat(time.monotonic())
            self.client.connect(self.connect_timeout_s)
            self.log("connected", rig_id=self.client.rig_id)
            if self.remote is not None:
                self._start_recording()
            self._last_data = time.monotonic()
            next_hb = 0.0
            while not self.stop_requested:
                socks = dict(poller.poll(2))
                for sock, handle in ((self.data, self.on_zmq_interface), (self.events, self.on_event_broadcaster)):
                    if sock is not None and sock in socks:
                        for _ in range(10_000):
                            try:
                                parts = sock.recv_multipart(zmq.NOBLOCK)
                            except zmq.Again:
                                break
                            handle(parts)
                self._on_rigd()
                now = time.monotonic()
                self._oe_heartbeat(now)
                if now >= next_hb:
                    self._heartbeat()
                    next_hb = now + RIGD_HEARTBEAT_S
                silence = self.client.guard.rigd_silence_ns()
                if silence is not None and silence > self.rigd_lost_ns:
                    self.stop_reason = f"rigd lost: no heartbeat for {silence / NS:.1f} s"
                    code = EXIT_RIGD_LOST
                    break
        except OpenEphysFaultError as exc:
            self.stop_reason, code = str(exc), EXIT_OPENEPHYS
            self.errors.append(str(exc))
        except TimeoutError as exc:
            self.stop_reason, code = f"handshake with rigd failed: {exc}", EXIT_RIGD_LOST
        finally:
            self.light.stop(self.clock.now(), 0.0)
            self._stop_recording()
        return code

    def _start_recording(self) -> None:
        assert self.remote is not None
        try:
            before = self.remote.start_recording(self.record_name or None)
        except RemoteControlError as exc:
            raise OpenEphysFaultError(f"cannot start the Open Ephys recording: {exc}") from None
        self._restore_mode = before if before != "RECORD" else None  # a recording already running is left on
        self.log("recording", started=True, mode_before=before, base_text=self.record_name)

    def _stop_recording(self) -> None:
        if self.remote is None or self._restore_mode is None:
            return
        try:
            self.remote.stop_recording(self._restore_mode)
            self.log("recording", started=False, mode=self._restore_mode)
        except RemoteControlError as exc:
            self.errors.append(f"cannot stop the Open Ephys recording: {exc}")
        self._restore_mode = None

    def summary(self, code: int) -> dict[str, Any]:
        """The JSON line printed at exit."""
        out: dict[str, Any] = {"stop_reason": self.stop_reason or "stopped", "exit_code": code, **self.n,
                               "acks": self.acks, "sample_rate": self.rate}
        if self.binner is not None:
            out.update(late_spikes=self.binner.late_spikes, skipped_bins=self.binner.skipped_bins)
        if self.chunker is not None:
            out.update(incomplete_blocks=self.chunker.incomplete_blocks, gaps=self.chunker.gaps)
        out["licks_outside_trial"] = self.ttl.licks_outside
        if code:
            out["error"] = self.stop_reason
        if self.errors:
            out["errors"] = self.errors[:20]
        return out

    def close(self) -> None:
        """Say stopped to rigd and close every socket."""
        try:
            self.client.heartbeat(state="stopped")
        finally:
            self.client.close()
            for s in (self.data, self.events, self.bcast, self._hb):
                if s is not None:
                    s.close(0 if s is not self.bcast else 500)


def _listen_endpoint(data_endpoint: str) -> str:
    """The ZMQ Interface's listening port is its data port + 1 (Open Ephys docs, "ZMQ Interface")."""
    host, sep, port = data_endpoint.rpartition(":")
    if not sep or not port.isdigit() or not data_endpoint.startswith("tcp://"):
        raise ValueError(f"--zmq {data_endpoint!r}: expected tcp://HOST:PORT (the ZMQ Interface's data port), or "
                         "give --zmq-heartbeat")
    return f"{host}:{int(port) + 1}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m rig.openephys_rig``)."""
    p = argparse.ArgumentParser(prog="python -m rig.openephys_rig", description=__doc__.split("\n\n")[0])
    p.add_argument("--ingest", required=True, help="rigd's ingest endpoint")
    p.add_argument("--command", required=True, help="rigd's command endpoint")
    p.add_argument("--rig-id", type=int, default=1)
    p.add_argument("--map", required=True, help="the lab's Open Ephys map (TOML, docs/openephys.md)")
    p.add_argument("--zmq", default="tcp://127.0.0.1:5556", help="the ZMQ Interface's data port")
    p.add_argument("--zmq-heartbeat", default=None, help="its listening port (default: data port + 1)")
    p.add_argument("--events", default=None, help="the Event Broadcaster's endpoint (trial TTLs from there)")
    p.add_argument("--broadcast", default=None, help="bind rigd's Event-Broadcaster-format PUB here")
    p.add_argument("--record", default=None, help="the GUI's HTTP remote control: record during the session")
    p.add_argument("--record-name", default="", help="the recording directory's base text")
    p.add_argument("--bin-ms", type=float, default=1.0)
    p.add_argument("--light", default=None, help="the lab's light output, module:Class (default: refuse)")
    p.add_argument("--rigd-lost-s", type=float, default=3.0)
    p.add_argument("--connect-timeout-s", type=float, default=20.0)
    p.add_argument("--log", default=None, help="append the adapter's own JSON-lines log here")
    a = p.parse_args(argv)
    log = open(a.log, "a", encoding="utf-8") if a.log else None  # noqa: SIM115 - closed below
    try:
        if not (math.isfinite(a.bin_ms) and 0.1 <= a.bin_ms <= 100.0):
            raise ValueError(f"--bin-ms {a.bin_ms}: expected 0.1 … 100")
        oemap = OpenEphysMap.load(Path(a.map))
        rig = OpenEphysRig(oemap, ingest=a.ingest, command=a.command, rig_id=a.rig_id, zmq_endpoint=a.zmq,
                           zmq_heartbeat=a.zmq_heartbeat, events=a.events, broadcast=a.broadcast, record=a.record,
                           record_name=a.record_name, bin_ms=a.bin_ms, light=load_light(a.light),
                           rigd_lost_s=a.rigd_lost_s, connect_timeout_s=a.connect_timeout_s, log=log)
    except (MapError, ValueError, OSError, zmq.ZMQError) as exc:
        print(json.dumps({"error": f"Open Ephys adapter: {exc}", "exit_code": EXIT_BAD_ARGS}), flush=True)
        return EXIT_BAD_ARGS
    signal.signal(signal.SIGTERM, rig.request_stop)
    signal.signal(signal.SIGINT, rig.request_stop)
    code = rig.run()
    try:
        rig.close()
    finally:
        print(json.dumps(rig.summary(code), default=str), flush=True)
        if log is not None:
            log.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
