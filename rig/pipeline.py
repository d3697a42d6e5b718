"""One rig's closed loop, pure: the same object live, in the dry run and in a replayed session.

A :class:`Pipeline` takes a rig's validated frames, trial events and light acknowledgements and
runs the chain::

    trial tracker → decoder.step → controller.step → deadline check → light interlock

Light commands leave through the interlock's light source (a function the host gives: the live
loop puts them on the command socket, the dry run hands them to the simulated mouse); estimates
are returned to the host, which records or publishes them; trial summaries, decoder events and
alarms go to the host's callbacks. It opens no socket, starts no thread and reads no clock of its
own: time comes from the host's ``clock`` (rigd's monotonic clock live) or, with
``clock="rig"``, from the frames and events themselves (a simulated or replayed rig in lockstep,
and the dry run) — then its decisions depend on its inputs only.

Decoders change only between trials, so every trial is decoded by one decoder: a decoder built
for a rig's description is installed at the first frame outside a trial or at the next trial
start, and a refit (started at a trial's end, run by the host's ``fits`` executor) is swapped in
at the first trial start after it finished. With ``clock="rig"`` the pipeline waits for a build or
fit at those points instead of going on without it, so a fast replay decides exactly as the
session did.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from controllers.base import Controller, Epoch
from controllers.trial_state import TrialTracker
from decoders import load as load_decoder
from decoders import registry as decoder_registry
from decoders.base import LEFT, RIGHT, Estimate
from decoders.online import OnlineDecoder
from hardware.interlock import LightInterlock
from rig import wire
from rig.conditions import light_truth
from rig.errors import Counters

AlarmFn = Callable[[dict[str, Any]], None]
RecordFn = Callable[[dict[str, Any], int], object]  #: (record, now_ns): a JSON record for the session log
ClockMode = Literal["wall", "rig"]

#: a trial's decoded end-of-delay state (its summary's cd_end_delay_*) is the last estimate in this
#: window before the go cue (s)
END_DELAY_WINDOW_S = (-0.35, 0.0)
POOL_BUDGET_BYTES = 512 * 1024 * 1024  #: memory for an online decoder's calibration pool
#: how long a ``clock="rig"`` pipeline waits for a decoder build or fit before going on without it
RIG_CLOCK_WAIT_S = 300.0


@dataclass
class PipelineParts:
    """How a host builds the parts of a rig's pipeline (the supervisor, the dry run, tests)."""

    tracker: Callable[[], TrialTracker]
    controller: Callable[[int], Controller]
    interlock: Callable[[int, Callable[[bytes], None], AlarmFn], LightInterlock]  #: (rig_id, send, on_alarm)
    decoder: Callable[[dict[str, Any]], OnlineDecoder] | None  #: None: frames run without a decoder


@dataclass
class TrialBook:
    """Per-trial bookkeeping kept until the trial's summary is logged."""

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
    start_inferred: bool = False  #: opened by a later event: the trial's ``trial_start`` never arrived
    cd_end_delay: tuple[float, float] = (float("nan"), float("nan"))


