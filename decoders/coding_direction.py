"""Coding-direction (CD) decoders per ALM hemisphere: the two definitions in docs/decoders.md.

Owns the fit of a choice axis per hemisphere from labelled trials and its decision boundary:

* ``"cd"`` (:class:`CodingDirection`), the authors' definition (Dual-ALM RNN code ``get_cds``,
  ``get_cd_dbs``): per time ``cd(t) = mean_right(r(t)) - mean_left(r(t))`` over correct trials,
  normalised per time, averaged over the delay (-1.7..0 s), re-normalised; the decision boundary
  is the inverse-variance-weighted mean of the two class means of the projection at the last
  delay bin.
* ``"cd_li"`` (:class:`ChoiceMode`), the Li-lab choice mode (Yang et al. 2022 Methods):
  ``[(CR - ER) + (EL - CL)] / 2`` averaged over the delay, Gram–Schmidt-orthogonalised against the
  stimulus mode (sample epoch), the ramping mode (last 500 ms of the delay minus the 500 ms
  pre-sample baseline) and, when the trials extend past the go cue, the action mode
  (CR - CL, 0.1–0.3 s after go). Same boundary rule.

Rates are spike counts in a causal window (100 ms fast, 400 ms Chen-compatible, any whole
number of bins) ending at the frame; online the window is a ring of per-frame projections with
a running sum (:mod:`decoders.kernels`). ``Estimate.left``/``right`` = projection − boundary of
each hemisphere, ``value`` = their sum (or mean), ``confidence`` = logistic(value × fitted slope),
``label`` = sign(value). Optional drift alignment: ``prior=`` an older CD decoder of the same
units shrinks the new axis toward the old one (see docs/decoders.md). Pure computation.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from decoders.base import LEFT, RIGHT, TrialSet
from decoders.common import (
    FloatArray,
    WindowedLinearDecoder,
    inverse_variance_boundary,
    labels_of,
    logistic_scale,
    require_bins,
    time_mask,
    window_rates,
)

DELAY_S = (-1.7, 0.0)  #: delay epoch (1.7-s delay, Chen et al. 2021)
SAMPLE_S = (-3.0, -1.7)  #: sample epoch
PRESAMPLE_S = (-3.5, -3.0)  #: 500 ms baseline before the sample (Yang et al. 2022)
LATE_DELAY_S = (-0.5, 0.0)  #: ramping mode: last 500 ms of the delay (Yang et al. 2022)
ACTION_S = (0.1, 0.3)  #: action mode: 0.1–0.3 s after the go cue (Yang et al. 2022)
MIN_TRIALS_PER_CLASS = 2  #: below this a class mean is not estimable


def _unit(v: FloatArray) -> FloatArray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


class CodingDirection(WindowedLinearDecoder):
    """Authors' CD per hemisphere with the inverse-variance decision boundary (``"cd"``).

    Args:
        window_s: causal window (0.1 fast, 0.4 Chen-compatible).
        combine: ``"sum"`` or ``"mean"`` of the two hemispheres' values.
        trials: fit on ``"correct"`` trials (authors) or ``"all"`` labelled trials.
        label: learn ``"choice"`` (default) or ``"instructed"`` side.
        delay_s: epoch over which the per-time CD is averaged.
        prior_path: not used directly; see ``prior``.
        prior: an older fitted CD decoder for the same units (drift alignment): the new axis is
            ``normalise(n · cd_new + prior_trials · cd_old)`` per hemisphere, the boundary and
            confidence slope are re-fitted on the new trials.
        prior_trials: weight of the prior in trials' worth of evidence.

    """

    name: str = "cd"
    version = 1

    def __init__(self, window_s: float = 0.1, *, combine: Literal["sum", "mean"] = "sum",
                 trials: Literal["correct", "all"] = "correct",
                 label: Literal["choice", "instructed"] = "choice",
                 delay_s: tuple[float, float] = DELAY_S,
                 prior: CodingDirection | None = None, prior_trials: float = 40.0) -> None:
        super().__init__(window_s)
        if combine not in ("sum", "mean"):
            raise ValueError(f"combine must be 'sum' or 'mean', got {combine!r}")
        if trials not in ("correct", "all"):
            raise ValueError(f"trials must be 'correct' or 'all', got {trials!r}")
        self.combine_rule = combine
        self.trial_rule = trials
        self.label_rule = label
        self.delay_s = (float(delay_s[0]), float(delay_s[1]))
        self.prior = prior
        self.prior_trials = float(prior_trials)
        self.axes: FloatArray = np.zeros((2, 0))  #: unit-length axis per hemisphere (zeros off-hemisphere)
        self.boundary: FloatArray = np.zeros(2)

    def params(self) -> dict[str, Any]:
        """Return the constructor parameters (saved with the decoder; the prior only in provenance)."""
        return {"window_s": self.window_s, "combine": self.combine_rule, "trials": self.trial_rule,
                "label": self.label_rule, "delay_s": list(self.delay_s)}

    def clone(self) -> CodingDirection:
        """Return a fresh, unfitted decoder with the same parameters and prior."""
        return type(self)(window_s=self.window_s, combine=self.combine_rule,  # type: ignore[arg-type]
                          trials=self.trial_rule, label=self.label_rule,  # type: ignore[arg-type]
                          delay_s=self.delay_s, prior=self.prior, prior_trials=self.prior_trials)

    # ----- the axis ----------------------------------------------------------------------
    def _select(self, trials: TrialSet) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int8]]:
        y = labels_of(trials, self.label_rule)
        use = y != 0
        if self.trial_rule == "correct":
            use &= np.asarray(trials.correct, dtype=bool)
        return use, y

    def _axis(self, X: FloatArray, y: npt.NDArray[Any], use: npt.NDArray[np.bool_],
              units: npt.NDArray[np.int64], trials: TrialSet) -> tuple[FloatArray, dict[str, Any]]:
        """Unit-length delay-averaged CD on ``units`` (authors' definition)."""
        dm = require_bins(trials, self.delay_s, "the CD")
        R = X[np.ix_(use & (y > 0), dm, units)].mean(axis=0)
        L = X[np.ix_(use & (y < 0), dm, units)].mean(axis=0)
        raw = R - L  # (delay bins, units)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        cd = (raw / np.where(norms > 0, norms, 1.0)).mean(axis=0)
        return _unit(cd), {}

    def _fit_weights(self, trials: TrialSet) -> dict[str, Any]:
        use, y = self._select(trials)
        for cls, side in ((1, "right"), (-1, "left")):
            n = int(np.sum(use & (y == cls)))
            if n < MIN_TRIALS_PER_CLASS:
                raise ValueError(f"{self.name}: {n} usable lick-{side} trials; need at least "
                                 f"{MIN_TRIALS_PER_CLASS} per side ({self.trial_rule} trials, "
                                 f"label={self.label_rule})")
        X = window_rates(trials.counts, trials.bin_s, self.window_s)
        hem = np.asarray(trials.hemisphere)
        n_units = trials.n_units
        self.axes = np.zeros((2, n_units))
        details: dict[str, Any] = {"n_right": int(np.sum(use & (y > 0))),
                                   "n_left": int(np.sum(use & (y < 0)))}
        n_fit = int(use.sum())
        for h in (LEFT, RIGHT):
            units = np.flatnonzero(hem == h)
            if units.size == 0:
                continue
            cd, d = self._axis(X, y, use, units, trials)
            if self.prior is not None and self.prior.ready:
                old = self.prior.axes[h, units]
                if old.shape == cd.shape and np.any(old):
                    cd = _unit(n_fit * cd + self.prior_trials * old)
                    details["aligned_to_prior"] = True
            details.update({f"{k}_{'LR'[h]}": v for k, v in d.items()})
            self.axes[h, units] = cd
        # decision boundary at the last delay bin (inverse-variance rule), per hemisphere
        last = int(np.flatnonzero(time_mask(trials, self.delay_s))[-1])
        p_last = X[:, last, :] @ self.axes.T  # (trials, 2)
        self.boundary = np.zeros(2)
        for h in (LEFT, RIGHT):
            if np.any(self.axes[h]):
                self.boundary[h] = inverse_variance_boundary(p_last[use & (y < 0), h],
                                                             p_last[use & (y > 0), h])
        present = np.array([np.any(self.axes[h]) for h in (LEFT, RIGHT)], dtype=np.float64)
        w = present if self.combine_rule == "sum" else present / max(present.sum(), 1.0)
        self.W = self.axes.copy()
        self.offset = self.boundary.copy()
        self.combine = np.array([w[0], w[1], 0.0])
        values = (p_last - self.boundary) @ w
        self.conf_scale = logistic_scale(values, np.where(use, y, 0))
        details.update({"boundary": self.boundary.tolist(), "t_boundary_s": float(trials.times_s()[last]
                                                                                 + trials.bin_s)})
        return details

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {**super()._arrays(), "axes": self.axes, "boundary": self.boundary}

    def _set_arrays(self, arrays: dict[str, npt.NDArray[Any]]) -> None:
        super()._set_arrays(arrays)
        self.axes, self.boundary = arrays["axes"], arrays["boundary"]

    def hemisphere_values(self, trials: TrialSet) -> FloatArray:
        """Per-hemisphere projection − boundary at every bin end: (trials, bins, 2)."""
        X = window_rates(trials.counts, trials.bin_s, self.window_s)
        return np.asarray(np.einsum("tbu,ku->tbk", X, self.axes) - self.boundary, dtype=np.float64)


class ChoiceMode(CodingDirection):
    """Li-lab choice mode per hemisphere, Gram–Schmidt against the other modes (``"cd_li"``).

    Needs error trials of both choices (``trials`` is forced to ``"all"``); with fewer than
    ``MIN_TRIALS_PER_CLASS`` error trials of a choice the choice mode falls back to CR − CL
    (recorded in the fit report's details as ``fallback_L``/``fallback_R``).
    """

    name: str = "cd_li"

    def __init__(self, window_s: float = 0.1, *, combine: Literal["sum", "mean"] = "sum",
                 trials: Literal["correct", "all"] = "all",
                 label: Literal["choice", "instructed"] = "choice",
                 delay_s: tuple[float, float] = DELAY_S,
                 prior: CodingDirection | None = None, prior_trials: float = 40.0) -> None:
        super().__init__(window_s, combine=combine, trials="all", label="choice", delay_s=delay_s,
                         prior=prior, prior_trials=prior_trials)

    def _axis(self, X: FloatArray, y: npt.NDArray[Any], use: npt.NDArray[np.bool_],
              units: npt.NDArray[np.int64], trials: TrialSet) -> tuple[FloatArray, dict[str, Any]]:
        correct = np.asarray(trials.correct, dtype=bool)
        choice = np.asarray(trials.choice)

        def mean(sel: npt.NDArray[np.bool_], bins: npt.NDArray[np.bool_]) -> FloatArray:
            return np.asarray(X[np.ix_(sel, bins, units)].mean(axis=(0, 1)), dtype=np.float64)

        instructed = np.asarray(trials.instructed)
        # Li-lab trial types are named by the instructed side: ER = instructed right, licked left
        CR, CL = correct & (instructed > 0) & (choice > 0), correct & (instructed < 0) & (choice < 0)
        ER, EL = ~correct & (instructed > 0) & (choice < 0), ~correct & (instructed < 0) & (choice > 0)
        dm = require_bins(trials, self.delay_s, "the choice mode")
        fallback = min(ER.sum(), EL.sum()) < MIN_TRIALS_PER_CLASS
        if fallback:
            choice_mode = mean(CR, dm) - mean(CL, dm)
        else:
            choice_mode = ((mean(CR, dm) - mean(ER, dm)) + (mean(EL, dm) - mean(CL, dm))) / 2
        others: list[FloatArray] = []
        sm = time_mask(trials, SAMPLE_S)
        if sm.any() and not fallback:
            others.append(((mean(CR, sm) - mean(EL, sm)) + (mean(ER, sm) - mean(CL, sm))) / 2)
        lm, pm = time_mask(trials, LATE_DELAY_S), time_mask(trials, PRESAMPLE_S)
        everyone = choice != 0
        if lm.any() and pm.any():
            others.append(mean(everyone, lm) - mean(everyone, pm))
        am = time_mask(trials, ACTION_S)
        if am.any():
            others.append(mean(CR, am) - mean(CL, am))
        basis: list[FloatArray] = []
        for mode in others:  # Gram–Schmidt on the other modes, then the choice mode against them
            v = mode
            for b in basis:
                v = v - (v @ b) * b
            if np.linalg.norm(v) > 1e-12:
                basis.append(_unit(v))
        for b in basis:
            choice_mode = choice_mode - (choice_mode @ b) * b
        return _unit(choice_mode), {"fallback": bool(fallback), "n_other_modes": len(basis)}
