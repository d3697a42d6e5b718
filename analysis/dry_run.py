"""Dry run: rehearse a protocol on the simulated mouse in-process, through the live pipeline.

What ``rigd protocol check FILE --dry-run N`` calls.

This module owns the rehearsal: the simulated mouse is stepped bin by bin and each bin goes
through the same :class:`~rig.pipeline.Pipeline` a live session runs (trial tracker → the
configured online decoder → the protocol's controller → deadline → the real
:class:`~hardware.interlock.LightInterlock`), on the rig's clock (``clock="rig"``: decoder builds
and refits are waited for, so the rehearsal is deterministic). Each bin is handed over as a
simulated rig in lockstep sends it (``rigd start --rig sim --clock rig``): the frame, then the
bin's trial events; the light commands the frame caused are applied to the mouse before its
next bin and acknowledged to the pipeline, so a live lockstep session of the same seed,
protocol and decoder makes the same decisions.

It returns the expected trial counts per condition, the light dose per hemisphere (the
interlock's own account), behavioural performance per condition with Wilson 95 % CIs, the
modularity M of each hemisphere with a bootstrap CI (Chen et al. 2021's M, conventions of
docs/simulator.md: the mean latent of the unperturbed hemisphere over the protocol's light window,
read through :attr:`SimulatedMouse.latent`, on trials with the partner silenced vs control; all
completed trials), and, for the state-triggered protocol, the effect of light in weak vs strong
states with a test of their difference, next to the vectorised offline model's prediction for the
same mouse and protocol (:func:`offline_state_prediction`). It opens no socket and reads no clock.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from analysis.stats import wilson
from controllers.base import Controller
from controllers.policies import ModularityProbe, modularity_with_ci
from controllers.protocol import Protocol, build_controller, light_window_from_go, load_protocol
from controllers.trial_state import TrialTracker
from decoders.base import Estimate
from hardware.calibration import SafetyLimits, default_limits
from hardware.interlock import LightInterlock
from hardware.light_source import WireLightSource
from rig import wire
from rig.errors import Counters
from rig.pipeline import InlineExecutor, Pipeline, PipelineParts, online_decoder
from sim.config import MouseConfig
from sim.mouse import SimulatedMouse


@dataclass
class DryRunResult:
    """What a dry run found (all numbers from the simulated session)."""

    protocol: str
    n_trials: int
    counts: dict[str, int]
    performance: dict[str, dict[str, float]]
    dose_j: dict[str, float]
    refusals: dict[str, int]
    alarms: int
    state_effect: dict[str, Any] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    estimator: str = "none"
    modularity: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the pipeline's trial summaries, exactly as a live session records them (type "trial" records)
    pipeline_trials: list[dict[str, Any]] = field(default_factory=list)

    def report(self) -> str:
        """Markdown-ish summary (what ``rigd protocol check --dry-run`` prints)."""
        lines = [f"dry run of {self.protocol!r}: {self.n_trials} trials on the simulated mouse "
                 f"(estimate: {self.estimator})", "", "| condition | trials | correct | 95 % CI |",
                 "|---|---|---|---|"]
        for c, p in sorted(self.performance.items()):
            ci = f"{p['ci_low']:.3f}–{p['ci_high']:.3f}"
            lines.append(f"| {c} | {int(p['n'])} | {p['correct']:.3f} | {ci} |")
        lines.append("")
        lines.append(f"light dose: left {self.dose_j['left']:.4f} J, right {self.dose_j['right']:.4f} J; "
                     f"refusals {self.refusals or 'none'}; alarms {self.alarms}")
        for h, m in sorted(self.modularity.items()):
            lines.append(f"modularity M_{h[0].upper()} ({h} hemisphere, partner silenced / control, latent "
                         f"over the light window): {m['m']:.3f} (95 % bootstrap CI {m['ci_low']:.3f}–"
                         f"{m['ci_high']:.3f}; {int(m['n_light'])} light, {int(m['n_control'])} control trials)")
        if self.state_effect:
            lines.extend(state_lines(self.state_effect))
        return "\n".join(lines)


def _ci(est: float, se: float) -> str:
    """"0.123 (95 % CI 0.050 … 0.196)" from an estimate and its SE (normal)."""
    return f"{est:+.3f} (95 % CI {est - 1.96 * se:+.3f} … {est + 1.96 * se:+.3f})"


def state_lines(se: dict[str, Any]) -> list[str]:
    """The state-triggered experiment's behavioural and neural lines, per state, with CIs (docs/protocols.md)."""
    lines = [f"state-triggered, behaviour: effect of light (no light − light, fraction correct) weak "
             f"{_ci(se['effect_weak'], se['se_weak'])}, strong {_ci(se['effect_strong'], se['se_strong'])}; "
             f"weak − strong {_ci(se['difference'], se['se_difference'])} (z = {se['z']:.2f}, one-sided p = "
             f"{se['p_one_sided']:.3g})"]
    if "read_loss_weak" in se:
        side = "left" if se.get("read_hemisphere") == 0.0 else "right"
        parts = []
        for s in ("weak", "strong"):
            parts.append(f"{s}: {se[f'read_selectivity_{s}_no_light']:.3f} → {se[f'read_selectivity_{s}_light']:.3f}, "
                         f"loss {_ci(se[f'read_loss_{s}'], se[f'se_read_loss_{s}'])}, M "
                         f"{se[f'read_m_{s}']:.2f} ± {1.96 * se[f'se_read_m_{s}']:.2f} (relative loss "
                         f"{se[f'read_relative_loss_{s}']:.2f})")
        lines.append(f"state-triggered, neural ({side} hemisphere, unperturbed: selectivity = latent × instructed side "
                     f"over the light window, no light → light): " + "; ".join(parts) + "; weak − strong loss "
                     f"{_ci(se['read_loss_difference'], se['se_read_loss_difference'])}, relative "
                     f"{_ci(se['read_relative_loss_difference'], se['se_read_relative_loss_difference'])}")
    return lines


