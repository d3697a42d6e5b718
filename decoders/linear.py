"""Regularised linear read-outs of the whole population: logistic regression and shrinkage LDA.

Owns two decoders whose value is the log-odds of "lick right" from the rates of all units in
one causal window (default 100 ms): ``"logistic"`` (:class:`Logistic`, L2-penalised logistic
regression on standardised rates, fitted by L-BFGS) and ``"lda"`` (:class:`LDA`, Fisher LDA with
the covariance shrunk toward its diagonal; Woodbury identity when units outnumber samples, so
10,000 units fit in memory). Training samples are every (trial, bin) with the window ending in
``t_fit_s`` (default the last 500 ms of the delay), labelled by the upcoming choice.
Standardisation is folded into the weights, so ``step`` is the same single numba call as the
coding direction (:class:`decoders.common.WindowedLinearDecoder`). Pure computation.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize

from decoders.base import TrialSet
from decoders.common import FloatArray, WindowedLinearDecoder, labels_of, require_bins, window_rates

FIT_S = (-0.5, 0.0)  #: default training windows: ending in the last 500 ms of the delay


class _PopulationLinear(WindowedLinearDecoder):
    """Shared plumbing: training matrix, standardisation, folding into (W, offset)."""

    def __init__(self, window_s: float = 0.1, *, t_fit_s: tuple[float, float] = FIT_S,
                 label: Literal["choice", "instructed"] = "choice") -> None:
        super().__init__(window_s)
        self.t_fit_s = (float(t_fit_s[0]), float(t_fit_s[1]))
        self.label_rule = label

    def params(self) -> dict[str, Any]:
        """Return the constructor parameters (saved with the decoder)."""
        return {"window_s": self.window_s, "t_fit_s": list(self.t_fit_s), "label": self.label_rule}

    def _training(self, trials: TrialSet) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Standardised samples Z (m, n), labels y in {0, 1}, mean and sd of the rates."""
        y = labels_of(trials, self.label_rule)
        keep = y != 0
        for cls, side in ((1, "right"), (-1, "left")):
            if np.sum(y == cls) < 2:
                raise ValueError(f"{self.name}: {int(np.sum(y == cls))} lick-{side} trials; need at least 2")
        bins = require_bins(trials, self.t_fit_s, self.name)
        X = window_rates(trials.counts[keep], trials.bin_s, self.window_s)[:, bins]
        m = X.shape[0] * X.shape[1]
        Xs = X.reshape(m, -1)
        yy = np.repeat((y[keep] > 0).astype(np.float64), X.shape[1])
        mu = Xs.mean(axis=0)
        sd = Xs.std(axis=0)
        sd = np.where(sd > 1e-9, sd, 1.0)  # silent units: weight stays ~0
        return (Xs - mu) / sd, yy, mu, sd

    def _fold(self, w: FloatArray, b: float, mu: FloatArray, sd: FloatArray) -> None:
        """Fold standardisation in: value = w·(x − μ)/σ + b, so W = w/σ and offset = W·μ − b."""
        W = (w / sd)[None, :]
        self.W = W
        self.offset = np.array([float(W[0] @ mu) - b])
        self.combine = np.array([1.0, 0.0])
        self.conf_scale = 1.0  # the value is already log-odds


class Logistic(_PopulationLinear):
    """L2-regularised logistic regression on population rates (``"logistic"``).

    Args:
        window_s: causal window of the rates.
        l2: penalty on the mean log-loss, ``0.5 * l2 * |w|²`` on standardised weights.
        t_fit_s: training windows end in this range (s from the go cue).
        label: learn the upcoming ``"choice"`` or the ``"instructed"`` side.

    """

    name = "logistic"
    version = 1

    def __init__(self, window_s: float = 0.1, *, l2: float = 0.05, t_fit_s: tuple[float, float] = FIT_S,
                 label: Literal["choice", "instructed"] = "choice") -> None:
        super().__init__(window_s, t_fit_s=t_fit_s, label=label)
        self.l2 = float(l2)

    def params(self) -> dict[str, Any]:
        """Return the constructor parameters (saved with the decoder)."""
        return {**super().params(), "l2": self.l2}

    def _fit_weights(self, trials: TrialSet) -> dict[str, Any]:
        Z, y, mu, sd = self._training(trials)
        m, n = Z.shape
        l2 = self.l2

        def loss(theta: FloatArray) -> tuple[float, FloatArray]:
            w, b = theta[:n], theta[n]
            z = Z @ w + b
            # log(1 + e^z) - y z, computed stably
            ll = np.logaddexp(0.0, z) - y * z
            p = 0.5 * (1.0 + np.tanh(0.5 * z))
            g = p - y
            grad = np.empty(n + 1)
            grad[:n] = Z.T @ g / m + l2 * w
            grad[n] = g.mean()
            return float(ll.mean() + 0.5 * l2 * (w @ w)), grad

        res = minimize(loss, np.zeros(n + 1), jac=True, method="L-BFGS-B",
                       options={"maxiter": 500, "gtol": 1e-6})
        self._fold(res.x[:n], float(res.x[n]), mu, sd)
        return {"n_samples": m, "converged": bool(res.success), "iterations": int(res.nit), "l2": l2}


class LDA(_PopulationLinear):
    """Fisher LDA with covariance shrinkage toward the diagonal (``"lda"``).

    ``Σ = (1 − shrinkage) S + shrinkage · diag(S)`` on standardised rates (so diag(S) = 1);
    value = w·x + b is the log-odds under equal-covariance Gaussian classes.
    """

    name = "lda"
    version = 1

    def __init__(self, window_s: float = 0.1, *, shrinkage: float = 0.3,
                 t_fit_s: tuple[float, float] = FIT_S,
                 label: Literal["choice", "instructed"] = "choice") -> None:
        super().__init__(window_s, t_fit_s=t_fit_s, label=label)
        if not 0.0 < shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
        self.shrinkage = float(shrinkage)

    def params(self) -> dict[str, Any]:
        """Return the constructor parameters (saved with the decoder)."""
        return {**super().params(), "shrinkage": self.shrinkage}

    def _fit_weights(self, trials: TrialSet) -> dict[str, Any]:
        Z, y, mu, sd = self._training(trials)
        m, n = Z.shape
        r, lft = y > 0.5, y < 0.5
        mR, mL = Z[r].mean(axis=0), Z[lft].mean(axis=0)
        Zc = np.where(r[:, None], Z - mR, Z - mL)  # within-class centred
        g = self.shrinkage
        var = (Zc * Zc).sum(axis=0) / max(m - 2, 1)
        D = g * var  # the diagonal part; (1 - g) S is added below
        diff = mR - mL
        if n <= m:
            S = Zc.T @ Zc / max(m - 2, 1)
            Sigma = (1 - g) * S
            Sigma[np.diag_indices(n)] += D
            w = np.linalg.solve(Sigma + 1e-9 * np.eye(n), diff)
        else:  # Woodbury: Σ = diag(D) + U Uᵀ, U = sqrt((1-g)/(m-2)) Zcᵀ
            Dinv = 1.0 / np.maximum(D, 1e-9)
            U = Zc.T * np.sqrt((1 - g) / max(m - 2, 1))  # (n, m)
            core = np.eye(m) + (U.T * Dinv) @ U
            w = Dinv * diff - Dinv * (U @ np.linalg.solve(core, U.T @ (Dinv * diff)))
        prior = np.log(r.mean() / lft.mean())
        b = float(-w @ (mR + mL) / 2 + prior)
        self._fold(np.asarray(w, dtype=np.float64), b, mu, sd)
        return {"n_samples": m, "shrinkage": g}

