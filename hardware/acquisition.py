"""Acquisition adapters: turning a rig's broadband samples into the spike counts the loop decodes.

It owns the online threshold-crossing detector used when a rig streams raw samples (e.g. 384
Neuropixels channels at 30 kHz in 1 ms chunks) instead of sorted spike counts: per channel, the
noise level is estimated from the first second (σ = median|x| / 0.6745, Quiroga et al. 2004) and
every downward crossing of ``threshold_sd × σ`` counts as a spike. The kernel is compiled (numba)
and allocation-free per chunk; it keeps the last sample of each chunk so crossings that straddle
two chunks are neither lost nor counted twice.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt


@numba.njit(cache=True, nogil=True)
def _crossings(chunk: npt.NDArray[Any], thr: npt.NDArray[np.float32], prev: npt.NDArray[np.float32],
               out: npt.NDArray[np.uint8]) -> None:  # pragma: no cover - compiled
    n_s, n_c = chunk.shape
    for c in range(n_c):
        last = prev[c]
        t = thr[c]
        k = 0
        for i in range(n_s):
            x = np.float32(chunk[i, c])
            if last >= t and x < t:
                k += 1
            last = x
        prev[c] = last
        out[c] = min(k, 255)


class ThresholdDetector:
    """Counts negative threshold crossings per channel in each chunk of broadband samples.

    Args:
        n_channels: channels per chunk.
        threshold_sd: threshold in units of the channel's noise σ (negative: downward crossings).
        calibration_samples: samples per channel used to estimate σ before detection starts.
    """

    def __init__(self, n_channels: int, threshold_sd: float = -4.5, calibration_samples: int = 30_000) -> None:
        if n_channels <= 0:
            raise ValueError(f"n_channels must be positive, got {n_channels}")
        if threshold_sd >= 0:
            raise ValueError(f"threshold_sd must be negative (downward crossings), got {threshold_sd}")
        self.n_channels = n_channels
        self.threshold_sd = threshold_sd
        self.calibration_samples = calibration_samples
        self._cal: list[npt.NDArray[np.float32]] = []
        self._cal_n = 0
        self.threshold = np.full(n_channels, -np.inf, dtype=np.float32)
        self._prev = np.zeros(n_channels, dtype=np.float32)
        self.counts = np.zeros(n_channels, dtype=np.uint8)
        self.ready = False

    def step(self, chunk: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        """Spike counts (n_channels,) of one chunk (n_samples, n_channels); zeros while calibrating."""
        if chunk.ndim != 2 or chunk.shape[1] != self.n_channels:
            raise ValueError(f"chunk must be (n_samples, {self.n_channels}), got {chunk.shape}")
        if not self.ready:
            self._cal.append(np.array(chunk, dtype=np.float32))
            self._cal_n += chunk.shape[0]
            if self._cal_n >= self.calibration_samples:
                x = np.concatenate(self._cal).astype(np.float32)
                sigma = np.median(np.abs(x - np.median(x, axis=0)), axis=0) / 0.6745
                self.threshold = (self.threshold_sd * np.maximum(sigma, 1.0)).astype(np.float32)
                self._prev = x[-1].copy()
                self._cal = []
                self.ready = True
            self.counts[:] = 0
            return self.counts
        _crossings(chunk, self.threshold, self._prev, self.counts)
        return self.counts
