"""Closed-loop policies: light decisions that depend on the decoded neural state (docs/protocols.md).

This module owns three :class:`~controllers.base.Controller` policies:

* :class:`StateTriggered` — the state-triggered experiment (docs/protocols.md): average the *unperturbed*
  hemisphere's CD projection (``Estimate.left``/``right``, already p − db) in the causal window
  ending at light onset, label the trial weak/strong against the running median of the state
  value over recent control trials of the same instructed type (default: the projection aligned to
  the instructed side, (CD − db)·y; or |CD − db|), then photoinhibit the other hemisphere on a
  random 50 % of trials *within each state* (permuted pairs per state: stratified randomisation).
* :class:`ThresholdTrigger` — "inhibit the left hemisphere when decoded choice confidence crosses θ
  during the delay", armed on a random fraction of trials, at most once per trial.
* :class:`ModularityProbe` — the online callosal-influence probe (Chen et al. 2021's M): photoinhibit one
  hemisphere in a window on a fraction of trials, keep the other hemisphere's per-trial summary in
  that window, and report its modularity M (selectivity with the partner silenced / control) with
  a bootstrap CI; ``done`` once the CI is narrower than the set width (then it stops perturbing).

Per frame they only compare and add floats; all statistics (running medians, bootstraps) run in
``on_trial_end``. Every request carries ``deadline_budget_s``; the service turns it into the
command's deadline and drops a late decision. No rig, sockets, brokers or clocks here.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from controllers.base import SPOTS_PER_HEMISPHERE, Epoch, LightRequest, TrialState
from decoders.base import Estimate

Side = Literal["left", "right"]


@dataclass(frozen=True, slots=True)
class LightSettings:
    """Light of one photoinhibition (Chen et al. 2021 defaults: 1.5 mW, 40-Hz sine, 0.1-s ramp, 4 spots)."""

    power_mw_per_spot: float = 1.5
    duration_s: float = 0.8
    ramp_down_s: float = 0.1
    waveform: Literal["sine", "constant"] = "sine"
    freq_hz: float = 40.0
    n_spots: int = SPOTS_PER_HEMISPHERE
    deadline_budget_s: float = 0.025

    def request(self, trial: int, hemisphere: Side, condition: str, meta: dict[str, Any],
                duration_s: float | None = None) -> LightRequest:
        """Build the request (called once per trial, on the deciding frame)."""
        left, right = LightRequest.spots_for(hemisphere, self.n_spots)
        d = self.duration_s if duration_s is None else duration_s
        return LightRequest(trial=trial, hemisphere=hemisphere, power_mw_per_spot=self.power_mw_per_spot,
                            duration_s=d, ramp_down_s=min(self.ramp_down_s, d), waveform=self.waveform,
                            freq_hz=self.freq_hz, spots_left=left, spots_right=right, condition=condition,
                            meta=meta, deadline_budget_s=self.deadline_budget_s)


def _other(h: Side) -> Side:
    return "right" if h == "left" else "left"


class StateTriggered:
    """State-triggered unilateral photoinhibition (docs/protocols.md, "Scheduling rules").

    Args:
        perturb: hemisphere to photoinhibit ("left"/"right"), or "alternate" (random per trial);
            the other hemisphere's CD is read.
        onset_s: light onset from the go cue (−1.7 standard; −1.2 reads −1.6…−1.2 s where
            selectivity is larger).
        read_window_s: causal window ending at onset over which the unperturbed CD is averaged.
        eligible_fraction: fraction of trials entering the experiment (the rest are plain
            controls); with 50 % light within each state the perturbed fraction is half of it.
        light_fraction: fraction of eligible trials photoinhibited within each state (0.5).
        median_trials: how many recent control trials of each instructed type form the median.
        state_measure: what is compared with the running median. "signed" (default): the
            projection aligned to the instructed side, s = (CD − db)·y (docs/simulator.md
            "Conventions", as for the gating ratio): a weak state is one that predicts a worse outcome,
            wrong-side states included. "abs": |CD − db| — wrong-side
            commitments then count as *strong*, so an unlit "strong" trial can be an error-prone
            one and weak/strong need not predict performance.
        min_history: control trials of a type needed before its trials can be labelled.
        light: light settings; ``light.duration_s`` includes the ramp.
        seed: random seed.

    """

    def __init__(self, *, perturb: Literal["left", "right", "alternate"] = "left", onset_s: float = -1.7,
                 read_window_s: float = 0.4, eligible_fraction: float = 0.5, light_fraction: float = 0.5,
                 median_trials: int = 40, min_history: int = 10, light: LightSettings | None = None,
                 seed: int = 0, state_measure: Literal["signed", "abs"] = "signed") -> None:
        self.perturb = perturb
        self.state_measure = state_measure
        self.onset_s = onset_s
        self.read_from_s = onset_s - read_window_s
        self.eligible_fraction = eligible_fraction
        self.light_fraction = light_fraction
        self.min_history = min_history
        self.light = light or LightSettings()
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._hist: dict[int, deque[float]] = {y: deque(maxlen=median_trials) for y in (1, -1)}
        self._median: dict[int, float] = {1: math.nan, -1: math.nan}
        self._blocks: dict[str, list[bool]] = {"weak": [], "strong": []}
        self._trial = -1
        self._sum = 0.0
        self._n = 0
        self._read: Side = "right"
        self._target: Side = "left"
        self._eligible = False
        self._decided = False
        self._log: dict[str, Any] = {}

    def _new_trial(self, state: TrialState) -> None:
        self._trial = state.trial
        self._sum, self._n = 0.0, 0
        self._decided = False
        if self.perturb == "alternate":
            self._target = "left" if self._rng.random() < 0.5 else "right"
        else:
            self._target = self.perturb
        self._read = _other(self._target)
        self._eligible = bool(self._rng.random() < self.eligible_fraction)
        self._log = {"policy": "state_triggered", "seed": self.seed, "trial": state.trial,
                     "eligible": self._eligible, "target": self._target, "read": self._read,
                     "state": "", "cd_abs": None, "median": None, "light": False}

    def step(self, state: TrialState, estimate: Estimate, t_rig_ns: int) -> LightRequest | None:
        """Accumulate the read window; at the first frame at/after onset, label and decide."""
        if state.trial != self._trial:
            if state.trial < 0:
                return None
            self._new_trial(state)
        if self._decided:
            return None
        t = state.t_s
        if not t >= self.read_from_s:
            return None
        if t < self.onset_s:
            v = estimate.left if self._read == "left" else estimate.right
            if not math.isnan(v):
                self._sum += v
                self._n += 1
            return None
        self._decided = True
        return self._decide(state, t)

    def _decide(self, state: TrialState, t: float) -> LightRequest | None:
        lg = self._log
        cd = self._sum / self._n if self._n else math.nan
        med = self._median.get(state.instructed, math.nan)
        y = state.instructed
        s = (cd * y if y in (1, -1) else math.nan) if self.state_measure == "signed" else abs(cd)
        lg["cd_abs"] = None if math.isnan(cd) else abs(cd)
        lg["cd"] = None if math.isnan(cd) else cd
        lg["state_value"] = None if math.isnan(s) else s
        lg["state_measure"] = self.state_measure
        lg["median"] = None if math.isnan(med) else med
        lg["n_read_frames"] = self._n
        if math.isnan(s) or math.isnan(med) or state.early_lick or state.epoch >= Epoch.OUTCOME:
            lg["state"] = "unknown"
            return None
        label = "weak" if s < med else "strong"
        lg["state"] = label
        if not self._eligible:
            return None
        block = self._blocks[label]
        if not block:  # permuted block of light/no-light within this state class
            n_light = round(self.light_fraction * 4)
            block.extend(bool(x) for x in self._rng.permutation([1] * n_light + [0] * (4 - n_light)))
        light = block.pop()
        lg["light_drawn"] = light
        if not light:
            return None
        end = self.onset_s + self.light.duration_s
        req = self.light.request(state.trial, self._target, f"state_{label}_{self._target}",
                                 {"policy": "state_triggered", "state": label, "cd_abs": abs(cd),
                                  "state_value": s, "median": med}, duration_s=end - t)
        lg["light"] = True
        return req

    def on_trial_end(self, state: TrialState) -> dict[str, Any]:
        """Log state and decision; feed control trials' state value into the running median."""
        lg = dict(self._log) if self._log.get("trial") == state.trial else {
            "policy": "state_triggered", "trial": state.trial, "state": "unknown", "light": False}
        lg["early_lick"] = state.early_lick
        lg["outcome"] = state.outcome
        lg["instructed"] = state.instructed
        sv = lg.get("state_value")
        if (not lg["light"] and not state.early_lick and isinstance(sv, float)
                and state.instructed in self._hist):
            h = self._hist[state.instructed]
            h.append(float(sv))
            if len(h) >= self.min_history:
                self._median[state.instructed] = float(np.median(np.fromiter(h, float)))
        self._decided = True
        return lg