class Pipeline:
    """The closed loop of one rig (see the module docstring).

    Args:
        rig_id: the rig this pipeline serves.
        parts: builds its tracker, controller, interlock (around :meth:`_light_minted`) and decoder.
        send_light: puts a packed light command (minted by the interlock) on its way to the rig.
        counters / record / on_alarm / on_trial: the host's counters and outputs (called on the
            calling thread; they must be cheap).
        builds / fits: executors for decoder builds and refits (a thread pool live; the dry run
            runs them inline).
        deadline_ns: the service's decision budget from frame receipt (the protocol's own, if
            smaller, tightens it); a later decision is counted and never sent.
        clock: "wall" (decisions on the host's clock) or "rig" (on the inputs' rig time).
        now: the host's clock (``time.monotonic_ns`` live): decisions with ``clock="wall"``, and the
            telemetry stamps :attr:`t_decoded` and :attr:`t_controlled` in both modes.
    """

    def __init__(self, rig_id: int, parts: PipelineParts, *, send_light: Callable[[bytes], None],
                 counters: Counters, record: RecordFn, on_alarm: AlarmFn,
                 on_trial: Callable[[dict[str, Any]], None] | None = None,
                 builds: concurrent.futures.Executor, fits: concurrent.futures.Executor,
                 deadline_ns: int = 10_000_000, clock: ClockMode = "wall",
                 now: Callable[[], int] = time.monotonic_ns) -> None:
        self.rig_id = rig_id
        self.parts = parts
        self.counters = counters
        self._send_light = send_light
        self._record = record
        self._on_alarm = on_alarm
        self._on_trial = on_trial
        self._builds = builds
        self._fits = fits
        self.deadline_ns = deadline_ns
        self.rig_clock = clock == "rig"
        self._t_rig = 0  #: the latest rig time seen (the pipeline's time with clock="rig")
        self._stamp = now
        self.now: Callable[[], int] = self._rig_now if self.rig_clock else now
        self.tracker = parts.tracker()
        self.controller = parts.controller(rig_id)
        self.interlock = parts.interlock(rig_id, self._light_minted, on_alarm)
        self.decoder: OnlineDecoder | None = None
        self.decoder_future: concurrent.futures.Future[OnlineDecoder] | None = None
        self.fit_future: concurrent.futures.Future[Any] | None = None
        self.fit_decoder: OnlineDecoder | None = None
        self.books: dict[int, TrialBook] = {}
        self.last_book_trial = -1  #: the newest trial a book was opened for (older ones are summarised)
        self.sent_commands: dict[int, dict[str, Any]] = {}
        self.trials_done = 0
        self.frames = 0
        #: when the last frame's decision was made and its light command left (the host's clock;
        #: telemetry reads them after each :meth:`frame`)
        self.t_decoded = 0
        self.t_controlled = 0
        self._no_estimate = Estimate()

    def _rig_now(self) -> int:
        return self._t_rig

    # -- the rig's description: its decoder ----------------------------------------------------

    def describe(self, desc: dict[str, Any]) -> None:
        """Start building a decoder for a (validated) description; frames go on without one until it is in.

        A previous decoder (sized for other units) stops serving now.
        """
        self.decoder = None
        if self.decoder_future is not None:
            self.decoder_future.cancel()  # a build for an older description, if it has not started
        self.decoder_future = None
        if self.parts.decoder is not None:
            self.decoder_future = self._builds.submit(self.parts.decoder, desc)

    def _install_decoder(self) -> OnlineDecoder | None:
        """Install the built decoder if its build has finished (between trials only; see the module doc)."""
        fut = self.decoder_future
        if fut is None:
            return None
        if not fut.done():
            if not self.rig_clock:
                return None
            concurrent.futures.wait([fut], RIG_CLOCK_WAIT_S)
            if not fut.done():
                return None
        self.decoder_future = None
        try:
            dec = fut.result()
        except Exception as exc:  # e.g. MemoryError, or a description field the decoder cannot use
            self.counters.inc("decoder.build_errors")
            self._on_alarm({"source": "decoder", "severity": "error", "rig_id": self.rig_id,
                            "message": f"cannot build a decoder for rig {self.rig_id}: "
                                       f"{type(exc).__name__}: {exc}; it runs without one"})
            return None
        self.decoder = dec
        self._record({"type": "decoder", "event": "created", "rig_id": self.rig_id, "status": dec.status()},
                     self.now())
        return dec

    # -- the per-frame chain ------------------------------------------------------------------

    def frame(self, seq: int, t_rig_ns: int, t_send_ns: int, counts: np.ndarray[Any, Any],
              t_recv: int) -> Estimate:
        """One validated frame through the chain; returns its estimate (the host records it).

        ``t_recv`` is when the frame arrived (the host's clock; with ``clock="rig"`` it is ignored
        and the frame's own time is used). A light decision later than the budget after
        ``t_recv`` is counted and never sent.
        """
        if self.rig_clock:
            self._t_rig = t_recv = max(self._t_rig, t_rig_ns)
            self.interlock.heartbeat(t_recv)  # the loop is alive whenever it processes a frame
        state = self.tracker.on_frame(t_rig_ns)
        dec = self.decoder
        if dec is None and (self.decoder_future is not None and not self.books):
            dec = self._install_decoder()  # built, and no trial open: it serves from this frame
        if dec is None:
            self.counters.inc("frames.without_decoder")
            est = self._no_estimate
        else:
            est = dec.step(counts, seq, state.t_s)
        self.t_decoded = self._stamp()
        req = self.controller.step(state, est, t_rig_ns)
        self.t_controlled = t_controlled = self._stamp()
        if self.rig_clock:
            t_controlled = t_recv  # on the rig's clock a decision takes no time
        if req is not None:
            book = self.books.get(state.trial)
            # the service's budget, tightened by the protocol's own if that is smaller
            budget = min(self.deadline_ns, int(req.deadline_budget_s * 1e9))
            if t_controlled - t_recv > budget:
                self.counters.inc("late_decisions")  # late decision → no light
                if book is not None:
                    book.late_decisions += 1
            else:
                decision = self.interlock.request(
                    req, now_ns=t_controlled, cause_seq=seq, cause_t_rig_ns=t_rig_ns,
                    cause_t_send_ns=t_send_ns, deadline_rig_ns=t_rig_ns + budget,
                    deadline_ns=t_recv + budget)  # the same budget on the pipeline's own clock
                if not decision.approved and book is not None:
                    book.refused.append(decision.reason)
        if state.epoch == Epoch.DELAY and END_DELAY_WINDOW_S[0] < state.t_s <= END_DELAY_WINDOW_S[1]:
            book = self.books.get(state.trial)
            if book is not None:
                book.cd_end_delay = (est.left, est.right)
        self.frames += 1
        return est

    def _light_minted(self, payload: bytes) -> None:
        """The interlock approved a command: note it in its trial's book, then send it."""
        cmd = wire.unpack_light_command(payload)
        info = {"command_id": cmd.command_id, "action": cmd.action.name,
                "hemisphere": hemisphere_name(cmd.spots_left, cmd.spots_right),
                "spots_left": cmd.spots_left, "spots_right": cmd.spots_right,
                "power_mw_per_spot": round(cmd.power_mw_per_spot, 6),
                "duration_s": round(cmd.duration_s, 6), "ramp_down_s": round(cmd.ramp_down_s, 6),
                "waveform": cmd.waveform.name.lower(), "freq_hz": cmd.freq_hz,
                "onset_t_s": self.tracker.state.t_s, "trial": cmd.trial, "status": "sent"}
        book = self.books.get(cmd.trial)
        if book is not None and cmd.action == wire.LightAction.START:
            book.light = info
        # kept until the rig acknowledges (or a few trials later: see _finish_trial); "sent" until then
        self.sent_commands[cmd.command_id] = info
        self._send_light(payload)

    # -- safety: heartbeat, watchdog, all off -------------------------------------------------

    def heartbeat(self, now_ns: int) -> None:
        """The host's loop is alive (every heartbeat period); with ``clock="rig"`` frames say so."""
        if not self.rig_clock:
            self.interlock.heartbeat(now_ns)

    def check_watchdog(self, now_ns: int) -> None:
        """The interlock's own watchdog (a loop stalled past watchdog_s → ALL_OFF and an alarm)."""
        if not self.rig_clock:
            self.interlock.check_watchdog(now_ns)

    def all_off(self, reason: str, now_ns: int) -> None:
        """Every light of this rig off now."""
        self.interlock.all_off(reason, now_ns=self._t_rig if self.rig_clock else now_ns)

    # -- acknowledgements ---------------------------------------------------------------------

    def ack(self, ack: wire.LightAckFields) -> None:
        """A rig's acknowledgement of a light command: what happened to the light."""
        sent = self.sent_commands.get(ack.command_id)
        if sent is not None:
            sent["status"] = ack.status.name.lower()
            if ack.status == wire.AckStatus.APPLIED and ack.t_light_change_rig_ns:
                sent["t_light_change_rig_ns"] = ack.t_light_change_rig_ns  # the measured onset
            if "planned_condition" in sent:  # its trial's summary is already written: say what changed
                self.counters.inc("acks.after_trial_summary")
                update = {"type": "light_update", "rig_id": self.rig_id, "trial": sent.get("trial"),
                          "command_id": ack.command_id, "light": dict(sent),
                          **light_truth(sent["planned_condition"], sent)}
                self._record(update, self.now())
                if self._on_trial is not None:
                    self._on_trial(update)
        if ack.status == wire.AckStatus.LATE:
            self.counters.inc("late_at_rig")
        elif ack.status == wire.AckStatus.WATCHDOG_OFF:
            self._on_alarm({"source": "rig_watchdog", "rig_id": self.rig_id,
                            "message": f"rig {self.rig_id}'s watchdog turned the light off (no heartbeat from rigd)"})
        elif ack.status == wire.AckStatus.INVALID:
            self._on_alarm({"source": "rig", "rig_id": self.rig_id,
                            "message": f"rig {self.rig_id} refused light command {ack.command_id} as invalid"})

    # -- trial events -------------------------------------------------------------------------

    def event(self, ev: dict[str, Any], t_rig_ns: int) -> None:
        """A validated trial event (``event`` a known name, ``trial`` an int ≥ 0)."""
        if self.rig_clock:
            self._t_rig = max(self._t_rig, t_rig_ns)
        name = ev["event"]
        trial = int(ev["trial"])
        if trial <= self.last_book_trial and trial not in self.books:  # its trial is already summarised
            self.counters.inc("events.after_trial_end")
            self.tracker.on_event(ev, t_rig_ns)  # the tracker counts it late
            return
        if name == "trial_start":
            self._open_book(trial, t_rig_ns, wire.side_sign(ev.get("instructed")))
            self._between_trials()
            self.tracker.on_event(ev, t_rig_ns)
            if self.decoder is not None:
                self.decoder.on_trial_start(trial)
            self.interlock.on_trial_start(trial, self.now())
            return
        if name == "trial_end":
            if trial not in self.books:  # every earlier event of the trial was lost: it still counts as a trial
                self.counters.inc("events.without_trial_start")
                self._open_book(trial, t_rig_ns, 0).start_inferred = True
            self._finish_trial(trial)  # controllers read the state before the tracker leaves the trial
            self.tracker.on_event(ev, t_rig_ns)
            return
        self.tracker.on_event(ev, t_rig_ns)
        book = self.books.get(trial)
        if book is None:
            # its trial_start was lost: the tracker inferred the trial, and so does its summary, so the
            # light, refusals and late decisions of the trial are still attributed to it
            self.counters.inc("events.without_trial_start")
            book = self._open_book(trial, t_rig_ns, 0)
            book.start_inferred = True
        if name == "early_lick":
            book.early_lick = True
        elif name == "outcome":
            book.outcome = str(ev.get("outcome", ""))
            book.choice = wire.side_sign(ev.get("choice"))
            rt = ev.get("reaction_time_s")
            book.reaction_time_s = float(rt) if isinstance(rt, int | float) else None
            if book.outcome == "early_lick":
                book.early_lick = True

    def _between_trials(self) -> None:
        """At a trial start: a finished build or refit takes over for the whole trial."""
        if self.decoder_future is not None:
            self._install_decoder()
        self._maybe_swap_decoder()

    def _open_book(self, trial: int, t_rig_ns: int, instructed: int) -> TrialBook:
        # a trial whose end never arrived is closed now (robust to a lost trial_end)
        for t in [t for t in self.books if t < trial]:
            self._finish_trial(t)
        book = self.books.get(trial)
        if book is None:
            book = self.books[trial] = TrialBook(trial, instructed, t_start_rig_ns=t_rig_ns)
        else:  # a trial_start after the trial was inferred (out of order): it fills in what it knows
            book.instructed, book.t_start_rig_ns = instructed or book.instructed, t_rig_ns
        self.last_book_trial = max(self.last_book_trial, trial)
        return book

    def _finish_trial(self, trial: int) -> None:
        book = self.books.pop(trial, None)
        if book is None:
            return
        state = self.tracker.state
        decision = self.controller.on_trial_end(state) if state.trial == trial else {}
        perturbed = bool(book.light)
        correct = book.outcome == "hit"
        usable = (not perturbed) and (not book.early_lick) and book.choice != 0
        if self.decoder is not None and self.decoder.on_trial_end(trial, book.choice, book.instructed, correct,
                                                                  usable):
            self._submit_refit()
        condition = decision.get("condition") or (book.light.get("hemisphere") if perturbed else "control")
        # planned vs delivered: one rule for every reader (rig/conditions.py); light counts only once
        # the rig acknowledged it APPLIED (an ack after this summary comes as a "light_update" record)
        truth = light_truth(condition, book.light or None)
        summary: dict[str, Any] = {
            "type": "trial", "rig_id": self.rig_id, "trial": trial,
            "instructed": wire.SIDE_NAME.get(book.instructed),
            "outcome": book.outcome or "unknown",
            "choice": wire.SIDE_NAME.get(book.choice),
            "correct": correct, "early_lick": book.early_lick, "reaction_time_s": book.reaction_time_s,
            "condition": condition, "light": dict(book.light) if book.light else None, "refused": book.refused,
            "late_decisions": book.late_decisions, "decision": decision,
            "cd_end_delay_left": _finite(book.cd_end_delay[0]),
            "cd_end_delay_right": _finite(book.cd_end_delay[1]),
            "t_start_rig_ns": book.t_start_rig_ns, "start_inferred": book.start_inferred, **truth,
        }
        self._record(summary, self.now())
        if book.light:  # a later ack of this command updates the counts (see ack)
            book.light["planned_condition"] = truth["planned_condition"]
        for cid in [c for c, info in self.sent_commands.items() if int(info.get("trial", trial)) < trial - 2]:
            del self.sent_commands[cid]  # acks this late are joined from the recording only
        self.trials_done += 1
        if self._on_trial is not None:
            self._on_trial(summary)

    def restarted(self) -> None:
        """The rig's process restarted: its open trials are summarised and its trials start afresh.

        The interlock (energy, perturbed fraction), controller and decoder carry on.
        """
        for trial in sorted(self.books):  # the old process's open trials never get their end
            self._finish_trial(trial)
        self.last_book_trial = -1  # the new process may number its trials from 0 again
        self.tracker = self.parts.tracker()

    # -- decoder refits (the host's fits executor) ---------------------------------------------

    def _submit_refit(self) -> None:
        if self.fit_future is not None or self.decoder is None:
            return
        self.fit_decoder = self.decoder
        self.fit_future = self._fits.submit(self.decoder.prepare_fit())

    def _maybe_swap_decoder(self) -> None:
        fut = self.fit_future
        if fut is None:
            return
        if not fut.done():
            if not self.rig_clock:
                return  # the old decoder serves this trial too
            concurrent.futures.wait([fut], RIG_CLOCK_WAIT_S)
            if not fut.done():
                return
        self.fit_future = None
        try:
            result = fut.result()
        except Exception as exc:  # a failed fit must not stop the loop
            self.counters.inc("decoder.fit_errors")
            self._on_alarm({"source": "decoder", "severity": "warning", "rig_id": self.rig_id,
                            "message": f"decoder fit failed: {exc}"})
            return
        if self.decoder is None or self.decoder is not self.fit_decoder:
            return  # the rig re-described itself meanwhile: this fit is for an old decoder
        self.decoder.swap(result)
        self._record({"type": "decoder_fit", "rig_id": self.rig_id, "status": self.decoder.status()}, self.now())

    # -- status -------------------------------------------------------------------------------

    def decoder_status(self) -> dict[str, Any]:
        """The serving decoder's status (owner thread)."""
        return self.decoder.status() if self.decoder is not None else {"ready": False}