def _condition(log: dict[str, Any]) -> str:
    if "condition" in log:  # block scheduler
        return str(log["condition"])
    if log.get("policy") == "state_triggered":
        return f"{log.get('state') or 'unknown'}_{'light' if log.get('light') else 'no_light'}"
    if log.get("policy") == "threshold":
        return "fired" if log.get("fired") else "not_fired"
    if log.get("policy") == "modularity_probe":
        return "light" if log.get("light") else "control"
    return "trial"


class LatentReader:
    """The ideal decoder (``estimator="latent"``): the simulated mouse's latent per hemisphere as the estimate."""

    def __init__(self, mouse: SimulatedMouse) -> None:
        self.mouse = mouse
        self.estimate = Estimate()

    def step(self, counts: np.ndarray[Any, Any], seq: int, t_s: float) -> Estimate:
        """The latent after this bin (the counts are not read)."""
        e = self.estimate
        e.left, e.right = self.mouse.latent
        e.value, e.ready, e.t_s, e.seq = e.left + e.right, True, t_s, seq
        return e

    def on_trial_start(self, trial: int) -> None:
        """Nothing to collect."""

    def on_trial_end(self, trial: int, choice: int, instructed: int, correct: bool, use_for_fit: bool) -> bool:
        """Never fits."""
        return False

    def status(self) -> dict[str, Any]:
        """What it serves."""
        return {"decoder": "latent", "ready": True}