class ThresholdTrigger:
    """Photoinhibit ``hemisphere`` when decoded confidence crosses ``threshold`` inside a time window.

    Args:
        hemisphere: hemisphere to photoinhibit.
        threshold: θ on ``Estimate.confidence`` (P(lick right)).
        direction: "right" fires when confidence ≥ θ; "left" when confidence ≤ 1 − θ; "either".
        from_s, to_s: window relative to the go cue (default: the delay epoch −1.7…0 s).
        armed_fraction: fraction of trials on which the trigger is armed (the rest are controls).
        light: light settings (duration incl. ramp).
        seed: random seed.

    """

    def __init__(self, *, hemisphere: Literal["left", "right", "bilateral"] = "left", threshold: float = 0.8,
                 direction: Literal["right", "left", "either"] = "right", from_s: float = -1.7,
                 to_s: float = 0.0, armed_fraction: float = 0.25, light: LightSettings | None = None,
                 seed: int = 0) -> None:
        self.hemisphere = hemisphere
        self.hi = threshold if direction in ("right", "either") else math.inf
        self.lo = 1.0 - threshold if direction in ("left", "either") else -math.inf
        self.threshold = threshold
        self.direction = direction
        self.from_s, self.to_s = from_s, to_s
        self.armed_fraction = armed_fraction
        self.light = light or LightSettings()
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._trial = -1
        self._armed = False
        self._fired_t = math.nan
        self._fired_conf = math.nan

    def step(self, state: TrialState, estimate: Estimate, t_rig_ns: int) -> LightRequest | None:
        """Fire once per armed trial at the first crossing inside the window."""
        if state.trial != self._trial:
            if state.trial < 0:
                return None
            self._trial = state.trial
            self._armed = bool(self._rng.random() < self.armed_fraction)
            self._fired_t = self._fired_conf = math.nan
        if not self._armed:
            return None
        t = state.t_s
        if not (t >= self.from_s and t < self.to_s) or not estimate.ready:
            return None
        c = estimate.confidence
        if not (c >= self.hi or c <= self.lo) or state.early_lick:
            return None
        self._armed = False
        self._fired_t, self._fired_conf = t, c
        h = self.hemisphere
        left, right = LightRequest.spots_for(h, self.light.n_spots)
        s = self.light
        return LightRequest(trial=state.trial, hemisphere=h, power_mw_per_spot=s.power_mw_per_spot,
                            duration_s=s.duration_s, ramp_down_s=s.ramp_down_s, waveform=s.waveform,
                            freq_hz=s.freq_hz, spots_left=left, spots_right=right,
                            condition=f"threshold_{h}",
                            meta={"policy": "threshold", "confidence": c, "t_s": t},
                            deadline_budget_s=s.deadline_budget_s)

    def on_trial_end(self, state: TrialState) -> dict[str, Any]:
        """Log whether the trigger was armed and when it fired."""
        fired = not math.isnan(self._fired_t)
        return {"policy": "threshold", "seed": self.seed, "trial": state.trial, "hemisphere": self.hemisphere,
                "threshold": self.threshold, "direction": self.direction,
                "armed": self._armed or fired, "fired": fired,
                "fired_t_s": self._fired_t if fired else None,
                "fired_confidence": self._fired_conf if fired else None, "early_lick": state.early_lick}


