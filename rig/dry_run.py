"""Dry run: rehearse a protocol on the simulated mouse in-process, without sockets.

What ``rigd protocol check FILE --dry-run N`` calls.

This module owns the offline rehearsal loop: the simulated mouse is stepped bin by bin, its trial
events feed the :class:`~controllers.trial_state.TrialTracker`, its counts feed the online decoder
(closed-loop protocols), the protocol's controller decides, and every request goes through the real
:class:`~hardware.interlock.LightInterlock` to a light source that calls ``mouse.apply_light``.
It returns the expected trial counts per condition, the light dose per hemisphere, behavioural
performance per condition with Wilson 95 % CIs, and, for the state-triggered protocol, the effect of
light in weak vs strong states with a test of their difference. It opens no socket and reads no
clock: the mouse's own rig clock drives everything.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from controllers.base import Controller
from controllers.protocol import Protocol, build_controller, load_protocol
from controllers.trial_state import TrialTracker
from decoders.base import Estimate
from decoders.coding_direction import CodingDirection
from decoders.online import OnlineDecoder
from hardware.calibration import SafetyLimits, default_limits
from hardware.interlock import LightInterlock
from hardware.light_source import RecordingLightSource
from rig.wire import LightCommandFields
from sim.config import MouseConfig
from sim.mouse import SimulatedMouse

_SIDE = {"right": 1, "left": -1}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


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
        if self.state_effect:
            se = self.state_effect
            lines.append(f"state-triggered: effect of light (control − light correct) weak "
                         f"{se['effect_weak']:.3f} ± {se['se_weak']:.3f}, strong {se['effect_strong']:.3f} ± "
                         f"{se['se_strong']:.3f}; difference {se['difference']:.3f} (z = {se['z']:.2f}, "
                         f"one-sided p = {se['p_one_sided']:.3g})")
        return "\n".join(lines)


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


def _make_decoder(mouse: SimulatedMouse, bin_s: float) -> OnlineDecoder:
    return OnlineDecoder(lambda: CodingDirection(window_s=0.4), n_units=mouse.n_units,
                         hemisphere=mouse.units.hemisphere, bin_s=bin_s, n_fit_trials=40, mode="freeze")


def dry_run(protocol: Protocol | str | Path, n_trials: int, *, config: MouseConfig | None = None,
            seed: int = 0, limits: SafetyLimits | None = None,
            estimator: Literal["auto", "decoder", "latent", "none"] = "auto",
            controller: Controller | None = None,
            progress: Callable[[int], object] | None = None) -> DryRunResult:
    """Run ``protocol`` for ``n_trials`` completed trials on the simulated mouse, in-process.

    Args:
        protocol: a loaded protocol or a protocol file/text.
        n_trials: trials to run (early-lick aborts included).
        config: the mouse (default: μ = 0.6, 5-ms bins, short ITI for speed).
        seed: seeds the mouse; the controller uses the protocol's seed.
        limits: interlock limits (default calibration).
        estimator: what feeds ``Estimate`` for closed-loop protocols: the online CD decoder
            ("decoder"), the simulator's latent per hemisphere ("latent": the ideal decoder), or
            nothing; "auto" = decoder for closed-loop kinds, nothing for blocks.
        controller: use this controller instead of the one the protocol builds.
        progress: called with the number of finished trials after each trial (progress bars).

    """
    proto = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
    kind = proto.spec.protocol.kind
    cfg = config or MouseConfig(bin_s=0.005, model_dt_s=0.005, iti_s=(0.5, 1.0),
                                delay_s=proto.spec.session.expects_delay_s)
    mouse = SimulatedMouse(cfg, seed)
    ctrl = controller or build_controller(proto)
    alarms: list[dict[str, Any]] = []

    def to_mouse(f: LightCommandFields) -> object:
        return mouse.apply_light(f, mouse.t_rig_ns)

    source = RecordingLightSource(forward=to_mouse)
    il = LightInterlock(limits or default_limits(), source, alarms.append)
    tracker = TrialTracker()
    est = Estimate()
    mode = estimator if estimator != "auto" else ("none" if kind == "block" else "decoder")
    dec = _make_decoder(mouse, cfg.bin_s) if mode == "decoder" else None
    logs: list[dict[str, Any]] = []
    seq = 0
    energy = {"left": 0.0, "right": 0.0}
    light_trials: set[int] = set()
    while len(logs) < n_trials:
        out = mouse.step()
        seq += 1
        now = out.t_rig_ns
        for name, fields in out.events:
            ev = {"event": name, **fields}
            t_ev = int(fields.get("t_rig_ns", now))
            if name == "trial_end":
                st = tracker.state
                logs.append(ctrl.on_trial_end(st))
                if progress is not None:
                    progress(len(logs))
                if dec is not None and st.outcome in ("hit", "error"):
                    dec.on_trial_end(st.trial, st.choice, st.instructed, st.outcome == "hit",
                                     use_for_fit=st.trial not in light_trials)
            tracker.on_event(ev, t_ev)
            if name == "trial_start":
                il.on_trial_start(int(fields["trial"]))
                if dec is not None:
                    dec.on_trial_start(int(fields["trial"]))
        st = tracker.on_frame(now)
        il.heartbeat(now)
        if dec is not None:
            if not math.isnan(st.t_s):
                e = dec.step(out.counts, seq, st.t_s)
                est.left, est.right, est.value, est.ready = e.left, e.right, e.value, e.ready
                est.confidence = e.confidence
        elif mode == "latent":
            est.left, est.right = float(mouse._x_l[0]), float(mouse._x_r[0])  # ideal decoder
            est.value, est.ready = est.left + est.right, True
        req = ctrl.step(st, est, now)
        if req is not None:
            d = il.request(req, now_ns=now, cause_seq=seq, cause_t_rig_ns=now, cause_t_send_ns=now,
                           deadline_rig_ns=now + round(req.deadline_budget_s * 1e9))
            if d.approved and d.command is not None:
                light_trials.add(req.trial)
                c = d.command
                for h, mask in (("left", c.spots_left), ("right", c.spots_right)):
                    energy[h] += c.power_mw_per_spot * 1e-3 * bin(mask).count("1") * c.duration_s
    return _summarise(proto, logs=logs, mouse=mouse, energy=energy, il=il, alarms=alarms, mode=mode)


def _summarise(proto: Protocol, *, logs: list[dict[str, Any]], mouse: SimulatedMouse,
               energy: dict[str, float], il: LightInterlock, alarms: list[dict[str, Any]],
               mode: str) -> DryRunResult:
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
               "light": t.get("light_condition", "none"), "state": lg.get("state")}
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
    return DryRunResult(proto.name, len(logs), dict(counts), perf, energy, dict(il.refusals), len(alarms),
                        effect, rows, mode)


def state_effect(hits: dict[str, list[int]]) -> dict[str, Any]:
    """Effect of light (control − light fraction correct) per state and the weak − strong difference.

    z-test on the difference of two differences of proportions (normal approximation); the
    prediction of science.md §7.3 is a larger effect in the weak state (one-sided).
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
