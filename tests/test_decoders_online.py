"""OnlineDecoder: calibration inside a live session, driven frame by frame like the service does."""

from __future__ import annotations

import math

import numpy as np
import pytest

from decoders.coding_direction import CodingDirection
from decoders.common import bin_ends
from decoders.online import FitOutcome, OnlineDecoder, aligned_factory
from decoders.synthetic import make_trialset


def run_trials(od, ts, start=0, stop=None, use=None, jitter_s=0.0, seed=0):
    """Stream trials through the decoder; return the value at the last delay frame of each trial."""
    rng = np.random.default_rng(seed)
    times = bin_ends(ts)
    stop = ts.n_trials if stop is None else stop
    last = []
    seq = 0
    for i in range(start, stop):
        od.on_trial_start(i)
        for b in range(ts.counts.shape[1]):
            e = od.step(ts.counts[i, b], seq, float(times[b] + rng.uniform(-jitter_s, jitter_s)))
            seq += 1
        last.append(e.value if e.ready else math.nan)
        od.on_trial_end(i, int(ts.choice[i]), int(ts.instructed[i]), bool(ts.correct[i]),
                        True if use is None else bool(use[i]))
    return np.array(last)


def make_od(ts, **kw):
    return OnlineDecoder(CodingDirection, n_units=ts.n_units, hemisphere=ts.hemisphere, bin_s=ts.bin_s, **kw)


def test_not_ready_until_n_fit_trials_then_serves():
    ts = make_trialset(120, 20, seed=11, gain=0.3)
    od = make_od(ts, n_fit_trials=40)
    vals = run_trials(od, ts, 0, 40)
    assert np.all(np.isnan(vals)) and od.ready and od.n_fits == 1
    st = od.status()
    assert st["decoder"] == "cd" and st["ready"] and st["fit_n_trials"] == 40
    assert st["provenance"] == {"first_trial": 0, "last_trial": 39, "n_trials": 40}
    vals = run_trials(od, ts, 40, 120)
    acc = np.mean(np.sign(vals) == ts.choice[40:120])
    # held-out trials, strong synthetic coding: >= 0.8 is > 4 SE (n=80) below what the fit reaches
    assert acc >= 0.8
    assert od.status()["online_accuracy"] is not None


def test_frozen_fits_once_and_adaptive_refits_on_the_recent_window():
    ts = make_trialset(140, 10, seed=12, gain=0.3)
    frozen = make_od(ts, n_fit_trials=40, mode="freeze")
    run_trials(frozen, ts)
    assert frozen.n_fits == 1 and frozen.status()["age_trials"] == 100
    assert frozen.status()["age_s"] == pytest.approx(100 * 35 * 0.1)
    adaptive = make_od(ts, n_fit_trials=40, refit_every_trials=20, window_trials=60)
    run_trials(adaptive, ts)
    assert adaptive.n_fits == 1 + (140 - 40) // 20
    prov = adaptive.status()["provenance"]
    assert prov["n_trials"] == 60 and prov["last_trial"] == 139 and prov["first_trial"] == 80


def test_unusable_trials_stay_out_of_the_pool():
    ts = make_trialset(60, 10, seed=13, gain=0.3)
    od = make_od(ts, n_fit_trials=20)
    use = np.ones(60, bool)
    use[::2] = False  # e.g. photoinhibition or early-lick trials
    run_trials(od, ts, 0, 39, use=use)
    assert not od.ready and od.status()["pool_trials"] == 19
    # a trial with most frames missing is counted and skipped
    od.on_trial_start(39)
    od.step(ts.counts[39, 0], 0, -3.4)
    od.on_trial_end(39, 1, 1, True, True)
    assert od.counters["trials_incomplete"] == 1 and od.status()["pool_trials"] == 19


def test_timestamp_jitter_still_collects_every_bin():
    ts = make_trialset(30, 10, seed=14, gain=0.3)
    od = make_od(ts, n_fit_trials=20, inline_fit=False)
    run_trials(od, ts, 0, 1, jitter_s=0.04)  # +-40 ms on 100-ms frames: midpoint binning holds
    snap = od.snapshot()
    np.testing.assert_array_equal(snap.counts[0], ts.counts[0])


def test_background_fit_flow_keeps_old_decoder_until_swap():
    ts = make_trialset(100, 10, seed=15, gain=0.3)
    od = make_od(ts, n_fit_trials=20, refit_every_trials=20, inline_fit=False)
    times = bin_ends(ts)
    due = []
    for i in range(ts.n_trials):
        od.on_trial_start(i)
        for b in range(ts.counts.shape[1]):
            od.step(ts.counts[i, b], b, float(times[b]))
        due.append(od.on_trial_end(i, int(ts.choice[i]), int(ts.instructed[i]), bool(ts.correct[i]), True))
        if i == 19:
            assert due[-1] and not od.ready
            job = od.prepare_fit()
            assert od.status()["fit_in_flight"] and not od.fit_due
        if i == 24:  # the fit finishes 5 trials later, "in another thread"
            outcome = job()
            assert isinstance(outcome, FitOutcome) and outcome.n_trials == 20
            od.swap(outcome)
            assert od.ready and od.n_fits == 1
    assert sum(due) >= 1


def test_failed_fit_keeps_serving_and_is_reported():
    ts = make_trialset(40, 5, seed=16, gain=0.3)
    ts.choice[:] = 1  # every trial lick-right: a CD cannot be fitted
    ts.correct[:] = ts.instructed == 1
    od = make_od(ts, n_fit_trials=20)
    run_trials(od, ts, 0, 20)
    assert not od.ready and od.counters["fits_failed"] == 1
    assert "lick-left" in od.status()["last_error"]