@dataclass(frozen=True, slots=True)
class ModularityEstimate:
    """Online modularity of the unperturbed hemisphere with its bootstrap CI."""

    m: float
    ci_low: float
    ci_high: float
    n_control: int
    n_light: int

    @property
    def ci_width(self) -> float:
        """Width of the confidence interval."""
        return self.ci_high - self.ci_low


def modularity_with_ci(values: np.ndarray, instructed: np.ndarray, light: np.ndarray, *,
                       n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> ModularityEstimate:
    """M = selectivity with the partner silenced / control selectivity; bootstrap CI over trials.

    Selectivity = mean value on instructed-right trials − mean on instructed-left trials (all
    trials, docs/simulator.md "Conventions"). Trials are resampled within each (light, instructed) group.
    """
    groups = [values[(light == lt) & (instructed == y)] for lt in (False, True) for y in (1, -1)]
    if min(len(g) for g in groups) < 2:
        return ModularityEstimate(math.nan, math.nan, math.nan, int((~light).sum()), int(light.sum()))
    rng = np.random.default_rng(seed)
    means = [g.mean() for g in groups]
    m = (means[2] - means[3]) / (means[0] - means[1])
    boot = []
    for g in groups:
        idx = rng.integers(0, len(g), size=(n_boot, len(g)))
        boot.append(g[idx].mean(axis=1))
    ratios = (boot[2] - boot[3]) / (boot[0] - boot[1])
    a = (1 - ci) / 2
    lo, hi = np.quantile(ratios, [a, 1 - a])
    return ModularityEstimate(float(m), float(lo), float(hi), int((~light).sum()), int(light.sum()))


class ModularityProbe:
    """Online callosal-influence probe (docs/protocols.md): stop when the CI of M is narrow enough.

    Args:
        perturb: hemisphere to photoinhibit; the other one's modularity is estimated.
        onset_s: light onset from the go cue; the summary window is the light window.
        light_fraction: fraction of trials photoinhibited (permuted blocks of 4 → 25 %).
        ci_width: stop once the 95 % bootstrap CI of M is narrower than this (default 0.1).
        min_trials: trials per (light, instructed) group before M is estimated.
        n_boot: bootstrap resamples.
        update_every: re-estimate M and its CI every this many used trials (bootstrap cost).
        light: light settings (duration incl. ramp).
        seed: random seed.

    """

    def __init__(self, *, perturb: Side = "left", onset_s: float = -1.7, light_fraction: float = 0.25,
                 ci_width: float = 0.1, min_trials: int = 5, n_boot: int = 1000, update_every: int = 5,
                 light: LightSettings | None = None, seed: int = 0) -> None:
        self.perturb: Side = perturb
        self.read: Side = _other(perturb)
        self.onset_s = onset_s
        self.light = light or LightSettings()
        self.end_s = onset_s + self.light.duration_s
        self.light_fraction = light_fraction
        self.target_ci_width = ci_width
        self.min_trials = min_trials
        self.n_boot = n_boot
        self.update_every = update_every
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._block: list[bool] = []
        self._trial = -1
        self._light = False
        self._emitted = False
        self._sum = 0.0
        self._n = 0
        self._external: dict[int, float] = {}
        self._values: list[float] = []
        self._instructed: list[int] = []
        self._lights: list[bool] = []
        self.estimate = ModularityEstimate(math.nan, math.nan, math.nan, 0, 0)
        self.done = False

    def add_trial_summary(self, trial: int, value: float) -> None:
        """Give the read hemisphere's mean latent/CD in the light window for ``trial``.

        It overrides the running mean of ``Estimate`` values this probe keeps itself; call it
        before ``on_trial_end``.
        """
        self._external[trial] = value

    def step(self, state: TrialState, estimate: Estimate, t_rig_ns: int) -> LightRequest | None:
        """Accumulate the read hemisphere in the window; emit the light at onset on light trials."""
        if state.trial != self._trial:
            if state.trial < 0:
                return None
            self._trial = state.trial
            if not self._block:
                n = max(1, round(self.light_fraction * 4))
                self._block = [bool(x) for x in self._rng.permutation([1] * n + [0] * (4 - n))]
            self._light = self._block.pop() and not self.done
            self._emitted = False
            self._sum, self._n = 0.0, 0
        t = state.t_s
        if not (t >= self.onset_s and t < self.end_s):
            return None
        v = estimate.left if self.read == "left" else estimate.right
        if not math.isnan(v):
            self._sum += v
            self._n += 1
        if self._light and not self._emitted:
            self._emitted = True
            if state.early_lick or state.epoch >= Epoch.OUTCOME:
                return None
            return self.light.request(state.trial, self.perturb, f"probe_{self.perturb}",
                                      {"policy": "modularity_probe"}, duration_s=self.end_s - t)
        return None

    def on_trial_end(self, state: TrialState) -> dict[str, Any]:
        """Add the trial's summary, update M and its bootstrap CI, and log them."""
        value = self._external.pop(state.trial, self._sum / self._n if self._n else math.nan)
        used = (not state.early_lick and state.instructed != 0 and not math.isnan(value)
                and state.trial == self._trial and (self._emitted or not self._light))
        if used:
            self._values.append(value)
            self._instructed.append(state.instructed)
            self._lights.append(self._light)
            lights = np.array(self._lights)
            instr = np.array(self._instructed)
            counts = [int(((lights == lt) & (instr == y)).sum()) for lt in (False, True) for y in (1, -1)]
            if min(counts) >= self.min_trials and len(self._values) % self.update_every == 0:
                self.estimate = modularity_with_ci(np.array(self._values), instr, lights, n_boot=self.n_boot,
                                                   seed=self.seed + len(self._values))
                self.done = self.estimate.ci_width < self.target_ci_width
        e = self.estimate
        return {"policy": "modularity_probe", "seed": self.seed, "trial": state.trial, "light": self._light,
                "perturb": self.perturb, "read": self.read, "summary": value, "used": used,
                "modularity": e.m, "ci": [e.ci_low, e.ci_high], "done": self.done}
