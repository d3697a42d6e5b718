"""Behaviour readout (docs/simulator.md): from the two hemispheres' late-delay state to a lick.

This module owns the decision variable D = x̄_L + x̄_R + κ (a_L − a_R) + σ_D ξ (right if D > 0),
the 2 % lapse (a fair coin replaces the choice), and the first-lick reaction time (shifted
gamma: offset 73 ms, shape 1.25, scale 39.7 ms → tertile means 85/111/172 ms, Yang et al. 2022). Vectorised
over trials; the live mouse calls it with arrays of one. Pure: random draws are passed in.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from sim.config import MouseConfig

FloatArray = npt.NDArray[np.float64]


def decide(c: MouseConfig, *, xbar_left: FloatArray, xbar_right: FloatArray, active_left: FloatArray,
           active_right: FloatArray, noise: FloatArray, lapse_u: FloatArray,
           coin_u: FloatArray) -> npt.NDArray[np.int8]:
    """Choices (+1 right, −1 left) from the readout window of each trial.

    Args:
        c: mouse config (κ, σ_D, lapse).
        xbar_left: mean x_L over the last ``readout_window_s`` of the delay.
        xbar_right: mean x_R over the same window.
        active_left: a_L = 1 − mean ε_L over the same window.
        active_right: a_R = 1 − mean ε_R.
        noise: standard normal ξ per trial.
        lapse_u: uniforms in [0, 1) per trial deciding the lapse.
        coin_u: uniforms in [0, 1) per trial for the lapse's coin.

    """
    d = xbar_left + xbar_right + c.readout_kappa * (active_left - active_right) + c.readout_sigma * noise
    choice = np.where(d > 0.0, 1, -1).astype(np.int8)
    lapsed = lapse_u < c.lapse
    coin = np.where(coin_u < 0.5, 1, -1).astype(np.int8)
    return np.where(lapsed, coin, choice).astype(np.int8)


def reaction_time_s(c: MouseConfig, rng: np.random.Generator, n: int) -> FloatArray:
    """First-lick latencies after the go cue: offset + Gamma(shape, scale)."""
    return c.rt_offset_s + rng.gamma(c.rt_shape, c.rt_scale_s, n)
