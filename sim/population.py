"""The Poisson spiking layer (docs/simulator.md): ALM units read out from the latent x_L, x_R.

This module owns the per-unit coefficients (log-normal baselines, contra-biased choice loadings
β, ramp loadings γ, a sparse stimulus-coding minority δ, fast-spiking units excited by light,
positions under the light spots), the rate function λ_i(t) shared by the offline generator and
the live mouse, and a fast Poisson sampler that writes counts into a reused buffer. Units are
ordered left hemisphere first, then right. Pure: no clock, no socket; randomness comes from the
generators handed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from sim.config import MouseConfig
from sim.light import ALM_AP_MM, ALM_HALF_WIDTH_MM, ALM_ML_MM

FloatArray = npt.NDArray[np.float64]

#: Poisson tail probability the sampler may truncate per unit and bin.
_TAIL = 1e-10
_MAX_LEVELS = 24


@dataclass(frozen=True, slots=True)
class Units:
    """Coefficients of every unit (arrays of shape (n_units,), left hemisphere first).

    ``beta_mean``/``beta_sd`` and ``log_baseline_mean``/``log_baseline_sd`` are each unit's
    population statistics: the drift (sim/drift.py) is an OU process around them.
    """

    hemisphere: npt.NDArray[np.int8]  #: 0 left, 1 right
    is_fs: npt.NDArray[np.bool_]
    log_baseline: FloatArray  #: ln Hz
    beta: FloatArray  #: choice loading on x_h / x_ref
    gamma: FloatArray  #: ramp loading
    delta: FloatArray  #: stimulus loading (0 for most units)
    fs_light_gain: FloatArray  #: rate × this in full light (FS units; 1 for pyramidal)
    ap_mm: FloatArray
    ml_mm: FloatArray
    beta_mean: FloatArray
    beta_sd: FloatArray
    log_baseline_mean: FloatArray
    log_baseline_sd: FloatArray

    @property
    def n(self) -> int:
        """Number of units."""
        return int(self.hemisphere.shape[0])

    def with_loadings(self, beta: FloatArray, log_baseline: FloatArray) -> Units:
        """Return a copy with drifted loadings and baselines."""
        return replace(self, beta=beta, log_baseline=log_baseline)


def draw_units(c: MouseConfig, rng: np.random.Generator) -> Units:
    """Draw a population for one mouse (defaults: docs/simulator.md)."""
    n_h = c.units_per_hemisphere
    n = 2 * n_h
    hemi = np.repeat(np.array([0, 1], dtype=np.int8), n_h)
    n_fs = round(c.fs_fraction * n_h)
    is_fs = np.zeros(n, dtype=bool)
    for h in (0, 1):
        if n_fs:
            is_fs[h * n_h + rng.choice(n_h, size=n_fs, replace=False)] = True
    # contra bias: x > 0 is the lick-right state, contralateral to the left hemisphere
    beta_mean = np.where(hemi == 0, c.choice_loading_mean, -c.choice_loading_mean).astype(np.float64)
    beta_sd = np.full(n, c.choice_loading_sd)
    lb_mean = np.where(is_fs, math.log(c.fs_baseline_median_hz), math.log(c.baseline_median_hz))
    lb_sd = np.full(n, c.baseline_sigma_log)
    # FS units carry weak choice loadings (a third of the pyramidal spread)
    beta_sd[is_fs] /= 3.0
    beta_mean[is_fs] = 0.0
    beta = beta_mean + beta_sd * rng.standard_normal(n)
    log_b = lb_mean + lb_sd * rng.standard_normal(n)
    gamma = c.ramp_loading_mean + c.ramp_loading_sd * rng.standard_normal(n)
    stim = rng.random(n) < c.stim_fraction
    delta = np.where(stim & ~is_fs, c.stim_loading_sd * rng.standard_normal(n), 0.0)
    g_lo, g_hi = c.fs_light_gain
    fs_gain = np.where(is_fs, rng.uniform(g_lo, g_hi, n), 1.0)
    ap = ALM_AP_MM + rng.uniform(-ALM_HALF_WIDTH_MM, ALM_HALF_WIDTH_MM, n)
    ml = np.where(hemi == 0, -1.0, 1.0) * (ALM_ML_MM + rng.uniform(-ALM_HALF_WIDTH_MM,
                                                                    ALM_HALF_WIDTH_MM, n))
    return Units(hemi, is_fs, log_b, beta, gamma, delta, fs_gain, ap, ml, beta_mean, beta_sd,
                 lb_mean, lb_sd)


class RateModel:
    """λ_i(t) of the spiking layer for a batch of trials (live mouse: a batch of one).

    λ_i = b_i exp(β_i x_h / x_ref + γ_i r + δ_i y 1[sample] + g_h) × light_i × rebound_h, with
    g_h the trial's shared log-gain of hemisphere h, light_i = 1 − ε_i L(t − latency) for
    pyramidal units and 1 + (gain_i − 1) ε_i L(t) for FS units.
    """

    def __init__(self, c: MouseConfig, units: Units) -> None:
        self.units = units
        self.n_left = int(np.sum(units.hemisphere == 0))
        self._beta_l = units.beta[: self.n_left] / c.x_ref
        self._beta_r = units.beta[self.n_left:] / c.x_ref
        self._log_b = units.log_baseline
        self._gamma = units.gamma
        self._delta = units.delta
        self._has_stim = bool(np.any(units.delta != 0.0))
        self._is_fs = units.is_fs
        self._fs_excess = units.fs_light_gain - 1.0
        self._hemi = units.hemisphere.astype(np.intp)
        self._base = np.empty(units.n)
        self._mult = np.ones(units.n)

    def light_multiplier(self, eps_unit: FloatArray | None, level_delayed: FloatArray,
                         level_now: FloatArray, rebound: FloatArray) -> FloatArray | None:
        """Per-unit multiplier of the light and rebound, or None when it is 1 everywhere.

        Args:
            eps_unit: ε_i at full envelope (None: no light program).
            level_delayed: (2,) envelope per hemisphere at t − latency (pyramidal silencing).
            level_now: (2,) envelope per hemisphere now (FS excitation, ~1 ms onset).
            rebound: (2,) rebound gain per hemisphere.

        """
        lit = eps_unit is not None and (level_delayed.any() or level_now.any())
        if not lit and rebound[0] == 1.0 and rebound[1] == 1.0:
            return None
        m = self._mult
        if lit and eps_unit is not None:
            pyr = (1.0 - eps_unit * level_delayed[self._hemi]) * rebound[self._hemi]
            fs = 1.0 + self._fs_excess * eps_unit * level_now[self._hemi]
            np.copyto(m, np.where(self._is_fs, fs, pyr))
        else:
            np.copyto(m, np.where(self._is_fs, 1.0, rebound[self._hemi]))
        return m

    def rates(self, out: FloatArray, x_left: FloatArray, x_right: FloatArray, *, ramp: float,
              stim: FloatArray | None, log_gain: FloatArray | None,
              multiplier: FloatArray | None) -> FloatArray:
        """Write rates in Hz, shape (batch, n_units), into ``out`` and return it.

        Args:
            out: (batch, n_units) buffer.
            x_left: (batch,) left latent states.
            x_right: (batch,) right latent states.
            ramp: r(t), the non-selective ramp in [0, 1].
            stim: (batch,) instructed side ±1 during the sample epoch, None outside it.
            log_gain: (batch, 2) shared log-gain per trial and hemisphere, or None.
            multiplier: per-unit light/rebound multiplier from :meth:`light_multiplier`.

        """
        base = self._base
        np.multiply(self._gamma, ramp, out=base)
        base += self._log_b
        nl = self.n_left
        np.multiply(x_left[:, None], self._beta_l[None, :], out=out[:, :nl])
        np.multiply(x_right[:, None], self._beta_r[None, :], out=out[:, nl:])
        out += base
        if stim is not None and self._has_stim:
            out += stim[:, None] * self._delta[None, :]
        if log_gain is not None:
            out[:, :nl] += log_gain[:, 0:1]
            out[:, nl:] += log_gain[:, 1:2]
        np.exp(out, out=out)
        if multiplier is not None:
            out *= multiplier
        return out


class PoissonSampler:
    """Poisson counts per bin into a reused uint8 buffer, by inverse CDF on one uniform per unit.

    :meth:`set_means` (every model step) tabulates the cumulative probabilities of the expected
    counts; :meth:`draw` (every bin) costs one uniform per unit plus one comparison per level.
    Levels are added until the Poisson tail beyond them is below 1e-10 for the largest mean.
    """

    def __init__(self, n_units: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.counts = np.zeros(n_units, dtype=np.uint8)
        self._u = np.empty(n_units)
        self._b = np.empty(n_units, dtype=bool)
        self._cdf = np.ones((_MAX_LEVELS, n_units))
        self._p = np.empty(n_units)
        self._levels = 0
        self._means = np.zeros(n_units)
        self._direct = False

    def set_means(self, means: FloatArray) -> None:
        """Set the expected counts per bin of each unit (constant until the next call)."""
        mmax = float(means.max()) if means.size else 0.0
        if mmax > 8.0:  # far beyond 1-ms bins: draw directly
            self._direct = True
            np.copyto(self._means, means)
            return
        self._direct = False
        # levels needed for the largest mean
        p = math.exp(-mmax)
        cdf = p
        k = 0
        while 1.0 - cdf > _TAIL and k < _MAX_LEVELS - 1:
            k += 1
            p *= mmax / k
            cdf += p
        levels = k + 1
        P = self._p
        np.negative(means, out=P)
        np.exp(P, out=P)
        np.copyto(self._cdf[0], P)
        for j in range(1, levels):
            P *= means
            P /= j
            np.add(self._cdf[j - 1], P, out=self._cdf[j])
        self._levels = levels

    def draw(self) -> npt.NDArray[np.uint8]:
        """Draw the counts of one bin (the returned buffer is reused by the next call)."""
        if self._direct:
            np.copyto(self.counts, np.minimum(self.rng.poisson(self._means), 255), casting="unsafe")
            return self.counts
        u, b, c = self._u, self._b, self.counts
        self.rng.random(out=u)
        np.greater(u, self._cdf[0], out=b)
        np.copyto(c, b, casting="unsafe")
        for j in range(1, self._levels):
            np.greater(u, self._cdf[j], out=b)
            np.add(c, b, out=c, casting="unsafe")
        return c
