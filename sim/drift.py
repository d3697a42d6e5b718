"""Across-session drift of tuning (docs/simulator.md): sessions are days.

This module owns the Ornstein–Uhlenbeck drift of each unit's choice loading β_i and log-baseline
ln b_i around their population statistics, with ρ = exp(−Δ/τ_D) between days Δ apart, so that the
population statistics are the same every day while single units wander. The chain is stepped one
day at a time with a noise stream seeded by (mouse seed, day): day D of a mouse is reproducible,
and any two days are related by the exact OU transition (one-day steps compose exactly). The
latent dynamics are not drifted. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from sim.config import MouseConfig
from sim.population import Units, draw_units

FloatArray = npt.NDArray[np.float64]

_UNITS_STREAM = 1
_DRIFT_STREAM = 2


def ou_step(value: FloatArray, *, mean: FloatArray, sd: FloatArray, delta_days: float,
            tau_days: float, noise: FloatArray) -> FloatArray:
    """One OU transition over ``delta_days``: v' = m + ρ (v − m) + √(1 − ρ²) σ ξ."""
    rho = math.exp(-delta_days / tau_days)
    out: FloatArray = mean + rho * (value - mean) + math.sqrt(1.0 - rho * rho) * sd * noise
    return out


def units_for_day(config: MouseConfig, seed: int, day: int | None = None,
                  tau_drift_days: float | None = None) -> Units:
    """Return the units of mouse ``seed`` on ``day`` (default: config.day), drifted from day 0.

    Day 0 is drawn from the spiking layer's distributions; each later day applies one OU step of one day
    to β and ln b with a noise stream seeded by (seed, day).
    """
    d = config.day if day is None else day
    tau = config.tau_drift_days if tau_drift_days is None else tau_drift_days
    if d < 0:
        raise ValueError(f"day must be >= 0, got {d}")
    units = draw_units(config, np.random.default_rng(np.random.SeedSequence([seed, _UNITS_STREAM])))
    beta, log_b = units.beta, units.log_baseline
    for k in range(1, d + 1):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _DRIFT_STREAM, k]))
        xi = rng.standard_normal((2, units.n))
        beta = ou_step(beta, mean=units.beta_mean, sd=units.beta_sd, delta_days=1.0, tau_days=tau,
                       noise=xi[0])
        log_b = ou_step(log_b, mean=units.log_baseline_mean, sd=units.log_baseline_sd, delta_days=1.0,
                        tau_days=tau, noise=xi[1])
    return units.with_loadings(beta, log_b)
