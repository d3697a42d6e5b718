"""Closed-loop policies on synthetic decoder output: state labels, stratified light, thresholds, M probe."""

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from controllers.base import Controller, LightRequest, TrialState
from controllers.policies import ModularityProbe, StateTriggered, ThresholdTrigger, modularity_with_ci
from controllers.trial_state import NS, TrialTracker
from decoders.base import Estimate

MS = 1_000_000


def drive(ctrl: Controller, n: int, fill: Callable[[Estimate, TrialState, int], None],
          frame_ms: int = 10) -> tuple[list[dict[str, Any]], list[tuple[LightRequest, float]]]:
    tr, est = TrialTracker(), Estimate()
    logs, reqs = [], []
    t = 0
    for k in range(n):
        t_go = t + 3500 * MS
        tr.on_event({"event": "trial_start", "trial": k, "instructed": "right" if k % 2 == 0 else "left",
                     "delay_s": 1.7, "t_sample_ns": t + 500 * MS, "t_delay_ns": t + 1800 * MS,
                     "t_go_ns": t_go}, t)
        for tf in range(t, t_go + 1000 * MS, frame_ms * MS):
            st = tr.on_frame(tf)
            fill(est, st, k)
            r = ctrl.step(st, est, tf)
            if r is not None:
                reqs.append((r, st.t_s))
        tr.on_event({"event": "outcome", "trial": k, "outcome": "hit", "choice": None}, t_go + 1000 * MS)
        logs.append(ctrl.on_trial_end(tr.state))
        tr.on_event({"event": "trial_end", "trial": k}, t_go + 1100 * MS)
        t = t_go + 3 * NS
    return logs, reqs


def test_state_triggered_labels_against_running_median_and_stratifies_light() -> None:
    rng = np.random.default_rng(0)
    cd = rng.lognormal(0.0, 0.5, size=800)  # per-trial |CD − db| of the read (right) hemisphere

    def fill(est: Estimate, st: TrialState, k: int) -> None:
        est.right = cd[k] * (1 if st.instructed > 0 else -1)
        est.left = float("nan")  # the perturbed side is never read

    pol = StateTriggered(perturb="left", onset_s=-1.2, eligible_fraction=0.5, median_trials=40,
                         min_history=10, seed=3)
    logs, reqs = drive(pol, 800, fill)
    labelled = [lg for lg in logs if lg["state"] in ("weak", "strong")]
    assert len(labelled) > 700  # all but the warm-up trials
    for lg in labelled:
        assert (lg["state"] == "weak") == (lg["cd_abs"] < lg["median"])
        assert lg["cd_abs"] == pytest.approx(cd[lg["trial"]])  # mean over the 400-ms window
    # stratified 50 % within each state among eligible trials: permuted blocks of 4 → exact to ±2
    for s in ("weak", "strong"):
        elig = [lg for lg in labelled if lg["state"] == s and lg["eligible"]]
        n_light = sum(lg["light"] for lg in elig)
        assert abs(n_light - len(elig) / 2) <= 2
    # light on the left only, at the first frame at/after −1.2 s, window end −0.4 s
    for r, t_s in reqs:
        assert r.hemisphere == "left" and r.spots_right == 0 and -1.2 <= t_s < -1.19
        assert t_s + r.duration_s == pytest.approx(-0.4)
        assert r.deadline_budget_s == 0.025
    assert len(reqs) == sum(lg["light"] for lg in logs)
    # overall perturbed fraction ≈ 0.5 × 0.5; n = 800, binomial SE ≈ 0.015 → 4 SE
    assert abs(len(reqs) / 800 - 0.25) < 0.06


