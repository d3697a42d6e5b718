"""Photoinhibition physiology of the simulated rig (docs/simulator.md "Light"; Li et al., eLife 2019).

This module owns what light does to ALM: the Hill dose–response ε(P), the Gaussian spatial
spread g(d) from the four galvo spots of each hemisphere, the envelope of a commanded light
program (plateau then linear ramp-down *inside* the commanded duration), the ~15 ms
pyramidal-silencing onset latency, FS-unit excitation and the post-offset rebound gain. It is
pure: times are arguments (seconds or rig-clock nanoseconds); it never reads a clock and never
touches a socket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sim.config import MouseConfig

FloatArray = npt.NDArray[np.float64]

SPOTS_PER_HEMISPHERE = 4  #: 4 spots per hemisphere (Chen et al., Cell 2021)
ALM_AP_MM = 2.5  #: ALM centre, 2.5 mm anterior to bregma (Mahrach et al. 2020)
ALM_ML_MM = 1.5  #: 1.5 mm lateral, each hemisphere (Mahrach et al. 2020)
ALM_HALF_WIDTH_MM = 0.5  #: units sit in a 1 × 1 mm square around the centre (a model choice)
#: Spot k of a hemisphere (bit k of the spot mask): a 2 × 2 grid 0.5 mm apart around the ALM
#: centre (a model choice); with σ_L = 0.88 mm four spots at 1.5 mW silence the whole square (ε ≈ 0.999) and
#: spill ≈ 0.01 into the other hemisphere's ALM.
SPOT_OFFSETS_MM = ((-0.25, -0.25), (-0.25, 0.25), (0.25, -0.25), (0.25, 0.25))  # (AP, |ML|)
_GRID = np.linspace(-ALM_HALF_WIDTH_MM, ALM_HALF_WIDTH_MM, 9)


def dose_response(power_mw: FloatArray | float, p50_mw: float, hill_n: float) -> FloatArray:
    """ε(P) = Pⁿ / (Pⁿ + P50ⁿ): fraction of pyramidal activity silenced (Hill fit to Li et al. 2019)."""
    p = np.maximum(np.asarray(power_mw, dtype=np.float64), 0.0)
    pn = p**hill_n
    return np.asarray(pn / (pn + p50_mw**hill_n), dtype=np.float64)


def spot_positions_mm(hemisphere: int, mask: int) -> list[tuple[float, float]]:
    """(AP, ML) of the lit spots of a hemisphere (0 left: ML < 0; 1 right: ML > 0)."""
    sign = -1.0 if hemisphere == 0 else 1.0
    return [(ALM_AP_MM + dap, sign * (ALM_ML_MM + dml))
            for k, (dap, dml) in enumerate(SPOT_OFFSETS_MM) if mask >> k & 1]


def effective_power_mw(ap_mm: FloatArray, ml_mm: FloatArray, *, power_mw: float, spots_left: int,
                       spots_right: int, sigma_mm: float) -> FloatArray:
    """Σ over lit spots of P · g(d) at each position (Gaussian light efficacy)."""
    out = np.zeros(np.shape(ap_mm), dtype=np.float64)
    for h, mask in ((0, spots_left), (1, spots_right)):
        for sap, sml in spot_positions_mm(h, mask):
            d2 = (ap_mm - sap) ** 2 + (ml_mm - sml) ** 2
            out += power_mw * np.exp(-d2 / (2.0 * sigma_mm**2))
    return out


@dataclass(frozen=True, slots=True)
class Efficacy:
    """What a light program at full envelope does: per hemisphere (latent) and per unit."""

    hemisphere: FloatArray  #: (2,) latent ε_h at envelope 1, capped at ε_max
    hemisphere_uncapped: FloatArray  #: (2,) mean ε over the hemisphere's ALM
    unit: FloatArray  #: (n_units,) ε(P g(d_i)) at envelope 1


def efficacy(c: MouseConfig, power_mw: float, *, spots_left: int, spots_right: int,
             unit_ap_mm: FloatArray, unit_ml_mm: FloatArray) -> Efficacy:
    """Silencing at full envelope for a power and spot masks (spatial spread included)."""
    hemi = np.zeros(2)
    ga, gm = np.meshgrid(_GRID, _GRID)
    for h in (0, 1):
        sign = -1.0 if h == 0 else 1.0
        ap = ALM_AP_MM + ga.ravel()
        ml = sign * (ALM_ML_MM + gm.ravel())
        pe = effective_power_mw(ap, ml, power_mw=power_mw, spots_left=spots_left,
                                spots_right=spots_right, sigma_mm=c.light_sigma_mm)
        hemi[h] = float(np.mean(dose_response(pe, c.p50_mw, c.hill_n)))
    pe_u = effective_power_mw(unit_ap_mm, unit_ml_mm, power_mw=power_mw, spots_left=spots_left,
                              spots_right=spots_right, sigma_mm=c.light_sigma_mm)
    return Efficacy(np.minimum(hemi, c.eps_max), hemi, dose_response(pe_u, c.p50_mw, c.hill_n))


def envelope(t_s: FloatArray | float, t_on_s: float, t_off_s: float, ramp_down_s: float) -> FloatArray:
    """Light envelope L(t): 0 before t_on, 1 until t_off − ramp, linear to 0 at t_off."""
    t = np.asarray(t_s, dtype=np.float64)
    ramp = max(min(ramp_down_s, t_off_s - t_on_s), 0.0)
    t_ramp = t_off_s - ramp
    down = np.clip((t_off_s - t) / ramp, 0.0, 1.0) if ramp > 0.0 else (t < t_off_s).astype(np.float64)
    return np.where(t < t_on_s, 0.0, np.where(t < t_ramp, 1.0, down))


def silencing_envelope(t_s: FloatArray | float, t_on_s: float, t_off_s: float, ramp_down_s: float,
                       latency_s: float) -> FloatArray:
    """Envelope seen by pyramidal silencing: L(t), but 0 until ``latency_s`` after light onset.

    The ~15 ms latency (Li et al. 2019) is an *onset* latency (FS excitation → pyramidal silencing); the
    offset follows the light, so the ramp-down and the end of the window keep the convention of docs/simulator.md.
    """
    t = np.asarray(t_s, dtype=np.float64)
    return np.where(t >= t_on_s + latency_s, envelope(t, t_on_s, t_off_s, ramp_down_s), 0.0)


def rebound_amplitude(c: MouseConfig, power_mw: float, on_s: float, eps_full: float) -> float:
    """ρ of the rebound gain 1 + ρ e^{−(t − t_off)/τ_r}, scaled with dose = power × duration (Li et al. 2019)."""
    dose_mj = max(power_mw, 0.0) * max(on_s, 0.0)
    return c.rebound_max * min(1.0, dose_mj / c.rebound_ref_dose_mj) * eps_full


def rebound_gain(t_since_off_s: float, rho: float, tau_s: float) -> float:
    """Rebound gain of pyramidal rates after light offset (1 before offset or without rebound)."""
    if rho <= 0.0 or t_since_off_s < 0.0:
        return 1.0
    return 1.0 + rho * math.exp(-t_since_off_s / tau_s)


@dataclass(slots=True)
class LightProgram:
    """The light a rig is currently producing, on the rig clock (nanoseconds).

    The envelope is 0 before ``t_on_ns``, 1 until ``t_ramp_ns``, then falls linearly from
    ``ramp_from`` to 0 at ``t_off_ns``. Power is the time-averaged set-point per spot (the 40-Hz
    sinusoid is not resolved by the latent model).
    """

    power_mw: float = 0.0
    spots_left: int = 0
    spots_right: int = 0
    t_on_ns: int = 0
    t_ramp_ns: int = 0
    t_off_ns: int = 0
    ramp_from: float = 1.0

    def level(self, t_ns: int) -> float:
        """Envelope value at rig time ``t_ns``."""
        if t_ns < self.t_on_ns or t_ns >= self.t_off_ns:
            return 0.0
        if t_ns < self.t_ramp_ns:
            return 1.0
        span = self.t_off_ns - self.t_ramp_ns
        return self.ramp_from * (self.t_off_ns - t_ns) / span if span > 0 else 0.0

    def silencing_level(self, t_ns: int, latency_ns: int) -> float:
        """Envelope seen by pyramidal silencing: 0 until ``latency_ns`` after onset."""
        return self.level(t_ns) if t_ns >= self.t_on_ns + latency_ns else 0.0

    def is_on(self, t_ns: int) -> bool:
        """Return True while the envelope is (or will become) non-zero at or after ``t_ns``."""
        return self.t_off_ns > t_ns and self.power_mw > 0.0

    def ramp_down(self, t_ns: int, ramp_ns: int) -> None:
        """Start a linear ramp from the current level to 0 over ``ramp_ns`` (at once if 0)."""
        lvl = self.level(t_ns)
        if t_ns < self.t_on_ns:  # not started yet: cancel
            self.t_off_ns = self.t_on_ns = self.t_ramp_ns = t_ns
            return
        self.ramp_from = lvl
        self.t_ramp_ns = t_ns
        self.t_off_ns = t_ns + max(ramp_ns, 0) if lvl > 0.0 else t_ns

    def off(self, t_ns: int) -> None:
        """Light off at once."""
        self.t_off_ns = min(self.t_off_ns, t_ns)
        self.t_ramp_ns = min(self.t_ramp_ns, t_ns)
        self.t_on_ns = min(self.t_on_ns, t_ns)