def dry_run(protocol: Protocol | str | Path, n_trials: int, *, config: MouseConfig | None = None,
            seed: int = 0, limits: SafetyLimits | None = None,
            estimator: Literal["auto", "decoder", "latent", "none"] = "auto",
            controller: Controller | None = None,
            progress: Callable[[int], object] | None = None,
            decoder: str = "cd", decoder_mode: Literal["freeze", "adaptive"] = "adaptive",
            n_fit_trials: int = 20) -> DryRunResult:
    """Run ``protocol`` for ``n_trials`` completed trials on the simulated mouse, in-process.

    Args:
        protocol: a loaded protocol or a protocol file/text.
        n_trials: trials to run (early-lick aborts included).
        config: the mouse (default: μ = 0.6, 5-ms bins, short ITI for speed).
        seed: seeds the mouse and the protocol's controller, as ``rigd start --seed`` does.
        limits: interlock limits (default calibration).
        estimator: what feeds ``Estimate``: the online decoder a session would run ("decoder"),
            the simulator's latent per hemisphere ("latent": the ideal decoder), or nothing;
            "auto" = decoder for closed-loop kinds, nothing for blocks.
        decoder: the online decoder's name, as ``rigd start --decoder``.
        decoder_mode: "adaptive" (refits through the session) or "freeze", as a session's.
        n_fit_trials: control trials before the first fit, as ``rigd start --n-fit-trials``.
        controller: use this controller instead of the one the protocol builds.
        progress: called with the number of finished trials after each trial (progress bars).

    """
    proto = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
    kind = proto.spec.protocol.kind
    cfg = config or default_config(proto)
    mouse = _mouse(cfg, seed)
    ctrl = controller or build_controller(proto, seed=seed)
    mode = estimator if estimator != "auto" else ("none" if kind == "block" else "decoder")
    alarms: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    minted: list[bytes] = []  # the light commands of the current bin, applied before the next one
    lim = limits or default_limits()

    def make_decoder(desc: dict[str, Any]) -> Any:
        if mode == "latent":
            return LatentReader(mouse)
        return online_decoder(desc, decoder=decoder, n_fit_trials=n_fit_trials, mode=decoder_mode,
                              default_bin_s=cfg.bin_s)

    def on_trial(summary: dict[str, Any]) -> None:
        if summary.get("type") == "trial":
            summaries.append(summary)
            if progress is not None:
                progress(len(summaries))

    parts = PipelineParts(tracker=TrialTracker, controller=lambda rig: ctrl,
                          interlock=lambda rig, send, alarm: LightInterlock(lim, WireLightSource(send), alarm),
                          decoder=make_decoder if mode in ("decoder", "latent") else None)
    pipe = Pipeline(1, parts, send_light=minted.append, counters=Counters(), record=lambda rec, t: None,
                    on_alarm=alarms.append, on_trial=on_trial, builds=InlineExecutor(), fits=InlineExecutor(),
                    clock="rig")
    pipe.describe(mouse.description)
    win0, win1 = light_window_from_go(proto.spec)
    acc = [0.0, 0.0, 0]  # per trial: sums of x_L, x_R and bins inside the light window (strict bounds)
    window_latent: dict[int, tuple[float, float]] = {}
    seq = 0
    while len(summaries) < n_trials:
        out = mouse.step()
        pipe.frame(seq, out.t_rig_ns, out.t_rig_ns, out.counts, out.t_rig_ns)
        seq += 1
        t_tr = mouse.trial_time_s
        x_l, x_r = mouse.latent
        if win0 < t_tr < win1:
            acc[0] += x_l
            acc[1] += x_r
            acc[2] += 1
        for name, fields in out.events:
            ev = {"event": name, **{k: v for k, v in fields.items() if k != "t_rig_ns"}}
            if name == "trial_end":
                trial = pipe.tracker.state.trial
                if acc[2]:
                    window_latent[trial] = (acc[0] / acc[2], acc[1] / acc[2])
                    if isinstance(ctrl, ModularityProbe):  # the probe reads the latent, not Estimate
                        ctrl.add_trial_summary(trial, window_latent[trial][0 if ctrl.read == "left" else 1])
                acc[0] = acc[1] = 0.0
                acc[2] = 0
            pipe.event(ev, int(fields.get("t_rig_ns", out.t_rig_ns)))
        for payload in minted:  # the rig receives the bin's commands before it computes the next bin
            cmd = wire.unpack_light_command(payload)
            t_recv = mouse.t_rig_ns
            status, t_change = mouse.apply_light(cmd, t_recv)
            pipe.ack(wire.LightAckFields(cmd.command_id, cmd.cause_seq, cmd.cause_t_send_ns, t_recv, t_change,
                                         status))
        minted.clear()
    close = getattr(mouse, "close", None)  # a spiking mouse's backend (a Lava sidecar) stops here
    if close is not None:
        close()
    il = pipe.interlock
    energy = {"left": il.energy_total_j[0], "right": il.energy_total_j[1]}
    logs = [{**(t.get("decision") or {}), "trial": t["trial"]} for t in summaries[:n_trials]]
    result = _summarise(proto, logs=logs, mouse=mouse, energy=energy, il=il, alarms=alarms,
                        mode=mode, summaries=window_latent)
    result.pipeline_trials = summaries[:n_trials]
    return result


