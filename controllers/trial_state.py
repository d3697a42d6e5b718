"""Trial-state tracking: turns the rig's trial events and the frame clock into a :class:`TrialState`.

This module owns the one :class:`~controllers.base.TrialState` every controller reads. It is fed
trial events (docs/wire-protocol.md) with their rig time and, once per frame, the frame's rig time;
it updates the state in place: trial number, epoch, time from the (planned or observed) go cue,
time in the current epoch, instructed side, early-lick abort, outcome and choice.

Robustness rules (the rig's event stream is lossy and may arrive late):

* Epochs are inferred from the planned times carried by ``trial_start`` (``t_sample_ns``,
  ``t_delay_ns``, ``t_go_ns``); an observed ``sample_on``/``delay_on``/``go_cue`` replaces the
  planned time. An epoch boundary whose event has not arrived ``missing_grace_s`` after its planned
  time counts once in ``missing_events`` (and the epoch advances anyway).
* Time never runs backwards within a trial: if an observed go cue is later than planned, ``t_s``
  holds until the frame clock catches up; epochs never move backwards within a trial either.
* An event for an older trial is late: it is counted in ``late_events`` and otherwise ignored.
* An event for a newer trial without its ``trial_start`` starts that trial with default timing
  (counted as a missing event).
* ``early_lick`` aborts the trial: epoch OUTCOME, ``early_lick`` True, outcome "early_lick".

It must not import rig, sockets, brokers or clocks: time is passed in.
"""

from __future__ import annotations

import math
from typing import Any

from controllers.base import Epoch, TrialState
from rig.wire import side_sign

NS = 1_000_000_000
_NAN = float("nan")

#: Default task timing when trial_start is missing (docs/simulator.md): sample 1.3 s, delay 1.7 s.
DEFAULT_SAMPLE_S = 1.3
DEFAULT_DELAY_S = 1.7
DEFAULT_PRESAMPLE_S = 0.5
RESPONSE_WINDOW_S = 1.5  #: licks within 1.5 s after the go cue count (Yang et al. 2022)


