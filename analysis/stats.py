"""The statistics rigd's analyses share (scipy where it serves).

Binomial intervals, differences of proportions, Fisher's exact test and bootstrap intervals: one
definition each, used by the dry run, the session report and the neural analysis, so a fraction
correct, a light effect Δ or a bootstrap band carries the same interval wherever rigd prints it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

CONFIDENCE = 0.95  #: the level of every interval rigd reports unless it says otherwise
N_BOOT = 1000  #: bootstrap resamples (Chen et al., Cell 184:3717, 2021: 1,000 over neurons)


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (NaN, NaN when n = 0).

    scipy's ``binomtest(...).proportion_ci(method="wilson")`` (Wilson 1927; recommended over the
    Wald interval at the small n of one condition in one session: Brown, Cai & DasGupta 2001).
    """
    if n == 0:
        return (math.nan, math.nan)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


@dataclass(frozen=True, slots=True)
class ProportionDifference:
    """Δ = k1/n1 − k0/n0 with its interval and Fisher's exact test of the 2 × 2 table."""

    delta: float
    ci_low: float
    ci_high: float
    p_fisher: float
    odds_ratio: float


def diff_proportions_ci(k1: int, n1: int, k0: int, n0: int,
                        confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Δ = k1/n1 − k0/n0 and Newcombe's hybrid score interval (NaN when either n is 0).

    Newcombe (Stat Med 17:873, 1998, method 10) combines the two groups' Wilson intervals
    (:func:`wilson`); unlike the Wald interval it stays inside [−1, 1] and keeps its coverage at
    the tens of trials one condition gets in a session.
    """
    if n1 == 0 or n0 == 0:
        return (math.nan, math.nan, math.nan)
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson(k1, n1, confidence)
    l0, u0 = wilson(k0, n0, confidence)
    d = p1 - p0
    lo = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return (d, max(-1.0, lo), min(1.0, hi))


def fisher_exact(k1: int, n1: int, k0: int, n0: int) -> tuple[float, float]:
    """Two-sided Fisher's exact test of k1/n1 vs k0/n0 (scipy): (p value, odds ratio).

    NaN, NaN when either group is empty.
    """
    if n1 == 0 or n0 == 0:
        return (math.nan, math.nan)
    res = stats.fisher_exact([[k1, n1 - k1], [k0, n0 - k0]], alternative="two-sided")
    return (float(res.pvalue), float(res.statistic))


def compare_proportions(k1: int, n1: int, k0: int, n0: int,
                        confidence: float = CONFIDENCE) -> ProportionDifference:
    """Group 1 against group 0 (e.g. a light condition against control): Δ, its CI and Fisher's p."""
    d, lo, hi = diff_proportions_ci(k1, n1, k0, n0, confidence)
    p, odds = fisher_exact(k1, n1, k0, n0)
    return ProportionDifference(d, lo, hi, p, odds)


def bootstrap_ci(samples: npt.ArrayLike | tuple[npt.ArrayLike, ...],
                 statistic: Callable[..., npt.NDArray[np.float64]] | None = None,
                 *, n_resamples: int = N_BOOT, confidence: float = CONFIDENCE,
                 rng: np.random.Generator | None = None
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Percentile bootstrap interval of ``statistic`` over the first axis (scipy.stats.bootstrap).

    Args:
        samples: one array (n, ...) or a tuple of arrays resampled *together* (paired: the same
            rows of each, e.g. one neuron's values under light and under control).
        statistic: called as ``statistic(*samples, axis=0)``; the mean by default. It must be
            vectorised (accept an ``axis``), as numpy reductions are.
        n_resamples: resamples (1,000 by default).
        confidence: interval level.
        rng: the generator that draws the resamples (reproducible reports).

    Returns:
        (low, high), each shaped like the statistic (a time course gives a band). Rows where every
        resample gives the same value return that value for both ends.
    """
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in (samples if isinstance(samples, tuple)
                                                               else (samples,)))
    n = arrays[0].shape[0]
    if n < 2 or any(a.shape[0] != n for a in arrays):
        raise ValueError(f"bootstrap needs >= 2 rows (the same number in each sample), got "
                         f"{[a.shape[0] for a in arrays]}")

    def _mean(*xs: npt.NDArray[np.float64], axis: int = 0) -> npt.NDArray[np.float64]:
        return np.asarray(np.mean(xs[0], axis=axis), dtype=np.float64)

    fn = statistic or _mean
    res = stats.bootstrap(arrays, fn, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", paired=len(arrays) > 1, vectorized=True, axis=0,
                          random_state=rng if rng is not None else np.random.default_rng(0))
    lo = np.asarray(res.confidence_interval.low, dtype=np.float64)
    hi = np.asarray(res.confidence_interval.high, dtype=np.float64)
    point = np.asarray(fn(*arrays, axis=0), dtype=np.float64)
    same = ~np.isfinite(lo) | ~np.isfinite(hi)  # degenerate rows (no spread): the value itself
    return np.where(same, point, lo), np.where(same, point, hi)
