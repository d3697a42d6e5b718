"""Parameters of one simulated mouse: task timing, bilateral ALM model, spiking layer, light, drift.

This module owns :class:`MouseConfig`, the single validated boundary of the simulator. Every
number has its unit in its name and its source in a comment (docs/simulator.md states them all). The
model code downstream trusts these values and never re-validates them. It must not import
sockets, clocks or anything of ``rig``: it is pure configuration.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RNN_DT_S = 0.025  #: step of the authors' RNN (sim/rnn.py DT_S; repeated here so config imports nothing)
LightCondition = Literal["none", "left", "right", "bilateral"]  #: which hemispheres a trial's light reached


class PlantedEffects(BaseModel):
    """Effects of known size planted into the simulator: the ground truth a power analysis must recover.

    Nothing here is physiology; it exists so that an analysis (``rigd protocol power``, docs/power.md)
    can be checked against an effect whose size is configured. Honoured by the vectorised offline model
    (:mod:`sim.offline`); the live :class:`sim.mouse.SimulatedMouse` does not implement them.

    * Per-condition behavioural effect: on a random fraction ``error_<condition>`` of the trials whose
      light reached that condition's hemispheres (``none`` = unlit trials) the choice is replaced by the
      wrong side (a forced error, drawn after every other random number of the trial). Its effect on the
      fraction correct p of that condition is −q·p.
    * State-dependent light efficacy (the state-triggered experiment, docs/protocols.md): ε of every lit
      hemisphere is multiplied by ``efficacy_weak`` on trials whose signed state — the mean latent of the
      ``state_read`` hemisphere over the ``state_window_s`` before light onset, times the instructed side
      (docs/simulator.md "Conventions") — is below ``state_threshold``, and by ``efficacy_strong`` otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_none: float = Field(default=0.0, ge=0.0, le=1.0)
    error_left: float = Field(default=0.0, ge=0.0, le=1.0)
    error_right: float = Field(default=0.0, ge=0.0, le=1.0)
    error_bilateral: float = Field(default=0.0, ge=0.0, le=1.0)
    efficacy_weak: float = Field(default=1.0, ge=0.0, le=1.0)
    efficacy_strong: float = Field(default=1.0, ge=0.0, le=1.0)
    state_read: Literal["left", "right"] = "right"
    state_window_s: float = Field(default=0.4, gt=0.0, le=2.0)
    state_threshold: float = Field(default=0.0, ge=-100.0, le=100.0)

    def error_rate(self, condition: LightCondition) -> float:
        """The forced-error fraction of trials in a light condition."""
        return float(getattr(self, f"error_{condition}"))

    @property
    def has_errors(self) -> bool:
        """Whether any condition has forced errors."""
        return any(self.error_rate(c) > 0.0 for c in ("none", "left", "right", "bilateral"))

    @property
    def state_dependent(self) -> bool:
        """Whether light efficacy depends on the state."""
        return self.efficacy_weak != 1.0 or self.efficacy_strong != 1.0