def _mouse(cfg: MouseConfig, seed: int) -> SimulatedMouse:
    """The mouse ``rigd start --rig sim`` would run for this config (the spiking one for model="spiking")."""
    if cfg.model == "spiking":
        from sim.spiking_mouse import SpikingMouse  # numba (and a Lava sidecar): only when asked for

        return SpikingMouse(cfg, seed)
    return SimulatedMouse(cfg, seed)


def default_config(proto: Protocol, **overrides: Any) -> MouseConfig:
    """The dry-run mouse: μ = 0.6 unless overridden, 5-ms bins, short ITI and outcome timeouts.

    Shorter inter-trial intervals, reward consumption and error timeouts change no statistic of the
    reduced model (docs/simulator.md; each trial starts from x = 0) or of the authors' RNN
    (docs/simulator-rnn.md; each trial starts from h = 0); they only make the rehearsal faster.
    ``model="rnn"`` runs that network (25-ms model
    steps, still 5-ms bins); the μ overrides do not apply to it.
    """
    kw: dict[str, Any] = {"bin_s": 0.005, "iti_s": (0.3, 0.5),  # model_dt_s: the model's own default
                          "reward_consumption_s": 0.3, "error_timeout_s": 0.3,
                          "delay_s": proto.spec.session.expects_delay_s}
    kw.update(overrides)
    return MouseConfig(**kw)


def _modularity(rows: list[dict[str, Any]], summaries: dict[int, tuple[float, float]],
                instructed: dict[int, int]) -> dict[str, dict[str, float]]:
    """M of each hemisphere from the light-window latent of control vs partner-silenced trials."""
    out: dict[str, dict[str, float]] = {}
    for h, partner in (("left", "right"), ("right", "left")):
        vals, ys, lit = [], [], []
        for r in rows:
            tr = r["trial"]
            if r["outcome"] not in ("hit", "error") or tr not in summaries or r["light"] not in ("none", partner):
                continue
            vals.append(summaries[tr][0 if h == "left" else 1])
            ys.append(instructed[tr])
            lit.append(r["light"] == partner)
        if sum(lit) < 4:
            continue
        e = modularity_with_ci(np.array(vals), np.array(ys), np.array(lit), n_boot=2000, seed=7)
        if math.isfinite(e.m):
            out[h] = {"m": e.m, "ci_low": e.ci_low, "ci_high": e.ci_high, "n_control": float(e.n_control),
                      "n_light": float(e.n_light)}
    return out


def _summarise(proto: Protocol, *, logs: list[dict[str, Any]], mouse: SimulatedMouse,
               energy: dict[str, float], il: LightInterlock, alarms: list[dict[str, Any]],
               mode: str, summaries: dict[int, tuple[float, float]]) -> DryRunResult:
    by_trial = {t["trial"]: t for t in mouse.trials}
    counts: dict[str, int] = defaultdict(int)
    hits: dict[str, list[int]] = defaultdict(list)
    rows = []
    for lg in logs:
        cond = _condition(lg)
        counts[cond] += 1
        t = by_trial.get(lg.get("trial", -1), {})
        outcome = t.get("outcome")
        row = {"trial": lg.get("trial"), "condition": cond, "outcome": outcome,
               "light": t.get("light_condition", "none"), "state": lg.get("state"),
               "instructed": wire.side_sign(t.get("instructed")),
               "window_latent": summaries.get(int(lg.get("trial", -1)))}
        rows.append(row)
        if outcome in ("hit", "error"):
            hits[cond].append(1 if outcome == "hit" else 0)
    perf = {}
    for cond, h in hits.items():
        k, n = sum(h), len(h)
        lo, hi = wilson(k, n)
        perf[cond] = {"n": float(n), "correct": k / n, "ci_low": lo, "ci_high": hi}
    effect: dict[str, Any] = {}
    if proto.spec.protocol.kind == "state_triggered":
        effect = state_effect(hits)
        if effect:
            effect.update(_state_selectivity(rows, proto))
    instructed = {int(r["trial"]): int(r["instructed"]) for r in rows if r["trial"] is not None}
    modular = _modularity(rows, summaries, instructed)
    return DryRunResult(proto.name, len(logs), dict(counts), perf, energy, dict(il.refusals), len(alarms),
                        effect, rows, mode, modular)


