"""Offline generation: whole batches of trials at once, through the live mouse's model code.

This module owns the vectorised trial loop: it steps the reduced latent model (:func:`sim.alm.step`)
— or, for ``MouseConfig(model="rnn")``, the authors' two-hemisphere RNN (:func:`sim.rnn.step`, the
latents being its readout logits) — for a batch of trials, applies light through :mod:`sim.light`
with the same onset latency, reads out choices with :func:`sim.behaviour.decide`, and (for
:func:`generate_trialset`, reduced model only) turns rates from :class:`sim.population.RateModel`
into Poisson counts. The live :class:`sim.mouse.SimulatedMouse` runs the same functions with a
batch of one, so offline statistics are live statistics. Trials here are complete trials
(early-lick trials are excluded from analyses anyway). No clock and no I/O
beyond loading the RNN's shipped weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from decoders.base import LEFT, RIGHT, TrialSet
from sim import alm, behaviour, light, rnn
from sim.config import LightCondition, MouseConfig, PlantedEffects
from sim.drift import units_for_day
from sim.population import RateModel, Units

FloatArray = npt.NDArray[np.float64]
Condition = Literal["control", "left", "right", "bilateral"]
CONDITIONS: tuple[Condition, ...] = ("control", "left", "right", "bilateral")

_TRIAL_STREAM = 11
_SPIKE_STREAM = 12


@dataclass(frozen=True, slots=True)
class LightWindow:
    """Photoinhibition of one condition, times from the go cue.

    ``t_off_s`` is the end of the light *including* the linear ramp-down (docs/simulator.md: for
    −1.7…−0.9 s, L = 1 to −1.0 s, then 0 at −0.9 s).
    """

    hemisphere: Literal["left", "right", "bilateral"]
    t_on_s: float = -1.7
    t_off_s: float = -0.9
    ramp_down_s: float = 0.1
    power_mw: float = 1.5
    spots: int = 0b1111  #: mask of lit spots in each lit hemisphere

    @property
    def spots_left(self) -> int:
        """Spot mask of the left hemisphere."""
        return self.spots if self.hemisphere in ("left", "bilateral") else 0

    @property
    def spots_right(self) -> int:
        """Spot mask of the right hemisphere."""
        return self.spots if self.hemisphere in ("right", "bilateral") else 0


def light_for(condition: Condition, t_on_s: float = -1.7, t_off_s: float = -0.9,
              ramp_down_s: float = 0.1, power_mw: float = 1.5) -> LightWindow | None:
    """Return the light of a condition ("control" → None)."""
    if condition == "control":
        return None
    return LightWindow(condition, t_on_s, t_off_s, ramp_down_s, power_mw)


@dataclass
class LatentRun:
    """Latent trajectories and behaviour of a batch of trials.

    Attributes:
        t_s: (n_steps,) time at the end of each model step, from the go cue.
        x_left, x_right: (n_trials, n_steps) float32 latent states, or empty when not kept.
        eps_left, eps_right: (n_steps,) silencing ε_h applied in each step (after the latency).
        instructed, choice: (n_trials,) ±1.
        correct: choice == instructed.
        reaction_time_s: (n_trials,) first-lick latency.
        xbar_left, xbar_right: readout-window means (docs/simulator.md).

    """

    t_s: FloatArray
    x_left: npt.NDArray[np.float32]
    x_right: npt.NDArray[np.float32]
    eps_left: FloatArray
    eps_right: FloatArray
    instructed: npt.NDArray[np.int8]
    choice: npt.NDArray[np.int8]
    correct: npt.NDArray[np.bool_]
    reaction_time_s: FloatArray
    xbar_left: FloatArray
    xbar_right: FloatArray
    config: MouseConfig
    light: LightWindow | None

    @property
    def accuracy(self) -> float:
        """Fraction correct over all trials."""
        return float(np.mean(self.correct))


def _unit_positions(units: Units | None) -> tuple[FloatArray, FloatArray]:
    if units is None:
        return np.zeros(0), np.zeros(0)
    return units.ap_mm, units.ml_mm


def _condition_of(light_w: LightWindow | None) -> LightCondition:
    """The light condition (which hemispheres were lit) of a window."""
    return "none" if light_w is None else light_w.hemisphere


def _state_gain(plant: PlantedEffects, state_sum: FloatArray, n_steps: int,
                y: npt.NDArray[np.int8]) -> FloatArray:
    """The planted per-trial efficacy multiplier from the read hemisphere's summed latent before onset."""
    signed = (state_sum / max(n_steps, 1)) * y.astype(np.float64)
    return np.where(signed < plant.state_threshold, plant.efficacy_weak, plant.efficacy_strong)


