"""The publisher client a lab rig imports to talk to rigd (needs only pyzmq, numpy and rig.wire).

It owns the rig's two sockets: a PUB that *connects* to rigd's ingest endpoint (frames, trial
events, light acknowledgements, heartbeats) and a SUB that *connects* to rigd's command endpoint
(light commands and rigd's heartbeats). It numbers every stream, stamps every message with the
rig's clock, identifies the rig instance in its heartbeats (``boot_id``, ``host``, ``pid``) and
hands received light commands to the rig's own code. It knows nothing about decoders, protocols or
sessions. For a rig in lockstep with rigd (a simulation or a replay on a virtual clock),
:meth:`RigClient.wait_estimate` waits for rigd's estimate of a frame (DECODER_OUTPUT, published
when rigd runs with ``--clock rig``) together with the light commands that frame caused.

It also owns :class:`LightGuard`, the safety every rig must run on its own side whatever rigd
does (docs/wire-protocol.md, "What every rig must implement"): the watchdog on rigd's heartbeat
(light off after 0.5 s of silence), the per-command deadline and the rig's own light limits.
:class:`RigClient` feeds its guard every rigd heartbeat it receives. The simulated mouse uses
exactly these classes.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import zmq

from rig import wire

#: Stream ids a rig uses (sequence numbers count per rig and stream).
STREAM_COUNTS = 0
STREAM_EVENTS = 1
STREAM_ACKS = 2
STREAM_HEARTBEAT = 3
STREAM_EVENTS_SPIKES = 4
STREAM_RAW = 5


_NS = 1_000_000_000
#: rigd sends its heartbeat every 100 ms; a rig turns its light off after this much silence.
RIGD_WATCHDOG_S = 0.5
#: rigd's own interlock caps (docs/safety.md): the default limits of a rig, which should be no looser.
CAP_POWER_MW_PER_SPOT = 10.0
CAP_DURATION_S = 1.3
FLOOR_RAMP_DOWN_S = 0.1


@dataclass(frozen=True, slots=True)
class RigLightLimits:
    """The light this rig's hardware may produce, whatever a command asks (checked by :class:`LightGuard`).

    Defaults are rigd's interlock caps (10 mW per spot, 1.3 s including the ramp-down, ramp-down
    ≥ 0.1 s, 4 spots per hemisphere, ≤ 100 Hz). A rig sets its own (e.g. its laser's maximum or
    fewer spots); it should not be looser than rigd's caps, and is checked here only for sense.
    """

    max_power_mw_per_spot: float = CAP_POWER_MW_PER_SPOT
    max_duration_s: float = CAP_DURATION_S  #: total light duration, ramp-down included
    min_ramp_down_s: float = FLOOR_RAMP_DOWN_S
    n_spots_left: int = 4
    n_spots_right: int = 4
    max_freq_hz: float = 100.0

    def __post_init__(self) -> None:
        checks = (
            ("max_power_mw_per_spot", self.max_power_mw_per_spot, 0.0 < self.max_power_mw_per_spot <= 50.0,
             "0 < value <= 50"),
            ("max_duration_s", self.max_duration_s, 0.0 < self.max_duration_s <= 60.0, "0 < value <= 60"),
            ("min_ramp_down_s", self.min_ramp_down_s, 0.0 <= self.min_ramp_down_s <= self.max_duration_s,
             "0 <= value <= max_duration_s"),
            ("n_spots_left", self.n_spots_left, 0 <= self.n_spots_left <= 8, "0 <= value <= 8"),
            ("n_spots_right", self.n_spots_right, 0 <= self.n_spots_right <= 8, "0 <= value <= 8"),
            ("max_freq_hz", self.max_freq_hz, 0.0 < self.max_freq_hz <= 1000.0, "0 < value <= 1000"),
        )
        for name, value, ok, allowed in checks:
            if not ok:  # NaN fails every comparison, so it lands here too
                raise ValueError(f"RigLightLimits.{name} = {value!r}: outside the allowed range ({allowed})")

    def refusal(self, cmd: wire.LightCommandFields) -> str | None:
        """Why a START command is outside these limits (answer INVALID), or None when it is within."""
        p, d, r, f = cmd.power_mw_per_spot, cmd.duration_s, cmd.ramp_down_s, cmd.freq_hz
        if not all(math.isfinite(x) for x in (p, d, r, f)):
            return f"non-finite value (power {p}, duration {d}, ramp-down {r}, frequency {f})"
        if not (0.0 < p <= self.max_power_mw_per_spot):
            return f"power {p:g} mW per spot outside 0 < P <= {self.max_power_mw_per_spot:g}"
        if not (0.0 < d <= self.max_duration_s):
            return f"duration {d:g} s (ramp-down included) outside 0 < d <= {self.max_duration_s:g}"
        if not (self.min_ramp_down_s <= r <= d):
            return f"ramp-down {r:g} s outside {self.min_ramp_down_s:g} <= ramp <= duration {d:g}"
        if not (0.0 <= f <= self.max_freq_hz):
            return f"frequency {f:g} Hz outside 0 <= f <= {self.max_freq_hz:g}"
        for side, mask, n in (("left", cmd.spots_left, self.n_spots_left),
                              ("right", cmd.spots_right, self.n_spots_right)):
            if not (0 <= mask < 1 << n):
                return f"spots_{side} mask {mask:#b} names a spot this rig does not have ({n} spots)"
        if not (cmd.spots_left or cmd.spots_right):
            return "no spot lit (both spot masks are 0)"
        return None


class Admission(NamedTuple):
    """What :meth:`LightGuard.admit` decided for one light command: the acknowledgement to send."""

    status: wire.AckStatus
    t_light_change_ns: int  #: rig time at which the light changes (START: its onset); 0 if it does not
    reason: str  #: why (for the rig's log): "" when APPLIED/STOPPED


class LightGuard:
    """The rig-side safety every rig runs, whatever rigd says (docs/wire-protocol.md).

    * **Watchdog on rigd's heartbeat**: :meth:`note_rigd_heartbeat` is fed every rigd heartbeat
      (:class:`RigClient` does it in :meth:`RigClient.poll`); :meth:`check`, called by the rig's
      loop at least every few ms, returns the command whose light must go off (acknowledge it
      WATCHDOG_OFF) when rigd has been silent for more than ``watchdog_s`` while light is on or
      scheduled. Before any heartbeat rigd counts as silent.
    * **Per-command deadline**: a START whose light would begin after its ``deadline_rig_ns``
      (non-zero) is LATE and not executed.
    * **Local limits** (:class:`RigLightLimits`): a START outside them is INVALID, not executed.

    ALL_OFF and RAMP_DOWN are always obeyed (never late): light off is always safe. The guard also
    keeps which command is lighting and until when, so it knows whether light is on.

    Args:
        limits: this rig's light limits.
        watchdog_s: rigd silence that turns the light off (default 0.5 s; rigd beats at 10 Hz).
        clock_ns: the rig clock the guard reads when a method is not given a time (the same clock
            as the commands' deadlines); :class:`RigClient` passes its own.
        silence_clock_ns: the clock rigd's silence is measured on (default: ``clock_ns``). A rig
            whose own clock does not follow wall time (a simulation in lockstep with rigd, which
            may run many rig seconds per wall second) passes ``time.monotonic_ns``: light spans stay
            on the rig clock, the watchdog on wall time. Heartbeat times given to
            :meth:`note_rigd_heartbeat` and :meth:`rigd_silence_ns` are then on this clock.
    """

    def __init__(self, limits: RigLightLimits | None = None, *, watchdog_s: float = RIGD_WATCHDOG_S,
                 clock_ns: Callable[[], int] = time.monotonic_ns,
                 silence_clock_ns: Callable[[], int] | None = None) -> None:
        if not (0.0 < watchdog_s <= 1.0):
            raise ValueError(f"LightGuard watchdog_s = {watchdog_s!r}: outside the allowed range (0 < value <= 1)")
        self.limits = limits or RigLightLimits()
        self.watchdog_ns = round(watchdog_s * _NS)
        self.clock_ns = clock_ns
        self.silence_clock_ns = silence_clock_ns
        self.last_rigd_heartbeat_ns: int | None = None
        #: the START command lighting (or scheduled), and its light's rig-time span
        self.active: wire.LightCommandFields | None = None
        self.t_on_ns = 0
        self.t_off_ns = 0
        self.trips = 0
        #: the latest decision of :meth:`admit` (its reason is for the rig's log)
        self.last_admission: Admission | None = None
        #: rigd's silence when the watchdog last tripped (ns)
        self.last_trip_silence_ns = 0

    def _now(self, now_ns: int | None) -> int:
        return self.clock_ns() if now_ns is None else now_ns

    def _silence_now(self, now_ns: int | None) -> int:
        """Now on the silence clock (``now_ns``, if given, is on that clock)."""
        if now_ns is not None:
            return now_ns
        return (self.silence_clock_ns or self.clock_ns)()

    def note_rigd_heartbeat(self, t_ns: int | None = None) -> None:
        """A rigd heartbeat arrived (at ``t_ns`` on the silence clock, default now): feeds the watchdog."""
        t = self._silence_now(t_ns)
        if self.last_rigd_heartbeat_ns is None or t > self.last_rigd_heartbeat_ns:
            self.last_rigd_heartbeat_ns = t

    def rigd_silence_ns(self, now_ns: int | None = None) -> int | None:
        """How long rigd has been silent at ``now_ns`` (silence clock; None before its first heartbeat)."""
        if self.last_rigd_heartbeat_ns is None:
            return None
        return self._silence_now(now_ns) - self.last_rigd_heartbeat_ns

    def light_on(self, now_ns: int | None = None) -> bool:
        """Return True while an admitted START lights (or will light) at or after ``now_ns``."""
        return self.active is not None and self.t_off_ns > self._now(now_ns)

    def admit(self, cmd: wire.LightCommandFields, now_ns: int | None = None) -> Admission:
        """Decide a light command received at ``now_ns``; the rig executes it only if APPLIED/STOPPED.

        START: INVALID outside the limits, LATE if its light would begin after its deadline, else
        APPLIED with the onset max(now, ``t_start_rig_ns``) (a START replaces a running one).
        RAMP_DOWN: STOPPED (the ramp starts now; a scheduled START not begun is cancelled), INVALID
        if its ramp is not within 0…max duration. ALL_OFF: STOPPED, light off now.
        """
        self.last_admission = verdict = self._decide(cmd, self._now(now_ns))
        return verdict

    def _decide(self, cmd: wire.LightCommandFields, now: int) -> Admission:
        if cmd.action == wire.LightAction.ALL_OFF:
            self._off(now)
            return Admission(wire.AckStatus.STOPPED, now, "")
        if cmd.action == wire.LightAction.RAMP_DOWN:
            ramp = cmd.ramp_down_s
            if not (math.isfinite(ramp) and 0.0 <= ramp <= self.limits.max_duration_s):
                return Admission(wire.AckStatus.INVALID, 0,
                                 f"ramp-down {ramp:g} s outside 0 <= ramp <= {self.limits.max_duration_s:g}")
            if self.light_on(now):
                self.t_off_ns = now if now < self.t_on_ns else min(self.t_off_ns, now + round(ramp * _NS))
            return Admission(wire.AckStatus.STOPPED, now, "")
        why = self.limits.refusal(cmd)
        if why is not None:
            return Admission(wire.AckStatus.INVALID, 0, why)
        t_on = max(now, cmd.t_start_rig_ns)
        if cmd.deadline_rig_ns and t_on > cmd.deadline_rig_ns:
            return Admission(wire.AckStatus.LATE, 0, f"light would start {(t_on - cmd.deadline_rig_ns) / 1e6:.3f} ms "
                                                     f"after the command's deadline")
        self.active = cmd
        self.t_on_ns = t_on
        self.t_off_ns = t_on + round(cmd.duration_s * _NS)
        return Admission(wire.AckStatus.APPLIED, t_on, "")

    def check(self, now_ns: int | None = None) -> wire.LightCommandFields | None:
        """Watchdog: the command whose light must go off now (ack it WATCHDOG_OFF), else None.

        Trips when light is on or scheduled and rigd has been silent for more than ``watchdog_s``
        (or never beat); the guard then counts the light off. Call it from the rig's loop every
        few ms: the light goes off within ``watchdog_s`` plus that period of rigd's last heartbeat.
        """
        now = self._now(now_ns)
        if not self.light_on(now):
            return None
        silence = self.rigd_silence_ns(now if self.silence_clock_ns is None else None)
        if silence is not None and silence <= self.watchdog_ns:
            return None
        cmd = self.active
        self._off(now)
        self.trips += 1
        self.last_trip_silence_ns = now if silence is None else silence
        return cmd

    def _off(self, now: int) -> None:
        if self.active is not None:
            self.t_off_ns = min(self.t_off_ns, now)
            self.t_on_ns = min(self.t_on_ns, now)


class RigdEstimate(NamedTuple):
    """rigd's estimate for one of this rig's SPIKE_COUNTS frames (DECODER_OUTPUT, docs/wire-protocol.md).

    rigd sends one per frame when it publishes estimates (``rigd start --clock rig`` or
    ``publish_estimates``), on the command socket, after that frame's light command if any.
    """

    seq: int  #: the frame's seq
    t_rig_ns: int  #: the frame's t_rig_ns
    cause_t_send_ns: int  #: the frame's t_send_ns
    t_s: float  #: time from the trial's go cue (s)
    value: float
    confidence: float
    left: float
    right: float

    @classmethod
    def from_row(cls, row: npt.NDArray[Any]) -> RigdEstimate:
        """One float64 row of 8 values as sent by rigd."""
        r = [float(x) for x in row[:8]]
        return cls(int(r[0]), int(r[1]), int(r[2]), r[3], r[4], r[5], r[6], r[7])


class EstimateTimeoutError(TimeoutError):
    """rigd did not send the estimate a lockstep rig waits for (:meth:`RigClient.wait_estimate`)."""


@dataclass
class Received:
    """Messages from rigd collected by :meth:`RigClient.poll` (or :meth:`RigClient.wait_estimate`)."""

    commands: list[wire.LightCommandFields] = field(default_factory=list)
    heartbeats: int = 0
    #: the rig ids rigd's latest heartbeat says it holds a description of (None: no heartbeat came)
    rigd_rigs: frozenset[int] | None = None
    #: the boot_id rigd follows for each rig id (None: rigd's heartbeat does not list them)
    rigd_boot_ids: dict[str, int] | None = None
    errors: list[str] = field(default_factory=list)
    #: rigd's estimates for this rig's frames, in arrival order (only when rigd publishes them)
    estimates: list[RigdEstimate] = field(default_factory=list)
    #: the estimate :meth:`RigClient.wait_estimate` waited for (None: the wait was abandoned, or a poll)
    estimate: RigdEstimate | None = None


class RigClient:
    """A rig's connection to rigd.

    Args:
        rig_id: this rig's id (rigd accepts only the ids it is configured for).
        ingest_endpoint: rigd's ingest endpoint, e.g. ``tcp://127.0.0.1:5555``.
        command_endpoint: rigd's command endpoint, e.g. ``tcp://127.0.0.1:5556``.
        description: what the rig announces in its heartbeats (units per hemisphere, bin size…);
            every heartbeat also carries this instance's ``boot_id`` (a random 63-bit id, new for
            every RigClient: rigd detects a restarted rig by it), ``host`` and ``pid``.
        clock_ns: the rig's clock; ``time.monotonic_ns`` unless the rig has its own.
        guard: the rig's :class:`LightGuard` (default: rigd's limits and a 0.5 s watchdog on
            ``clock_ns``); :meth:`poll` feeds it every rigd heartbeat. Run it: ``guard.admit`` each
            command before executing it, ``guard.check`` every few ms in the rig's loop.
    """

    def __init__(
        self,
        rig_id: int,
        ingest_endpoint: str,
        command_endpoint: str,
        description: dict[str, Any] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        context: zmq.Context[Any] | None = None,
        guard: LightGuard | None = None,
    ) -> None:
        self.rig_id = rig_id
        self.description = dict(description or {})
        self.clock_ns = clock_ns
        self.guard = guard or LightGuard(clock_ns=clock_ns)
        #: identifies this instance of the rig in every heartbeat (docs/wire-protocol.md)
        self.identity: dict[str, Any] = {"boot_id": secrets.randbits(63), "host": socket.gethostname(),
                                         "pid": os.getpid()}
        self._ctx = context or zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, 100_000)
        self._pub.setsockopt(zmq.LINGER, 1000)
        self._pub.connect(ingest_endpoint)
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.connect(command_endpoint)
        self._command_endpoint = command_endpoint
        #: rigd's loop-watchdog endpoints this client listens on too (announced in rigd's heartbeat)
        self.safety_endpoints: list[str] = []
        self._seq = [0] * 8
        self.last_rigd_heartbeat_ns = 0
        self.estimates_received = 0  #: rigd's estimates for this rig received so far
        self.last_estimate: RigdEstimate | None = None
        self._awaited = -1  #: the frame seq :meth:`wait_estimate` waits for

    # -- sending ------------------------------------------------------------------------------

    def _send(self, kind: wire.Kind, stream: int, payload: npt.NDArray[Any] | bytes | None,
              t_rig_ns: int | None = None) -> int:
        seq = self._seq[stream]
        self._seq[stream] = seq + 1
        now = self.clock_ns()
        header, body = wire.encode(kind, payload, rig_id=self.rig_id, stream_id=stream, seq=seq,
                                   t_rig_ns=now if t_rig_ns is None else t_rig_ns, t_send_ns=now)
        self._pub.send_multipart([header, body], copy=False)
        return seq

    def next_seq(self, stream: int) -> int:
        """The seq the next message on ``stream`` gets."""
        return self._seq[stream]

    def set_next_seq(self, stream: int, seq: int) -> None:
        """Number the next message on ``stream`` ``seq`` (a replay keeps its recording's numbering).

        rigd accepts ``seq`` from last + 1 to last + 100,000 and drops an older one
        (docs/wire-protocol.md, "Sequence numbers"): only ever move a stream forward.
        """
        if not (0 <= stream < len(self._seq)) or seq < 0:
            raise ValueError(f"set_next_seq({stream}, {seq}): expected a stream 0 … {len(self._seq) - 1} and seq >= 0")
        self._seq[stream] = seq

    def send_counts(self, counts: npt.NDArray[Any], t_rig_ns: int | None = None) -> int:
        """Publish one bin of spike counts, shape (n_units,) or (n_bins, n_units). Returns its seq."""
        return self._send(wire.Kind.SPIKE_COUNTS, STREAM_COUNTS, counts, t_rig_ns)

    def send_spikes(self, unit_and_offset_us: npt.NDArray[np.uint32], t_rig_ns: int | None = None) -> int:
        """Publish spike events: uint32 array (n_spikes, 2) of unit index and µs offset."""
        return self._send(wire.Kind.SPIKE_EVENTS, STREAM_EVENTS_SPIKES, unit_and_offset_us, t_rig_ns)

    def send_raw(self, samples: npt.NDArray[np.int16], t_rig_ns: int | None = None) -> int:
        """Publish a chunk of broadband samples, int16 (n_samples, n_channels)."""
        return self._send(wire.Kind.RAW_SAMPLES, STREAM_RAW, samples, t_rig_ns)

    def send_event(self, event: str, trial: int, t_rig_ns: int | None = None, **fields: Any) -> int:
        """Publish a trial/behaviour event (see docs/wire-protocol.md for names and fields)."""
        obj = {"event": event, "trial": trial, **fields}
        return self._send(wire.Kind.TRIAL_EVENT, STREAM_EVENTS, wire.json_bytes(obj), t_rig_ns)

    def send_ack(self, command: wire.LightCommandFields, status: wire.AckStatus,
                 t_received_rig_ns: int, t_light_change_rig_ns: int = 0) -> int:
        """Acknowledge a light command with the time the light actually changed."""
        ack = wire.LightAckFields(command.command_id, command.cause_seq, command.cause_t_send_ns,
                                  t_received_rig_ns, t_light_change_rig_ns, status)
        return self._send(wire.Kind.LIGHT_ACK, STREAM_ACKS, ack.pack())

    def heartbeat(self, **status: Any) -> int:
        """Publish a heartbeat: the rig description, any status fields and ``boot_id``/``host``/``pid``."""
        return self._send(wire.Kind.HEARTBEAT, STREAM_HEARTBEAT,
                          wire.json_bytes({**self.description, **status, **self.identity}))

    # -- receiving ----------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> Received:
        """Collect every message rigd has sent, waiting up to ``timeout_ms`` for the first.

        Every rigd heartbeat feeds :attr:`guard`'s watchdog (at the guard's clock).
        """
        return self._collect(Received(), timeout_ms)

    def wait_estimate(self, seq: int, timeout_s: float = 10.0, *,
                      idle: Callable[[Received], bool] | None = None, idle_s: float = 0.05) -> Received:
        """Wait until rigd's estimate for this rig's SPIKE_COUNTS frame ``seq`` arrives (a lockstep rig).

        Polls as :meth:`poll` does (rigd's heartbeats feed :attr:`guard`) and returns everything
        received meanwhile, the awaited estimate in ``estimate``. rigd sends a frame's light command
        before the frame's estimate on the same socket, so every command caused by frame ``seq``
        (and by the frames before it) is in ``commands``: a rig that applies them before computing
        its next bin applies each command at exactly the bin after the frame that caused it.

        ``idle`` is called with what has arrived so far at least every ``idle_s`` (wall time) while
        the estimate is not in: the rig keeps its heartbeats going (≥ 2 Hz, docs/wire-protocol.md)
        and runs its watchdog there. It returns False to abandon the wait (a stop was requested,
        rigd is lost): the result's ``estimate`` is then None.

        Raises :class:`EstimateTimeoutError` when the estimate is not in after ``timeout_s`` (wall), with
        why: rigd silent altogether, rigd alive but not publishing estimates (start it with
        ``--clock rig`` or ``publish_estimates``), or this frame's estimate missing (the frame dropped).
        """
        if not (timeout_s > 0.0 and idle_s > 0.0):
            raise ValueError(f"wait_estimate: timeout_s {timeout_s!r} and idle_s {idle_s!r} must be > 0")
        out = Received()
        self._awaited = seq
        try:
            if self.last_estimate is not None and self.last_estimate.seq == seq:  # already in (an earlier poll)
                out.estimate = self.last_estimate
                return out
            start = time.monotonic()
            deadline = start + timeout_s
            next_idle = start + idle_s
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise EstimateTimeoutError(self._why_no_estimate(seq, timeout_s, out))
                self._collect(out, max(1, math.ceil((min(deadline, next_idle) - now) * 1e3)))
                if out.estimate is not None:
                    return out
                now = time.monotonic()
                if now >= next_idle:
                    next_idle = now + idle_s
                    if idle is not None and not idle(out):
                        return out
        finally:
            self._awaited = -1

    def _why_no_estimate(self, seq: int, timeout_s: float, out: Received) -> str:
        """The message of :class:`EstimateTimeoutError`: what rigd did while the rig waited."""
        waited = f"rig {self.rig_id} waited {timeout_s:g} s for rigd's estimate of its frame seq {seq}"
        if not out.heartbeats:
            return f"{waited}, and rigd sent nothing at all (no heartbeat): rigd stopped, hung or unreachable"
        if self.estimates_received == 0:
            return (f"{waited}: rigd answers (heartbeats) but has published no decoder estimate to this rig; a "
                    f"lockstep rig needs them: start rigd with --clock rig (or publish_estimates = true)")
        last = self.last_estimate.seq if self.last_estimate is not None else None
        return (f"{waited}: rigd publishes estimates (last for this rig: frame seq {last}) but none came for this "
                f"frame: rigd dropped it (rigd status: errors.ingest.*) or its loop is stalled")

    def _collect(self, out: Received, timeout_ms: int = 0) -> Received:
        """Add to ``out`` every message rigd has sent, waiting up to ``timeout_ms`` for the first."""
        if timeout_ms and not self._sub.poll(timeout_ms):
            return out
        while True:
            try:
                frames = self._sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return out
            try:
                if len(frames) != 2:
                    raise wire.WireError("frames", f"expected 2 frames, got {len(frames)}")
                h = wire.unpack_header(frames[0].buffer)
                wire.check_payload(h, frames[1].buffer)
                if h.kind == wire.Kind.HEARTBEAT:
                    out.heartbeats += 1
                    self.last_rigd_heartbeat_ns = self.clock_ns()
                    self.guard.note_rigd_heartbeat()
                    body = wire.payload_json(h, frames[1].buffer)
                    rigs = body.get("rigs")
                    safety = body.get("safety")
                    if isinstance(safety, str) and safety not in self.safety_endpoints:
                        self._listen_to_safety(safety, out)
                    out.rigd_rigs = frozenset(r for r in rigs if isinstance(r, int)) if isinstance(rigs, list) \
                        else frozenset()
                    boots = body.get("boot_ids")
                    out.rigd_boot_ids = {str(k): v for k, v in boots.items() if isinstance(v, int)} \
                        if isinstance(boots, dict) else None
                elif h.kind == wire.Kind.LIGHT_COMMAND and h.rig_id == self.rig_id:
                    out.commands.append(wire.unpack_light_command(frames[1].buffer))
                elif h.kind == wire.Kind.DECODER_OUTPUT and h.rig_id == self.rig_id:
                    rows = wire.payload_array(h, frames[1].buffer)
                    if rows.shape[-1] < 8:
                        raise wire.WireError("shape", f"DECODER_OUTPUT of shape {h.shape}; expected rows of 8")
                    for row in rows.reshape(-1, rows.shape[-1]):
                        est = RigdEstimate.from_row(row)
                        out.estimates.append(est)
                        self.estimates_received += 1
                        self.last_estimate = est
                        if est.seq == self._awaited:
                            out.estimate = est
            except wire.WireError as exc:
                out.errors.append(str(exc))

    def _listen_to_safety(self, announced: str, out: Received) -> None:
        """Connect the command SUB to rigd's loop watchdog too (it sends ALL_OFF when rigd's loop stalls).

        A wildcard host (``0.0.0.0``, ``*``) is replaced by the command endpoint's host. At most 4
        endpoints; a malformed one is reported in ``out.errors`` and not retried.
        """
        self.safety_endpoints.append(announced)  # tried once, whatever happens
        endpoint = announced
        if announced.startswith("tcp://") and self._command_endpoint.startswith("tcp://"):
            host, _, port = announced[len("tcp://"):].rpartition(":")
            if host in ("0.0.0.0", "*", "[::]"):
                endpoint = f"tcp://{self._command_endpoint[len('tcp://'):].rpartition(':')[0]}:{port}"
        if len(self.safety_endpoints) > 4 or not endpoint.startswith(("tcp://", "ipc://")):
            out.errors.append(f"safety endpoint {announced!r} in rigd's heartbeat: not followed "
                              f"(expected at most 4 tcp:// or ipc:// endpoints)")
            return
        try:
            self._sub.connect(endpoint)
        except zmq.ZMQError as exc:
            out.errors.append(f"safety endpoint {announced!r} in rigd's heartbeat: cannot connect ({exc})")

    def connect(self, timeout_s: float = 10.0) -> None:
        """Announce the rig with heartbeats until rigd's heartbeat lists this rig's id.

        Seeing rigd's heartbeat alone proves only rigd → rig; PUB/SUB drops what the rig sends
        before rigd's subscription reaches it, so the rig waits until rigd says it holds this rig's
        description (both directions up): nothing sent after ``connect`` returns is lost to the join.
        Where rigd lists the ``boot_id`` it follows per rig, the rig also waits for its own: after a
        restart, rigd has then heard the new process (and reset its sequence numbers) first.
        Raises TimeoutError if that does not happen in ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        heard_rigd = False
        while time.monotonic() < deadline:
            self.heartbeat()
            end = min(deadline, time.monotonic() + 0.1)
            while (left := end - time.monotonic()) > 0:
                got = self.poll(timeout_ms=max(1, round(left * 1e3)))
                heard_rigd = heard_rigd or bool(got.heartbeats)
                if got.rigd_rigs is not None and self.rig_id in got.rigd_rigs and (
                        got.rigd_boot_ids is None
                        or got.rigd_boot_ids.get(str(self.rig_id)) == self.identity["boot_id"]):
                    return
        if heard_rigd:
            raise TimeoutError(f"rigd answers but does not list rig {self.rig_id} after {timeout_s} s "
                               f"(is {self.rig_id} among the config's rig_ids, and does the description "
                               f"carry 'n_units'? rigd status counts errors.ingest.unknown_rig and "
                               f"errors.heartbeat)")
        raise TimeoutError(f"rigd did not answer within {timeout_s} s "
                           f"(is it running and are the endpoints right?)")

    def close(self) -> None:
        """Close both sockets (pending messages get up to 1 s to leave)."""
        self._pub.close()
        self._sub.close()

    def __enter__(self) -> RigClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