def _state_selectivity(rows: list[dict[str, Any]], proto: Protocol) -> dict[str, float]:
    """The neural effect per state: the read (unperturbed) hemisphere's selectivity over the light window.

    Per state: mean latent × instructed side with and without light (``read_selectivity_*``), the
    absolute loss (no light − light) with its SE, M = light / no light (Chen et al. 2021's modularity of
    the read hemisphere in that state) with a delta-method SE, the relative loss 1 − M, and the
    weak − strong difference of both losses (completed trials; docs/protocols.md).
    """
    st = proto.spec.state_triggered
    read = 0 if st is not None and st.perturb == "right" else 1
    out: dict[str, float] = {}
    for s in ("weak", "strong"):
        stats_: dict[str, tuple[float, float, int]] = {}
        for lt in ("light", "no_light"):
            v = np.array([r["window_latent"][read] * r["instructed"] for r in rows
                          if r["condition"] == f"{s}_{lt}" and r["outcome"] in ("hit", "error") and r["window_latent"]])
            mean = float(np.mean(v)) if v.size else math.nan
            var = float(np.var(v, ddof=1)) / v.size if v.size >= 2 else math.nan
            out[f"read_selectivity_{s}_{lt}"] = mean
            stats_[lt] = (mean, var, int(v.size))
        (s_l, v_l, _), (s_n, v_n, _) = stats_["light"], stats_["no_light"]
        out[f"read_loss_{s}"] = s_n - s_l
        out[f"se_read_loss_{s}"] = math.sqrt(v_n + v_l)
        m = s_l / s_n if s_n > 1e-3 else math.nan
        out[f"read_m_{s}"] = m
        out[f"se_read_m_{s}"] = math.sqrt(v_l / s_n ** 2 + s_l ** 2 * v_n / s_n ** 4) if s_n > 1e-3 else math.nan
        out[f"read_relative_loss_{s}"] = 1.0 - m
    out["read_loss_difference"] = out["read_loss_weak"] - out["read_loss_strong"]
    out["se_read_loss_difference"] = math.sqrt(out["se_read_loss_weak"] ** 2 + out["se_read_loss_strong"] ** 2)
    out["read_relative_loss_difference"] = out["read_relative_loss_weak"] - out["read_relative_loss_strong"]
    out["se_read_relative_loss_difference"] = math.sqrt(out["se_read_m_weak"] ** 2 + out["se_read_m_strong"] ** 2)
    out["read_hemisphere"] = float(read)
    return out


def state_effect(hits: dict[str, list[int]]) -> dict[str, Any]:
    """Effect of light (control − light fraction correct) per state and the weak − strong difference.

    z-test on the difference of two differences of proportions (normal approximation); the
    hypothesis tested is a larger effect in the weak state (one-sided; docs/protocols.md).
    """
    out: dict[str, Any] = {}
    var = {}
    for s in ("weak", "strong"):
        a, b = hits.get(f"{s}_no_light", []), hits.get(f"{s}_light", [])
        if not a or not b:
            return {}
        pa, pb = float(np.mean(a)), float(np.mean(b))
        out[f"correct_{s}_no_light"], out[f"correct_{s}_light"] = pa, pb
        out[f"n_{s}_no_light"], out[f"n_{s}_light"] = len(a), len(b)
        out[f"effect_{s}"] = pa - pb
        var[s] = pa * (1 - pa) / len(a) + pb * (1 - pb) / len(b)
        out[f"se_{s}"] = math.sqrt(var[s])
    diff = out["effect_weak"] - out["effect_strong"]
    se = math.sqrt(var["weak"] + var["strong"]) or math.inf
    z = diff / se
    out.update(difference=diff, se_difference=se, z=z, p_one_sided=0.5 * math.erfc(z / math.sqrt(2)))
    return out