def _force_errors(plant: PlantedEffects | None, choice: npt.NDArray[np.int8], y: npt.NDArray[np.int8],
                  condition: Sequence[LightCondition], rng: np.random.Generator) -> npt.NDArray[np.int8]:
    """Planted forced errors: a fraction q(condition) of trials chooses the wrong side (drawn last)."""
    if plant is None or not plant.has_errors:
        return choice
    q = np.array([plant.error_rate(c) for c in condition], dtype=np.float64)
    forced = rng.random(choice.size) < q
    return np.where(forced, -y, choice).astype(np.int8)


def _read_window_steps(c: MouseConfig, plant: PlantedEffects, t_end_k: FloatArray,
                       light_w: LightWindow) -> tuple[npt.NDArray[np.bool_], int]:
    """Steps whose end lies in the plant's read window (onset − window, onset], and the first step after it."""
    on = light_w.t_on_s
    read = (t_end_k > on - plant.state_window_s + 1e-9) & (t_end_k <= on + 1e-9)
    after = np.flatnonzero(t_end_k > on + 1e-9)
    return read, int(after[0]) if after.size else t_end_k.size


def _simulate(c: MouseConfig, n: int, rng: np.random.Generator, *, light_w: LightWindow | None,
              instructed: npt.NDArray[np.int8] | None, keep: bool, units: Units | None,
              spike_rng: np.random.Generator | None, bin_s: float, t_start_s: float,
              t_end_s: float) -> tuple[LatentRun, npt.NDArray[np.uint16] | None]:
    p = alm.ALMParams.from_config(c)
    dt = c.model_dt_s
    t0 = c.trial_t0_s
    n_go = round(-t0 / dt)  # steps from trial start to the go cue
    n_steps = max(n_go, round((t_end_s - t0) / dt))
    n_ro = round(c.readout_window_s / dt)
    lat = c.silencing_latency_s

    y = (instructed if instructed is not None
         else np.where(rng.random(n) < 0.5, 1, -1)).astype(np.int8)
    evidence = y + c.sensory_noise_sigma * rng.standard_normal(n)

    # light: per-step ε of each hemisphere (latent) and per-unit efficacy (spiking layer)
    ap, ml = _unit_positions(units)
    t_start_k: FloatArray = t0 + dt * np.arange(n_steps, dtype=np.float64)
    eps = np.zeros((2, n_steps))
    lvl_now = np.zeros((2, n_steps))
    lvl_del = np.zeros((2, n_steps))
    eff: light.Efficacy | None = None
    rho = np.zeros(2)
    if light_w is not None:
        eff = light.efficacy(c, light_w.power_mw, spots_left=light_w.spots_left,
                             spots_right=light_w.spots_right, unit_ap_mm=ap, unit_ml_mm=ml)
        env_now = light.envelope(t_start_k, light_w.t_on_s, light_w.t_off_s, light_w.ramp_down_s)
        env_del = light.silencing_envelope(t_start_k, light_w.t_on_s, light_w.t_off_s,
                                           light_w.ramp_down_s, lat)
        lit = np.array([light_w.spots_left > 0 or eff.hemisphere[0] > 0,
                        light_w.spots_right > 0 or eff.hemisphere[1] > 0])
        on_s = (light_w.t_off_s - light_w.t_on_s) - 0.5 * light_w.ramp_down_s
        for h in (0, 1):
            if lit[h]:
                eps[h] = eff.hemisphere[h] * env_del
                lvl_now[h] = env_now
                lvl_del[h] = env_del
                rho[h] = light.rebound_amplitude(c, light_w.power_mw, on_s,
                                                 float(eff.hemisphere_uncapped[h]))

    plant = c.planted
    state_plant = plant is not None and plant.state_dependent and light_w is not None
    read_steps = np.zeros(n_steps, dtype=bool)
    k_gain = n_steps
    state_sum = np.zeros(n)
    gain: FloatArray | None = None
    if state_plant:
        assert plant is not None and light_w is not None
        read_steps, k_gain = _read_window_steps(c, plant, t_start_k + dt, light_w)

    x_l = np.zeros(n)
    x_r = np.zeros(n)
    xs_l = np.zeros((n, n_steps), dtype=np.float32) if keep else np.zeros((0, 0), np.float32)
    xs_r = np.zeros((n, n_steps), dtype=np.float32) if keep else np.zeros((0, 0), np.float32)
    acc_l = np.zeros(n)
    acc_r = np.zeros(n)

    # spiking layer
    counts: npt.NDArray[np.uint16] | None = None
    rates_model: RateModel | None = None
    steps_per_bin = round(bin_s / dt)
    k_first = round((t_start_s - t0) / dt)
    if units is not None:
        rates_model = RateModel(c, units)
        n_bins = (n_steps - k_first) // steps_per_bin
        counts = np.zeros((n, n_bins, units.n), dtype=np.uint16)
        buf = np.empty((n, units.n))
        expected = np.zeros((n, units.n))
        sd = c.shared_gain_sd
        log_gain = (sd * rng.standard_normal((n, 2)) - 0.5 * sd * sd) if sd > 0 else None
        stim_y = y.astype(np.float64)

    for k in range(n_steps):
        t = float(t_start_k[k])
        noise = rng.standard_normal((2, n))
        eps_l: FloatArray | float = eps[0, k]
        eps_r: FloatArray | float = eps[1, k]
        if state_plant and k >= k_gain:
            if gain is None:
                assert plant is not None
                gain = _state_gain(plant, state_sum, int(read_steps.sum()), y)
            eps_l, eps_r = eps[0, k] * gain, eps[1, k] * gain
        alm.step(p, x_l, x_r, t, evidence=evidence, eps_left=eps_l, eps_right=eps_r,
                 noise_left=noise[0], noise_right=noise[1])
        if read_steps[k]:
            assert plant is not None
            state_sum += x_l if plant.state_read == "left" else x_r
        if keep:
            xs_l[:, k] = x_l
            xs_r[:, k] = x_r
        if n_go - n_ro <= k < n_go:
            acc_l += x_l
            acc_r += x_r
        if rates_model is not None and counts is not None and k >= k_first:
            reb = np.array([light.rebound_gain(t - light_w.t_off_s, float(rho[h]),
                                               c.rebound_tau_s) if light_w is not None else 1.0
                            for h in (0, 1)])
            mult = rates_model.light_multiplier(None if eff is None else eff.unit, lvl_del[:, k],
                                                lvl_now[:, k], reb)
            rates_model.rates(buf, x_l, x_r, ramp=alm.ramp_mode(p, t),
                              stim=stim_y if alm.in_sample(p, t) else None, log_gain=log_gain,
                              multiplier=mult)
            expected += buf * dt
            b, r = divmod(k - k_first + 1, steps_per_bin)
            if r == 0 and b - 1 < counts.shape[1]:
                assert spike_rng is not None
                counts[:, b - 1, :] = np.minimum(spike_rng.poisson(expected), 65535)
                expected[:] = 0.0

    xbar_l = acc_l / n_ro
    xbar_r = acc_r / n_ro
    a_l = 1.0 - float(np.mean(eps[0, n_go - n_ro:n_go]))
    a_r = 1.0 - float(np.mean(eps[1, n_go - n_ro:n_go]))
    act_l = np.full(n, a_l) if gain is None else 1.0 - (1.0 - a_l) * gain
    act_r = np.full(n, a_r) if gain is None else 1.0 - (1.0 - a_r) * gain
    choice = behaviour.decide(c, xbar_left=xbar_l, xbar_right=xbar_r, active_left=act_l, active_right=act_r,
                              noise=rng.standard_normal(n), lapse_u=rng.random(n), coin_u=rng.random(n))
    rt = behaviour.reaction_time_s(c, rng, n)
    choice = _force_errors(plant, choice, y, [_condition_of(light_w)] * n, rng)
    run = LatentRun(t_s=t_start_k + dt, x_left=xs_l, x_right=xs_r, eps_left=eps[0], eps_right=eps[1],
                    instructed=y, choice=choice, correct=choice == y, reaction_time_s=rt,
                    xbar_left=xbar_l, xbar_right=xbar_r, config=c, light=light_w)
    return run, counts


