"""Kalman filter on the coding-direction trajectory, with dynamics fitted from training trials.

Owns ``"kalman"`` (:class:`KalmanCD`): a 2-D latent ``z`` = the noise-free CD projection of each
hemisphere (authors' CD, :class:`decoders.coding_direction.CodingDirection`), observed every
frame as the projection of that frame's counts (``y = axes · counts / frame_s``), with linear
dynamics ``z(t+1) = A z(t) + b(t) + w``. Instead of a fixed causal window the filter weighs
old and new frames by the fitted dynamics and noise.

Fit (method of moments, no EM): per-bin projections ``y`` of the training trials; the Poisson
observation noise ``R = diag(Σ_i axis_i² · rate_i / bin_s)`` from the mean rates; centring per
time bin, ``C0 = Cov(y_t) − R`` and ``C1 = Cov(y_{t+1}, y_t)`` pooled over the sample and delay
give ``A = C1 C0⁻¹`` (eigenvalues clipped to ≤ 1.1) and ``Q = C0 − A C0 Aᵀ`` (clipped PSD); the
mean trajectory gives the time-indexed drive ``b(t) = m(t+1) − A m(t)``, looked up from the
frame's trial time ``t_s``. Frames finer than the training bin (``set_frame_s``) use
``A^(1/k)``, the matching ``b``, ``Q/k`` and ``R·k``. ``step`` is one numba call.
``Estimate.left``/``right`` = filtered projection − CD boundary, ``value`` = their sum.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from scipy.linalg import fractional_matrix_power

from decoders import kernels
from decoders.base import Estimate, FitReport, TrialSet
from decoders.coding_direction import CodingDirection
from decoders.common import (
    FloatArray,
    bin_ends,
    frames_per_bin,
    logistic_scale,
    read_named_npz,
    retrain_set,
    save_npz,
    time_mask,
    trials_provenance,
    try_cross_validate,
)

DYN_S = (-3.0, 0.0)  #: bins whose dynamics are fitted: sample and delay
MAX_EIG = 1.1  #: clip of |eigenvalues| of A per training bin (the choice latent may diverge slowly)


def _psd(M: FloatArray, floor: float) -> FloatArray:
    M = 0.5 * (M + M.T)
    w, V = np.linalg.eigh(M)
    return np.asarray((V * np.maximum(w, floor)) @ V.T, dtype=np.float64)


class KalmanCD:
    """Kalman-filtered per-hemisphere CD projection (``"kalman"``).

    Args:
        cd_window_s: window of the CD fit (the axis; the filter itself has no window).
        trials: CD fitted on ``"correct"`` or ``"all"`` trials.
        min_process_noise: floor of the process noise per bin, as a fraction of the latent's
            variance (keeps the filter listening to the data).

    """

    name = "kalman"
    version = 1

    def __init__(self, cd_window_s: float = 0.1, trials: str = "correct",
                 min_process_noise: float = 0.1) -> None:
        self.cd_window_s = float(cd_window_s)
        self.min_process_noise = float(min_process_noise)
        self.trial_rule = trials
        self.estimate = Estimate()
        self.provenance: dict[str, Any] = {}
        self.last_report: FitReport | None = None
        self.axes: FloatArray = np.zeros((2, 0))
        self.boundary = np.zeros(2)
        self.A = np.eye(2)
        self.Q = np.eye(2)
        self.R = np.eye(2)
        self.b_table = np.zeros((1, 2))  #: drive per training bin (at the training bin width)
        self.z0 = np.zeros(2)
        self.P0 = np.eye(2)
        self.conf_scale = 0.0
        self.bin_s = float("nan")
        self.t0_s = 0.0
        self.frame_s = float("nan")
        self._train: TrialSet | None = None
        self._ready = False
        d = 2
        self._z, self._P = np.zeros(d), np.eye(d)
        self._Af, self._Qf, self._Rf = np.eye(d), np.eye(d), np.eye(d)
        self._bf = np.zeros((1, d))
        self._S, self._K, self._tmp, self._y = np.eye(d), np.eye(d), np.eye(d), np.zeros(d)
        self._inv_frame_s = 1.0
        self._n_b = 1

    @property
    def ready(self) -> bool:
        """True once fitted (or loaded)."""
        return self._ready

    def params(self) -> dict[str, Any]:
        """Return the constructor parameters (saved with the decoder)."""
        return {"cd_window_s": self.cd_window_s, "trials": self.trial_rule,
                "min_process_noise": self.min_process_noise}

    def clone(self) -> KalmanCD:
        """Return a fresh, unfitted decoder with the same parameters."""
        return KalmanCD(**self.params())

    # ----- fitting ------------------------------------------------------------------------
    def fit_only(self, trials: TrialSet) -> None:
        """Fit the CD axes, the noise and the dynamics (no cross-validation)."""
        cd = CodingDirection(window_s=self.cd_window_s, trials=self.trial_rule)  # type: ignore[arg-type]
        cd.fit_only(trials)
        self.axes, self.boundary = cd.axes.copy(), cd.boundary.copy()
        bs = float(trials.bin_s)
        y = np.einsum("tbu,ku->tbk", trials.counts.astype(np.float64), self.axes) / bs  # (T, B, 2)
        rate = trials.counts.mean(axis=0) / bs  # (B, units) mean rate per bin
        Rt = np.einsum("ku,bu->bk", self.axes ** 2, rate) / bs  # Poisson variance of y per bin
        dyn = time_mask(trials, DYN_S)
        idx = np.flatnonzero(dyn)
        idx = idx[idx + 1 < y.shape[1]]
        if idx.size < 3:
            raise ValueError(f"kalman: need >= 3 bins in {DYN_S} s to fit dynamics, got {idx.size}")
        m = y.mean(axis=0)  # (B, 2)
        yc = y - m
        n = y.shape[0]
        C0 = sum(yc[:, t].T @ yc[:, t] for t in idx) / (idx.size * (n - 1))
        C1 = sum(yc[:, t + 1].T @ yc[:, t] for t in idx) / (idx.size * (n - 1))
        R = np.diag(Rt[idx].mean(axis=0))
        C0s = _psd(C0 - R, 1e-6 * float(np.trace(C0)) + 1e-12)
        A = C1 @ np.linalg.inv(C0s)
        w, V = np.linalg.eig(A)
        if np.any(np.abs(w) > MAX_EIG):
            w = np.where(np.abs(w) > MAX_EIG, w / np.abs(w) * MAX_EIG, w)
            A = np.real(V @ np.diag(w) @ np.linalg.inv(V))
        Q = _psd(C0s - A @ C0s @ A.T, 1e-12)
        # floor: the latent must keep moving by at least min_process_noise of its own variance per
        # bin, else a deterministic fit (Q ~ 0) makes the gain collapse and the filter ignores data
        Q = Q + np.diag(np.maximum(self.min_process_noise * np.diag(C0s) - np.diag(Q), 0.0))
        B = y.shape[1]
        b = np.empty((B, 2))
        b[:-1] = m[1:] - m[:-1] @ A.T
        b[-1] = m[-1] - m[-1] @ A.T  # hold the last mean after the last bin
        self.A, self.Q, self.R, self.b_table = A, Q, R, b
        self.z0 = m[0] - b[0]  # so that the first predict lands on m[0]... then corrected below
        self.z0 = np.linalg.lstsq(A, m[0] - b[0], rcond=None)[0] if abs(np.linalg.det(A)) > 1e-9 else m[0]
        self.P0 = _psd(yc[:, 0].T @ yc[:, 0] / (n - 1) - np.diag(Rt[0]), 1e-6)
        self.bin_s, self.t0_s = bs, float(trials.t0_s)
        self._train = trials
        self.provenance = trials_provenance(trials)
        self._ready = True
        self.set_frame_s(bs)
        # confidence slope from the filtered values at the last delay bin of the training trials
        v = self.batch_values(trials)
        last = int(np.flatnonzero(time_mask(trials, (-1.7, 0.0)))[-1])
        self.conf_scale = logistic_scale(v[:, last], np.asarray(trials.choice))

    def fit(self, trials: TrialSet) -> FitReport:
        """Fit; the report's accuracy is 5-fold cross-validated in the last 300 ms of the delay."""
        cv = try_cross_validate(self.clone, trials, folds=5)
        self.fit_only(trials)
        accuracy = cv.pop("accuracy")
        details = {"A": self.A.tolist(), "Q": self.Q.tolist(), "R": self.R.tolist(), **cv}
        self.last_report = FitReport(self.name, trials.n_trials, accuracy, details, dict(self.provenance))
        return self.last_report

    def update(self, trials: TrialSet, max_trials: int = 400) -> FitReport | None:
        """Refit on the previous training trials plus ``trials`` (the last ``max_trials``)."""
        again = retrain_set(self._train, trials, max_trials)
        return None if again is None else self.fit(again)

    # ----- the hot path -------------------------------------------------------------------
    def set_frame_s(self, frame_s: float) -> None:
        """Live frame width; frames must divide the training bin (dynamics are re-sampled)."""
        k = frames_per_bin("kalman", self.bin_s, frame_s)
        self.frame_s = float(frame_s)
        Af = np.real(fractional_matrix_power(self.A, 1.0 / k)) if k > 1 else self.A.copy()
        G = sum(np.linalg.matrix_power(Af, j) for j in range(k))
        self._Af = np.ascontiguousarray(Af)
        self._bf = np.ascontiguousarray(np.linalg.solve(G, self.b_table.T).T)
        self._Qf = self.Q / k
        self._Rf = self.R * k
        self._inv_frame_s = 1.0 / frame_s
        self._n_b = self._bf.shape[0]
        self.reset()
        if self._ready:
            for dt in (np.uint8, np.uint16, np.float64):  # compile now, not on the first frame
                self.step(np.zeros(self.axes.shape[1], dtype=dt), -1, float("nan"))
            self.reset()

    def reset(self) -> None:
        """Trial start: back to the initial state."""
        self._z[:] = self.z0
        self._P[:] = self.P0
        e = self.estimate
        e.seq, e.t_s, e.label = -1, float("nan"), 0

    def step(self, counts: npt.NDArray[Any], seq: int, t_s: float) -> Estimate:
        """Predict with the drive of the frame's trial time, update with the frame's counts."""
        e = self.estimate
        e.seq = seq
        e.t_s = t_s
        if not self._ready:
            return e
        i = 0 if math.isnan(t_s) else int((t_s - self.t0_s) / self.bin_s - 1e-9)
        i = min(max(i, 0), self._n_b - 1)
        z = self._z
        kernels.kalman_step(self.axes, counts, z, self._P, self._Af, self._bf[i], self._Qf, self._Rf,
                            self._S, self._K, self._y, self._tmp, self._inv_frame_s)
        left = z[0] - self.boundary[0]
        right = z[1] - self.boundary[1]
        v = left + right
        e.left, e.right, e.value = left, right, v
        e.confidence = 1.0 / (1.0 + math.exp(-min(max(self.conf_scale * v, -500.0), 500.0)))
        e.label = 1 if v > 0 else -1
        e.ready = True
        return e

    def batch_values(self, trials: TrialSet) -> FloatArray:
        """Return the filtered value at every bin end of every trial (frames = bins), as ``step``."""
        if abs(trials.bin_s - self.bin_s) > 1e-9:
            raise ValueError(f"kalman: trials have bins of {trials.bin_s} s, the fit used {self.bin_s} s")
        y = np.einsum("tbu,ku->tbk", trials.counts.astype(np.float64), self.axes) / trials.bin_s
        T, B = y.shape[:2]
        z = np.repeat(self.z0[None], T, axis=0)
        P = self.P0.copy()
        out = np.empty((T, B))
        te = bin_ends(trials)
        for bi in range(B):
            i = min(max(int((te[bi] - trials.bin_s - self.t0_s) / self.bin_s + 1e-9), 0),
                    self.b_table.shape[0] - 1)
            z = z @ self.A.T + self.b_table[i]
            P = self.A @ P @ self.A.T + self.Q
            K = P @ np.linalg.inv(P + self.R)
            z = z + (y[:, bi] - z) @ K.T
            P = (np.eye(2) - K) @ P
            out[:, bi] = (z - self.boundary).sum(axis=1)
        return out

    # ----- persistence --------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write axes, dynamics, noise, version and provenance."""
        if not self._ready:
            raise RuntimeError("kalman: nothing to save, the decoder is not fitted")
        arrays = {"axes": self.axes, "boundary": self.boundary, "A": self.A, "Q": self.Q, "R": self.R,
                  "b_table": self.b_table, "z0": self.z0, "P0": self.P0}
        params = {**self.params(), "bin_s": self.bin_s, "t0_s": self.t0_s, "conf_scale": self.conf_scale}
        save_npz(path, self.name, self.version, params=params, provenance=self.provenance, arrays=arrays)

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read a decoder written by :meth:`save`."""
        meta, a = read_named_npz(path, cls.name)
        p = dict(meta["params"])
        self = cls(cd_window_s=p["cd_window_s"], trials=p["trials"], min_process_noise=p["min_process_noise"])
        self.axes, self.boundary, self.A, self.Q, self.R = a["axes"], a["boundary"], a["A"], a["Q"], a["R"]
        self.b_table, self.z0, self.P0 = a["b_table"], a["z0"], a["P0"]
        self.bin_s, self.t0_s, self.conf_scale = float(p["bin_s"]), float(p["t0_s"]), float(p["conf_scale"])
        self.provenance = meta["provenance"]
        self._ready = True
        self.set_frame_s(self.bin_s)
        return self
