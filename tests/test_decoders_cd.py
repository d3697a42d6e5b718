"""Coding-direction decoders on small synthetic populations (decoders.synthetic), no simulator."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import decoders
from decoders.base import LEFT, RIGHT, Decoder
from decoders.coding_direction import ChoiceMode, CodingDirection
from decoders.common import bin_ends, inverse_variance_boundary, read_npz, time_mask, window_rates
from decoders.fitting import accuracy_over_time, fit_sessions, score
from decoders.synthetic import make_trialset


@pytest.fixture(scope="module")
def session():  # 200 trials, 20 units per hemisphere, clear choice coding
    return make_trialset(200, 20, seed=1, gain=0.3)


def step_through(dec, counts, times):
    dec.reset()
    return np.array([dec.step(counts[b], b, float(times[b])).value for b in range(counts.shape[0])])


@pytest.mark.parametrize("cls", [CodingDirection, ChoiceMode])
@pytest.mark.parametrize("window_s", [0.1, 0.4])
def test_step_from_running_sums_equals_batch_projection(session, cls, window_s):
    dec = cls(window_s=window_s)
    dec.fit_only(session)
    batch = dec.batch_values(session)
    times = bin_ends(session)
    for t in (0, 7, 150):
        # running sums (add newest, subtract oldest) vs direct windowed rates: float rounding only
        np.testing.assert_allclose(step_through(dec, session.counts[t], times), batch[t], atol=1e-9)


def test_finer_live_frames_give_the_same_window_rate(session):
    dec = CodingDirection(window_s=0.4)
    dec.fit_only(session)
    coarse = dec.batch_values(session)[5]
    # split every 100-ms bin into ten 10-ms frames, all spikes in the bin's first frame
    fine = np.zeros((session.counts.shape[1] * 10, session.n_units), dtype=np.uint8)
    fine[::10] = session.counts[5]
    dec.set_frame_s(0.01)
    vals = step_through(dec, fine, np.arange(fine.shape[0]) * 0.01)
    # at each 100-ms bin end the 400-ms window holds exactly the same spikes
    np.testing.assert_allclose(vals[9::10][4:], coarse[4:], atol=1e-9)


def test_estimate_fields_per_hemisphere_and_confidence(session):
    dec = CodingDirection(window_s=0.1)
    dec.fit_only(session)
    times = bin_ends(session)
    dec.reset()
    for b in range(session.counts.shape[1]):
        e = dec.step(session.counts[0, b], 100 + b, float(times[b]))
    assert e.ready and e.seq == 100 + session.counts.shape[1] - 1 and e.t_s == pytest.approx(0.0)
    assert e.value == pytest.approx(e.left + e.right)
    assert e.label == (1 if e.value > 0 else -1)
    # confidence = logistic(slope * value), slope > 0 so it agrees with the label
    assert (e.confidence > 0.5) == (e.value > 0)
    assert dec.conf_scale > 0
    # axes are unit length and confined to their hemisphere
    hem = session.hemisphere
    for h in (LEFT, RIGHT):
        assert np.linalg.norm(dec.axes[h]) == pytest.approx(1.0)
        assert not np.any(dec.axes[h][hem != h])


def test_mean_combination_halves_the_sum(session):
    s, m = CodingDirection(combine="sum"), CodingDirection(combine="mean")
    s.fit_only(session)
    m.fit_only(session)
    np.testing.assert_allclose(m.batch_values(session), s.batch_values(session) / 2, atol=1e-12)


def test_inverse_variance_boundary_leans_toward_the_tighter_class():
    rng = np.random.default_rng(0)
    left, right = rng.normal(-1.0, 0.1, 500), rng.normal(1.0, 1.0, 500)
    db = inverse_variance_boundary(left, right)
    # analytic value with the sample moments; lies near the narrow class (v_L = 0.01 vs v_R = 1)
    vL, vR = left.var(ddof=1), right.var(ddof=1)
    assert db == pytest.approx((left.mean() / vL + right.mean() / vR) / (1 / vL + 1 / vR))
    assert db < -0.9


@pytest.mark.parametrize("name", ["cd", "cd_li"])
def test_cross_validated_accuracy_high_with_signal_and_chance_without(name):
    good = make_trialset(200, 20, seed=2, gain=0.3)
    null = make_trialset(200, 20, seed=3, gain=0.0)
    dec = decoders.registry[name]()
    rep = dec.fit(good)
    # strong synthetic coding: the noiseless Bayes accuracy is ~1; 0.8 leaves > 5 SE (n=200) of room
    assert rep.accuracy >= 0.8
    _, acc = accuracy_over_time(name, null)
    late = acc[-3:]
    # no signal: chance; binomial SE at n=200 is 0.035, 3 SE = 0.11
    assert abs(late.mean() - 0.5) < 0.11
    # and accuracy rises through the trial when the signal ramps: pre-sample at chance
    t, acc_good = accuracy_over_time(name, good)
    assert abs(acc_good[t <= -3.0].mean() - 0.5) < 0.11
    assert acc_good[-1] > acc_good[t <= -3.0].mean() + 0.2


def test_choice_mode_is_orthogonal_to_ramping_mode():
    ts = make_trialset(300, 20, seed=4, gain=0.3)
    dec = ChoiceMode()
    dec.fit_only(ts)
    X = window_rates(ts.counts, ts.bin_s, dec.window_s)
    ramp = X[:, time_mask(ts, (-0.5, 0.0))].mean((0, 1)) - X[:, time_mask(ts, (-3.5, -3.0))].mean((0, 1))
    for h in (LEFT, RIGHT):
        u = ts.hemisphere == h
        # Gram–Schmidt: the choice mode has no component along the (hemisphere's) ramping mode
        assert abs(dec.axes[h, u] @ ramp[u]) < 1e-9 * np.linalg.norm(ramp[u])


def test_too_few_trials_of_a_side_is_a_clear_error():
    ts = make_trialset(40, 5, seed=5)
    ts = ts.subset(np.flatnonzero(ts.choice > 0))
    with pytest.raises(ValueError, match="lick-left"):
        CodingDirection().fit_only(ts)


def test_save_load_round_trip_keeps_outputs_and_provenance(tmp_path: Path, session):
    dec = CodingDirection(window_s=0.4)
    dec.fit(session)
    path = tmp_path / "cd.npz"
    dec.save(path)
    back = decoders.load(path)
    assert isinstance(back, CodingDirection) and isinstance(back, Decoder)
    assert back.window_s == 0.4 and back.provenance["session"] == "synthetic-1"
    assert back.provenance["trials"] == list(range(200))
    np.testing.assert_array_equal(back.batch_values(session), dec.batch_values(session))
    times = bin_ends(session)
    np.testing.assert_array_equal(step_through(back, session.counts[3], times),
                                  step_through(dec, session.counts[3], times))
    meta, _ = read_npz(path)
    assert meta["format_version"] == 1 and meta["name"] == "cd"
    assert meta["provenance"]["fit_report"]["accuracy"] == pytest.approx(dec.last_report.accuracy)


def test_unknown_format_version_is_refused(tmp_path: Path, session):
    dec = CodingDirection()
    dec.fit_only(session)
    path = tmp_path / "cd.npz"
    dec.save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    meta["format_version"] = 99
    arrays["__meta__"] = np.asarray(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="format version 99"):
        decoders.load(path)


def test_step_does_not_allocate(session):
    dec = CodingDirection()
    dec.fit_only(session)
    frames = session.counts[0]
    for b in range(frames.shape[0]):
        dec.step(frames[b], b, 0.0)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for i in range(5000):
        dec.step(frames[i % frames.shape[0]], i, 0.0)
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # only the Estimate's replaced float objects churn: nothing accumulates, peak stays tiny
    assert cur - base < 512 and peak - base < 2048


def test_fit_sessions_joins_sessions_and_records_them():
    a, b = make_trialset(80, 10, seed=6, gain=0.3), make_trialset(80, 10, seed=7, gain=0.3)
    dec, rep = fit_sessions([a, b], "cd", window_s=0.4)
    assert rep.n_trials == 160 and rep.decoder == "cd"
    assert [s["session"] for s in rep.provenance["sessions"]] == ["synthetic-6", "synthetic-7"]
    # the loadings differ between the two synthetic "sessions" (independent seeds), so joined
    # accuracy is only required to beat chance clearly on each
    assert score(dec, a) > 0.6 and score(dec, b) > 0.6
