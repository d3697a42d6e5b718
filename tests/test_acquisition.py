"""The threshold-crossing detector counts each downward crossing once, across chunk boundaries."""

import numpy as np
import pytest

from hardware.acquisition import ThresholdDetector


def test_counts_match_injected_spikes_including_across_chunk_boundaries() -> None:
    rng = np.random.default_rng(0)
    fs, n_ch = 30_000, 16
    x = rng.normal(0, 100, (3 * fs, n_ch))  # 1 s calibration + 2 s of data, σ = 100 (int16 steps ≪ σ)
    spikes = {c: np.sort(rng.choice(np.arange(fs + 5, 3 * fs - 5, 40), 50, replace=False)) for c in range(n_ch)}
    for c, t in spikes.items():
        x[t, c] -= 1200  # 12 σ: well past the −4.5 σ threshold; noise alone crosses ~0 times
    x = x.astype(np.int16)
    det = ThresholdDetector(n_ch, calibration_samples=fs)
    total = np.zeros(n_ch, dtype=np.int64)
    # odd chunk sizes so spikes land on chunk edges too
    edges = np.cumsum(rng.integers(5, 60, 4000))
    edges = edges[edges < len(x)]
    for a, b in zip(np.r_[0, edges], np.r_[edges, len(x)], strict=True):
        total += det.step(x[a:b])
    assert det.ready
    np.testing.assert_allclose(det.threshold, -4.5 * 100, rtol=0.05)  # σ from the MAD, within 5 %
    expected = np.array([len(spikes[c]) for c in range(n_ch)])
    # every injected spike is found once; pure noise also dips below −4.5σ (P = 3.4e-6 per sample:
    # ~0.2 expected per channel over 60,000 samples, ~3.3 in all), so allow ≤ 10 stray crossings in all
    assert np.all(total >= expected), (total, expected)
    assert (total - expected).sum() <= 10, (total, expected)


def test_wrong_chunk_shape_is_refused() -> None:
    det = ThresholdDetector(4)
    with pytest.raises(ValueError, match=r"\(n_samples, 4\)"):
        det.step(np.zeros((30, 5), np.int16))
    with pytest.raises(ValueError):
        ThresholdDetector(4, threshold_sd=3.0)
