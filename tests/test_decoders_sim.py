"""Acceptance tests of the decoders on the simulated mouse (sim.offline; docs/decoders.md, docs/simulator.md).

Skipped, with the reason shown, only if ``sim.offline`` cannot be imported.
"""

from __future__ import annotations

import numpy as np
import pytest

from decoders.coding_direction import CodingDirection
from decoders.common import bin_ends
from decoders.fitting import accuracy_over_time, score
from decoders.online import OnlineDecoder, aligned_factory

offline = pytest.importorskip("sim.offline", reason="sim.offline (the simulated mouse) is not available")

DAYS = (0, 1, 4, 8, 16, 32)


def stream(od: OnlineDecoder, ts) -> np.ndarray:
    """Drive the online decoder frame by frame; value at the go-cue frame of each trial (nan if not ready)."""
    times = bin_ends(ts)
    out = np.full(ts.n_trials, np.nan)
    for i in range(ts.n_trials):
        od.on_trial_start(i)
        for b in range(ts.counts.shape[1]):
            e = od.step(ts.counts[i, b], b, float(times[b]))
        if e.ready:
            out[i] = e.value
        od.on_trial_end(i, int(ts.choice[i]), int(ts.instructed[i]), bool(ts.correct[i]), True)
    return out


@pytest.mark.parametrize("name", ["cd", "cd_li"])
def test_cd_predicts_upcoming_choice_in_last_300ms_of_delay(name):
    ts = offline.generate_trialset(400, seed=21, units_per_hemisphere=40)
    times, acc = accuracy_over_time(name, ts, folds=5)
    late = acc[(times > -0.3 + 1e-9) & (times <= 1e-9)].mean()
    # issue 4 target: >= 0.75 (the simulator gives 0.75-0.80 at the go cue for 40 units/hemisphere).
    # n = 400 trials, binomial SE <= 0.022: requiring 0.75 with no slack would already be 3 SE
    # below the values measured here (~0.93, choice labels); chance is 0.5.
    assert late >= 0.75
    # and the choice is not decodable before the sample epoch (pre-sample bins at chance, 3 SE)
    assert abs(acc[times <= -3.0].mean() - 0.5) < 0.075


@pytest.mark.slow
def test_frozen_decoder_decays_with_drift_but_adaptive_workflow_holds():
    """τ_D = 11 d (docs/simulator.md drift): frozen day-0 CD → ≈ chance by day 32; adaptive stays >= 0.70."""
    mice = (1, 2, 3, 4)
    frozen_acc = np.zeros((len(mice), len(DAYS)))
    adaptive_acc = np.zeros((len(mice), len(DAYS)))
    for m, mouse in enumerate(mice):
        frozen = CodingDirection()
        frozen.fit_only(offline.generate_trialset(400, mouse, day=0, session=0, tau_drift_days=11.0))
        for d, day in enumerate(DAYS):
            ts = offline.generate_trialset(300, mouse, day=day, session=1, tau_drift_days=11.0)
            frozen_acc[m, d] = score(frozen, ts)  # last 300 ms of the delay, choice labels
            # adaptive workflow (docs/decoders.md): calibrate on the day's first 40 control trials,
            # then keep refitting every 20 trials on the last 120; no prior from earlier days (on
            # this simulator shrinking toward the old axis did not help, see the alignment test)
            od = OnlineDecoder(CodingDirection, n_units=ts.n_units, hemisphere=ts.hemisphere, bin_s=ts.bin_s,
                               n_fit_trials=40, mode="adaptive")
            v = stream(od, ts)
            served = ~np.isnan(v)
            assert served.sum() == 300 - 40  # every trial after the first fit is decoded online
            adaptive_acc[m, d] = np.mean(np.sign(v[served]) == ts.choice[served])
    # Frozen: day 0 high, day 32 near chance. docs/simulator.md: one mouse varies by about +-0.07
    # (measured here up to 0.73 at day 32 for one mouse); the mean over 4 mice has SE ~0.05, and
    # the simulator's mean over 100 mice is 0.53, so the mean at day 32 must be below 0.65 (chance + 3 SE)
    # and at least 0.25 below day 0.
    mean_frozen = frozen_acc.mean(axis=0)
    assert mean_frozen[0] >= 0.8
    assert mean_frozen[-1] <= 0.65
    assert mean_frozen[0] - mean_frozen[-1] >= 0.25
    # Adaptive: every mouse, every day >= 0.70 (issue 4). n = 260 online trials per day: binomial
    # SE <= 0.03; measured values are ~0.92-0.98, so this fails only if the workflow breaks.
    assert adaptive_acc.min() >= 0.70, adaptive_acc


@pytest.mark.slow
def test_alignment_to_previous_day_keeps_accuracy_with_few_calibration_trials():
    """Consecutive days, 15 calibration trials: aligned CD stays accurate (>= 0.70 every day)."""
    previous = None
    accs = []
    for day in range(4):
        ts = offline.generate_trialset(120, 5, day=day, session=1, tau_drift_days=11.0)
        factory = CodingDirection if previous is None else aligned_factory(
            previous, prior_trials=40, days_apart=1, tau_drift_days=11.0)
        od = OnlineDecoder(factory, n_units=ts.n_units, hemisphere=ts.hemisphere, bin_s=ts.bin_s,
                           n_fit_trials=15, mode="freeze")
        v = stream(od, ts)
        served = ~np.isnan(v)
        accs.append(np.mean(np.sign(v[served]) == ts.choice[served]))
        previous = od.decoder
    # n = 105 online trials per day: SE <= 0.045; measured ~0.85-0.95; 0.70 is the floor
    assert min(accs) >= 0.70, accs
