"""The reduced bilateral ALM model (docs/simulator.md): two coupled double-well hemispheres.

This module owns the latent state x_L, x_R (x > 0 ≙ lick-right state), the ramping gain G(t), the
sample-epoch sensory drive and the Euler–Maruyama step (docs/simulator.md "Conventions"). Everything is
vectorised over a batch of trials: the offline generator steps thousands of trials at once and the live
mouse steps a batch of one, through the same :func:`step`. Time is an argument (seconds from the go
cue); there is no clock, socket or random-number policy here beyond the noise arrays handed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sim.config import MouseConfig

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ALMParams:
    """Numbers the step needs, derived once from a :class:`MouseConfig`."""

    dt_s: float
    tau_s: float
    w_left: float  #: within-hemisphere recurrence μ_L W
    w_right: float
    j_left: float  #: callosal input to the left hemisphere (1 − μ_L) W, 0 after callosotomy
    j_right: float
    gain_g0: float
    gain_g1: float
    noise_scale: float  #: σ √(2 dt / τ)
    sensory_amp: float
    sensory_gain_left: float
    sensory_gain_right: float
    t_sample_s: float  #: sample onset, from the go cue
    t_delay_s: float  #: delay onset, from the go cue

    @classmethod
    def from_config(cls, c: MouseConfig) -> ALMParams:
        """Derive the step parameters of the reduced model from a mouse config."""
        W = c.recurrence_w
        return cls(
            dt_s=c.model_dt_s, tau_s=c.tau_s,
            w_left=c.mu_left * W, w_right=c.mu_right * W,
            j_left=0.0 if c.callosotomy else (1.0 - c.mu_left) * W,
            j_right=0.0 if c.callosotomy else (1.0 - c.mu_right) * W,
            gain_g0=c.gain_g0, gain_g1=c.gain_g1,
            noise_scale=c.noise_sigma * float(np.sqrt(2.0 * c.model_dt_s / c.tau_s)),
            sensory_amp=c.sensory_amp,
            sensory_gain_left=c.sensory_gain_left, sensory_gain_right=c.sensory_gain_right,
            t_sample_s=c.t_sample_s, t_delay_s=c.t_delay_s)


def ramp_gain(p: ALMParams, t_s: float) -> float:
    """G(t): G0 before sample onset, then linear to G1 at the go cue, G1 after it."""
    if t_s < p.t_sample_s:
        return p.gain_g0
    if t_s >= 0.0:
        return p.gain_g1
    frac = (t_s - p.t_sample_s) / (0.0 - p.t_sample_s)
    return p.gain_g0 + (p.gain_g1 - p.gain_g0) * frac


def ramp_mode(p: ALMParams, t_s: float) -> float:
    """r(t) of the spiking layer: the non-selective ramp, 0 at sample onset to 1 at the go cue, 1 after."""
    if t_s < p.t_sample_s:
        return 0.0
    if t_s >= 0.0:
        return 1.0
    return (t_s - p.t_sample_s) / (0.0 - p.t_sample_s)


def in_sample(p: ALMParams, t_s: float) -> bool:
    """Return True during the sample epoch."""
    return p.t_sample_s <= t_s < p.t_delay_s


def step(
    p: ALMParams,
    x_left: FloatArray,
    x_right: FloatArray,
    t_s: float,
    *,
    evidence: FloatArray,
    eps_left: FloatArray | float,
    eps_right: FloatArray | float,
    noise_left: FloatArray,
    noise_right: FloatArray,
) -> None:
    """Advance every trial of the batch by one Euler–Maruyama step of dt, in place (docs/simulator.md).

    Args:
        p: model parameters.
        x_left: left latent state (batch,), updated in place.
        x_right: right latent state (batch,), updated in place.
        t_s: time at the start of the step, seconds from the go cue.
        evidence: per-trial y + η (instructed side ±1 plus the shared sensory noise); it drives
            the hemispheres only during the sample epoch, as u = A_s (y + η).
        eps_left: silencing ε_L at this step (after the onset latency).
        eps_right: silencing ε_R at this step.
        noise_left: standard-normal draws (batch,) for the left hemisphere.
        noise_right: standard-normal draws (batch,) for the right hemisphere.

    """
    G = ramp_gain(p, t_s)
    a = p.dt_s / p.tau_s
    if in_sample(p, t_s):
        u = p.sensory_amp * evidence
        drive_l = np.tanh(p.w_left * x_left + p.j_left * x_right + p.sensory_gain_left * u)
        drive_r = np.tanh(p.w_right * x_right + p.j_right * x_left + p.sensory_gain_right * u)
    else:
        drive_l = np.tanh(p.w_left * x_left + p.j_left * x_right)
        drive_r = np.tanh(p.w_right * x_right + p.j_right * x_left)
    drive_l *= G * (1.0 - np.asarray(eps_left))
    drive_r *= G * (1.0 - np.asarray(eps_right))
    x_left += a * (drive_l - x_left) + p.noise_scale * noise_left
    x_right += a * (drive_r - x_right) + p.noise_scale * noise_right