def _rnn_eps(c: MouseConfig, light_w: LightWindow | None, t_s: FloatArray) -> FloatArray:
    """(2, n_steps) silencing of each RNN hemisphere at the times of the states ``t_s``.

    ε_h(t) = ε(P) of the hemisphere (dose-response and spatial spread of :func:`sim.light.efficacy`,
    *not* capped at ``eps_max``, the reduced model's cap: ε = 1 is the authors' h = 0) times the silencing
    envelope (onset latency, ramp-down inside the window) at t.
    """
    eps = np.zeros((2, t_s.size))
    if light_w is None:
        return eps
    eff = light.efficacy(c, light_w.power_mw, spots_left=light_w.spots_left, spots_right=light_w.spots_right,
                         unit_ap_mm=np.zeros(0), unit_ml_mm=np.zeros(0))
    env = light.silencing_envelope(t_s, light_w.t_on_s, light_w.t_off_s, light_w.ramp_down_s,
                                   c.silencing_latency_s)
    for h in (0, 1):
        eps[h] = min(float(eff.hemisphere_uncapped[h]), 1.0) * env
    return eps


def _simulate_rnn(c: MouseConfig, n: int, rng: np.random.Generator, *, light_w: LightWindow | None,
                  instructed: npt.NDArray[np.int8] | None, keep: bool) -> LatentRun:
    """The authors' RNN for a batch of trials: states at t_k = −3.1 … 0 s, latents = readout logits.

    Per step: the stimulus (sample steps only: N(y · μ_x, σ_x²), the recipe's numbers), the two
    hemispheres' input noise, the recurrent noise; then light (h_h ← (1 − ε_h) h_h). Behaviour is
    the readout of docs/simulator.md on the logits: x̄_h = mean z_h over the states in the last
    ``readout_window_s`` before the go cue (12 states, t_k ∈ (−0.3, 0]).
    """
    if c.planted is not None and c.planted.state_dependent:
        raise ValueError("a planted state-dependent light efficacy is implemented for the reduced model only "
                         "(model='reduced'); the RNN takes planted forced errors")
    w = rnn.load_weights(c.rnn_weights)
    mu_x, sd_x, s_in, s_rec = rnn.stimulus_params(w)
    t_s = rnn.STEP_T_S
    n_steps = t_s.size
    n_ro = round(c.readout_window_s / c.model_dt_s)
    y = (instructed if instructed is not None
         else np.where(rng.random(n) < 0.5, 1, -1)).astype(np.int8)
    mean_x = mu_x * y.astype(np.float64)
    eps = _rnn_eps(c, light_w, t_s)
    h = np.zeros((n, rnn.N_NEURONS))
    zs_l = np.zeros((n, n_steps), dtype=np.float32) if keep else np.zeros((0, 0), np.float32)
    zs_r = np.zeros((n, n_steps), dtype=np.float32) if keep else np.zeros((0, 0), np.float32)
    acc_l = np.zeros(n)
    acc_r = np.zeros(n)
    for k in range(n_steps):
        x = mean_x + sd_x * rng.standard_normal(n) if rnn.SAMPLE_STEPS[k] else 0.0
        nin = rng.standard_normal((2, n))
        nrec = rng.standard_normal((n, rnn.N_NEURONS))
        rnn.step(w, h, x=x, in_noise_left=nin[0], in_noise_right=nin[1], rec_noise=nrec,
                 gain_left=c.sensory_gain_left, gain_right=c.sensory_gain_right,
                 eps_left=float(eps[0, k]), eps_right=float(eps[1, k]), sigma_in=s_in, sigma_rec=s_rec)
        z_l, z_r = rnn.readout(w, h)
        if keep:
            zs_l[:, k] = z_l
            zs_r[:, k] = z_r
        if k >= n_steps - n_ro:
            acc_l += z_l
            acc_r += z_r
    xbar_l = acc_l / n_ro
    xbar_r = acc_r / n_ro
    a_l = 1.0 - float(np.mean(eps[0, n_steps - n_ro:]))
    a_r = 1.0 - float(np.mean(eps[1, n_steps - n_ro:]))
    choice = behaviour.decide(c, xbar_left=xbar_l, xbar_right=xbar_r, active_left=np.full(n, a_l),
                              active_right=np.full(n, a_r), noise=rng.standard_normal(n),
                              lapse_u=rng.random(n), coin_u=rng.random(n))
    rt = behaviour.reaction_time_s(c, rng, n)
    choice = _force_errors(c.planted, choice, y, [_condition_of(light_w)] * n, rng)
    return LatentRun(t_s=t_s.copy(), x_left=zs_l, x_right=zs_r, eps_left=eps[0], eps_right=eps[1],
                     instructed=y, choice=choice, correct=choice == y, reaction_time_s=rt,
                     xbar_left=xbar_l, xbar_right=xbar_r, config=c, light=light_w)


