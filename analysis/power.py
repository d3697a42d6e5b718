"""Protocol power analysis over simulated mice: how many trials, sessions and mice a protocol needs.

What ``rigd protocol power PROTOCOL`` calls (docs/power.md). This module owns the population model
(:class:`Population`: each mouse's μ_L, μ_R drawn around a mean, its first drift day, trials per
session, sessions per mouse, mice per experiment), the simulation of whole experiments with the
vectorised offline model (:func:`sim.offline.run_batch`: every trial of every session of every mouse
of a chunk of experiments in one batch), the analysis of one experiment as an experimenter would
run it, and the summary over many simulated experiments: each effect with its CI, the power to
detect it at α, and the trials per session, sessions per mouse and mice needed for a target power.

Effects are drops in fraction correct, ``control − condition`` (positive: light lowers performance),
the convention of :func:`analysis.dry_run.state_effect`. For a block protocol there is one per
perturbation condition against the protocol's control condition; for the state-triggered protocol
(docs/protocols.md, "State-triggered experiment") there are, per state, the behavioural effect
(no light − light) and the neural effect on the unperturbed (read) hemisphere — its absolute loss of
selectivity (mean latent × instructed side over the light window, no light − light) and its relative
loss 1 − M (M = selectivity with light / without) — and the weak − strong difference of each.

One experiment's analysis treats the mouse as the unit: each mouse's effect pools its sessions;
the experiment's estimate is the mean over mice with a random-effects standard error (within-mouse
binomial or sampling variance plus the DerSimonian–Laird between-mouse variance; DerSimonian &
Laird, Control Clin Trials 7:177, 1986), a normal 95 % CI and a two-sided z-test at α.

Work is cut into chunks of experiments, each chunk seeded by its own child of
``numpy.random.SeedSequence(seed).spawn`` — so the numbers depend on the seed and the chunk size,
never on how many workers ran the chunks: :func:`run_power` runs them in-process (``serial``) or as
tasks on a Dask ``distributed`` cluster (a :class:`distributed.LocalCluster` of processes here by
default, or an existing scheduler).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from analysis.stats import wilson
from controllers.protocol import Protocol, Window, light_window_from_go
from sim.config import MouseConfig, PlantedEffects
from sim.offline import LightWindow, run_batch

FloatArray = npt.NDArray[np.float64]
ALPHA = 0.05
TARGET_POWER = 0.8
MIN_TRIALS_PER_SESSION = 10
#: a mouse's selectivity without light must exceed this (latent units) for its relative loss to be defined
MIN_SELECTIVITY = 1e-3


@dataclass(frozen=True)
class Population:
    """The simulated mice of one experiment (docs/power.md, "Population model").

    Each mouse draws μ_L ~ N(``mu_left``, ``mu_sd``²) and μ_R ~ N(``mu_right``, ``mu_sd``²), clipped to
    [0, 1] (the reduced model's modularities, docs/simulator.md), and a first drift day uniform in
    ``day`` … ``day + day_spread``; its sessions are consecutive days. Each session has
    N ~ round(N(``trials``, ``trials_sd``²)) trials (at least 10).
    """

    mice: int = 4
    sessions: int = 2
    trials: int = 400
    trials_sd: float = 0.0
    mu_left: float = 0.6
    mu_right: float = 0.6
    mu_sd: float = 0.0
    day: int = 0
    day_spread: int = 0

    def check(self) -> None:
        """Raise ValueError naming the first out-of-range field."""
        for name, lo, hi in (("mice", 1, 100_000), ("sessions", 1, 10_000), ("trials", MIN_TRIALS_PER_SESSION,
                                                                             1_000_000)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ValueError(f"population {name} = {v}: expected {lo} ≤ {name} ≤ {hi}")
        for name in ("mu_left", "mu_right"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"population {name} = {v}: expected 0 ≤ μ ≤ 1")
        for name in ("trials_sd", "mu_sd", "day", "day_spread"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"population {name} = {v}: expected a finite number ≥ 0")


@dataclass(frozen=True)
class Arm:
    """One way a trial of the protocol is run in the simulation: its name, light and share of trials."""

    name: str
    light: LightWindow | None
    fraction: float


@dataclass(frozen=True)
class Design:
    """What the simulation needs from a protocol (:func:`design_of`)."""

    kind: Literal["block", "state_triggered"]
    arms: tuple[Arm, ...]
    control: str = "control"
    # state-triggered only
    read: Literal["left", "right"] = "right"
    read_window_s: float = 0.4
    eligible_fraction: float = 0.5
    light_fraction: float = 0.5
    state_measure: Literal["signed", "abs"] = "signed"

    @property
    def light(self) -> LightWindow:
        """The state-triggered protocol's light window."""
        lw = self.arms[0].light
        assert lw is not None
        return lw


def _spots(n: int) -> int:
    return (1 << min(n, 4)) - 1


def design_of(protocol: Protocol) -> Design:
    """The arms of a block protocol, or the state-triggered experiment's light and read window.

    Raises ValueError for kinds the analysis does not cover (threshold, modularity probe) and for a
    block protocol without a control condition.
    """
    spec = protocol.spec
    kind = spec.protocol.kind
    lt = spec.light
    if kind == "block":
        arms = []
        for c in spec.conditions:
            if c.hemisphere is None:
                arms.append(Arm(c.name, None, c.fraction))
                continue
            w = Window(aligned_to=c.aligned_to or spec.window.aligned_to,
                       onset_s=c.onset_s if c.onset_s is not None else spec.window.onset_s,
                       duration_s=c.duration_s or spec.window.duration_s)
            on, off = light_window_from_go(spec.model_copy(update={"window": w}))
            arms.append(Arm(c.name, LightWindow(c.hemisphere, on, off, lt.ramp_down_s,
                                                c.power_mw_per_spot or lt.power_mw_per_spot,
                                                _spots(c.spots_per_hemisphere or lt.spots_per_hemisphere)),
                            c.fraction))
        controls = [a.name for a in arms if a.light is None]
        if not controls:
            raise ValueError(f"protocol {protocol.name!r}: no control condition (a [[conditions]] entry without "
                             "hemisphere) to compare the perturbations with")
        ctl = "control" if "control" in controls else controls[0]
        return Design("block", tuple(arms), control=ctl)
    if kind == "state_triggered":
        st = spec.state_triggered
        assert st is not None
        if st.perturb == "alternate":
            raise ValueError(f"protocol {protocol.name!r}: state_triggered.perturb = 'alternate' is not covered by "
                             "the power analysis (expected 'left' or 'right')")
        on, off = light_window_from_go(spec)
        lw = LightWindow(st.perturb, on, off, lt.ramp_down_s, lt.power_mw_per_spot, _spots(lt.spots_per_hemisphere))
        return Design("state_triggered", (Arm("light", lw, st.eligible_fraction * st.light_fraction),),
                      read="right" if st.perturb == "left" else "left", read_window_s=st.read_window_s,
                      eligible_fraction=st.eligible_fraction, light_fraction=st.light_fraction,
                      state_measure=st.state_measure)
    raise ValueError(f"protocol {protocol.name!r}: kind = {kind!r} is not covered by the power analysis "
                     "(expected 'block' or 'state_triggered')")


@dataclass(frozen=True)
class PowerSpec:
    """Everything one power analysis needs; picklable, so chunks can run on Dask workers."""

    protocol: Protocol
    population: Population
    config: MouseConfig
    experiments: int = 200
    seed: int = 0
    alpha: float = ALPHA
    target_power: float = TARGET_POWER
    chunk_size: int = 10

    @property
    def n_chunks(self) -> int:
        """Tasks the experiments are cut into."""
        return -(-self.experiments // self.chunk_size)

    def check(self) -> Design:
        """Validate the spec; return the protocol's design (ValueError: what is wrong, expected vs got)."""
        self.population.check()
        if not 1 <= self.experiments <= 10_000_000:
            raise ValueError(f"experiments = {self.experiments}: expected 1 ≤ experiments ≤ 10000000")
        if not 1 <= self.chunk_size <= 100_000:
            raise ValueError(f"chunk_size = {self.chunk_size}: expected 1 ≤ chunk_size ≤ 100000")
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha = {self.alpha}: expected 0 < α < 0.5")
        if not 0.0 < self.target_power < 1.0:
            raise ValueError(f"target_power = {self.target_power}: expected 0 < power < 1")
        if self.config.model not in ("reduced", "rnn"):
            raise ValueError(f"model = {self.config.model!r}: the power analysis runs the vectorised offline model "
                             "('reduced' or 'rnn'); the spiking model is for dry runs and sessions")
        return design_of(self.protocol)


# --- one experiment ----------------------------------------------------------------------------


def combine(est: FloatArray, var: FloatArray) -> tuple[float, float, float]:
    """Mean of per-mouse effects with a random-effects SE: (estimate, SE, within-mouse variance of the mean).

    Var = Σ vᵢ / M² + τ² / M, τ² = max(0, sample variance of the effects − mean vᵢ) (DerSimonian–Laird
    moment estimate with equal weights; 0 with one mouse). Mice whose effect is undefined (NaN) are left out.
    """
    ok = np.isfinite(est) & np.isfinite(var)
    e, v = est[ok], var[ok]
    m = e.size
    if m == 0:
        return math.nan, math.nan, math.nan
    within = float(v.sum()) / (m * m)
    tau2 = max(0.0, float(e.var(ddof=1)) - float(v.mean())) if m >= 2 else 0.0
    return float(e.mean()), math.sqrt(within + tau2 / m), within


def _binom_var(k: float, n: float) -> float:
    """Variance of a proportion, with the (k + 1)/(n + 2) estimate so that 0 % and 100 % keep a variance."""
    if n <= 0:
        return math.nan
    p = (k + 1.0) / (n + 2.0)
    return p * (1.0 - p) / n


def _prop(correct: npt.NDArray[np.bool_]) -> tuple[float, float]:
    n = correct.size
    return (float(correct.mean()) if n else math.nan), _binom_var(float(correct.sum()), n)


def _mean_var(x: FloatArray) -> tuple[float, float]:
    n = x.size
    if n < 2:
        return (float(x.mean()) if n else math.nan), math.nan
    return float(x.mean()), float(x.var(ddof=1)) / n


@dataclass
class Session:
    """One simulated session's trials, as the analysis sees them."""

    mouse: int
    arm: npt.NDArray[np.int64]  #: index into the design's arms (block) or -1 / 0 (state: no light / light)
    correct: npt.NDArray[np.bool_]
    instructed: npt.NDArray[np.int8]
    eligible: npt.NDArray[np.bool_]
    state: FloatArray  #: read hemisphere's latent over the read window (state-triggered)
    selectivity: FloatArray  #: read hemisphere's latent × instructed side over the light window


def _weak_labels(s: Session, measure: str) -> npt.NDArray[np.bool_]:
    """Weak state: below the median of unlit trials of the same instructed side (the running median's limit)."""
    v = s.state * s.instructed if measure == "signed" else np.abs(s.state)
    weak = np.zeros(v.size, dtype=bool)
    for side in (1, -1):
        m = s.instructed == side
        ref = v[m & (s.arm < 0)]
        if ref.size:
            weak[m] = v[m] < np.median(ref)
    return weak


def analyse_experiment(design: Design, sessions: Sequence[Session]) -> dict[str, tuple[float, float, float]]:
    """An experimenter's analysis of one experiment: per quantity (estimate, SE, within-mouse variance)."""
    mice = sorted({s.mouse for s in sessions})
    per: dict[str, tuple[list[float], list[float]]] = {}

    def add(name: str, est: float, var: float) -> None:
        per.setdefault(name, ([], []))
        per[name][0].append(est)
        per[name][1].append(var)

    for mouse in mice:
        ss = [s for s in sessions if s.mouse == mouse]
        arm = np.concatenate([s.arm for s in ss])
        correct = np.concatenate([s.correct for s in ss])
        if design.kind == "block":
            ci = [a.name for a in design.arms].index(design.control)
            p_c, v_c = _prop(correct[arm == ci])
            for i, a in enumerate(design.arms):
                if i == ci:
                    continue
                p, v = _prop(correct[arm == i])
                add(a.name, p_c - p, v_c + v)
            continue
        weak = np.concatenate([_weak_labels(s, design.state_measure) for s in ss])
        elig = np.concatenate([s.eligible for s in ss])
        sel = np.concatenate([s.selectivity for s in ss])
        lit = arm >= 0
        for state, msk in (("weak", weak), ("strong", ~weak)):
            g_n, g_l = elig & msk & ~lit, elig & msk & lit
            p_n, v_n = _prop(correct[g_n])
            p_l, v_l = _prop(correct[g_l])
            add(f"behaviour_{state}", p_n - p_l, v_n + v_l)
            s_n, w_n = _mean_var(sel[g_n])
            s_l, w_l = _mean_var(sel[g_l])
            add(f"neural_loss_{state}", s_n - s_l, w_n + w_l)
            add(f"_sel_no_light_{state}", s_n, w_n)
            add(f"_sel_light_{state}", s_l, w_l)
        for q in ("behaviour", "neural_loss"):
            add(f"{q}_weak_minus_strong", per[f"{q}_weak"][0][-1] - per[f"{q}_strong"][0][-1],
                per[f"{q}_weak"][1][-1] + per[f"{q}_strong"][1][-1])
    out = {k: combine(np.array(e), np.array(v)) for k, (e, v) in per.items() if not k.startswith("_")}
    if design.kind == "state_triggered":
        z: dict[str, tuple[float, FloatArray, FloatArray]] = {}
        for state in ("weak", "strong"):
            c, wc = (np.array(a) for a in per[f"_sel_no_light_{state}"])
            lt, wl = (np.array(a) for a in per[f"_sel_light_{state}"])
            z[state] = _ratio_terms(lt, wl, c, wc)
            out[f"neural_relative_loss_{state}"] = _ratio_combine(*z[state])
        _, se_d, within_d = combine(z["weak"][1] - z["strong"][1], z["weak"][2] + z["strong"][2])
        out["neural_relative_loss_weak_minus_strong"] = (z["weak"][0] - z["strong"][0], se_d, within_d)
        order = [f"{q}_{s}" for s in ("weak", "strong", "weak_minus_strong")
                 for q in ("behaviour", "neural_loss", "neural_relative_loss")]
        out = {k: out[k] for k in order}
    return out


def _ratio_terms(light: FloatArray, light_var: FloatArray, dark: FloatArray,
                 dark_var: FloatArray) -> tuple[float, FloatArray, FloatArray]:
    """1 − M with M = mean light / mean no-light selectivity over mice, and each mouse's linearised term.

    The ratio estimator's influence of mouse i, (Lᵢ − M·Cᵢ)/C̄, with its within-mouse variance
    (var Lᵢ + M² var Cᵢ)/C̄² — combined like any per-mouse effect (:func:`combine`) for the SE.
    """
    ok = np.isfinite(light) & np.isfinite(dark) & np.isfinite(light_var) & np.isfinite(dark_var)
    cbar = float(dark[ok].mean()) if ok.any() else math.nan
    if not (cbar > MIN_SELECTIVITY):
        nan = np.full(light.size, math.nan)
        return math.nan, nan, nan
    m = float(light[ok].mean()) / cbar
    return 1.0 - m, np.where(ok, (light - m * dark) / cbar, math.nan), (light_var + m * m * dark_var) / cbar ** 2


def _ratio_combine(rel: float, terms: FloatArray, var: FloatArray) -> tuple[float, float, float]:
    _, se, within = combine(terms, var)
    return rel, se, within


# --- simulation --------------------------------------------------------------------------------


def _counts(fractions: Sequence[float], n: int) -> list[int]:
    """Whole trial counts in the protocol's proportions (largest remainder)."""
    raw = [f * n for f in fractions]
    base = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: base[i] - raw[i])
    for i in order[:n - sum(base)]:
        base[i] += 1
    return base


@dataclass
class _Plan:
    """The trials of a chunk before they are run: who, which session, which light, which μ."""

    session_of: list[tuple[int, int, int]] = field(default_factory=list)  #: (experiment, mouse, session)
    light: list[npt.NDArray[np.int64]] = field(default_factory=list)
    eligible: list[npt.NDArray[np.bool_]] = field(default_factory=list)
    mu_left: list[FloatArray] = field(default_factory=list)
    mu_right: list[FloatArray] = field(default_factory=list)
    mice: list[dict[str, float]] = field(default_factory=list)


def _plan(design: Design, pop: Population, n_exp: int, rng: np.random.Generator) -> _Plan:
    plan = _Plan()
    for e in range(n_exp):
        mu_l = np.clip(pop.mu_left + pop.mu_sd * rng.standard_normal(pop.mice), 0.0, 1.0)
        mu_r = np.clip(pop.mu_right + pop.mu_sd * rng.standard_normal(pop.mice), 0.0, 1.0)
        day0 = rng.integers(pop.day, pop.day + pop.day_spread + 1, size=pop.mice)
        for m in range(pop.mice):
            plan.mice.append({"experiment": e, "mouse": m, "mu_left": float(mu_l[m]), "mu_right": float(mu_r[m]),
                              "first_day": int(day0[m])})
            for s in range(pop.sessions):
                n = pop.trials if pop.trials_sd == 0 else max(
                    MIN_TRIALS_PER_SESSION, round(pop.trials + pop.trials_sd * rng.standard_normal()))
                if design.kind == "block":
                    cnt = _counts([a.fraction for a in design.arms], n)
                    arm = rng.permutation(np.repeat(np.arange(len(design.arms)), cnt))
                    elig = np.ones(n, dtype=bool)
                else:
                    n_el = round(design.eligible_fraction * n)
                    n_lit = round(design.light_fraction * n_el)
                    order = rng.permutation(n)
                    elig = np.zeros(n, dtype=bool)
                    elig[order[:n_el]] = True
                    arm = np.full(n, -1, dtype=np.int64)
                    arm[order[:n_lit]] = 0
                plan.session_of.append((e, m, s))
                plan.light.append(arm.astype(np.int64))
                plan.eligible.append(elig)
                plan.mu_left.append(np.full(n, mu_l[m]))
                plan.mu_right.append(np.full(n, mu_r[m]))
    return plan


@dataclass
class ChunkResult:
    """What one task returns: per quantity, arrays over the chunk's experiments."""

    index: int
    experiments: int
    estimate: dict[str, FloatArray]
    se: dict[str, FloatArray]
    within: dict[str, FloatArray]
    trials: int
    seconds: float
    mice: list[dict[str, float]] = field(default_factory=list)


def simulate_experiments(spec: PowerSpec, n_exp: int, rng: np.random.Generator,
                         population: Population | None = None) -> tuple[list[dict[str, tuple[float, float, float]]],
                                                                       int, list[dict[str, float]]]:
    """Simulate ``n_exp`` experiments of ``population`` (default the spec's) in one batch and analyse each."""
    design = design_of(spec.protocol)
    pop = population or spec.population
    plan = _plan(design, pop, n_exp, rng)
    lights = [a.light for a in design.arms]
    idx = np.concatenate(plan.light)
    windows: dict[str, tuple[float, float]] = {}
    if design.kind == "state_triggered":
        lw = design.light
        windows = {"state": (lw.t_on_s - design.read_window_s, lw.t_on_s), "light": (lw.t_on_s, lw.t_off_s)}
    run = run_batch(spec.config, np.where(idx < 0, -1, idx), lights, rng, mu_left=np.concatenate(plan.mu_left),
                    mu_right=np.concatenate(plan.mu_right), windows=windows)
    read = run.window_left if design.read == "left" else run.window_right
    out: list[dict[str, tuple[float, float, float]]] = []
    start = 0
    by_exp: dict[int, list[Session]] = {}
    for (e, m, _s), arm, elig in zip(plan.session_of, plan.light, plan.eligible, strict=True):
        sl = slice(start, start + arm.size)
        start += arm.size
        y = run.instructed[sl]
        state = read["state"][sl] if windows else np.zeros(arm.size)
        sel = read["light"][sl] * y if windows else np.zeros(arm.size)
        by_exp.setdefault(e, []).append(Session(m, arm, run.correct[sl], y, elig, state, sel))
    for e in range(n_exp):
        out.append(analyse_experiment(design, by_exp[e]))
    return out, int(idx.size), plan.mice


def simulate_chunk(spec: PowerSpec, index: int, seed: np.random.SeedSequence) -> ChunkResult:
    """One task: the chunk ``index`` of the spec's experiments, from its own seed (same on any worker)."""
    t0 = time.perf_counter()
    n_exp = min(spec.chunk_size, spec.experiments - index * spec.chunk_size)
    results, trials, mice = simulate_experiments(spec, n_exp, np.random.default_rng(seed))
    keys = list(results[0])
    est = {k: np.array([r[k][0] for r in results]) for k in keys}
    se = {k: np.array([r[k][1] for r in results]) for k in keys}
    within = {k: np.array([r[k][2] for r in results]) for k in keys}
    return ChunkResult(index, n_exp, est, se, within, trials, time.perf_counter() - t0, mice)


def chunk_seeds(spec: PowerSpec) -> list[np.random.SeedSequence]:
    """Per-chunk seeds: the children of SeedSequence(seed) (independent of the number of workers)."""
    return np.random.SeedSequence(spec.seed).spawn(spec.n_chunks)


# --- summary -----------------------------------------------------------------------------------


@dataclass
class Quantity:
    """One effect over all simulated experiments (docs/power.md, "What it reports")."""

    name: str
    effect: float  #: mean estimate over experiments: the simulated population's expected effect
    effect_ci: tuple[float, float]  #: Monte Carlo 95 % CI of that mean
    typical_ci_half_width: float  #: median half-width of one experiment's 95 % CI
    power: float  #: fraction of experiments rejecting "no effect" at α (two-sided)
    power_ci: tuple[float, float]  #: Wilson 95 % CI of the power over experiments
    experiments: int
    within_var: float  #: mean within-mouse variance of one experiment's estimate at the design
    between_var: float  #: between-mouse variance τ² of the effect (from the spread of estimates)
    needed: dict[str, int | None]  #: trials per session / sessions per mouse / mice for the target power
    truth: float | None = None  #: planted ground truth (large oracle run), when computed
    coverage: float | None = None  #: fraction of experiments whose 95 % CI contains the truth
    coverage_ci: tuple[float, float] | None = None


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def analytic_power(effect: float, var: float, alpha: float) -> float:
    """Power of the two-sided z-test for an effect whose estimate has variance ``var``."""
    if not (var > 0 and math.isfinite(effect)):
        return math.nan
    d = abs(effect) / math.sqrt(var)
    z = _z(alpha)
    return float(stats.norm.cdf(d - z) + stats.norm.cdf(-d - z))


def design_variance(q: Quantity, pop: Population, *, trials: float | None = None, sessions: float | None = None,
                    mice: float | None = None) -> float:
    """Variance of one experiment's estimate at another design: within ∝ 1/(N·S·M), between τ²/M."""
    n = trials or pop.trials
    s = sessions or pop.sessions
    m = mice or pop.mice
    return q.within_var * (pop.trials * pop.sessions * pop.mice) / (n * s * m) + q.between_var / m


def _needed(effect: float, mc_se: float, within: float, tau2: float, pop: Population, alpha: float,
            target: float) -> dict[str, int | None]:
    """Smallest trials per session, sessions per mouse, mice (each with the others at the design) for ``target``."""
    none: dict[str, int | None] = {"trials_per_session": None, "sessions_per_mouse": None, "mice": None}
    if not (math.isfinite(effect) and math.isfinite(within)) or abs(effect) <= 2.0 * mc_se or within <= 0:
        return none  # no effect distinguishable from 0 in the simulation: nothing to detect
    v_star = (abs(effect) / (_z(alpha) + float(stats.norm.ppf(target)))) ** 2  # variance giving the target
    k = within * pop.trials * pop.sessions * pop.mice  # within-mouse variance × trials
    out = dict(none)
    room = v_star - tau2 / pop.mice
    if room > 0:
        out["trials_per_session"] = max(1, math.ceil(k / (pop.sessions * pop.mice * room)))
        out["sessions_per_mouse"] = max(1, math.ceil(k / (pop.trials * pop.mice * room)))
    out["mice"] = max(1, math.ceil((k / (pop.trials * pop.sessions) + tau2) / v_star))
    for key, v0 in out.items():  # refine against the exact two-sided power (the closed form drops one tail)
        if v0 is None:
            continue
        v = v0
        while v > 1:
            kw = {"trials_per_session": "trials", "sessions_per_mouse": "sessions", "mice": "mice"}[key]
            n0 = {"trials": pop.trials, "sessions": pop.sessions, "mice": pop.mice}
            n0[kw] = v - 1
            var = within * pop.trials * pop.sessions * pop.mice / (n0["trials"] * n0["sessions"] * n0["mice"]) + \
                tau2 / n0["mice"]
            if analytic_power(effect, var, alpha) < target:
                break
            v -= 1
        out[key] = v
    return out


def summarise(spec: PowerSpec, chunks: Sequence[ChunkResult], truth: dict[str, float] | None = None) -> list[Quantity]:
    """Summarise the chunks (in chunk order) into one :class:`Quantity` per effect."""
    chunks = sorted(chunks, key=lambda c: c.index)
    keys = list(chunks[0].estimate)
    z = _z(spec.alpha)
    out = []
    for k in keys:
        est = np.concatenate([c.estimate[k] for c in chunks])
        se = np.concatenate([c.se[k] for c in chunks])
        within = np.concatenate([c.within[k] for c in chunks])
        ok = np.isfinite(est) & np.isfinite(se) & (se > 0)
        e, s, w = est[ok], se[ok], within[ok]
        n = int(e.size)
        if n == 0:
            out.append(Quantity(k, math.nan, (math.nan, math.nan), math.nan, math.nan, (math.nan, math.nan), 0,
                                math.nan, math.nan, _needed(math.nan, math.nan, math.nan, 0, spec.population,
                                                            spec.alpha, spec.target_power)))
            continue
        mean = float(e.mean())
        mc_se = float(e.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
        rej = int(np.sum(np.abs(e / s) > z))
        w_mean = float(w.mean())
        tau2 = max(0.0, spec.population.mice * (float(e.var(ddof=1)) - w_mean)) if n > 1 else 0.0
        q = Quantity(k, mean, (mean - 1.96 * mc_se, mean + 1.96 * mc_se), float(np.median(1.96 * s)), rej / n,
                     wilson(rej, n), n, w_mean, tau2,
                     _needed(mean, mc_se, w_mean, tau2, spec.population, spec.alpha, spec.target_power))
        if truth is not None and k in truth and math.isfinite(truth[k]):
            t = truth[k]
            cov = int(np.sum(np.abs(e - t) <= 1.96 * s))
            q.truth, q.coverage, q.coverage_ci = t, cov / n, wilson(cov, n)
        out.append(q)
    return out


def oracle_truth(spec: PowerSpec, trials: int = 100_000, seed: int = 2**31 - 1) -> dict[str, float]:
    """The expected effects at the spec's design (planted effects included): one experiment of very many mice.

    The mice are the population's, each with the design's sessions and trials per session, so that what
    depends on the session size — the state-triggered label is a median within each session — is the
    design's; ``trials`` are shared among ⌈trials / (sessions × trials per session)⌉ mice and the mean
    over them is the truth an experiment's CI should cover.
    """
    pop = spec.population
    mice = max(1, -(-trials // (pop.sessions * pop.trials)))
    big = Population(mice=mice, sessions=pop.sessions, trials=pop.trials, trials_sd=pop.trials_sd,
                     mu_left=pop.mu_left, mu_right=pop.mu_right, mu_sd=pop.mu_sd, day=pop.day,
                     day_spread=pop.day_spread)
    res, _, _ = simulate_experiments(spec, 1, np.random.default_rng(seed), population=big)
    return {k: v[0] for k, v in res[0].items()}


def median_state(spec: PowerSpec, trials: int = 20_000, seed: int = 2**31 - 2) -> float:
    """The median signed state of the population's unlit trials: the default plant threshold (docs/power.md)."""
    design = design_of(spec.protocol)
    if design.kind != "state_triggered":
        raise ValueError("a state-dependent efficacy needs a state-triggered protocol")
    lw = design.light
    cfg = spec.config.model_copy(update={"planted": None})
    run = run_batch(cfg, np.full(trials, -1, dtype=np.int64), [lw], np.random.default_rng(seed),
                    windows={"state": (lw.t_on_s - design.read_window_s, lw.t_on_s)})
    x = (run.window_left if design.read == "left" else run.window_right)["state"]
    return float(np.median(x * run.instructed))


# --- running -----------------------------------------------------------------------------------


@dataclass
class PowerResult:
    """A whole power analysis: the spec, the quantities and how it ran."""

    spec: PowerSpec
    quantities: list[Quantity]
    trials_simulated: int
    seconds: float
    task_seconds: list[float]
    runner: str
    workers: int
    mice: list[dict[str, float]] = field(default_factory=list)

    @property
    def experiments_per_s(self) -> float:
        """Throughput of the simulation phase."""
        return self.spec.experiments / self.seconds if self.seconds > 0 else math.nan

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-ready (NaN → null)."""
        sp = self.spec
        d = {"protocol": {"name": sp.protocol.name, "sha256": sp.protocol.sha256, "path": sp.protocol.path,
                          "kind": sp.protocol.spec.protocol.kind},
             "population": asdict(sp.population), "mouse": sp.config.model_dump(mode="json"),
             "planted": None if sp.config.planted is None else sp.config.planted.model_dump(mode="json"),
             "experiments": sp.experiments, "seed": sp.seed, "alpha": sp.alpha, "target_power": sp.target_power,
             "chunk_size": sp.chunk_size, "chunks": sp.n_chunks,
             "run": {"runner": self.runner, "workers": self.workers, "seconds": self.seconds,
                     "experiments_per_s": self.experiments_per_s, "trials_simulated": self.trials_simulated,
                     "task_seconds_median": float(np.median(self.task_seconds)) if self.task_seconds else None},
             "quantities": [asdict(q) for q in self.quantities]}
        out: dict[str, Any] = _finite(json.loads(json.dumps(d, default=_json_default)))
        return out

    def report(self) -> str:
        """The terminal table (plain text)."""
        sp, pop = self.spec, self.spec.population
        head = (f"power of {sp.protocol.name!r}: {sp.experiments} simulated experiments of "
                f"{_n(pop.mice, 'mouse', 'mice')}"
                f" × {_n(pop.sessions, 'session')} × {pop.trials} trials (μ_L {pop.mu_left}, μ_R {pop.mu_right}, "
                f"± {pop.mu_sd} between mice; model {sp.config.model}); α = {sp.alpha}, target power "
                f"{sp.target_power:.0%}")
        lines = [head, ""]
        truth = any(q.truth is not None for q in self.quantities)
        cols = ["quantity", "effect (95 % CI)", "one experiment ± ", "power (95 % CI)", "trials/session",
                "sessions", "mice"] + (["truth", "coverage"] if truth else [])
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for q in self.quantities:
            row = [label(q.name), f"{q.effect:+.3f} ({q.effect_ci[0]:+.3f} … {q.effect_ci[1]:+.3f})",
                   f"{q.typical_ci_half_width:.3f}", f"{q.power:.2f} ({q.power_ci[0]:.2f}–{q.power_ci[1]:.2f})"]
            row += ["—" if q.needed[k] is None else str(q.needed[k])
                    for k in ("trials_per_session", "sessions_per_mouse", "mice")]
            if truth:
                row += ["—" if q.truth is None else f"{q.truth:+.3f}",
                        "—" if q.coverage is None else f"{q.coverage:.2f}"]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines.append("effect: control − condition (behaviour: fraction correct; neural: the unperturbed hemisphere's "
                     "selectivity, absolute and relative loss 1 − M); needed: each with the others at the design, "
                     "— when the simulated effect is indistinguishable from 0 or the between-mouse spread alone "
                     "exceeds it")
        lines.append(f"ran {self.trials_simulated:,} trials in {self.seconds:.1f} s "
                     f"({self.experiments_per_s:.1f} experiments/s, {self.runner}, {self.workers} worker"
                     f"{'s' if self.workers != 1 else ''})")
        return "\n".join(lines)


def _n(k: int, one: str, many: str | None = None) -> str:
    return f"{k} {one if k == 1 else (many or one + 's')}"


def _finite(o: Any) -> Any:
    """NaN and ±inf → None, recursively (strict JSON)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


_LABELS = {"behaviour": "behaviour", "neural_loss": "neural loss", "neural_relative_loss": "neural 1 − M"}


def label(name: str) -> str:
    """A quantity's name for tables and figures."""
    for k in sorted(_LABELS, key=len, reverse=True):
        if name.startswith(k + "_"):
            return f"{_LABELS[k]}, {name.removeprefix(k + '_').replace('_minus_', ' − ')}"
    return name


def run_power(spec: PowerSpec, *, serial: bool = False, scheduler: str | None = None, workers: int | None = None,
              progress: Callable[[int, int], object] | None = None, truth: bool | None = None,
              truth_trials: int = 100_000) -> PowerResult:
    """Run the analysis: chunks in-process (``serial``), on an existing Dask scheduler, or on a LocalCluster.

    The numbers depend only on the spec (its seed and chunk size), not on where the chunks ran.
    ``truth`` (default: when effects are planted) adds the oracle's ground truth and each CI's coverage.
    """
    spec.check()
    seeds = chunk_seeds(spec)
    t0 = time.perf_counter()
    chunks: list[ChunkResult] = []
    if serial:
        runner, n_workers = "serial (in-process)", 1
        for i, ss in enumerate(seeds):
            chunks.append(simulate_chunk(spec, i, ss))
            if progress is not None:
                progress(len(chunks), len(seeds))
    else:
        chunks, runner, n_workers, t0 = _run_dask(spec, seeds, scheduler, workers, progress)
    seconds = time.perf_counter() - t0
    want_truth = spec.config.planted is not None if truth is None else truth
    tr = oracle_truth(spec, truth_trials) if want_truth else None
    return PowerResult(spec, summarise(spec, chunks, tr), sum(c.trials for c in chunks), seconds,
                       [c.seconds for c in chunks], runner, n_workers,
                       [m for c in sorted(chunks, key=lambda c: c.index) for m in c.mice])


def _run_dask(spec: PowerSpec, seeds: list[np.random.SeedSequence], scheduler: str | None, workers: int | None,
              progress: Callable[[int, int], object] | None) -> tuple[list[ChunkResult], str, int, float]:
    """The chunks as Dask tasks; returns them, the runner's name, its worker count and when tasks were submitted."""
    dd: Any = importlib.import_module("distributed")  # untyped: reached through Any
    cluster: Any = None
    client: Any
    if scheduler is not None:
        client = dd.Client(scheduler, timeout="10s")
        runner = f"dask scheduler {scheduler}"
    else:
        n = workers or max(1, min(len(seeds), _cpus()))
        cluster = dd.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = dd.Client(cluster)
        runner = "dask LocalCluster (processes)"
    try:
        n_workers = len(client.scheduler_info().get("workers", {}))
        t0 = time.perf_counter()
        futures = [client.submit(simulate_chunk, spec, i, ss, pure=False) for i, ss in enumerate(seeds)]
        for done, _ in enumerate(dd.as_completed(futures), start=1):
            if progress is not None:
                progress(done, len(futures))
        chunks: list[ChunkResult] = client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return chunks, runner, n_workers, t0


#: glibc's allocator in the worker processes: Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 (to hand memory
#: back to the OS), which also fixes the mmap threshold at 128 KiB, so every temporary array of a batch
#: (32,000 trials × 8 bytes) is a fresh mmap with its page faults: 5–8× slower per task here
#: (docs/benchmarks.md, "Protocol power analysis"). Heap allocation up to 64 MiB, trimming above 256 MiB.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def local_cluster(workers: int) -> Any:
    """A ``distributed.LocalCluster`` of ``workers`` one-thread processes on 127.0.0.1, no dashboard."""
    import dask

    dd: Any = importlib.import_module("distributed")
    env = {**dask.config.get("distributed.nanny.pre-spawn-environ", default={}), **WORKER_MALLOC}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        return dd.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.ERROR)


def _cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# --- figure ------------------------------------------------------------------------------------


def plot(result: PowerResult, path: Path) -> Path:
    """Power curves (matplotlib PNG): power vs trials per session and vs mice, the design's simulated power marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp, pop = result.spec, result.spec.population
    groups: list[tuple[str, list[Quantity]]]
    if any(q.name.startswith("behaviour_") for q in result.quantities):
        groups = [("behaviour", [q for q in result.quantities if q.name.startswith("behaviour_")]),
                  ("neural", [q for q in result.quantities if q.name.startswith("neural_loss_")])]
    else:
        groups = [("behaviour", result.quantities)]
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 3.6 * len(groups)), squeeze=False)
    n_axis = np.unique(np.geomspace(max(10, pop.trials / 16), pop.trials * 32, 60).round())
    m_axis = np.arange(1, max(4 * pop.mice, 12) + 1)
    for r, (title, qs) in enumerate(groups):
        for c, (xs, kw, xlabel, x0) in enumerate(((n_axis, "trials", "trials per session", pop.trials),
                                                  (m_axis, "mice", "mice", pop.mice))):
            ax = axes[r][c]
            for q in qs:
                ys = [analytic_power(q.effect, design_variance(q, pop, **{kw: float(x)}), sp.alpha) for x in xs]
                line, = ax.plot(xs, ys, label=label(q.name))
                ax.errorbar([x0], [q.power], yerr=[[q.power - q.power_ci[0]], [q.power_ci[1] - q.power]], fmt="o",
                            color=line.get_color())
            ax.axhline(sp.target_power, color="0.6", lw=0.8, ls="--")
            ax.axhline(sp.alpha, color="0.8", lw=0.8, ls=":")
            if c == 0:
                ax.set_xscale("log")
            ax.set_ylim(0, 1)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("power")
            ax.set_title(f"{title}: {_n(pop.sessions, 'session')} × {'N' if c == 0 else pop.trials} trials, "
                         f"{pop.mice if c == 0 else 'M'} mice", fontsize=9)
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{sp.protocol.name}: power at α = {sp.alpha} (curves: SE model; dots: {sp.experiments} simulated "
                 "experiments at the design, 95 % CI)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: PowerResult, directory: Path) -> dict[str, Path]:
    """``power.json``, ``power.png`` and ``power.md`` (the table) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    js = directory / "power.json"
    js.write_text(json.dumps(result.to_json(), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    md = directory / "power.md"
    md.write_text(result.report() + "\n", encoding="utf-8")
    return {"json": js, "figure": plot(result, directory / "power.png"), "table": md}


def with_plant(config: MouseConfig, plant: PlantedEffects | None) -> MouseConfig:
    """The mouse with ``plant`` as its planted effects."""
    return config.model_copy(update={"planted": plant})
