"""The hot path: one frame in, at most one light command out, synchronously, on its own thread.

This module owns rigd's two data-plane sockets (ingest SUB, command PUB; both bound here) and
the per-frame chain::

    recv → validate header/sequence → trial tracker → decoder.step → controller.step
         → deadline check → light interlock (which alone sends the command) → telemetry stamp

Every received message is handed, unparsed and uncopied, to the recorder. Nothing in the chain
awaits, logs or does file I/O; errors are counted (rig/errors.py) and detailed off the path.
Trial ends (labels for decoder calibration, per-trial logs) and decoder refits happen here too
but outside the per-frame chain: a refit runs on a worker thread and is swapped in atomically.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from controllers.base import Controller, Epoch, TrialState
from controllers.trial_state import TrialTracker
from decoders.base import Estimate
from decoders.online import OnlineDecoder
from hardware.interlock import LightInterlock
from rig import wire
from rig.errors import Counters
from rig.session import RIGD_RIG_ID, Recorder
from rig.telemetry import LoopTelemetry

HEARTBEAT_PERIOD_NS = 100_000_000  #: rigd → rig heartbeat, 10 Hz (rig watchdog trips at 0.5 s)
DECODER_CHUNK = 1000  #: decoder outputs recorded per DECODER_OUTPUT record
DECODER_FIELDS = ("seq", "t_rig_ns", "t_s", "value", "confidence", "left", "right")
KNOWN_EVENTS = frozenset({"trial_start", "sample_on", "delay_on", "go_cue", "lick", "early_lick",
                          "outcome", "trial_end"})
_SIDE = {"left": -1, "right": 1}


@dataclass
class RigInfo:
    """What rigd knows about a connected rig (from its heartbeats)."""

    rig_id: int
    description: dict[str, Any]
    n_units: int
    last_heartbeat_ns: int
    last_seq: dict[int, int] = field(default_factory=dict)


@dataclass
class TrialBook:
    """Per-trial bookkeeping the loop keeps until the trial's summary is logged."""

    trial: int
    instructed: int = 0
    outcome: str = ""
    choice: int = 0
    reaction_time_s: float | None = None
    early_lick: bool = False
    light: dict[str, Any] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    late_decisions: int = 0
    t_start_rig_ns: int = 0
    cd_end_delay: tuple[float, float] = (float("nan"), float("nan"))


