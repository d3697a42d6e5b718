"""Numba kernels against their numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoders import kernels


def test_bin_events_matches_numpy_and_counts_drops():
    rng = np.random.default_rng(0)
    t = rng.uniform(-0.2, 1.2, 5000)
    u = rng.integers(-1, 33, 5000)
    out = np.zeros((100, 32), dtype=np.int64)
    dropped = kernels.bin_events(t, u, 0.0, 0.01, out)
    ref, ref_dropped = kernels.bin_events_numpy(t, u, 0.0, 0.01, 100, 32)
    np.testing.assert_array_equal(out, ref)
    assert dropped == ref_dropped > 0
    assert out.sum() + dropped == 5000  # nothing lost silently


@pytest.mark.parametrize("n_win", [1, 4, 35])
def test_windowed_sums_match_cumsum(n_win):
    c = np.random.default_rng(1).poisson(2.0, (5, 35, 7)).astype(np.uint8)
    out = np.empty(c.shape)
    kernels.windowed_sums(c, n_win, out)
    np.testing.assert_allclose(out, kernels.windowed_sums_numpy(c, n_win))


def test_window_project_step_equals_numpy_window():
    rng = np.random.default_rng(2)
    n, k, n_win = 50, 2, 4
    W = rng.normal(size=(k, n))
    W[0, 25:] = 0
    W[1, :25] = 0
    lo, hi = np.array([0, 25]), np.array([25, 50])
    frames = rng.poisson(1.0, (20, n)).astype(np.uint8)
    ring, acc, st = np.zeros((n_win, k)), np.zeros(k), np.zeros(2, np.int64)
    off, comb, out = np.array([0.3, -0.2]), np.array([1.0, 1.0, 0.0]), np.zeros(k + 2)
    for i in range(20):
        v = kernels.window_project_step(W, lo, hi, frames[i], ring, acc, st, off, comb, out, 1 / 0.01, 0.5)
        ref = kernels.window_project_numpy(W, frames[max(0, i - n_win + 1): i + 1].astype(float), 0.01, off)
        np.testing.assert_allclose(out[:k], ref, rtol=1e-12, atol=1e-9)
        assert v == pytest.approx(ref.sum())
        assert out[k + 1] == pytest.approx(1 / (1 + np.exp(-0.5 * ref.sum())))


@settings(max_examples=60, deadline=None)
@given(n_win=st.integers(1, 12), n_frames=st.integers(1, 40), n_units=st.integers(1, 30),
       split=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_running_window_equals_recomputed_window_for_any_sizes(n_win, n_frames, n_units, split, seed):
    rng = np.random.default_rng(seed)
    s = int(split * n_units)
    W = np.zeros((2, n_units))
    W[0, :s] = rng.normal(size=s)
    W[1, s:] = rng.normal(size=n_units - s)
    lo, hi = np.array([0, s]), np.array([s, n_units])
    frames = rng.integers(0, 256, (n_frames, n_units)).astype(np.uint8)
    ring, acc, state = np.zeros((n_win, 2)), np.zeros(2), np.zeros(2, np.int64)
    off, comb, out = rng.normal(size=2), np.array([1.0, 1.0, 0.0]), np.zeros(4)
    for i in range(n_frames):
        kernels.window_project_step(W, lo, hi, frames[i], ring, acc, state, off, comb, out, 1 / 0.005, 1.0)
    ref = kernels.window_project_numpy(W, frames[max(0, n_frames - n_win):].astype(float), 0.005, off)
    # add-newest/subtract-oldest in float64 on counts <= 255: rounding far below 1e-9 relative
    np.testing.assert_allclose(out[:2], ref, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.int32, np.float32])
def test_accumulate_frame_equals_the_numpy_add_it_replaces(dtype):
    """The online decoder's trial-buffer add, compiled: same sums (and the same uint16 wrap)."""
    rng = np.random.default_rng(3)
    buf = rng.integers(65_300, 65_536, size=(5, 300)).astype(np.uint16)  # near the top: sums wrap
    got = np.zeros(5, dtype=np.int64)
    ref_buf, ref_got = buf.copy(), got.copy()
    before = buf.copy()
    for b in (0, 4, 4, 2):
        counts = rng.integers(0, 2_000, size=300).astype(dtype)
        kernels.accumulate_frame(buf, got, b, counts)
        np.add(ref_buf[b], counts, out=ref_buf[b], casting="unsafe")
        ref_got[b] += 1
    assert np.array_equal(buf, ref_buf)
    assert np.array_equal(got, ref_got)
    assert (buf < before).any()  # the wrap-around case was exercised
