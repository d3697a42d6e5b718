"""Rig light calibration and the safety limits derived from it (defaults: docs/safety.md).

This module owns the calibration file format (TOML, validated by pydantic): the galvo spots of each
hemisphere with their coordinates and the maximum time-averaged power measured at the brain surface
at each spot, and the service's safety caps. :func:`load_calibration` reads it;
:meth:`RigCalibration.limits` turns it into the :class:`SafetyLimits` the light interlock enforces.
It touches no device: reading a file is its only I/O.

Defaults (docs/safety.md): ≤ 10 mW time-averaged per spot, ≤ 1.3 s continuous light per trial,
≥ 100 ms linear ramp-down, photoinhibition on ≤ 30 % of trials, ≤ 1 J per hemisphere per 10 min.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

SERVICE_MAX_POWER_MW_PER_SPOT = 10.0  #: service cap (heating artefacts from 3–15 mW: Owen et al., Nat Neurosci 2019)
DEFAULT_CALIBRATION = Path(__file__).with_name("calibration_default.toml")


class SafetyLimits(BaseModel):
    """Hard limits the light interlock enforces, whatever a protocol, decoder or wire message asks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_power_mw_per_spot: Annotated[float, Field(gt=0, le=SERVICE_MAX_POWER_MW_PER_SPOT)] = 10.0
    max_continuous_s: Annotated[float, Field(gt=0, le=1.3)] = 1.3
    min_ramp_down_s: Annotated[float, Field(ge=0.1, le=1.0)] = 0.1
    max_fraction_perturbed: Annotated[float, Field(gt=0, le=0.3)] = 0.3
    #: perturbed trials allowed above ``max_fraction_perturbed × trials`` so that the first trials of
    #: a session can be perturbed at all (with 3, the fraction over n trials is ≤ f + 3/n).
    small_n_allowance: Annotated[int, Field(ge=0, le=10)] = 3
    energy_budget_j: Annotated[float, Field(gt=0, le=1.0)] = 1.0  #: per hemisphere per window
    energy_window_s: Annotated[float, Field(ge=60, le=3600)] = 600.0
    watchdog_s: Annotated[float, Field(gt=0, le=1.0)] = 0.25  #: service heartbeat silent → ALL_OFF
    max_freq_hz: Annotated[float, Field(gt=0, le=1000)] = 100.0
    n_spots_left: Annotated[int, Field(ge=0, le=8)] = 4
    n_spots_right: Annotated[int, Field(ge=0, le=8)] = 4
    #: per-spot cap from the calibration (measured maximum at the brain surface), left then right
    spot_max_power_mw_left: tuple[float, ...] = (10.0, 10.0, 10.0, 10.0)
    spot_max_power_mw_right: tuple[float, ...] = (10.0, 10.0, 10.0, 10.0)

    @model_validator(mode="after")
    def _spots_consistent(self) -> SafetyLimits:
        if len(self.spot_max_power_mw_left) != self.n_spots_left:
            raise ValueError(f"spot_max_power_mw_left has {len(self.spot_max_power_mw_left)} entries, "
                             f"n_spots_left is {self.n_spots_left}")
        if len(self.spot_max_power_mw_right) != self.n_spots_right:
            raise ValueError(f"spot_max_power_mw_right has {len(self.spot_max_power_mw_right)} entries, "
                             f"n_spots_right is {self.n_spots_right}")
        return self

    def spot_mask(self, hemisphere: str) -> int:
        """Bit mask of the calibrated spots of a hemisphere ("left"/"right")."""
        return (1 << (self.n_spots_left if hemisphere == "left" else self.n_spots_right)) - 1

    def power_cap_mw(self, spots_left: int, spots_right: int) -> float:
        """Largest allowed per-spot power for a spot set: service cap and every used spot's calibration."""
        cap = self.max_power_mw_per_spot
        for mask, caps in ((spots_left, self.spot_max_power_mw_left),
                           (spots_right, self.spot_max_power_mw_right)):
            for i, c in enumerate(caps):
                if mask >> i & 1:
                    cap = min(cap, c)
        return cap


class Spot(BaseModel):
    """One galvo spot: position (mm from bregma) and the maximum power measured at the brain surface."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ap_mm: Annotated[float, Field(ge=-6, le=6)]
    ml_mm: Annotated[float, Field(ge=-6, le=6)]
    max_power_mw: Annotated[float, Field(gt=0, le=50)]  #: measured at the brain surface, time-averaged


class RigCalibration(BaseModel):
    """The calibration file: spots per hemisphere (measured power at the brain surface) + caps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rig: str = "default"
    measured_on: str = ""
    wavelength_nm: Annotated[float, Field(ge=350, le=700)] = 594.0
    spots_left: list[Spot]
    spots_right: list[Spot]
    limits: SafetyLimits = SafetyLimits()

    @model_validator(mode="after")
    def _spot_counts(self) -> RigCalibration:
        for name, spots in (("spots_left", self.spots_left), ("spots_right", self.spots_right)):
            if len(spots) > 8:
                raise ValueError(f"{name}: at most 8 spots per hemisphere (8-bit mask), got {len(spots)}")
        return self

    def safety_limits(self) -> SafetyLimits:
        """Return the limits with the spots and per-spot caps of this calibration filled in."""
        d = self.limits.model_dump()
        d.update(n_spots_left=len(self.spots_left), n_spots_right=len(self.spots_right),
                 spot_max_power_mw_left=tuple(s.max_power_mw for s in self.spots_left),
                 spot_max_power_mw_right=tuple(s.max_power_mw for s in self.spots_right))
        return SafetyLimits(**d)


def load_calibration(path: str | Path | None = None) -> RigCalibration:
    """Read and validate a calibration TOML file (the shipped default if ``path`` is None)."""
    p = Path(path) if path is not None else DEFAULT_CALIBRATION
    with p.open("rb") as f:
        data = tomllib.load(f)
    return RigCalibration.model_validate(data)


def default_limits() -> SafetyLimits:
    """Return the safety limits of the shipped default calibration (docs/safety.md)."""
    return load_calibration().safety_limits()
