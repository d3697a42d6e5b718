"""The simulated mouse: delay task, bilateral ALM, spiking units and the rig's light, one bin at a time.

This module owns :class:`SimulatedMouse`, the object the live rig process paces and that in-process
dry runs step directly. It runs the task state machine of docs/simulator.md (pre-sample, sample,
delay, go cue, response window, reward / error timeout / early-lick abort, inter-trial interval),
the reduced latent model through :func:`sim.alm.step` with a batch of one (the same code the offline
generator vectorises) — or, with ``MouseConfig(model="rnn")``, the authors' two-hemisphere RNN through
:func:`sim.rnn.step` every 25 ms, its readout logits playing the latents' role — the behaviour readout,
the spiking layer and the rig's light source. Whether a light command is obeyed (deadline,
the rig's light limits) and the watchdog on rigd's heartbeat are :class:`rig.client.LightGuard`'s,
exactly the guard a lab rig runs; the mouse keeps the physiology. Time is the mouse's own
rig clock in integer nanoseconds, starting at 0 and advanced only by :meth:`SimulatedMouse.step`;
the mouse never reads a wall clock and never touches a socket (the live process maps its clock
onto ``time.monotonic_ns``).
"""

from __future__ import annotations

import enum
import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from rig import wire
from rig.client import LightGuard, RigLightLimits
from sim import alm, behaviour, light, rnn
from sim.config import MouseConfig
from sim.drift import units_for_day
from sim.population import PoissonSampler, RateModel

_NS = 1_000_000_000
_TRIAL_STREAM = 21
_SPIKE_STREAM = 22
#: Licks while drinking after a hit: a few at ≈ 7 Hz (mouse licking rhythm).
_CONSUMPTION_LICKS = 3
_LICK_INTERVAL_S = 0.14


class Phase(enum.IntEnum):
    """Where the task is."""

    ITI = 0
    TRIAL = 1  #: pre-sample to go cue
    RESPONSE = 2  #: after the go cue, before the outcome
    OUTCOME = 3  #: reward consumption / error timeout / early-lick timeout


Event = tuple[str, dict[str, Any]]


@dataclass(slots=True)
class BinOutput:
    """One bin of the simulated rig.

    ``counts`` may be a buffer reused by the next :meth:`SimulatedMouse.step`; each event is
    ``(name, fields)`` with ``fields["trial"]`` and ``fields["t_rig_ns"]`` (when it happened, on
    the mouse's clock) plus the fields of docs/wire-protocol.md.
    """

    t_rig_ns: int
    counts: npt.NDArray[np.uint8]
    events: list[Event] = field(default_factory=list)


def rig_light_limits(c: MouseConfig) -> RigLightLimits:
    """The simulated rig's light limits: the config's power and duration maxima, its 4 + 4 spots."""
    return RigLightLimits(max_power_mw_per_spot=c.max_power_mw, max_duration_s=c.max_light_s,
                          n_spots_left=light.SPOTS_PER_HEMISPHERE, n_spots_right=light.SPOTS_PER_HEMISPHERE)


