"""Numba kernels for the per-frame hot path and for binning, with their numpy references.

This module owns the few loops numpy cannot do without allocating or without several Python
calls per frame: the windowed linear projection used by every linear decoder (one call per
frame), a small Kalman predict/update step, binning spike events into counts and causal windowed
sums over binned counts. Every kernel has a plain-numpy twin (``*_numpy``) that the tests compare
against and ``bench/bench_decoders.py`` times. Kernels are compiled lazily on first call
(``cache=True`` keeps the machine code in ``__pycache__``); they take and return arrays only and
never touch clocks, sockets or files.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# State slots of the windowed-projection kernel (int64 array ``state``).
POS = 0  #: next ring row to overwrite
FILLED = 1  #: frames currently in the window (<= n_win)


@numba.njit(nogil=True, fastmath=True, cache=True, inline="always")
def _dot(w: Any, c: Any) -> float:  # pragma: no cover - compiled
    """Dot product of two contiguous 1-D slices; written so LLVM vectorises it (mixed dtypes)."""
    s = 0.0
    for j in range(w.shape[0]):
        s += w[j] * c[j]
    return s


@numba.njit(nogil=True, fastmath=True, cache=True)
def window_project_step(  # pragma: no cover - compiled
    W: Any, lo: Any, hi: Any, counts: Any, ring: Any, acc: Any, state: Any,
    offset: Any, combine: Any, out: Any, inv_frame_s: float, conf_scale: float,
) -> float:
    """One frame of a windowed linear read-out, allocation-free.

    ``ring[pos, r]`` holds row ``r``'s projection of one past frame (projection is linear, so
    summing per-frame projections over the window equals projecting the windowed count sum; the
    ring is (n_win, k) instead of (n_win, n_units)). ``acc`` is the running window sum: add
    the newest frame, subtract the oldest. Row ``r`` only reads units ``lo[r]:hi[r]`` (the span of
    its non-zero weights, e.g. one hemisphere). Writes per-row rates minus ``offset`` into
    ``out[:k]``, the combined value into ``out[k]`` and P(right) into ``out[k+1]``; returns the
    combined value.
    """
    k = W.shape[0]
    n_win = ring.shape[0]
    pos = state[0]
    filled = state[1]
    if filled < n_win:
        filled += 1
        state[1] = filled
    inv = inv_frame_s / filled
    value = combine[k]
    for r in range(k):
        a0 = lo[r]
        a1 = hi[r]
        s = _dot(W[r, a0:a1], counts[a0:a1])
        a = acc[r] + s - ring[pos, r]
        acc[r] = a
        ring[pos, r] = s
        v = a * inv - offset[r]
        out[r] = v
        value += combine[r] * v
    pos += 1
    if pos == n_win:
        pos = 0
    state[0] = pos
    out[k] = value
    z = conf_scale * value
    if z >= 0.0:
        out[k + 1] = 1.0 / (1.0 + np.exp(-z))
    else:
        ez = np.exp(z)
        out[k + 1] = ez / (1.0 + ez)
    return float(value)


def window_project_numpy(W: FloatArray, counts_window: FloatArray, frame_s: float,
                         offset: FloatArray) -> FloatArray:
    """Compute (reference) per-row rates over frames ``(n_frames, n_units)`` minus ``offset``."""
    return np.asarray(W @ counts_window.sum(axis=0) / (counts_window.shape[0] * frame_s) - offset,
                      dtype=np.float64)


@numba.njit(nogil=True, fastmath=True, cache=True)
def kalman_step(  # pragma: no cover - compiled
    W: Any, counts: Any, z: Any, P: Any, A: Any, bvec: Any, Q: Any, R: Any, S: Any, K: Any,
    y: Any, tmp: Any, inv_frame_s: float,
) -> None:
    """Kalman predict + update for a small latent ``z`` (d <= 4) observed as ``y = W counts / frame_s``.

    Dynamics ``z <- A z + b``, ``P <- A P A' + Q``; observation ``y = z + v``, ``v ~ N(0, R)``
    (the latent lives in observation space: it is the noise-free read-out). All work arrays are
    preallocated by the caller: ``S``, ``K`` and ``tmp`` are (d, d), ``y`` is (d,).
    """
    d = z.shape[0]
    for r in range(d):
        y[r] = _dot(W[r], counts) * inv_frame_s
    # predict: z = A z + b (use K[:, 0] as scratch for the new z)
    for r in range(d):
        s = bvec[r]
        for c in range(d):
            s += A[r, c] * z[c]
        K[r, 0] = s
    for r in range(d):
        z[r] = K[r, 0]
    # P = A P A' + Q
    for r in range(d):
        for c in range(d):
            s = 0.0
            for m in range(d):
                s += A[r, m] * P[m, c]
            tmp[r, c] = s
    for r in range(d):
        for c in range(d):
            s = Q[r, c]
            for m in range(d):
                s += tmp[r, m] * A[c, m]
            P[r, c] = s
    # S = P + R, invert in place (Gauss-Jordan, d small, S is SPD)
    for r in range(d):
        for c in range(d):
            S[r, c] = P[r, c] + R[r, c]
            tmp[r, c] = 1.0 if r == c else 0.0
    for c in range(d):
        piv = S[c, c]
        for m in range(d):
            S[c, m] /= piv
            tmp[c, m] /= piv
        for r in range(d):
            if r != c:
                f = S[r, c]
                for m in range(d):
                    S[r, m] -= f * S[c, m]
                    tmp[r, m] -= f * tmp[c, m]
    # K = P S^-1 ; z += K (y - z) ; P = (I - K) P
    for r in range(d):
        for c in range(d):
            s = 0.0
            for m in range(d):
                s += P[r, m] * tmp[m, c]
            K[r, c] = s
    for r in range(d):
        s = 0.0
        for c in range(d):
            s += K[r, c] * (y[c] - z[c])
        tmp[r, 0] = s
    for r in range(d):
        z[r] += tmp[r, 0]
    for r in range(d):
        for c in range(d):
            s = 0.0
            for m in range(d):
                s += K[r, m] * P[m, c]
            S[r, c] = P[r, c] - s
    for r in range(d):
        for c in range(d):
            P[r, c] = 0.5 * (S[r, c] + S[c, r])


@numba.njit(nogil=True, cache=True)
def accumulate_frame(buf: Any, got: Any, b: int, counts: Any) -> None:  # pragma: no cover - compiled
    """Add one frame of counts into row ``b`` of a trial buffer and count it in ``got[b]``.

    The hot-path twin of ``np.add(buf[b], counts, out=buf[b], casting="unsafe"); got[b] += 1``
    (same wrap-around when the sum exceeds the buffer's dtype, float counts truncated like
    numpy's unsafe cast) in one compiled call.
    """
    row = buf[b]
    for i in range(counts.shape[0]):
        row[i] += np.int64(counts[i])
    got[b] += 1


@numba.njit(nogil=True, cache=True)
def bin_events(  # pragma: no cover - compiled
    times_s: Any, units: Any, t0_s: float, bin_s: float, out: Any,
) -> int:
    """Add spike events (time, unit) into ``out[(t - t0) // bin_s, unit]``; return events dropped.

    Events outside ``[t0, t0 + n_bins * bin_s)`` or with a unit index out of range are dropped
    and counted (never silently).
    """
    n_bins = out.shape[0]
    n_units = out.shape[1]
    dropped = 0
    inv = 1.0 / bin_s
    for i in range(times_s.shape[0]):
        b = int(np.floor((times_s[i] - t0_s) * inv))
        u = units[i]
        if b < 0 or b >= n_bins or u < 0 or u >= n_units:
            dropped += 1
        else:
            out[b, u] += 1
    return dropped


def bin_events_numpy(times_s: FloatArray, units: IntArray, t0_s: float, bin_s: float,
                     n_bins: int, n_units: int) -> tuple[npt.NDArray[np.int64], int]:
    """Bin events like :func:`bin_events` in plain numpy (the reference; allocates)."""
    b = np.floor((times_s - t0_s) / bin_s).astype(np.int64)
    ok = (b >= 0) & (b < n_bins) & (units >= 0) & (units < n_units)
    out = np.zeros((n_bins, n_units), dtype=np.int64)
    np.add.at(out, (b[ok], units[ok]), 1)
    return out, int((~ok).sum())


@numba.njit(nogil=True, cache=True)
def windowed_sums(counts: Any, n_win: int, out: Any) -> None:  # pragma: no cover - compiled
    """Causal running sums over ``n_win`` bins along axis 1 of (trials, bins, units) counts.

    ``out[t, b] = counts[t, max(0, b - n_win + 1): b + 1].sum(0)`` (add newest, subtract oldest).
    """
    n_tr, n_b, n_u = counts.shape
    for t in range(n_tr):
        for u in range(n_u):
            s = 0.0
            for b in range(n_b):
                s += counts[t, b, u]
                if b >= n_win:
                    s -= counts[t, b - n_win, u]
                out[t, b, u] = s


def windowed_sums_numpy(counts: npt.NDArray[Any], n_win: int) -> FloatArray:
    """Compute :func:`windowed_sums` via a cumulative sum (the numpy reference; allocates)."""
    c = np.cumsum(counts, axis=1, dtype=np.float64)
    out = c.copy()
    out[:, n_win:] -= c[:, :-n_win]
    return out