def test_frozen_decoder_retries_a_failed_first_fit_then_stops_pooling():
    ts = make_trialset(80, 8, seed=19, gain=0.3)
    ts.choice[:30] = 1  # the first 30 trials are all lick-right: the first fits must fail
    ts.instructed[:30] = 1
    ts.correct[:30] = True
    od = make_od(ts, n_fit_trials=20, mode="freeze")
    run_trials(od, ts, 0, 30)
    assert not od.ready and od.counters["fits_failed"] == 11  # one attempt per trial from the 20th
    run_trials(od, ts, 30, 80)
    assert od.ready and od.n_fits == 1
    pooled = od.status()["pool_trials"]
    run_trials(od, ts, 0, 10)  # frozen: later trials neither refit nor pool
    assert od.n_fits == 1 and od.status()["pool_trials"] == pooled


def test_aligned_factory_shrinks_toward_the_previous_axis():
    day0 = make_trialset(300, 20, seed=17, gain=0.3)
    old = CodingDirection()
    old.fit_only(day0)
    few = day0.subset(np.arange(20))
    plain, aligned = CodingDirection(), aligned_factory(old, prior_trials=200)()
    plain.fit_only(few)
    aligned.fit(few)
    for h in (0, 1):
        # with the prior's 200 trials of weight the axis stays closer to the 300-trial axis
        assert aligned.axes[h] @ old.axes[h] > plain.axes[h] @ old.axes[h]


def test_bad_arguments_are_rejected_with_the_offending_value():
    ts = make_trialset(10, 5, seed=18)
    with pytest.raises(ValueError, match="mode"):
        make_od(ts, mode="sometimes")
    with pytest.raises(ValueError, match=r"hemisphere has shape \(3,\)"):
        OnlineDecoder(CodingDirection, n_units=10, hemisphere=np.zeros(3), bin_s=0.1)


def test_fine_frames_are_summed_into_fit_bins_and_the_decoder_steps_per_frame():
    ts = make_trialset(30, 6, seed=20, gain=0.3)
    fine = np.zeros((ts.n_trials, ts.counts.shape[1] * 10, ts.n_units), dtype=np.uint8)
    fine[:, 3::10] = ts.counts  # every 100-ms bin's spikes land in one of its ten 10-ms frames
    od = OnlineDecoder(CodingDirection, n_units=ts.n_units, hemisphere=ts.hemisphere, bin_s=0.01,
                       fit_bin_s=0.1, n_fit_trials=20, mode="freeze")
    t = -3.5 + 0.01 * (np.arange(fine.shape[1]) + 1)
    for i in range(ts.n_trials):
        od.on_trial_start(i)
        for j in range(fine.shape[1]):
            e = od.step(fine[i, j], j, float(t[j]))
        if i == 19:
            np.testing.assert_array_equal(od.snapshot().counts, ts.counts[:19])  # trials 0..18 pooled
        od.on_trial_end(i, int(ts.choice[i]), int(ts.instructed[i]), bool(ts.correct[i]), True)
    assert od.ready and od.decoder.frame_s == 0.01 and e.ready
    # the decoder fitted on 100-ms bins, stepped on 10-ms frames, reports at the go cue what its
    # batch twin reports for the same trial's 100-ms bins (same spikes in the 100-ms window)
    assert e.value == pytest.approx(od.decoder.batch_values(ts.subset(np.array([29])))[0, -1], abs=1e-9)
    with pytest.raises(ValueError, match="whole multiple"):
        OnlineDecoder(CodingDirection, n_units=4, hemisphere=np.zeros(4), bin_s=0.03, fit_bin_s=0.1)


def test_excluded_units_are_zeroed_for_pooling_and_decoding():
    ts = make_trialset(40, 6, seed=21, gain=0.3)
    od = make_od(ts, n_fit_trials=20, mode="freeze", exclude_units=[0, 7])
    run_trials(od, ts, 0, 20)
    assert od.ready
    snap = od.snapshot()
    assert not snap.counts[:, :, [0, 7]].any() and snap.counts[:, :, 1].any()
    assert snap.provenance["excluded_units"] == [0, 7]
    # the fitted axes ignore the excluded units (zero class difference)
    assert od.decoder.axes[0, 0] == 0 and od.decoder.axes[1, 7] == 0
    with pytest.raises(ValueError, match=r"exclude_units \[99\]"):
        make_od(ts, exclude_units=[99])


class _Broken(CodingDirection):
    def fit(self, trials):
        raise RuntimeError("plug-in decoder bug")


def test_any_fit_exception_becomes_a_failed_outcome_and_fits_resume():
    ts = make_trialset(30, 5, seed=22, gain=0.3)
    od = make_od(ts, n_fit_trials=20, inline_fit=False)
    od.factory = _Broken
    run_trials(od, ts, 0, 20)
    outcome = od.prepare_fit()()
    assert outcome.decoder is None and "plug-in decoder bug" in outcome.error
    od.swap(outcome)
    assert not od.ready and not od.status()["fit_in_flight"] and od.status()["last_error"]
    od.factory = CodingDirection
    run_trials(od, ts, 20, 21)
    assert od.fit_due  # the next pooled trial asks again
    od.swap(od.prepare_fit()())
    assert od.ready


def test_loaded_decoder_shows_its_saved_fit_quality(tmp_path):
    import decoders

    ts = make_trialset(80, 6, seed=23, gain=0.3)
    dec = CodingDirection()
    rep = dec.fit(ts)
    dec.save(tmp_path / "d.npz")
    od = make_od(ts, mode="freeze")
    od.swap(decoders.load(tmp_path / "d.npz"))
    st = od.status()
    assert st["ready"] and st["fit_accuracy"] == pytest.approx(rep.accuracy) and st["fit_n_trials"] == 80
    assert st["provenance"]["session"] == "synthetic-23"