def run_latent(n_trials: int, seed: int, *, config: MouseConfig | None = None,
               light: LightWindow | None = None, instructed: npt.NDArray[np.int8] | None = None,
               keep_trajectories: bool = True) -> LatentRun:
    """Run the latent model and readout for ``n_trials`` trials of one condition (to the go cue).

    Instructed sides are drawn 50/50 unless given. All trials share the light window. With
    ``config.model == "rnn"`` the authors' RNN runs instead of the reduced latents (25-ms states from
    −3.1 s; ``x_left``/``x_right`` are the hemispheres' readout logits).
    """
    c = config or MouseConfig()
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TRIAL_STREAM]))
    if c.model == "rnn":
        return _simulate_rnn(c, n_trials, rng, light_w=light, instructed=instructed, keep=keep_trajectories)
    run, _ = _simulate(c, n_trials, rng, light_w=light, instructed=instructed, keep=keep_trajectories,
                       units=None, spike_rng=None, bin_s=c.model_dt_s, t_start_s=c.trial_t0_s,
                       t_end_s=0.0)
    return run


def run_conditions(n_per_condition: int, seed: int, *, config: MouseConfig | None = None,
                   t_on_s: float = -1.7, t_off_s: float = -0.9, ramp_down_s: float = 0.1,
                   power_mw: float = 1.5, conditions: tuple[Condition, ...] = CONDITIONS,
                   keep_trajectories: bool = True) -> dict[Condition, LatentRun]:
    """Control / left / right / bilateral photoinhibition in one light window (default early delay).

    Every condition uses the same random numbers (instructed sides, sensory noise, private noise,
    readout noise): common random numbers, so condition differences are the light's alone and
    ratios such as M_h have a far smaller variance than with independent streams.
    """
    out: dict[Condition, LatentRun] = {}
    for cond in CONDITIONS:
        if cond in conditions:
            out[cond] = run_latent(n_per_condition, seed, config=config,
                                   light=light_for(cond, t_on_s, t_off_s, ramp_down_s, power_mw),
                                   keep_trajectories=keep_trajectories)
    return out


