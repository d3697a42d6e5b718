"""TrialTracker: epochs, go-cue-aligned time, missing/late events and early-lick aborts."""

import math

from controllers.base import Epoch
from controllers.trial_state import NS, TrialTracker

MS = 1_000_000


def _start(tr: TrialTracker, trial: int, t0: int, delay_s: float = 1.7, instructed: str = "right") -> int:
    """trial_start at t0 with presample 0.5 s, sample 1.3 s; returns the planned go time."""
    t_sample = t0 + 500 * MS
    t_delay = t_sample + 1300 * MS
    t_go = t_delay + int(delay_s * NS)
    tr.on_event({"event": "trial_start", "trial": trial, "instructed": instructed, "delay_s": delay_s,
                 "t_sample_ns": t_sample, "t_delay_ns": t_delay, "t_go_ns": t_go}, t0)
    return t_go


def test_epochs_follow_events_and_time_is_go_aligned() -> None:
    tr = TrialTracker()
    t0 = 10 * NS
    t_go = _start(tr, 0, t0)
    st = tr.on_frame(t0 + 100 * MS)
    assert st.epoch == Epoch.PRESAMPLE and st.instructed == 1
    assert math.isclose(st.t_s, -3.4, abs_tol=1e-9)
    tr.on_event({"event": "sample_on", "trial": 0}, t0 + 500 * MS)
    st = tr.on_frame(t0 + 600 * MS)
    assert st.epoch == Epoch.SAMPLE and math.isclose(st.time_in_epoch_s, 0.1, abs_tol=1e-9)
    tr.on_event({"event": "delay_on", "trial": 0}, t0 + 1800 * MS)
    st = tr.on_frame(t_go - 1700 * MS + 5 * MS)
    assert st.epoch == Epoch.DELAY and math.isclose(st.t_s, -1.695, abs_tol=1e-9)
    tr.on_event({"event": "go_cue", "trial": 0}, t_go)
    tr.on_event({"event": "lick", "trial": 0, "side": "right"}, t_go + 100 * MS)
    st = tr.on_frame(t_go + 150 * MS)
    assert st.epoch == Epoch.RESPONSE and st.choice == 1
    tr.on_event({"event": "outcome", "trial": 0, "outcome": "hit", "choice": "right",
                 "reaction_time_s": 0.1}, t_go + 101 * MS)
    st = tr.on_frame(t_go + 200 * MS)
    assert st.epoch == Epoch.OUTCOME and st.outcome == "hit"
    assert st.missing_events == 0 and st.late_events == 0
    tr.on_event({"event": "trial_end", "trial": 0}, t_go + 3 * NS)
    st = tr.on_frame(t_go + 3 * NS + MS)
    assert st.epoch == Epoch.ITI and math.isnan(st.t_s)


def test_missing_boundary_events_are_inferred_from_planned_times_and_counted_once() -> None:
    tr = TrialTracker(missing_grace_s=0.05)
    t0 = 0
    t_go = _start(tr, 3, t0)
    seen = []
    for t in range(t0, t_go + 200 * MS, MS):  # 1-ms frames, no boundary events at all
        seen.append(tr.on_frame(t).epoch)
    assert Epoch.SAMPLE in seen and Epoch.DELAY in seen and tr.state.epoch == Epoch.RESPONSE
    assert tr.state.missing_events == 3  # sample_on, delay_on, go_cue — each once
    # a boundary event that arrives within the grace period is not missing
    tr2 = TrialTracker(missing_grace_s=0.05)
    t_go2 = _start(tr2, 0, 0)
    tr2.on_frame(500 * MS + 10 * MS)
    tr2.on_event({"event": "sample_on", "trial": 0}, 500 * MS)
    for t in range(500 * MS, t_go2 - 400 * MS, MS):
        tr2.on_frame(t)
    assert tr2.state.missing_events == 1  # delay_on never came; sample_on was in time


def test_late_go_cue_never_moves_time_backwards() -> None:
    tr = TrialTracker()
    t_go = _start(tr, 0, 0)
    last = -math.inf
    for t in range(t_go - 50 * MS, t_go + 20 * MS, MS):
        s = tr.on_frame(t).t_s
        assert s >= last
        last = s
    # the go cue actually happened 30 ms later than planned; its event arrives now
    tr.on_event({"event": "go_cue", "trial": 0}, t_go + 30 * MS)
    for t in range(t_go + 21 * MS, t_go + 100 * MS, MS):
        s = tr.on_frame(t).t_s
        assert s >= last
        last = s
    # once the frame clock passes the observed go cue, t_s is measured from it
    assert math.isclose(tr.on_frame(t_go + 130 * MS).t_s, 0.1, abs_tol=1e-9)
    assert tr.state.t_go_rig_ns == t_go + 30 * MS


def test_events_from_an_old_trial_are_late_and_ignored() -> None:
    tr = TrialTracker()
    _start(tr, 5, 0)
    tr.on_event({"event": "outcome", "trial": 4, "outcome": "hit", "choice": "left"}, 10 * MS)
    assert tr.state.trial == 5 and tr.state.outcome == "" and tr.state.late_events == 1


def test_event_for_new_trial_without_trial_start_starts_it_with_default_timing() -> None:
    tr = TrialTracker()
    tr.on_event({"event": "sample_on", "trial": 2}, 1 * NS)
    st = tr.on_frame(1 * NS + 100 * MS)
    assert st.trial == 2 and st.epoch == Epoch.SAMPLE and st.missing_events >= 1
    assert math.isclose(st.delay_s, 1.7)


def test_early_lick_aborts_trial() -> None:
    tr = TrialTracker()
    t_go = _start(tr, 0, 0)
    tr.on_frame(t_go - 1500 * MS)
    tr.on_event({"event": "early_lick", "trial": 0, "epoch": "delay"}, t_go - 1400 * MS)
    st = tr.on_frame(t_go - 1399 * MS)
    assert st.early_lick and st.epoch == Epoch.OUTCOME and st.outcome == "early_lick"
    # the abort is final: later frames do not re-enter RESPONSE and no go cue is counted missing
    for t in range(t_go - 1300 * MS, t_go + 500 * MS, 10 * MS):
        assert tr.on_frame(t).epoch == Epoch.OUTCOME
    assert st.missing_events == 2  # sample_on and delay_on were never sent; the go cue is not counted