def test_state_triggered_signed_state_calls_wrong_side_commitment_weak() -> None:
    # every 4th trial the read hemisphere sits deep on the WRONG side (|CD − db| = 2, large): the
    # signed state (CD − db)·y (docs/simulator.md) labels it weak (it predicts an error); the
    # unsigned |CD − db| calls it strong.
    def fill(est: Estimate, st: TrialState, k: int) -> None:
        y = 1 if st.instructed > 0 else -1
        est.right = (-2.0 if k % 4 == 3 else 0.5 + 0.01 * (k % 7)) * y

    for measure, expect in (("signed", "weak"), ("abs", "strong")):
        pol = StateTriggered(perturb="left", onset_s=-1.2, eligible_fraction=0.0, min_history=5,
                             state_measure=measure, seed=2)
        logs, reqs = drive(pol, 60, fill)
        wrong = [lg for lg in logs[20:] if lg["trial"] % 4 == 3]
        assert wrong and all(lg["state"] == expect for lg in wrong)
        assert all(lg["state_measure"] == measure for lg in logs[20:]) and not reqs


def test_state_triggered_warm_up_gives_no_light_until_median_is_known() -> None:
    pol = StateTriggered(min_history=10, eligible_fraction=1.0, seed=1)

    def fill(est: Estimate, st: TrialState, k: int) -> None:
        est.right = 1.0 + k

    logs, _ = drive(pol, 12, fill)
    assert all(lg["state"] == "unknown" and not lg["light"] for lg in logs[:12])


def test_threshold_trigger_fires_once_on_armed_trials_inside_window() -> None:
    def fill(est: Estimate, st: TrialState, k: int) -> None:
        est.ready = True
        est.confidence = 0.9 if st.t_s >= -1.0 else 0.5  # crosses θ = 0.8 at −1.0 s in every trial

    trig = ThresholdTrigger(hemisphere="left", threshold=0.8, direction="right", from_s=-1.7, to_s=0.0,
                            armed_fraction=0.3, seed=2)
    logs, reqs = drive(trig, 300, fill)
    fired = [lg for lg in logs if lg["fired"]]
    assert len(fired) == len(reqs) and all(lg["armed"] for lg in fired)
    assert abs(len(fired) / 300 - 0.3) < 0.1  # binomial SE 0.026 at n = 300 → ~4 SE
    for r, t_s in reqs:
        assert -1.0 <= t_s < -0.99 and r.hemisphere == "left" and r.meta["confidence"] == 0.9
    assert Counter(r.trial for r, _ in reqs).most_common(1)[0][1] == 1


def test_modularity_probe_recovers_m_and_stops_when_ci_is_narrow() -> None:
    rng = np.random.default_rng(5)
    true_m = 0.6
    probe = ModularityProbe(perturb="left", onset_s=-1.7, light_fraction=0.25, ci_width=0.1, n_boot=500,
                            seed=4)

    def fill(est: Estimate, st: TrialState, k: int) -> None:
        # a simulated brain: the read (right) hemisphere keeps 60 % of its selectivity on trials on
        # which the probe lights the left one (the probe's own draw for the trial: `_light`)
        sel = true_m if probe._light else 1.0
        est.right = 0.5 * st.instructed * sel + 0.5 * rng.standard_normal()

    logs, reqs = drive(probe, 800, fill)
    assert probe.done
    e = probe.estimate
    assert e.ci_low <= true_m <= e.ci_high and e.ci_width < 0.1
    n_done = next(i for i, lg in enumerate(logs) if lg["done"])
    assert all(not lg["light"] for lg in logs[n_done + 1:])  # stops perturbing once done
    assert len(reqs) == sum(lg["light"] for lg in logs)


def test_modularity_with_ci_on_known_groups() -> None:
    rng = np.random.default_rng(1)
    n = 400
    light = rng.random(n) < 0.5
    instr = np.where(rng.random(n) < 0.5, 1, -1)
    vals = instr * np.where(light, 0.3, 1.0) + 0.2 * rng.standard_normal(n)
    e = modularity_with_ci(vals, instr, light, seed=0)
    assert e.ci_low < 0.3 < e.ci_high and e.ci_width < 0.1