def generate_trialset(
    n_trials: int,
    seed: int,
    *,
    config: MouseConfig | None = None,
    units_per_hemisphere: int = 40,
    day: int = 0,
    tau_drift_days: float = 11.0,
    bin_s: float = 0.1,
    light: LightWindow | None = None,
    session: int = 0,
    t_start_s: float | None = None,
    t_end_s: float = 0.0,
) -> TrialSet:
    """Generate a labelled session of mouse ``seed`` on ``day``: counts aligned to the go cue.

    The units are those of :func:`sim.drift.units_for_day` (same seed and day → same units);
    ``session`` picks an independent session of trials with those units. Without ``config`` a
    default :class:`MouseConfig` is used; ``units_per_hemisphere``, ``day`` and ``tau_drift_days``
    override the config's values when they differ from their defaults. Bins run from
    ``t_start_s`` (default: trial start, −3.5 s for the 1.7-s delay) to ``t_end_s`` and must be a
    whole number of model steps.
    """
    c = config or MouseConfig(seed=seed)
    upd: dict[str, Any] = {}
    if config is None or units_per_hemisphere != 40:
        upd["units_per_hemisphere"] = units_per_hemisphere
    if config is None or day != 0:
        upd["day"] = day
    if config is None or tau_drift_days != 11.0:
        upd["tau_drift_days"] = tau_drift_days
    c = MouseConfig(**{**c.model_dump(), **upd})
    if c.model == "rnn":
        raise ValueError("generate_trialset runs the reduced latents only; for spikes of the RNN step a "
                         "SimulatedMouse(MouseConfig(model='rnn'), seed)")
    ratio = bin_s / c.model_dt_s
    if abs(ratio - round(ratio)) > 1e-6 or ratio < 1:
        raise ValueError(f"bin_s={bin_s} must be a whole multiple of model_dt_s={c.model_dt_s}")
    t_start = c.trial_t0_s if t_start_s is None else t_start_s
    if not c.trial_t0_s <= t_start < t_end_s:
        raise ValueError(f"need trial start {c.trial_t0_s} <= t_start_s {t_start} < t_end_s {t_end_s}")
    units = units_for_day(c, seed, c.day, c.tau_drift_days)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TRIAL_STREAM, c.day, session]))
    spk = np.random.default_rng(np.random.SeedSequence([seed, _SPIKE_STREAM, c.day, session]))
    run, counts = _simulate(c, n_trials, rng, light_w=light, instructed=None, keep=False, units=units,
                            spike_rng=spk, bin_s=bin_s, t_start_s=t_start, t_end_s=t_end_s)
    assert counts is not None
    hemi = np.where(units.hemisphere == 0, LEFT, RIGHT).astype(np.int8)
    return TrialSet(
        counts=counts, bin_s=bin_s, t0_s=t_start, choice=run.choice, instructed=run.instructed,
        correct=run.correct, hemisphere=hemi,
        provenance={"source": "sim.offline.generate_trialset", "seed": seed, "session": session,
                    "day": c.day, "tau_drift_days": c.tau_drift_days,
                    "fs_units": [int(i) for i in np.flatnonzero(units.is_fs)],
                    "light": None if light is None else {
                        "hemisphere": light.hemisphere, "t_on_s": light.t_on_s,
                        "t_off_s": light.t_off_s, "ramp_down_s": light.ramp_down_s,
                        "power_mw": light.power_mw, "spots": light.spots},
                    "early_lick_trials": "not generated (excluded from analyses)",
                    "config": c.model_dump(mode="json"),
                    "trials": list(range(n_trials))})