class SimulatedMouse:
    """A head-fixed mouse doing the delay task with a bilateral ALM population (docs/simulator.md).

    Args:
        config: the mouse (modularity, timing, units, light physiology, day of drift…).
        seed: the mouse's identity: its units (and their drift across days) and its trials.
        session: an independent session of trials of the same mouse on the same day.
        guard: the rig's light guard (default: :func:`rig_light_limits` and ``watchdog_s`` of the
            config, on the mouse's clock); the live rig process passes its client's.

    """

    def __init__(self, config: MouseConfig, seed: int, *, session: int = 0,
                 guard: LightGuard | None = None) -> None:
        c = config
        self.config = c
        self.seed = seed
        self.units = units_for_day(c, seed, c.day, c.tau_drift_days)
        self._p = alm.ALMParams.from_config(c)
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, _TRIAL_STREAM, c.day, session]))
        self._rates = RateModel(c, self.units)
        self._sampler = PoissonSampler(self.units.n, np.random.default_rng(
            np.random.SeedSequence([seed, _SPIKE_STREAM, c.day, session])))
        self._rate_buf = np.empty((1, self.units.n))
        self._means = np.empty(self.units.n)
        self.bin_ns = round(c.bin_s * _NS)
        self.step_ns = round(c.model_dt_s * _NS)
        self._bins_per_step = c.bins_per_step
        self._latency_ns = round(c.silencing_latency_s * _NS)
        self.t_rig_ns = 0
        self._bin = 0
        # latent state (batch of one)
        self._x_l = np.zeros(1)
        self._x_r = np.zeros(1)
        self._evidence = np.zeros(1)
        self._y = np.zeros(1)
        self._log_gain = np.zeros((1, 2))
        self._acc = np.zeros(2)  # readout sums of x_L, x_R
        self._acc_eps = np.zeros(2)
        # the authors' RNN (model="rnn"): its state, batch of one; the latents above are its readout logits
        self._rnn: rnn.RNNWeights | None = None
        self._h = np.zeros((1, rnn.N_NEURONS))
        self._rnn_stim = (0.0, 0.0, 0.0, 0.0)
        if c.model == "rnn":
            self._rnn = rnn.load_weights(c.rnn_weights)
            self._rnn_stim = rnn.stimulus_params(self._rnn)
        # task
        self.phase = Phase.ITI
        self.trial = -1
        self.trials: list[dict[str, Any]] = []
        self._cur: dict[str, Any] = {}
        self._queue: list[tuple[int, int, str, dict[str, Any]]] = []
        self._qn = 0
        self._k_go = round((c.presample_s + c.sample_s + c.delay_s) / c.model_dt_s)
        self._n_ro = round(c.readout_window_s / c.model_dt_s)
        self._t_trial_ns = 0
        self._t_go_ns = 0
        self._decided = True
        self._next_trial_ns = self._align(round(c.iti_s[0] * _NS))
        # light
        self.light = light.LightProgram()
        self.active_command: wire.LightCommandFields | None = None
        self._eff: light.Efficacy | None = None
        self._eff_cache: dict[tuple[float, int, int], light.Efficacy] = {}
        self._lvl_now = np.zeros(2)
        self._lvl_del = np.zeros(2)
        self._was_lit = np.zeros(2, dtype=bool)
        self._rebound_rho = np.zeros(2)
        self._rebound_t_off_ns = np.zeros(2, dtype=np.int64)
        self._rebound = np.ones(2)
        self.guard = guard or LightGuard(rig_light_limits(c), watchdog_s=c.watchdog_s,
                                         clock_ns=lambda: self.t_rig_ns)
        self._model_update(0, start=True)

    # -- public ---------------------------------------------------------------------------------

    @property
    def description(self) -> dict[str, Any]:
        """The rig description carried by every heartbeat (docs/wire-protocol.md)."""
        c = self.config
        n_l = int(np.sum(self.units.hemisphere == 0))
        return {"rig": "sim", "n_units": self.units.n, "units_left": n_l,
                "units_right": self.units.n - n_l, "bin_s": c.bin_s,
                "spots_per_hemisphere": light.SPOTS_PER_HEMISPHERE,
                "fs_units": [int(i) for i in np.flatnonzero(self.units.is_fs)],
                "model": c.model, "seed": self.seed, "day": c.day, "mu_left": c.mu_left,
                "mu_right": c.mu_right, "callosotomy": c.callosotomy, "delay_s": c.delay_s}

    @property
    def n_units(self) -> int:
        """Number of units (left hemisphere first)."""
        return self.units.n

    @property
    def latent(self) -> tuple[float, float]:
        """The current latent choice coordinates (x_L, x_R) of the reduced model (x > 0 ≙ lick-right state).

        With ``model="rnn"`` these are the RNN's readout logits (z_L, z_R).

        Read-only view for rehearsals and analyses (the "ideal decoder" of a dry run, per-trial
        light-window summaries for the modularity probe); reading it draws no random numbers.
        """
        return float(self._x_l[0]), float(self._x_r[0])

    @property
    def trial_time_s(self) -> float:
        """Time of the latent model from the current trial's go cue (NaN between trials)."""
        if self.phase == Phase.ITI:
            return math.nan
        return (self.t_rig_ns - self._t_go_ns) / _NS

    def step(self) -> BinOutput:
        """Advance one bin; return its counts and the events that happened in it."""
        t0 = self.t_rig_ns
        if self._bin % self._bins_per_step == 0:
            self._model_update(t0)
        counts = self._draw_counts()
        t1 = t0 + self.bin_ns
        self.t_rig_ns = t1
        self._bin += 1
        events: list[Event] = []
        while self._queue and self._queue[0][0] < t1:
            t_ev, _, name, fields = heapq.heappop(self._queue)
            self._on_event(t_ev, name, fields)
            events.append((name, {**fields, "t_rig_ns": t_ev}))
        return BinOutput(t1, counts, events)

    def apply_light(self, cmd: wire.LightCommandFields, t_rig_ns: int) -> tuple[wire.AckStatus, int]:
        """Obey a light command received at ``t_rig_ns`` (mouse clock), as the rig's guard decides.

        Returns the acknowledgement status and the rig time at which the light changes (0 when it
        does not): :meth:`rig.client.LightGuard.admit` says LATE (past its deadline) or INVALID
        (outside the rig's limits), both not executed; START begins at once or at
        ``t_start_rig_ns`` if later; RAMP_DOWN and ALL_OFF are acknowledged STOPPED. Pyramidal
        silencing follows the light ~15 ms later (physiology, not the light).
        """
        verdict = self.guard.admit(cmd, t_rig_ns)
        if verdict.status == wire.AckStatus.STOPPED:
            if cmd.action == wire.LightAction.ALL_OFF:
                self.light.off(t_rig_ns)
            else:
                self.light.ramp_down(t_rig_ns, round(cmd.ramp_down_s * _NS))
        if verdict.status != wire.AckStatus.APPLIED:
            return verdict.status, verdict.t_light_change_ns
        c = self.config
        t_on = verdict.t_light_change_ns
        dur = round(cmd.duration_s * _NS)
        ramp = round(cmd.ramp_down_s * _NS)
        key = (float(cmd.power_mw_per_spot), cmd.spots_left, cmd.spots_right)
        if key not in self._eff_cache:
            self._eff_cache[key] = light.efficacy(c, key[0], spots_left=key[1], spots_right=key[2],
                                                  unit_ap_mm=self.units.ap_mm,
                                                  unit_ml_mm=self.units.ml_mm)
        self._eff = self._eff_cache[key]
        self.light = light.LightProgram(cmd.power_mw_per_spot, cmd.spots_left, cmd.spots_right,
                                        t_on, t_on + dur - ramp, t_on + dur)
        self.active_command = cmd
        if self.phase != Phase.ITI and self._cur:
            cond = {(True, False): "left", (False, True): "right"}.get(
                (bool(cmd.spots_left), bool(cmd.spots_right)), "bilateral")
            self._cur.update(light_condition=cond, light_onset_s=(t_on - self._t_go_ns) / _NS,
                             light_duration_s=float(cmd.duration_s),
                             light_power_mw=float(cmd.power_mw_per_spot),
                             light_command_id=cmd.command_id)
        return wire.AckStatus.APPLIED, t_on

    def note_rigd_heartbeat(self, t_rig_ns: int) -> None:
        """Rigd's heartbeat arrived at ``t_rig_ns`` (mouse clock): feeds the guard's watchdog."""
        self.guard.note_rigd_heartbeat(t_rig_ns)

    def watchdog(self, t_rig_ns: int) -> wire.LightCommandFields | None:
        """The guard's watchdog: light off if rigd's heartbeat has been silent for ``watchdog_s``.

        Returns the command whose light was switched off (acknowledge it WATCHDOG_OFF), else None.
        """
        cmd = self.guard.check(t_rig_ns)
        if cmd is None:
            return None
        self.light.off(t_rig_ns)
        if self._cur:
            self._cur["watchdog_off"] = True
        return cmd

    @property
    def watchdog_trips(self) -> int:
        """How often the watchdog turned the light off."""
        return self.guard.trips

    def light_on(self) -> bool:
        """Return True while the light is (or is scheduled to be) on."""
        return self.light.is_on(self.t_rig_ns)

    # -- internals ------------------------------------------------------------------------------

    def _align(self, t_ns: int) -> int:
        """Return the first model-step boundary at or after ``t_ns``."""
        return -(-t_ns // self.step_ns) * self.step_ns

    def _push(self, t_ns: int, name: str, **fields: Any) -> None:
        self._qn += 1
        heapq.heappush(self._queue, (t_ns, self._qn, name, {"trial": self.trial, **fields}))

    def _start_trial(self, t: int) -> None:
        c, rng = self.config, self._rng
        self.trial += 1
        self.phase = Phase.TRIAL
        self._decided = False
        self._t_trial_ns = t
        self._t_go_ns = t + self._k_go * self.step_ns
        y = 1 if rng.random() < 0.5 else -1
        self._y[0] = y
        self._evidence[0] = y + c.sensory_noise_sigma * rng.standard_normal()
        sd = c.shared_gain_sd
        self._log_gain[0] = sd * rng.standard_normal(2) - 0.5 * sd * sd
        self._x_l[0] = 0.0
        self._x_r[0] = 0.0
        if self._rnn is not None:
            self._h[:] = 0.0
            self._x_l[0], self._x_r[0] = self._rnn.rb_l, self._rnn.rb_r
        self._acc[:] = 0.0
        self._acc_eps[:] = 0.0
        t_sample = self._t_go_ns - round((c.sample_s + c.delay_s) * _NS)
        t_delay = self._t_go_ns - round(c.delay_s * _NS)
        self._cur = {"trial": self.trial, "instructed": wire.SIDE_NAME[y], "outcome": None, "choice": None,
                     "reaction_time_s": None, "early_lick": False, "light_condition": "none",
                     "light_onset_s": None, "light_duration_s": None, "light_power_mw": None,
                     "t_start_ns": t, "t_go_ns": self._t_go_ns}
        self._push(t, "trial_start", instructed=wire.SIDE_NAME[y], delay_s=c.delay_s, t_sample_ns=t_sample,
                   t_delay_ns=t_delay, t_go_ns=self._t_go_ns)
        t_early = None
        if rng.random() < c.early_lick_prob:
            t_early = int(rng.integers(t_sample, self._t_go_ns))
        for t_ev, name in ((t_sample, "sample_on"), (t_delay, "delay_on"), (self._t_go_ns, "go_cue")):
            if t_early is None or t_ev <= t_early:
                self._push(t_ev, name)
        if t_early is not None:
            epoch = "sample" if t_early < t_delay else "delay"
            side = wire.SIDE_NAME[1 if rng.random() < 0.5 else -1]
            self._push(t_early, "lick", side=side)
            self._push(t_early, "early_lick", epoch=epoch)
            self._push(t_early, "outcome", outcome="early_lick", choice=side, reaction_time_s=None)
            timeout = rng.uniform(*c.early_lick_timeout_s)
            self._push(t_early + round((c.early_lick_alarm_s + timeout) * _NS), "trial_end")
            self._cur.update(early_lick=True, outcome="early_lick", choice=side)
            self._decided = True

    def _decide(self, t_go: int) -> None:
        """At the go cue: the behaviour readout picks a side, a reaction time and the outcome."""
        c, rng = self.config, self._rng
        self._decided = True
        self.phase = Phase.RESPONSE
        xbar = self._acc / self._n_ro
        active = 1.0 - self._acc_eps / self._n_ro
        choice = int(behaviour.decide(c, xbar_left=xbar[0:1], xbar_right=xbar[1:2],
                                      active_left=active[0:1], active_right=active[1:2],
                                      noise=rng.standard_normal(1), lapse_u=rng.random(1),
                                      coin_u=rng.random(1))[0])
        rt = float(behaviour.reaction_time_s(c, rng, 1)[0])
        self._cur.update(xbar_left=float(xbar[0]), xbar_right=float(xbar[1]))
        if rng.random() < c.ignore_prob:
            t_end = t_go + round(c.response_window_s * _NS)
            self._push(t_end, "outcome", outcome="ignore", choice=None, reaction_time_s=None)
            self._push(t_end, "trial_end")
            return
        t_lick = t_go + round(rt * _NS)
        side = wire.SIDE_NAME[choice]
        hit = choice == int(self._y[0])
        self._push(t_lick, "lick", side=side)
        self._push(t_lick, "outcome", outcome="hit" if hit else "error", choice=side,
                   reaction_time_s=rt)
        if hit:
            for i in range(1, _CONSUMPTION_LICKS + 1):
                self._push(t_lick + round(i * _LICK_INTERVAL_S * _NS), "lick", side=side)
            t_end = t_lick + round(c.reward_consumption_s * _NS)
        else:
            t_end = t_lick + round(c.error_timeout_s * _NS)
        self._push(max(t_end, t_lick + 1), "trial_end")

    def _on_event(self, t: int, name: str, fields: dict[str, Any]) -> None:
        if name == "outcome":
            self.phase = Phase.OUTCOME
            self._cur.update(outcome=fields["outcome"], choice=fields["choice"],
                             reaction_time_s=fields["reaction_time_s"])
        elif name == "trial_end":
            self.trials.append(dict(self._cur, t_end_ns=t))
            self._cur = {}
            self.phase = Phase.ITI
            iti = self._rng.uniform(*self.config.iti_s)
            self._next_trial_ns = self._align(t + round(iti * _NS))

    def _update_light(self, t: int) -> None:
        """Sample the light for this model step; start a rebound where a hemisphere's light ended."""
        prog = self.light
        lvl = prog.level(t)
        sil = prog.silencing_level(t, self._latency_ns)
        eff = self._eff
        for h, mask in ((0, prog.spots_left), (1, prog.spots_right)):
            lit_h = eff is not None and (mask > 0 or eff.hemisphere[h] > 0.0) and prog.power_mw > 0
            self._lvl_now[h] = lvl if lit_h else 0.0
            self._lvl_del[h] = sil if lit_h else 0.0
            on = self._lvl_now[h] > 0.0
            if self._was_lit[h] and not on and eff is not None:
                on_s = max(min(t, prog.t_off_ns) - prog.t_on_ns, 0) / _NS
                ramp_s = max(prog.t_off_ns - prog.t_ramp_ns, 0) / _NS
                self._rebound_rho[h] = light.rebound_amplitude(
                    self.config, prog.power_mw, on_s - 0.5 * ramp_s, float(eff.hemisphere_uncapped[h]))
                self._rebound_t_off_ns[h] = min(t, prog.t_off_ns)
            self._was_lit[h] = on
            self._rebound[h] = light.rebound_gain(
                (t - int(self._rebound_t_off_ns[h])) / _NS, float(self._rebound_rho[h]),
                self.config.rebound_tau_s) if not on else 1.0

    def _model_update(self, t: int, start: bool = False) -> None:
        """One latent-model step starting at mouse time ``t`` (a model-step boundary)."""
        if self.phase == Phase.ITI and t >= self._next_trial_ns:
            self._start_trial(t)
        if self.phase == Phase.TRIAL and not self._decided and t >= self._t_go_ns:
            self._decide(t)
        in_trial = self.phase != Phase.ITI
        # trial time from the go cue; between trials the model idles at G0 without input
        t_s = (t - self._t_go_ns) / _NS if in_trial else -1e9
        self._update_light(t)
        eff = self._eff
        eps_l = eps_r = 0.0
        if eff is not None:
            # the RNN's ε is the uncapped dose-response (ε = 1 is the authors' h = 0; eps_max caps the reduced model)
            hemi = eff.hemisphere if self._rnn is None else np.minimum(eff.hemisphere_uncapped, 1.0)
            eps_l = float(hemi[0] * self._lvl_del[0])
            eps_r = float(hemi[1] * self._lvl_del[1])
        self._advance_latent(t_s, eps_l, eps_r, start=start)
        k = (t - self._t_trial_ns) // self.step_ns
        if self.phase == Phase.TRIAL and self._k_go - self._n_ro <= k < self._k_go:
            self._acc[0] += self._x_l[0]
            self._acc[1] += self._x_r[0]
            self._acc_eps[0] += eps_l
            self._acc_eps[1] += eps_r
        self._set_rates(t_s, in_trial)

    # -- model hooks (sim.spiking_mouse overrides these three) ----------------------------------

    def _advance_latent(self, t_s: float, eps_l: float, eps_r: float, *, start: bool) -> None:
        """Advance the latent state (x_L, x_R) by one model step (not on the initial call)."""
        if self._rnn is not None:
            self._advance_rnn(self._rnn, t_s, eps_l, eps_r)
        elif not start:
            noise = self._rng.standard_normal(2)
            alm.step(self._p, self._x_l, self._x_r, t_s, evidence=self._evidence, eps_left=eps_l,
                     eps_right=eps_r, noise_left=noise[0:1], noise_right=noise[1:2])

    def _advance_rnn(self, w: rnn.RNNWeights, t_s: float, eps_l: float, eps_r: float) -> None:
        """One 25-ms step of the authors' RNN; its state is the one at t_s + 25 ms (sim.rnn's grid).

        The network runs from −3.1 s (the state at t_k = −3.1 s is its first step) through the go
        cue and the response; between trials and before −3.1 s it rests at h = 0. The draws are
        sim.offline's per step: stimulus (sample steps), input noise of both hemispheres, recurrent
        noise.
        """
        t_k = t_s + self.config.model_dt_s
        if t_k < rnn.T_BEGIN_S - 1e-9:  # between trials (t_s = −1e9) or before the network's start
            self._h[:] = 0.0
        else:
            mu_x, sd_x, s_in, s_rec = self._rnn_stim
            x = 0.0
            if rnn.T_SAMPLE_S - 1e-9 <= t_k < rnn.T_DELAY_S - 1e-9:
                x = mu_x * float(self._y[0]) + sd_x * float(self._rng.standard_normal())
            nin = self._rng.standard_normal(2)
            nrec = self._rng.standard_normal((1, rnn.N_NEURONS))
            c = self.config
            rnn.step(w, self._h, x=x, in_noise_left=nin[0:1], in_noise_right=nin[1:2], rec_noise=nrec,
                     gain_left=c.sensory_gain_left, gain_right=c.sensory_gain_right, eps_left=eps_l,
                     eps_right=eps_r, sigma_in=s_in, sigma_rec=s_rec)
        z_l, z_r = rnn.readout(w, self._h)
        self._x_l[0], self._x_r[0] = float(z_l[0]), float(z_r[0])

    def _set_rates(self, t_s: float, in_trial: bool) -> None:
        """Set the Poisson layer's means for the bins of this model step."""
        eff = self._eff
        mult = self._rates.light_multiplier(None if eff is None else eff.unit, self._lvl_del,
                                            self._lvl_now, self._rebound)
        stim = self._y if in_trial and alm.in_sample(self._p, t_s) else None
        ramp = alm.ramp_mode(self._p, t_s) if in_trial else 0.0
        self._rates.rates(self._rate_buf, self._x_l, self._x_r, ramp=ramp, stim=stim,
                          log_gain=self._log_gain if in_trial else None, multiplier=mult)
        np.multiply(self._rate_buf[0], self.config.bin_s, out=self._means)
        self._sampler.set_means(self._means)

    def _draw_counts(self) -> npt.NDArray[np.uint8]:
        """Spike counts of the current bin."""
        return self._sampler.draw()