def offline_state_prediction(protocol: Protocol | str | Path, config: MouseConfig, *, n_trials: int = 20_000,
                             seed: int = 0) -> dict[str, float]:
    """What the vectorised model (:mod:`sim.offline`) predicts for a state-triggered protocol.

    ``n_trials`` trials run twice with common random numbers (no light; light on the protocol's
    hemisphere in its window), so the trajectories before onset are identical and the state label
    is the same in both. The state is the read hemisphere's latent averaged over the read window
    (time bins ending in (onset − read_window_s, onset]), signed by the instructed side or absolute
    (the protocol's ``state_measure``), split at the median per instructed side (the running
    median's limit). Returns per-state correct fractions, effects (no light − light) and the weak − strong
    difference with its standard error at ``n_trials`` (paired, so small); and the neural side of the
    experiment per state (docs/protocols.md): the read hemisphere's selectivity (latent × instructed
    side) averaged over the light window (t in (onset, offset]) without light, with light, their ratio
    (the state's modularity M) and the paired loss of selectivity with its SE, and the weak − strong
    difference of that loss. ``config.model`` picks the model ("reduced" or "rnn").
    """
    from sim.offline import LightWindow, run_latent

    proto = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
    st = proto.spec.state_triggered
    if st is None or st.perturb == "alternate":
        raise ValueError("offline_state_prediction needs a state_triggered protocol with perturb left/right")
    on, off = light_window_from_go(proto.spec)
    lw = LightWindow(st.perturb, on, off, proto.spec.light.ramp_down_s, proto.spec.light.power_mw_per_spot)
    ctl = run_latent(n_trials, seed, config=config)
    lit = run_latent(n_trials, seed, config=config, light=lw)
    t = ctl.t_s
    x_read = ctl.x_right if st.perturb == "left" else ctl.x_left
    v = x_read[:, (t > on - st.read_window_s + 1e-9) & (t <= on + 1e-9)].mean(axis=1).astype(np.float64)
    y = ctl.instructed.astype(np.float64)
    s = v * y if st.state_measure == "signed" else np.abs(v)
    weak = np.zeros(n_trials, dtype=bool)
    for side in (1.0, -1.0):
        m = y == side
        weak[m] = s[m] < np.median(s[m])
    out: dict[str, float] = {"n": float(n_trials)}
    d = ctl.correct.astype(np.float64) - lit.correct.astype(np.float64)  # paired per trial
    for name, msk in (("weak", weak), ("strong", ~weak)):
        out[f"correct_{name}_no_light"] = float(ctl.correct[msk].mean())
        out[f"correct_{name}_light"] = float(lit.correct[msk].mean())
        out[f"effect_{name}"] = float(d[msk].mean())
    out["difference"] = out["effect_weak"] - out["effect_strong"]
    out["se_difference"] = math.sqrt(float(d[weak].var()) / weak.sum() + float(d[~weak].var()) / (~weak).sum())
    out["correct_control"] = ctl.accuracy
    out["correct_light"] = lit.accuracy
    # neural: selectivity of the read (unperturbed) hemisphere over the light window, per state
    x_lit = lit.x_right if st.perturb == "left" else lit.x_left
    win = (t > on + 1e-9) & (t <= off + 1e-9)
    sel_ctl = x_read[:, win].mean(axis=1).astype(np.float64) * y
    sel_lit = x_lit[:, win].mean(axis=1).astype(np.float64) * y
    loss = sel_ctl - sel_lit  # paired per trial
    for name, msk in (("weak", weak), ("strong", ~weak)):
        out[f"read_selectivity_{name}_no_light"] = float(sel_ctl[msk].mean())
        out[f"read_selectivity_{name}_light"] = float(sel_lit[msk].mean())
        out[f"read_m_{name}"] = out[f"read_selectivity_{name}_light"] / out[f"read_selectivity_{name}_no_light"]
        out[f"read_loss_{name}"] = float(loss[msk].mean())
        out[f"se_read_loss_{name}"] = math.sqrt(float(loss[msk].var()) / msk.sum())
    out["read_loss_difference"] = out["read_loss_weak"] - out["read_loss_strong"]
    out["se_read_loss_difference"] = math.sqrt(out["se_read_loss_weak"] ** 2 + out["se_read_loss_strong"] ** 2)
    return out
