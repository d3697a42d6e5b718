"""A tiny synthetic choice-coding population for unit tests and benchmarks (not the simulator).

Owns one function, :func:`make_trialset`: Poisson counts whose log-rate carries the upcoming
choice with a loading that ramps up through the trial (zero before the sample), a shared
per-trial latent strength, and a common ramp. It is deliberately simpler than ``sim/`` (no
latent dynamics, no photoinhibition): tests that need the real model use ``sim.offline``.
"""

from __future__ import annotations

import numpy as np

from decoders.base import LEFT, RIGHT, TrialSet


def make_trialset(n_trials: int = 200, units_per_hemisphere: int = 20, seed: int = 0, *,
                  bin_s: float = 0.1, t0_s: float = -3.5, t1_s: float = 0.0, gain: float = 0.5,
                  accuracy: float = 0.8, loadings: np.ndarray | None = None,
                  baseline_hz: float = 5.0) -> TrialSet:
    """Labelled synthetic trials (left-hemisphere units first).

    ``gain`` scales the choice loadings (log-rate units at the go cue); ``accuracy`` is the
    fraction of correct trials (choice = instructed). ``loadings`` (n_units,) overrides the
    random loadings (to model drift across days).
    """
    rng = np.random.default_rng(seed)
    n_units = 2 * units_per_hemisphere
    n_bins = round((t1_s - t0_s) / bin_s)
    t = t0_s + bin_s * (np.arange(n_bins) + 0.5)
    ramp = np.clip((t + 3.0) / 3.0, 0.0, 1.0)  # 0 before the sample, 1 at go
    instructed = rng.choice(np.array([-1, 1], dtype=np.int8), size=n_trials)
    correct = rng.random(n_trials) < accuracy
    choice = np.where(correct, instructed, -instructed).astype(np.int8)
    beta = rng.normal(0.0, 1.0, n_units) if loadings is None else np.asarray(loadings, dtype=float)
    base = np.log(baseline_hz) + rng.normal(0.0, 0.5, n_units)
    strength = 1.0 + 0.3 * rng.standard_normal(n_trials)  # trial-to-trial latent strength
    log_rate = (base[None, None, :] + 0.3 * ramp[None, :, None]
                + gain * beta[None, None, :] * (choice * strength)[:, None, None] * ramp[None, :, None])
    counts = rng.poisson(np.exp(log_rate) * bin_s).astype(np.uint8)
    hem = np.repeat(np.array([LEFT, RIGHT], dtype=np.int8), units_per_hemisphere)
    return TrialSet(counts, bin_s, t0_s, choice, instructed, correct, hem,
                    {"session": f"synthetic-{seed}", "seed": seed, "trials": list(range(n_trials))})