@dataclass
class BatchRun:
    """Per-trial outcome of a mixed batch (:func:`run_batch`): no trajectories, only window means.

    Attributes:
        instructed, choice: (n,) ±1.
        correct: choice == instructed.
        light_index: (n,) index into the batch's light windows (-1: no light).
        window_left, window_right: per named window, (n,) mean latent of each hemisphere over the
            model steps whose end time t lies in (t0, t1] (the conventions of
            :func:`analysis.dry_run.offline_state_prediction`).
        efficacy: (n,) planted efficacy multiplier applied to the trial's light (1 without a plant).

    """

    instructed: npt.NDArray[np.int8]
    choice: npt.NDArray[np.int8]
    correct: npt.NDArray[np.bool_]
    light_index: npt.NDArray[np.int64]
    window_left: dict[str, FloatArray] = field(default_factory=dict)
    window_right: dict[str, FloatArray] = field(default_factory=dict)
    efficacy: FloatArray = field(default_factory=lambda: np.zeros(0))


def run_batch(config: MouseConfig, light_index: npt.NDArray[np.int64], lights: Sequence[LightWindow | None],
              rng: np.random.Generator, *, mu_left: FloatArray | None = None, mu_right: FloatArray | None = None,
              windows: Mapping[str, tuple[float, float]] | None = None) -> BatchRun:
    """Run one batch of trials in which each trial has its own light and (reduced model) its own μ.

    What a power analysis needs from many simulated sessions at once: trial i gets the light window
    ``lights[light_index[i]]`` (``-1`` or a ``None`` entry: no light) and, for the reduced model, the
    modularities ``mu_left[i]``, ``mu_right[i]`` (default: the config's) — every other parameter is
    ``config``'s, including planted effects (:class:`sim.config.PlantedEffects`). The step is
    :func:`sim.alm.step` with per-trial arrays (the same arithmetic as :func:`run_latent`, so a batch
    of one light and one μ has the statistics of ``run_latent``, not its random numbers). Returns
    outcomes and, per named window (seconds from the go cue), each hemisphere's mean latent.
    ``config.model == "rnn"`` runs the authors' RNN per light group (μ does not apply to it).
    """
    c = config
    idx = np.asarray(light_index, dtype=np.int64)
    n = idx.size
    if idx.size and (idx.max() >= len(lights) or idx.min() < -1):
        raise ValueError(f"light_index must lie in -1 … {len(lights) - 1}, got {idx.min()} … {idx.max()}")
    wins = dict(windows or {})
    if c.model == "rnn":
        return _run_batch_rnn(c, idx, lights, rng, wins)
    if c.model != "reduced":
        raise ValueError(f"run_batch runs the vectorised models ('reduced', 'rnn'), not model={c.model!r}")
    p0 = alm.ALMParams.from_config(c)
    W = c.recurrence_w
    mu_l = np.full(n, c.mu_left) if mu_left is None else np.asarray(mu_left, dtype=np.float64)
    mu_r = np.full(n, c.mu_right) if mu_right is None else np.asarray(mu_right, dtype=np.float64)
    p = p0
    if n and (np.ptp(mu_l) > 0 or np.ptp(mu_r) > 0 or mu_l[0] != c.mu_left or mu_r[0] != c.mu_right):
        # per-trial recurrence and callosal input broadcast through alm.step's arithmetic
        p = replace(p0, w_left=cast(float, mu_l * W), w_right=cast(float, mu_r * W),
                    j_left=cast(float, np.zeros(n) if c.callosotomy else (1.0 - mu_l) * W),
                    j_right=cast(float, np.zeros(n) if c.callosotomy else (1.0 - mu_r) * W))
    dt = c.model_dt_s
    t0 = c.trial_t0_s
    n_go = round(-t0 / dt)
    n_ro = round(c.readout_window_s / dt)
    t_start_k: FloatArray = t0 + dt * np.arange(n_go, dtype=np.float64)
    t_end_k = t_start_k + dt

    y = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8)
    evidence = y + c.sensory_noise_sigma * rng.standard_normal(n)

    # ε per light window and step (row len(lights): no light), gathered per trial at each step
    eps_tab = np.zeros((len(lights) + 1, 2, n_go))
    for j, lw in enumerate(lights):
        if lw is None:
            continue
        eff = light.efficacy(c, lw.power_mw, spots_left=lw.spots_left, spots_right=lw.spots_right,
                             unit_ap_mm=np.zeros(0), unit_ml_mm=np.zeros(0))
        env = light.silencing_envelope(t_start_k, lw.t_on_s, lw.t_off_s, lw.ramp_down_s, c.silencing_latency_s)
        for h in (0, 1):
            if (lw.spots_left if h == 0 else lw.spots_right) > 0 or eff.hemisphere[h] > 0:
                eps_tab[j, h] = eff.hemisphere[h] * env
    row = np.where(idx < 0, len(lights), idx)
    # steps in which some trial's light silences something
    lit_k: npt.NDArray[np.bool_] = np.asarray(eps_tab.any(axis=(0, 1)), dtype=bool)

    plant = c.planted
    gain = np.ones(n)
    groups: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], int]] = []
    if plant is not None and plant.state_dependent:
        for j, lw in enumerate(lights):
            members = np.flatnonzero(idx == j)
            if lw is not None and members.size:
                read, k_gain = _read_window_steps(c, plant, t_end_k, lw)
                groups.append((members, read, k_gain))
    state_sum = np.zeros(n)
    masks = {name: (t_end_k > a + 1e-9) & (t_end_k <= b + 1e-9) for name, (a, b) in wins.items()}
    acc_w = {name: (np.zeros(n), np.zeros(n)) for name in wins}

    x_l = np.zeros(n)
    x_r = np.zeros(n)
    acc_l = np.zeros(n)
    acc_r = np.zeros(n)
    for k in range(n_go):
        noise = rng.standard_normal((2, n))
        for members, read, k_gain in groups:
            if k == k_gain:
                assert plant is not None
                gain[members] = _state_gain(plant, state_sum[members], int(read.sum()), y[members])
        eps_l: FloatArray | float = 0.0
        eps_r: FloatArray | float = 0.0
        if lit_k[k]:
            eps_k = eps_tab[row, :, k]
            eps_l, eps_r = eps_k[:, 0] * gain, eps_k[:, 1] * gain
        alm.step(p, x_l, x_r, float(t_start_k[k]), evidence=evidence, eps_left=eps_l, eps_right=eps_r,
                 noise_left=noise[0], noise_right=noise[1])
        for members, read, _ in groups:
            if read[k]:
                assert plant is not None
                state_sum[members] += (x_l if plant.state_read == "left" else x_r)[members]
        if k >= n_go - n_ro:
            acc_l += x_l
            acc_r += x_r
        for name, m in masks.items():
            if m[k]:
                acc_w[name][0][:] += x_l
                acc_w[name][1][:] += x_r
    mean_eps = eps_tab[:, :, n_go - n_ro:].mean(axis=2)[row] * gain[:, None]
    choice = behaviour.decide(c, xbar_left=acc_l / n_ro, xbar_right=acc_r / n_ro, active_left=1.0 - mean_eps[:, 0],
                              active_right=1.0 - mean_eps[:, 1], noise=rng.standard_normal(n),
                              lapse_u=rng.random(n), coin_u=rng.random(n))
    conds = [_condition_of(lights[j]) if j >= 0 else "none" for j in idx.tolist()]
    choice = _force_errors(plant, choice, y, conds, rng)
    out = BatchRun(instructed=y, choice=choice, correct=choice == y, light_index=idx, efficacy=gain)
    for name, m in masks.items():
        cnt = max(int(m.sum()), 1)
        out.window_left[name] = acc_w[name][0] / cnt
        out.window_right[name] = acc_w[name][1] / cnt
    return out