class MouseConfig(BaseModel):
    """One simulated mouse (and session day). Units are in the field names.

    Defaults reproduce the outcome table of docs/simulator.md (a μ = 0.6 mouse, ≈ 0.81 correct).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- bilateral ALM, reduced model (docs/simulator.md) -----------------------------------------
    #: "reduced": the latent model + Poisson layer of docs/simulator.md; "spiking": ALM activity and
    #: choice from the spiking bilateral network of sim/spiking_alm.py (docs/spiking.md); "rnn": the
    #: authors' trained two-hemisphere RNN (sim/rnn.py, docs/simulator-rnn.md) in place of
    #: the reduced latents, 25-ms steps (model_dt_s defaults to 0.025 for it)
    model: Literal["reduced", "spiking", "rnn"] = "reduced"
    backend: Literal["cpu", "lava"] = "cpu"  #: spiking model only: numba CPU or the Lava sidecar
    mu_left: float = Field(default=0.6, ge=0.0, le=1.0, description="modularity μ_L: w = μW, J = (1-μ)W")
    mu_right: float = Field(default=0.6, ge=0.0, le=1.0, description="modularity μ_R")
    callosotomy: bool = False  #: J_h = 0 (Li 2016 ED Fig. 10 callosotomy)
    sensory_gain_left: float = Field(default=1.0, ge=0.0, le=5.0)  #: s_L, asymmetry knob
    sensory_gain_right: float = Field(default=1.0, ge=0.0, le=5.0)  #: s_R
    tau_s: float = Field(default=0.10, gt=0.0, le=2.0)  #: τ, recovery t90 ≈ 0.2 s (simulated)
    recurrence_w: float = Field(default=1.6, gt=0.0, le=10.0)  #: W, bistable from early delay
    gain_g0: float = Field(default=0.5, ge=0.0, le=10.0)  #: G0 before sample onset
    gain_g1: float = Field(default=2.2, ge=0.0, le=10.0)  #: G1 at the go cue
    noise_sigma: float = Field(default=0.12, ge=0.0, le=5.0)  #: σ, private noise per hemisphere
    sensory_amp: float = Field(default=0.6, ge=0.0, le=10.0)  #: A_s
    sensory_noise_sigma: float = Field(default=1.1, ge=0.0, le=10.0)  #: σ_s, shared per trial
    eps_max: float = Field(default=0.9, ge=0.0, le=1.0)  #: cap of latent silencing (docs/simulator.md)
    #: model="rnn" only: weights file (.npz of sim/rnn.py); None = the shipped modular network
    rnn_weights: str | None = None

    # -- behaviour readout (docs/simulator.md) -----------------------------------------------------
    readout_kappa: float = Field(default=3.0, ge=0.0)  #: κ, non-selective output → contralateral licking
    readout_sigma: float = Field(default=0.8, ge=0.0)  #: σ_D
    readout_window_s: float = Field(default=0.3, gt=0.0, le=1.7)  #: last 300 ms of the delay
    lapse: float = Field(default=0.02, ge=0.0, le=1.0)  #: P(choice replaced by a fair coin)
    rt_offset_s: float = Field(default=0.073, ge=0.0, le=1.0)  #: shifted gamma, Yang et al. 2022 tertiles
    rt_shape: float = Field(default=1.25, gt=0.0)
    rt_scale_s: float = Field(default=0.0397, gt=0.0)
    early_lick_prob: float = Field(default=0.02, ge=0.0, le=1.0)  #: P(trial aborted by an early lick)
    ignore_prob: float = Field(default=0.0, ge=0.0, le=1.0)  #: P(no lick in the response window)

    # -- task timing (docs/simulator.md; Yang et al., Nat Neurosci 2022) ---------------------------
    presample_s: float = Field(default=0.5, ge=0.0, le=10.0)
    sample_s: float = Field(default=1.3, gt=0.0, le=10.0)
    delay_s: float = Field(default=1.7, gt=0.0, le=10.0)
    go_cue_s: float = Field(default=0.1, gt=0.0, le=1.0)
    response_window_s: float = Field(default=1.5, gt=0.0, le=10.0)
    reward_consumption_s: float = Field(default=1.0, ge=0.0, le=10.0)  #: after a hit, before trial end
    error_timeout_s: float = Field(default=2.0, ge=0.0, le=10.0)  #: 2–6 s in Yang et al. 2022; short default
    early_lick_alarm_s: float = Field(default=0.05, ge=0.0, le=1.0)
    early_lick_timeout_s: tuple[float, float] = (1.0, 1.2)
    iti_s: tuple[float, float] = (3.0, 5.0)  #: uniform range (not reported; a design default)

    # -- spiking layer (docs/simulator.md) ---------------------------------------------------------
    units_per_hemisphere: int = Field(default=40, ge=1, le=20_000)
    fs_fraction: float = Field(default=0.08, ge=0.0, le=0.5)  #: fast-spiking units, light-excited
    stim_fraction: float = Field(default=0.15, ge=0.0, le=1.0)  #: stimulus-coding minority (δ ≠ 0)
    baseline_median_hz: float = Field(default=5.0, gt=0.0, le=200.0)
    baseline_sigma_log: float = Field(default=0.8, ge=0.0, le=3.0)
    fs_baseline_median_hz: float = Field(default=15.0, gt=0.0, le=200.0)
    choice_loading_mean: float = Field(default=0.12, ge=-2.0, le=2.0)  #: contra bias of β
    choice_loading_sd: float = Field(default=0.35, ge=0.0, le=3.0)
    ramp_loading_mean: float = Field(default=0.15)
    ramp_loading_sd: float = Field(default=0.3, ge=0.0)
    stim_loading_sd: float = Field(default=0.4, ge=0.0)
    x_ref: float = Field(default=2.5, gt=0.0)
    shared_gain_sd: float = Field(default=0.1, ge=0.0, le=2.0)  #: per trial, per hemisphere log-gain
    fs_light_gain: tuple[float, float] = (2.0, 4.0)  #: FS rate × (2–4) in light

    # -- photoinhibition physiology (docs/simulator.md "Light"; Li et al., eLife 2019) ----------
    p50_mw: float = Field(default=0.3, gt=0.0)  #: Hill fit: ε(P) = P^n/(P^n + P50^n)
    hill_n: float = Field(default=2.71, gt=0.0)
    light_sigma_mm: float = Field(default=0.88, gt=0.0)  #: g(d) = exp(-d²/2σ²)
    silencing_latency_s: float = Field(default=0.015, ge=0.0, le=0.2)  #: pyramidal silencing onset
    rebound_max: float = Field(default=0.5, ge=0.0, le=2.0)  #: ρ at or above the reference dose
    rebound_ref_dose_mj: float = Field(default=7.0, gt=0.0)  #: 7 mW × 1 s (Li et al., eLife 2019, Fig. 12)
    rebound_tau_s: float = Field(default=0.2, gt=0.0)
    max_power_mw: float = Field(default=10.0, gt=0.0)  #: the rig refuses (INVALID) above this
    max_light_s: float = Field(default=1.3, gt=0.0)  #: the rig refuses longer commands (ramp included)
    watchdog_s: float = Field(default=0.5, gt=0.0)  #: no rigd heartbeat for this long → light off

    # -- time grid -----------------------------------------------------------------------------
    bin_s: float = Field(default=0.001, gt=0.0, le=1.0)  #: live spike-count bin
    model_dt_s: float = Field(default=0.005, gt=0.0, le=0.1)  #: Euler step of the latent model

    # -- drift across sessions (docs/simulator.md) -------------------------------------------------
    day: int = Field(default=0, ge=0, le=10_000)
    tau_drift_days: float = Field(default=11.0, gt=0.0)

    seed: int = Field(default=0, ge=0)

    #: effects of known size for checking analyses (docs/power.md); None: none planted (the model alone)
    planted: PlantedEffects | None = None

    @field_validator("early_lick_timeout_s", "iti_s", "fs_light_gain")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0.0 <= lo <= hi) or not math.isfinite(hi):
            raise ValueError(f"expected a range (low, high) with 0 <= low <= high, got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _rnn_step(cls, data: Any) -> Any:
        """model="rnn" steps every 25 ms (docs/simulator-rnn.md): the default model_dt_s for it."""
        if isinstance(data, dict) and data.get("model") == "rnn" and "model_dt_s" not in data:
            return {**data, "model_dt_s": RNN_DT_S}
        return data

    @model_validator(mode="after")
    def _grid(self) -> MouseConfig:
        ratio = self.model_dt_s / self.bin_s
        if self.bin_s > self.model_dt_s or abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(
                f"model_dt_s ({self.model_dt_s}) must be a whole multiple of bin_s ({self.bin_s}); "
                f"e.g. bin_s=0.001 with model_dt_s=0.005")
        if self.iti_s[0] < 0.2:
            raise ValueError(f"iti_s low end must be >= 0.2 s, got {self.iti_s}")
        return self

    @model_validator(mode="after")
    def _rnn(self) -> MouseConfig:
        if self.model == "rnn":
            # the network was trained on the authors' clock: 25-ms steps, 1.3-s sample, 1.7-s delay,
            # and it starts 0.1 s before the sample
            if abs(self.model_dt_s - RNN_DT_S) > 1e-9:
                raise ValueError(f"model='rnn' steps the network every 25 ms: model_dt_s must be "
                                 f"{RNN_DT_S}, got {self.model_dt_s}")
            if abs(self.sample_s - 1.3) > 1e-9 or abs(self.delay_s - 1.7) > 1e-9:
                raise ValueError(f"model='rnn': the network was trained with a 1.3-s sample and a 1.7-s delay, "
                                 f"got sample_s={self.sample_s}, delay_s={self.delay_s}")
            if self.presample_s < 0.1 - 1e-9:
                raise ValueError(f"model='rnn': the network starts 0.1 s before the sample; presample_s must "
                                 f"be >= 0.1, got {self.presample_s}")
        elif self.rnn_weights is not None:
            raise ValueError(f"rnn_weights is only used with model='rnn' (model={self.model!r})")
        return self

    @model_validator(mode="after")
    def _spiking(self) -> MouseConfig:
        if self.model == "spiking":
            if abs(self.bin_s - 0.001) > 1e-9:
                raise ValueError(f"model='spiking' steps its network per 1-ms bin: bin_s must be 0.001, "
                                 f"got {self.bin_s}")
            n = self.units_per_hemisphere
            if n < 4 or n % 2:
                raise ValueError(f"model='spiking' splits each hemisphere into two choice pools: "
                                 f"units_per_hemisphere must be even and >= 4, got {n}")
        return self

    # -- derived quantities ----------------------------------------------------------------------

    @property
    def bins_per_step(self) -> int:
        """Spike-count bins per latent-model step."""
        return round(self.model_dt_s / self.bin_s)

    @property
    def trial_t0_s(self) -> float:
        """Start of the latent trial clock relative to the go cue (−3.5 s for the 1.7-s delay)."""
        return -(self.presample_s + self.sample_s + self.delay_s)

    @property
    def t_sample_s(self) -> float:
        """Sample onset relative to the go cue."""
        return -(self.sample_s + self.delay_s)

    @property
    def t_delay_s(self) -> float:
        """Delay onset relative to the go cue."""
        return -self.delay_s

    @classmethod
    def from_json_file(cls, path: str | Path, **overrides: Any) -> MouseConfig:
        """Load a config from a JSON file; ``overrides`` (not None) win over the file."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of MouseConfig fields")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