class HotLoop:
    """The per-frame closed loop for one session. ``run`` blocks until ``stop`` is called.

    Args:
        ingest_endpoint / command_endpoint: endpoints to bind (``tcp://127.0.0.1:*`` picks a port).
        rig_ids: rig ids accepted; anything else is counted as ``unknown_rig``.
        decoder_factory: builds the online decoder once a rig has described its units.
        controller, tracker, interlock_factory: the pure parts, wired by the supervisor.
            ``interlock_factory(send)`` builds the interlock around a function that puts a packed
            light-command payload on the command socket; the loop never sees the light source.
        deadline_ns: decision budget from frame receipt; a later decision is dropped, never sent.
        on_alarm: called (from this thread) with every alarm dict; must be cheap and thread-safe.
        publish_estimates: also send every frame's estimate back on the command socket
            (DECODER_OUTPUT, float64 (8,): seq, t_rig_ns, cause t_send_ns, t_s, value,
            confidence, left, right) for rigs that show or act on the decoded state; it also
            gives the benchmark an end-to-end measurement on every single loop.
    """

    def __init__(
        self,
        *,
        ingest_endpoint: str,
        command_endpoint: str,
        rig_ids: set[int],
        decoder_factory: Callable[[dict[str, Any]], OnlineDecoder],
        controller: Controller,
        tracker: TrialTracker,
        interlock_factory: Callable[[Callable[[bytes], None], Callable[[dict[str, Any]], None]],
                                    LightInterlock],
        recorder: Recorder,
        telemetry: LoopTelemetry,
        counters: Counters,
        deadline_ns: int = 10_000_000,
        on_alarm: Callable[[dict[str, Any]], None] | None = None,
        on_trial: Callable[[dict[str, Any]], None] | None = None,
        context: zmq.Context[Any] | None = None,
        publish_estimates: bool = False,
    ) -> None:
        self.ctx = context or zmq.Context.instance()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 200_000)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.bind(ingest_endpoint)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 500)
        self.pub.bind(command_endpoint)
        self.ingest_endpoint = self.sub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.command_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.rig_ids = set(rig_ids)
        self.rigs: dict[int, RigInfo] = {}
        self.decoder_factory = decoder_factory
        self.decoder: OnlineDecoder | None = None
        self._no_estimate = Estimate()
        self.controller = controller
        self.tracker = tracker
        self.recorder = recorder
        self.telemetry = telemetry
        self.counters = counters
        self.deadline_ns = deadline_ns
        self._on_alarm = on_alarm
        self._on_trial = on_trial
        self._cmd_seq = 0
        self._hb_seq = 0
        self._target_rig = next(iter(sorted(self.rig_ids))) if self.rig_ids else 1
        self.interlock = interlock_factory(self._send_light, self._alarm)
        self._stop = threading.Event()
        self._all_off_requested = False
        self._stopped = threading.Event()
        self._dec_buf = np.zeros((DECODER_CHUNK, len(DECODER_FIELDS)), dtype=np.float64)
        self._dec_n = 0
        self.publish_estimates = publish_estimates
        self._est_out = np.zeros(8, dtype=np.float64)
        self._est_seq = 0
        self._books: dict[int, TrialBook] = {}
        self._sent_commands: dict[int, tuple[int, dict[str, Any]]] = {}
        self.trials_done = 0
        self.frames = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rigd-fit")
        self._fit_future: concurrent.futures.Future[Any] | None = None
        self._fit_decoder: OnlineDecoder | None = None
        self.thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop on a dedicated thread."""
        self.thread = threading.Thread(target=self.run, name="rigd-hot-loop", daemon=True)
        self.thread.start()

    def request_all_off(self) -> None:
        """Ask the loop thread to turn the light off now (thread-safe; used before the rig stops)."""
        self._all_off_requested = True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop: light off, last records flushed to the recorder, sockets closed."""
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def run(self) -> None:
        """The loop itself (blocks)."""
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        next_hb = 0
        sub = self.sub
        try:
            while not self._stop.is_set():
                now = time.monotonic_ns()
                if self._all_off_requested:
                    self._all_off_requested = False
                    self.interlock.all_off("session ending", now_ns=now)
                if now >= next_hb:
                    self._heartbeat(now)
                    self._housekeeping(now)
                    next_hb = now + HEARTBEAT_PERIOD_NS
                if not poller.poll(10):
                    continue
                while True:
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_message(frames, time.monotonic_ns())
                    if time.monotonic_ns() >= next_hb:
                        break
        finally:
            self.interlock.all_off("session end", now_ns=time.monotonic_ns())
            self._flush_decoder_outputs()
            self.sub.close()
            self.pub.close()
            self._stopped.set()

    def _housekeeping(self, now: int) -> None:
        """Every heartbeat period: service watchdog, finished decoder refits."""
        self.interlock.check_watchdog(now)
        self._maybe_swap_decoder()

    # -- outgoing -----------------------------------------------------------------------------

    def _heartbeat(self, now: int) -> None:
        h, p = wire.encode(wire.Kind.HEARTBEAT, None, rig_id=RIGD_RIG_ID, stream_id=3,
                           seq=self._hb_seq, t_rig_ns=now, t_send_ns=now)
        self._hb_seq += 1
        self.pub.send_multipart([h, p])
        self.interlock.heartbeat(now)

    def _send_light(self, payload: bytes) -> None:
        """Put a packed light command (minted by the interlock) on the command socket."""
        now = time.monotonic_ns()
        h, p = wire.encode(wire.Kind.LIGHT_COMMAND, payload, rig_id=self._target_rig, stream_id=2,
                           seq=self._cmd_seq, t_rig_ns=now, t_send_ns=now)
        self._cmd_seq += 1
        self.pub.send_multipart([h, p], copy=False)
        self.recorder.put(h, p, now)
        cmd = wire.unpack_light_command(payload)
        book = self._books.get(cmd.trial)
        info = {"command_id": cmd.command_id, "action": cmd.action.name,
                "hemisphere": _hemisphere_name(cmd.spots_left, cmd.spots_right),
                "spots_left": cmd.spots_left, "spots_right": cmd.spots_right,
                "power_mw_per_spot": round(cmd.power_mw_per_spot, 6),
                "duration_s": round(cmd.duration_s, 6), "ramp_down_s": round(cmd.ramp_down_s, 6),
                "waveform": cmd.waveform.name.lower(), "freq_hz": cmd.freq_hz,
                "onset_t_s": self.tracker.state.t_s, "status": "sent"}
        if book is not None and cmd.action == wire.LightAction.START:
            book.light = info
        self._sent_commands[cmd.command_id] = (cmd.trial, info)

    def _alarm(self, alarm: dict[str, Any]) -> None:
        now = time.monotonic_ns()
        alarm = {"t_local_ns": now, "severity": "error", **alarm}
        if "source" not in alarm:  # the interlock names the limit it enforced
            alarm["source"] = "interlock" if "limit" in alarm else "rigd"
        if "message" not in alarm:
            alarm["message"] = str(alarm.get("reason", alarm.get("alarm", "")))
        self.counters.inc(f"alarms.{alarm.get('source', 'rigd')}")
        self.recorder.alarm(alarm, now)
        if self._on_alarm is not None:
            self._on_alarm(alarm)

    # -- incoming -----------------------------------------------------------------------------

    def _on_message(self, frames: list[zmq.Frame], t_recv: int) -> None:
        if len(frames) != 2:
            self.counters.error("ingest", "frames", f"expected 2 frames (header, payload), got "
                                f"{len(frames)}")
            return
        hbuf = frames[0].buffer
        pbuf = frames[1].buffer
        try:
            h = wire.unpack_header(hbuf)
            wire.check_payload(h, pbuf)
        except wire.WireError as exc:
            self.counters.error("ingest", exc.reason, str(exc))
            return
        rig = self.rigs.get(h.rig_id)
        if h.rig_id not in self.rig_ids:
            self.counters.error("ingest", "unknown_rig", f"rig id {h.rig_id} is not configured; "
                                f"expected one of {sorted(self.rig_ids)}", rig_id=h.rig_id)
            return
        # sequence numbers per (rig, stream): duplicates and out-of-order are dropped, gaps counted
        if rig is not None:
            last = rig.last_seq.get(h.stream_id)
            if last is not None:
                if h.seq == last:
                    self.counters.error("ingest", "duplicate_seq", f"rig {h.rig_id} stream "
                                        f"{h.stream_id}: seq {h.seq} received twice")
                    return
                if h.seq < last:
                    self.counters.error("ingest", "out_of_order_seq", f"rig {h.rig_id} stream "
                                        f"{h.stream_id}: seq {h.seq} after {last}")
                    return
                if h.seq > last + 1:
                    self.counters.inc("ingest.missing_seq", h.seq - last - 1)
            rig.last_seq[h.stream_id] = h.seq
        kind = h.kind
        if kind == wire.Kind.SPIKE_COUNTS:
            if rig is None:
                self.counters.error("ingest", "undescribed_rig", f"rig {h.rig_id} sent counts "
                                    "before any heartbeat describing its units")
                return
            n = h.shape[-1] if h.shape else 0
            if n != rig.n_units or len(h.shape) != 1:
                self.counters.error("ingest", "shape", f"SPIKE_COUNTS from rig {h.rig_id}: expected "
                                    f"shape ({rig.n_units},), got {h.shape}")
                return
            self.recorder.put(hbuf, pbuf, t_recv)
            self._on_counts(h, wire.payload_array(h, pbuf), t_recv)
        elif kind == wire.Kind.TRIAL_EVENT:
            try:
                ev = wire.payload_json(h, pbuf)
                name, trial = ev.get("event"), ev.get("trial")
                if not isinstance(name, str) or not isinstance(trial, int) or trial < 0:
                    raise wire.WireError("event", f"TRIAL_EVENT needs 'event' (str) and 'trial' "
                                         f"(int ≥ 0), got event={name!r} trial={trial!r}")
                if name not in KNOWN_EVENTS:
                    raise wire.WireError("event", f"unknown event {name!r}; expected one of "
                                         f"{sorted(KNOWN_EVENTS)}")
            except wire.WireError as exc:
                self.counters.error("events", exc.reason, str(exc))
                return
            self.recorder.put(hbuf, pbuf, t_recv)
            self._on_event(ev, h.t_rig_ns)
        elif kind == wire.Kind.LIGHT_ACK:
            try:
                ack = wire.unpack_light_ack(pbuf)
            except wire.WireError as exc:
                self.counters.error("acks", exc.reason, str(exc))
                return
            self.recorder.put(hbuf, pbuf, t_recv)
            self._on_ack(ack)
        elif kind == wire.Kind.HEARTBEAT:
            try:
                desc = wire.payload_json(h, pbuf)
                n_units = int(desc.get("n_units", -1))
                if n_units < 0:
                    raise wire.WireError("heartbeat", "rig heartbeat must describe 'n_units' (int ≥ 0)")
            except (wire.WireError, TypeError, ValueError) as exc:
                self.counters.error("heartbeat", getattr(exc, "reason", "heartbeat"), str(exc))
                return
            if rig is None or rig.description != desc:
                self.recorder.put(hbuf, pbuf, t_recv)
            if rig is None or rig.n_units != n_units:
                self._new_decoder(desc)
            if rig is None:
                self.rigs[h.rig_id] = RigInfo(h.rig_id, desc, n_units, t_recv, {h.stream_id: h.seq})
            else:
                rig.description, rig.n_units, rig.last_heartbeat_ns = desc, n_units, t_recv
        elif kind in (wire.Kind.SPIKE_EVENTS, wire.Kind.RAW_SAMPLES):
            self.recorder.put(hbuf, pbuf, t_recv)
            self.counters.inc(f"ingest.{kind.name.lower()}")
        else:
            self.counters.error("ingest", "kind", f"rigs may not send {kind.name}; expected "
                                "SPIKE_COUNTS, SPIKE_EVENTS, RAW_SAMPLES, TRIAL_EVENT, LIGHT_ACK or HEARTBEAT")

    def _new_decoder(self, desc: dict[str, Any]) -> None:
        """A rig described (or re-described) its units: build a fresh online decoder for them."""
        try:
            self.decoder = self.decoder_factory(desc)
        except (ValueError, TypeError, KeyError) as exc:
            self.decoder = None
            self._alarm({"source": "decoder", "severity": "error",
                         "message": f"cannot build a decoder for rig description {desc}: {exc}"})
            return
        self._fit_future = None
        self.recorder.log({"type": "decoder", "event": "created", "status": self.decoder.status()},
                          time.monotonic_ns())

    def _on_counts(self, h: wire.Header, counts: np.ndarray[Any, Any], t_recv: int) -> None:
        """The per-frame chain."""
        t_parsed = time.monotonic_ns()
        state = self.tracker.on_frame(h.t_rig_ns)
        dec = self.decoder
        est = dec.step(counts, h.seq, state.t_s) if dec is not None else self._no_estimate
        t_decoded = time.monotonic_ns()
        req = self.controller.step(state, est, h.t_rig_ns)
        t_controlled = time.monotonic_ns()
        t_sent = t_controlled
        if req is not None:
            if t_controlled - t_recv > self.deadline_ns:
                self.counters.inc("late_decisions")
                book = self._books.get(state.trial)
                if book is not None:
                    book.late_decisions += 1
            else:
                decision = self.interlock.request(
                    req, now_ns=t_controlled, cause_seq=h.seq, cause_t_rig_ns=h.t_rig_ns,
                    cause_t_send_ns=h.t_send_ns, deadline_rig_ns=h.t_rig_ns + self.deadline_ns)
                if not decision.approved:
                    book = self._books.get(state.trial)
                    if book is not None:
                        book.refused.append(decision.reason)
        if self.publish_estimates:
            self._publish_estimate(h, est)
        if req is not None or self.publish_estimates:
            t_sent = time.monotonic_ns()
        self.telemetry.record(h.seq, t_recv, t_parsed, t_decoded, t_controlled, t_sent)
        self._record_estimate(h, est)
        if state.epoch == Epoch.DELAY and -0.35 < state.t_s <= 0.0:
            book = self._books.get(state.trial)
            if book is not None:
                book.cd_end_delay = (est.left, est.right)
        self.frames += 1

    def _publish_estimate(self, h: wire.Header, est: Estimate) -> None:
        o = self._est_out
        o[0] = h.seq
        o[1] = h.t_rig_ns
        o[2] = h.t_send_ns
        o[3] = est.t_s
        o[4] = est.value
        o[5] = est.confidence
        o[6] = est.left
        o[7] = est.right
        hdr = wire.pack_header(wire.Kind.DECODER_OUTPUT, wire.DType.F64, (8,), rig_id=h.rig_id,
                               stream_id=4, seq=self._est_seq, t_rig_ns=h.t_rig_ns,
                               t_send_ns=time.monotonic_ns())
        self._est_seq += 1
        self.pub.send_multipart([hdr, o])

    def _record_estimate(self, h: wire.Header, est: Estimate) -> None:
        r = self._dec_buf[self._dec_n]
        r[0] = h.seq
        r[1] = h.t_rig_ns
        r[2] = est.t_s
        r[3] = est.value
        r[4] = est.confidence
        r[5] = est.left
        r[6] = est.right
        self._dec_n += 1
        if self._dec_n == DECODER_CHUNK:
            self._flush_decoder_outputs()

    def _flush_decoder_outputs(self) -> None:
        if self._dec_n:
            now = time.monotonic_ns()
            self.recorder.put_message(wire.Kind.DECODER_OUTPUT, self._dec_buf[: self._dec_n].copy(), now)
            self._dec_n = 0

    def _on_ack(self, ack: wire.LightAckFields) -> None:
        if ack.status in (wire.AckStatus.APPLIED, wire.AckStatus.LATE) and ack.cause_t_send_ns:
            self.telemetry.add_e2e((ack.t_received_rig_ns - ack.cause_t_send_ns) * 1e-3)
        sent = self._sent_commands.get(ack.command_id)
        if sent is not None:
            sent[1]["status"] = ack.status.name.lower()
            if ack.t_light_change_rig_ns:
                sent[1]["t_light_change_rig_ns"] = ack.t_light_change_rig_ns
        if ack.status == wire.AckStatus.LATE:
            self.counters.inc("late_at_rig")
        elif ack.status == wire.AckStatus.WATCHDOG_OFF:
            self._alarm({"source": "rig_watchdog", "severity": "error",
                         "message": "the rig's watchdog turned the light off (no heartbeat from rigd)"})
        elif ack.status == wire.AckStatus.INVALID:
            self._alarm({"source": "rig", "severity": "error",
                         "message": f"the rig refused light command {ack.command_id} as invalid"})

    def _on_event(self, ev: dict[str, Any], t_rig_ns: int) -> None:
        name = ev["event"]
        trial = int(ev["trial"])
        if name == "trial_start":
            # a trial whose end we never saw is closed now (robust to a lost trial_end)
            for t in [t for t in self._books if t < trial]:
                self._finish_trial(t)
            self._books[trial] = TrialBook(trial, _SIDE.get(str(ev.get("instructed")), 0),
                                           t_start_rig_ns=t_rig_ns)
            self.tracker.on_event(ev, t_rig_ns)
            if self.decoder is not None:
                self.decoder.on_trial_start(trial)
            self.interlock.on_trial_start(trial)
            return
        book = self._books.get(trial)
        if name == "trial_end":
            self._finish_trial(trial)  # controllers read the state before the tracker leaves the trial
            self.tracker.on_event(ev, t_rig_ns)
            return
        self.tracker.on_event(ev, t_rig_ns)
        if book is None:
            self.counters.inc("events.without_trial_start")
            return
        if name == "early_lick":
            book.early_lick = True
        elif name == "outcome":
            book.outcome = str(ev.get("outcome", ""))
            book.choice = _SIDE.get(str(ev.get("choice")), 0)
            rt = ev.get("reaction_time_s")
            book.reaction_time_s = float(rt) if isinstance(rt, int | float) else None
            if book.outcome == "early_lick":
                book.early_lick = True

    def _finish_trial(self, trial: int) -> None:
        book = self._books.pop(trial, None)
        if book is None:
            return
        state: TrialState = self.tracker.state
        decision = self.controller.on_trial_end(state) if state.trial == trial else {}
        perturbed = bool(book.light)
        correct = book.outcome == "hit"
        usable = (not perturbed) and (not book.early_lick) and book.choice != 0
        if self.decoder is not None and self.decoder.on_trial_end(
                trial, book.choice, book.instructed, correct, usable):
            self._submit_refit()
        condition = decision.get("condition") or (book.light.get("hemisphere") if perturbed else "control")
        summary: dict[str, Any] = {
            "type": "trial", "trial": trial,
            "instructed": {1: "right", -1: "left"}.get(book.instructed),
            "outcome": book.outcome or "unknown",
            "choice": {1: "right", -1: "left"}.get(book.choice),
            "correct": correct, "early_lick": book.early_lick,
            "reaction_time_s": book.reaction_time_s,
            "condition": condition, "light": book.light or None,
            "refused": book.refused, "late_decisions": book.late_decisions,
            "decision": decision, "cd_end_delay_left": _finite(book.cd_end_delay[0]),
            "cd_end_delay_right": _finite(book.cd_end_delay[1]),
            "t_start_rig_ns": book.t_start_rig_ns,
        }
        self.recorder.log(summary, time.monotonic_ns())
        self.trials_done += 1
        if self._on_trial is not None:
            self._on_trial(summary)

    # -- decoder refits (worker thread) -------------------------------------------------------

    def _submit_refit(self) -> None:
        if self._fit_future is not None or self.decoder is None:
            return
        self._fit_decoder = self.decoder
        self._fit_future = self._pool.submit(self.decoder.prepare_fit())

    def _maybe_swap_decoder(self) -> None:
        fut = self._fit_future
        if fut is None or not fut.done():
            return
        self._fit_future = None
        try:
            result = fut.result()
        except Exception as exc:  # a failed fit must not stop the loop
            self.counters.inc("decoder.fit_errors")
            self._alarm({"source": "decoder", "severity": "warning", "message": f"decoder fit failed: {exc}"})
            return
        if self.decoder is not self._fit_decoder or self.decoder is None:
            return  # the rig re-described itself meanwhile: this fit is for an old decoder
        self.decoder.swap(result)
        self.recorder.log({"type": "decoder_fit", "status": self.decoder.status()}, time.monotonic_ns())


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _hemisphere_name(spots_left: int, spots_right: int) -> str:
    if spots_left and spots_right:
        return "bilateral"
    return "left" if spots_left else ("right" if spots_right else "none")