def _run_batch_rnn(c: MouseConfig, idx: npt.NDArray[np.int64], lights: Sequence[LightWindow | None],
                   rng: np.random.Generator, wins: Mapping[str, tuple[float, float]]) -> BatchRun:
    """:func:`run_batch` for the RNN: one :func:`_simulate_rnn` per light group, windows from the logits."""
    n = idx.size
    out = BatchRun(instructed=np.zeros(n, np.int8), choice=np.zeros(n, np.int8), correct=np.zeros(n, bool),
                   light_index=idx, efficacy=np.ones(n))
    for name in wins:
        out.window_left[name] = np.zeros(n)
        out.window_right[name] = np.zeros(n)
    for j in sorted(set(idx.tolist())):
        members = np.flatnonzero(idx == j)
        run = _simulate_rnn(c, members.size, rng, light_w=lights[j] if j >= 0 else None, instructed=None,
                            keep=bool(wins))
        out.instructed[members] = run.instructed
        out.choice[members] = run.choice
        out.correct[members] = run.correct
        for name, (a, b) in wins.items():
            m = (run.t_s > a + 1e-9) & (run.t_s <= b + 1e-9)
            out.window_left[name][members] = run.x_left[:, m].mean(axis=1) if m.any() else 0.0
            out.window_right[name][members] = run.x_right[:, m].mean(axis=1) if m.any() else 0.0
    return out
