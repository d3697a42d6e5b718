"""Schedulers: the Chen 2021 block's fractions, window, constraints, seeding and early-lick re-draws."""

from collections import Counter
from typing import Any

import pytest

from controllers.base import Controller, LightRequest
from controllers.schedulers import (
    BlockScheduler,
    Condition,
    Constraints,
    LightWindow,
    chen2021_scheduler,
)
from controllers.trial_state import NS, TrialTracker
from decoders.base import Estimate

MS = 1_000_000


def run_trials(ctrl: Controller, n: int, early_lick: set[int] | None = None, frame_ms: int = 10,
               early_lick_t_s: float = -2.0) -> tuple[list[dict[str, Any]], list[tuple[LightRequest, float]]]:
    """Drive ``n`` synthetic trials (presample 0.5, sample 1.3, delay 1.7 s) through tracker + controller."""
    tr, est = TrialTracker(), Estimate()
    logs, reqs = [], []
    t = 0
    for k in range(n):
        t0 = t
        t_go = t0 + 3500 * MS
        tr.on_event({"event": "trial_start", "trial": k, "instructed": "left" if k % 2 else "right",
                     "delay_s": 1.7, "t_sample_ns": t0 + 500 * MS, "t_delay_ns": t0 + 1800 * MS,
                     "t_go_ns": t_go}, t0)
        aborted = False
        for tf in range(t0, t_go + 1500 * MS, frame_ms * MS):
            if early_lick and k in early_lick and not aborted and tf >= t_go + int(early_lick_t_s * NS):
                tr.on_event({"event": "early_lick", "trial": k, "epoch": "sample"}, tf)
                aborted = True
            st = tr.on_frame(tf)
            r = ctrl.step(st, est, tf)
            if r is not None:
                reqs.append((r, st.t_s))
        tr.on_event({"event": "outcome", "trial": k, "outcome": "early_lick" if aborted else "hit",
                     "choice": None}, t_go + 1500 * MS)
        logs.append(ctrl.on_trial_end(tr.state))
        tr.on_event({"event": "trial_end", "trial": k}, t_go + 1600 * MS)
        t = t_go + 4 * NS
    return logs, reqs


def test_chen2021_block_fractions_window_and_light_parameters() -> None:
    logs, reqs = run_trials(chen2021_scheduler(seed=1), 480)
    counts = Counter(lg["condition"] for lg in logs)
    # permuted blocks of 12: exactly 9:1:1:1 per complete block (480 = 40 blocks), up to the
    # constraint-driven carry-over into the next block (at most a few trials)
    assert abs(counts["control"] - 360) <= 3
    for c in ("left_alm", "right_alm", "bilateral_alm"):
        assert abs(counts[c] - 40) <= 3
    assert len(reqs) == sum(lg["perturbed"] for lg in logs)
    for r, t_s in reqs:
        # first 10-ms frame at/after −1.7 s; the window end stays at −0.9 s (ramp inside, docs/protocols.md)
        assert -1.7 <= t_s < -1.69
        assert r.duration_s + t_s == pytest.approx(-0.9, abs=1e-9)
        assert r.ramp_down_s == 0.1 and r.power_mw_per_spot == 1.5 and r.freq_hz == 40.0
        assert r.waveform == "sine"
        left, right = r.spots_left, r.spots_right
        assert (left, right) == {"left": (0b1111, 0), "right": (0, 0b1111),
                                 "bilateral": (0b1111, 0b1111)}[r.hemisphere]


def test_no_two_consecutive_perturbations_at_one_site_and_no_long_runs() -> None:
    logs, _ = run_trials(chen2021_scheduler(seed=7), 600)
    run, prev = 0, None
    for lg in logs:
        if lg["perturbed"]:
            assert lg["condition"] != prev
            run += 1
            assert run <= 2
            prev = lg["condition"]
        else:
            run, prev = 0, None


def test_max_fraction_is_respected_even_when_conditions_ask_for_more() -> None:
    w = LightWindow(-1.7, 0.8)
    conds = [Condition("control", 0.5), Condition("left", 0.25, "left", w),
             Condition("right", 0.25, "right", w)]
    sched = BlockScheduler(conds, seed=3, constraints=Constraints(block_size=4, max_fraction_perturbed=0.25))
    logs, _ = run_trials(sched, 200)
    n_pert = sum(lg["perturbed"] for lg in logs)
    assert n_pert <= 0.25 * 200 + 3  # the small-N allowance (3 trials), same rule as the interlock


def test_same_seed_same_schedule_different_seed_different_schedule() -> None:
    a = [lg["condition"] for lg in run_trials(chen2021_scheduler(seed=11), 60)[0]]
    b = [lg["condition"] for lg in run_trials(chen2021_scheduler(seed=11), 60)[0]]
    c = [lg["condition"] for lg in run_trials(chen2021_scheduler(seed=12), 60)[0]]
    assert a == b and a != c


def test_early_lick_before_onset_redraws_the_condition() -> None:
    # every third trial aborts at −2.0 s (before the −1.7 s onset): no light, condition re-queued
    aborted = set(range(0, 300, 3))
    logs, reqs = run_trials(chen2021_scheduler(seed=5), 300, early_lick=aborted)
    assert all(lg["requested"] is False for lg in logs if lg["trial"] in aborted)
    redrawn = [lg for lg in logs if lg["redrawn"]]
    assert len(redrawn) == len(aborted) and all(lg["early_lick"] for lg in redrawn)
    # the balance holds over the completed (non-aborted) trials: 200 trials → 150:50 ± carry-over
    done = [lg for lg in logs if lg["trial"] not in aborted]
    n_pert = sum(lg["requested"] for lg in done)
    assert abs(n_pert - 50) <= 6
    assert len(reqs) == n_pert


def test_epoch_locked_window_in_sample_epoch() -> None:
    w = LightWindow(0.2, 0.5, "sample_onset")  # 0.2 s after sample onset = −3.0 + 0.2 = −2.8 s
    sched = BlockScheduler([Condition("control", 0.5), Condition("s", 0.5, "left", w, n_spots=1)], seed=0,
                           constraints=Constraints(block_size=2, max_fraction_perturbed=0.5))
    _, reqs = run_trials(sched, 20)
    assert reqs
    for r, t_s in reqs:
        assert -2.8 <= t_s < -2.79 and r.spots_left == 1 and r.spots_right == 0
        assert t_s + r.duration_s == pytest.approx(-2.3, abs=1e-9)


def test_trial_log_names_everything() -> None:
    logs, _ = run_trials(chen2021_scheduler(seed=2), 24)
    keys = {"scheduler", "seed", "trial", "draw_index", "condition", "hemisphere", "perturbed",
            "planned_onset_s", "planned_end_s", "requested", "power_mw_per_spot", "early_lick", "redrawn"}
    assert all(keys <= set(lg) for lg in logs)
