"""Analysis helpers (Chen et al., Cell 2021 quantities), used by the tests and by session reports.

This module owns selectivity, the coding direction (the authors' definition, docs/decoders.md: class-mean difference,
inverse-variance decision boundary), modularity M_h, the t90 recovery time after light offset,
and performance by condition with binomial confidence intervals. Every function says which trials
it uses: the simulator's tables use *all* trials labelled by instructed side (docs/simulator.md
"Conventions"); the Chen lab's code
uses correct trials only. Pure numpy on arrays handed in; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from analysis.stats import CONFIDENCE, wilson

FloatArray = npt.NDArray[np.float64]
TrialSelection = Literal["all", "correct"]

#: early-delay photoinhibition window of Chen 2021 (−1.7…−0.9 s from the go cue)
PI_WINDOW_S = (-1.7, -0.9)


def _mask(instructed: npt.NDArray[np.int8], correct: npt.NDArray[np.bool_] | None,
          trials: TrialSelection) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    keep = np.ones(instructed.shape, dtype=bool)
    if trials == "correct":
        if correct is None:
            raise ValueError("trials='correct' needs the correct flags")
        keep = correct.astype(bool)
    return keep & (instructed > 0), keep & (instructed < 0)


def selectivity(x: npt.NDArray[np.floating], instructed: npt.NDArray[np.int8],
                correct: npt.NDArray[np.bool_] | None = None,
                trials: TrialSelection = "all") -> FloatArray:
    """Mean over instructed-right trials minus mean over instructed-left trials, per time bin.

    Args:
        x: (n_trials, n_times[, ...]) a latent coordinate, a CD projection or rates.
        instructed: (n_trials,) ±1.
        correct: (n_trials,) needed when ``trials == "correct"``.
        trials: "all" (the convention of docs/simulator.md) or "correct" (Chen lab code).

    """
    r, left = _mask(instructed, correct, trials)
    return np.asarray(x[r].mean(axis=0, dtype=np.float64) - x[left].mean(axis=0, dtype=np.float64))


def window_mean(values: FloatArray, t_s: FloatArray, window_s: tuple[float, float]) -> float:
    """Mean of ``values`` over times strictly inside the window."""
    sel = (t_s > window_s[0]) & (t_s < window_s[1])
    return float(np.mean(values[sel]))


def modularity(sel_other_silenced: FloatArray, sel_control: FloatArray, t_s: FloatArray,
               window_s: tuple[float, float] = PI_WINDOW_S) -> float:
    """Compute the modularity M_h of a hemisphere (Chen et al. 2021; docs/simulator.md).

    Hemisphere h's mean selectivity while the *other* hemisphere is silenced, divided by its mean
    control selectivity, both over the photoinhibition window.
    """
    return window_mean(sel_other_silenced, t_s, window_s) / window_mean(sel_control, t_s, window_s)


def t90_recovery_s(sel_silenced: FloatArray, sel_control: FloatArray, t_s: FloatArray,
                   t_light_end_s: float = -0.9, t_go_s: float = 0.0) -> float | None:
    """Recovery time of a silenced hemisphere's selectivity after the light (t90, docs/simulator.md).

    The first t ≥ ``t_light_end_s`` (end of the ramp) at which selectivity ≥ 0.9 × control
    selectivity at the same t, reported as t − t_light_end_s; None ("no full recovery") if that
    never happens before the go cue.
    """
    ok = (t_s >= t_light_end_s - 1e-9) & (t_s <= t_go_s + 1e-9) & (sel_silenced >= 0.9 * sel_control)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return None
    return float(t_s[idx[0]] - t_light_end_s)


@dataclass(frozen=True, slots=True)
class CodingDirection:
    """A fixed coding direction and its decision boundary (the authors' definition, docs/decoders.md)."""

    cd: FloatArray  #: (n_units,) unit vector, right minus left
    boundary: float  #: inverse-variance-weighted mean of the class means of the projection

    def project(self, rates: npt.NDArray[np.floating]) -> FloatArray:
        """P − db for each row of ``rates`` (…, n_units); positive means lick right."""
        return np.asarray(rates @ self.cd - self.boundary, dtype=np.float64)

    def predict(self, rates: npt.NDArray[np.floating]) -> npt.NDArray[np.int8]:
        """±1 labels from the sign of p − db."""
        return np.where(self.project(rates) > 0, 1, -1).astype(np.int8)


def fit_coding_direction(rates: npt.NDArray[np.floating], labels: npt.NDArray[np.int8]) -> CodingDirection:
    """Fit CD = mean(right) − mean(left), normalised, on (n_trials, n_units) activity.

    For activity over several time bins, average the bins first (the authors' fixed CD is the mean
    normalised CD over the delay). The boundary is (m_L/v_L + m_R/v_R)/(1/v_L + 1/v_R) of the
    projections of the fitting trials. ``labels`` says which trials are "right" (+1) and "left".
    """
    r = np.asarray(rates, dtype=np.float64)
    right, left = labels > 0, labels < 0
    if right.sum() < 2 or left.sum() < 2:
        raise ValueError(f"need >= 2 trials of each label, got {int(right.sum())} right and "
                         f"{int(left.sum())} left")
    d = r[right].mean(axis=0) - r[left].mean(axis=0)
    norm = float(np.linalg.norm(d))
    cd = d / norm if norm > 0 else d
    p = r @ cd
    m_r, m_l = float(p[right].mean()), float(p[left].mean())
    v_r, v_l = max(float(p[right].var(ddof=1)), 1e-12), max(float(p[left].var(ddof=1)), 1e-12)
    db = (m_l / v_l + m_r / v_r) / (1.0 / v_l + 1.0 / v_r)
    return CodingDirection(cd, db)


@dataclass(frozen=True, slots=True)
class Performance:
    """Fraction correct with a Wilson 95 % interval."""

    n: int
    correct: int
    fraction: float
    ci_low: float
    ci_high: float

    @property
    def se(self) -> float:
        """Binomial standard error √(p(1−p)/n)."""
        return math.sqrt(self.fraction * (1.0 - self.fraction) / self.n) if self.n else float("nan")


def performance(correct: npt.NDArray[np.bool_], confidence: float = CONFIDENCE) -> Performance:
    """Fraction correct over the trials given (the caller selects them: e.g. exclude early licks)."""
    n = int(correct.size)
    k = int(np.sum(correct))
    if n == 0:
        return Performance(0, 0, float("nan"), float("nan"), float("nan"))
    lo, hi = wilson(k, n, confidence)
    return Performance(n, k, k / n, lo, hi)


def performance_by_condition(correct: npt.NDArray[np.bool_], condition: npt.NDArray[np.str_],
                             instructed: npt.NDArray[np.int8] | None = None
                             ) -> dict[str, Performance]:
    """Compute performance per condition label (and per side as "cond/right", "cond/left").

    Uses every trial handed in; pass completed trials only (early-lick trials excluded).
    """
    out: dict[str, Performance] = {}
    for cond in sorted({str(s) for s in condition}):
        sel = condition == cond
        out[cond] = performance(correct[sel])
        if instructed is not None:
            out[f"{cond}/right"] = performance(correct[sel & (instructed > 0)])
            out[f"{cond}/left"] = performance(correct[sel & (instructed < 0)])
    return out