def online_decoder(desc: dict[str, Any], *, decoder: str = "cd", n_fit_trials: int = 20,
                   mode: Literal["freeze", "adaptive"] = "adaptive", default_bin_s: float = 0.001,
                   decoder_file: Path | None = None, provenance: dict[str, Any] | None = None) -> OnlineDecoder:
    """The online decoder for a rig's described units (left hemisphere first, per the wire protocol).

    What ``rigd start`` builds for each rig (``--decoder``, ``--n-fit-trials``, ``--decoder-file``)
    and what the dry run rehearses with. Calibration trials are pooled at a coarser bin than the
    frames so the pool fits in :data:`POOL_BUDGET_BYTES` at any unit count.
    """
    n = int(desc["n_units"])
    n_left = int(desc.get("units_left", n // 2))
    hemisphere = np.where(np.arange(n) < n_left, LEFT, RIGHT).astype(np.int8)
    frame_s = float(desc.get("bin_s", default_bin_s))
    fit_bin_s = max(0.01 if n <= 2_000 else 0.05 if n <= 20_000 else 0.1, frame_s)
    per_trial = round(3.5 / fit_bin_s) * n * 2  # bytes of one pooled trial (uint16 counts)
    window = max(n_fit_trials, min(120, POOL_BUDGET_BYTES // per_trial))
    online = OnlineDecoder(decoder_registry[decoder], n_units=n, fit_bin_s=fit_bin_s, window_trials=window,
                           hemisphere=hemisphere, bin_s=frame_s, n_fit_trials=n_fit_trials, mode=mode,
                           inline_fit=False, exclude_units=tuple(int(u) for u in desc.get("fs_units", [])),
                           provenance=provenance or {})
    if decoder_file is not None:
        online.swap(load_decoder(decoder_file))
    return online


class InlineExecutor(concurrent.futures.Executor):
    """Runs each submitted call at once on the caller's thread (the dry run's builds and fits)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Call ``fn`` now; the returned future is already done (its result or its exception)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:
            fut.set_exception(exc)
        return fut


def hemisphere_name(spots_left: int, spots_right: int) -> str:
    """A command's hemisphere from its spot masks: left, right, bilateral or none."""
    if spots_left and spots_right:
        return "bilateral"
    return "left" if spots_left else ("right" if spots_right else "none")


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