class TrialTracker:
    """Keeps :attr:`state` current from trial events and frame times (all on the rig clock).

    Args:
        missing_grace_s: how long after a planned epoch boundary its event may still arrive before
            it is counted as missing (the epoch itself advances at the planned time regardless).
        response_window_s: response epoch length if no outcome event arrives.

    """

    def __init__(self, missing_grace_s: float = 0.05, response_window_s: float = RESPONSE_WINDOW_S) -> None:
        self.state = TrialState()
        self._grace_ns = int(missing_grace_s * NS)
        self._resp_ns = int(response_window_s * NS)
        self._running = False
        self._t_start = 0
        self._t_sample = 0
        self._t_delay = 0
        self._t_go = 0
        self._t_outcome = 0  #: 0 until an outcome/early lick is known
        self._seen_sample = False
        self._seen_delay = False
        self._seen_go = False
        self._missing_counted = 0  # bit set: 1 sample, 2 delay, 4 go
        self._last_t_s = -math.inf
        self.total_missing_events = 0
        self.total_late_events = 0
        self.licks: list[tuple[int, int]] = []  #: (side, t_rig_ns) licks of the current trial

    # --- events ------------------------------------------------------------------------------

    def on_event(self, event: dict[str, Any], t_rig_ns: int) -> None:
        """Consume one trial event (``event["event"]``, ``event["trial"]``) that happened at ``t_rig_ns``."""
        name = str(event.get("event", ""))
        trial = int(event.get("trial", self.state.trial))
        st = self.state
        if trial < st.trial or (trial == st.trial and not self._running and name != "trial_start"):
            st.late_events += 1
            self.total_late_events += 1
            return
        if name == "trial_start":
            self._start(trial, event, t_rig_ns, inferred=False)
            return
        if trial > st.trial or not self._running:
            # a newer trial whose trial_start never came: start it with default timing
            self._start(trial, {}, t_rig_ns, inferred=True)
        if name == "sample_on":
            self._observe_boundary(1, t_rig_ns)
        elif name == "delay_on":
            self._observe_boundary(2, t_rig_ns)
        elif name == "go_cue":
            self._observe_boundary(4, t_rig_ns)
        elif name == "lick":
            side = side_sign(event.get("side", ""))
            self.licks.append((side, t_rig_ns))
            if st.choice == 0 and self._go_known_before(t_rig_ns) and not st.early_lick:
                st.choice = side
        elif name == "early_lick":
            st.early_lick = True
            st.outcome = "early_lick"
            self._t_outcome = t_rig_ns
            self._set_epoch(Epoch.OUTCOME, t_rig_ns)
        elif name == "outcome":
            outcome = str(event.get("outcome", ""))
            st.outcome = outcome
            st.choice = (side_sign(event.get("choice") or "") or (st.choice if outcome != "ignore" else 0))
            if outcome == "early_lick":
                st.early_lick = True
            if self._t_outcome == 0:
                self._t_outcome = t_rig_ns
            if not st.early_lick and not self._seen_go and t_rig_ns >= self._t_go:
                # an outcome implies the go cue happened
                self._count_missing(4)
            self._set_epoch(Epoch.OUTCOME, t_rig_ns)
        elif name == "trial_end":
            self._running = False
            st.epoch = Epoch.ITI
            st.t_s = _NAN
            st.time_in_epoch_s = 0.0

    def _start(self, trial: int, ev: dict[str, Any], t: int, *, inferred: bool) -> None:
        st = self.state
        st.trial = trial
        st.instructed = side_sign(ev.get("instructed", ""))
        st.early_lick = False
        st.outcome = ""
        st.choice = 0
        st.missing_events = 0
        st.late_events = 0
        self.licks = []
        delay_s = float(ev.get("delay_s", DEFAULT_DELAY_S))
        self._t_start = t
        self._t_sample = int(ev.get("t_sample_ns", t + int(DEFAULT_PRESAMPLE_S * NS)))
        self._t_delay = int(ev.get("t_delay_ns", self._t_sample + int(DEFAULT_SAMPLE_S * NS)))
        self._t_go = int(ev.get("t_go_ns", self._t_delay + int(delay_s * NS)))
        st.delay_s = (self._t_go - self._t_delay) / NS
        st.sample_s = (self._t_delay - self._t_sample) / NS
        st.t_go_rig_ns = self._t_go
        self._t_outcome = 0
        self._seen_sample = self._seen_delay = self._seen_go = False
        self._missing_counted = 0
        self._last_t_s = -math.inf
        self._running = True
        st.epoch = Epoch.PRESAMPLE
        st.time_in_epoch_s = 0.0
        st.t_s = (t - self._t_go) / NS
        if inferred:
            self._count_missing(8)  # the trial_start itself

    def _observe_boundary(self, bit: int, t: int) -> None:
        st = self.state
        if self._missing_counted & bit:
            # the epoch was already inferred and counted missing: the event is late
            st.late_events += 1
            self.total_late_events += 1
        if bit == 1:
            self._seen_sample, self._t_sample = True, t
        elif bit == 2:
            self._seen_delay, self._t_delay = True, t
        else:
            self._seen_go, self._t_go = True, t
            st.t_go_rig_ns = t
            st.delay_s = (t - self._t_delay) / NS
        st.sample_s = (self._t_delay - self._t_sample) / NS

    def _go_known_before(self, t: int) -> bool:
        return t >= self._t_go

    def _count_missing(self, bit: int) -> None:
        if not self._missing_counted & bit:
            self._missing_counted |= bit
            self.state.missing_events += 1
            self.total_missing_events += 1

    def _set_epoch(self, epoch: Epoch, t: int) -> None:
        st = self.state
        if epoch > st.epoch:
            st.epoch = epoch
            st.time_in_epoch_s = 0.0

    # --- frames ------------------------------------------------------------------------------

    def on_frame(self, t_rig_ns: int) -> TrialState:
        """Advance to the frame at ``t_rig_ns``; returns the (shared, updated in place) state."""
        st = self.state
        if not self._running:
            return st
        t_s = (t_rig_ns - self._t_go) / NS
        t_s = max(t_s, self._last_t_s)  # never backwards (a late, later-than-planned go cue)
        self._last_t_s = t_s
        st.t_s = t_s
        # inferred epoch from (planned or observed) boundaries; never backwards within a trial
        if self._t_outcome and t_rig_ns >= self._t_outcome:
            epoch, t0 = Epoch.OUTCOME, self._t_outcome
        elif t_rig_ns >= self._t_go + self._resp_ns and not st.early_lick:
            epoch, t0 = Epoch.OUTCOME, self._t_go + self._resp_ns
        elif t_rig_ns >= self._t_go:
            epoch, t0 = Epoch.RESPONSE, self._t_go
        elif t_rig_ns >= self._t_delay:
            epoch, t0 = Epoch.DELAY, self._t_delay
        elif t_rig_ns >= self._t_sample:
            epoch, t0 = Epoch.SAMPLE, self._t_sample
        else:
            epoch, t0 = Epoch.PRESAMPLE, self._t_start
        if epoch >= st.epoch:
            st.epoch = epoch
            st.time_in_epoch_s = max(0.0, (t_rig_ns - t0) / NS)
        else:
            st.time_in_epoch_s = max(st.time_in_epoch_s, 0.0)
        # missing events: a boundary passed by more than the grace period without its event
        if not st.early_lick:
            g = t_rig_ns - self._grace_ns
            if not self._seen_sample and g >= self._t_sample:
                self._count_missing(1)
            if not self._seen_delay and g >= self._t_delay:
                self._count_missing(2)
            if not self._seen_go and g >= self._t_go:
                self._count_missing(4)
        return st
