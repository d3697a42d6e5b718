"""The session report's figures: one 900 × 450 px PNG each, drawn with matplotlib (Agg, no pyplot).

It owns how the report looks: a colour per condition (conditions that light the same hemisphere
get different shades, never one colour), each condition's light band drawn where that condition's
light was (not a pooled median), a legend in every panel, bands for every interval, and, wherever
a panel cannot be drawn, the reason written into it ("needs ≥ N … (has n)") instead of empty axes.
The numbers come from :mod:`analysis.report`; nothing is computed here.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from analysis.condition_windows import ConditionLight
from rig.conditions import NOT_DELIVERED
from rig.progress import count

if TYPE_CHECKING:
    from analysis.report import Analysis, ReportData

FIG_SIZE_IN = (9.0, 4.5)
FIG_DPI = 100  #: every figure is 900 × 450 px
OTHER = {"left": "right", "right": "left"}
CONTROL_COLOUR = "#222222"
NOT_DELIVERED_COLOUR = "#9e9e9e"
#: shades per lit hemisphere, in protocol order (left blues, right reds/oranges, bilateral purples)
PALETTE = {
    "left": ("#1a73e8", "#00acc1", "#3949ab", "#5e97f6"),
    "right": ("#d93025", "#f29900", "#c2185b", "#e67c73"),
    "bilateral": ("#8e44ad", "#6d4c41", "#ab47bc", "#7e57c2"),
}


def condition_colours(conditions: dict[str, ConditionLight]) -> dict[str, str]:
    """One colour per condition name; conditions sharing a hemisphere get distinct shades."""
    out: dict[str, str] = {NOT_DELIVERED: NOT_DELIVERED_COLOUR}
    used = {h: 0 for h in PALETTE}
    for name, c in conditions.items():
        if c.hemisphere in PALETTE:
            shades = PALETTE[c.hemisphere]
            out[name] = shades[used[c.hemisphere] % len(shades)]
            used[c.hemisphere] += 1
        else:
            out[name] = CONTROL_COLOUR
    return out


def _wrap(text: str, width: int = 70) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _note(ax: Any, lines: list[str], *, y: float = 0.5, fontsize: float = 9) -> None:
    """Write why a panel (or part of it) is missing, inside the axes, wrapped to fit."""
    ax.text(0.5, y, "\n".join(_wrap(s, 62) for s in lines), transform=ax.transAxes, ha="center", va="center",
            fontsize=fontsize, color="#5f6368",
            bbox={"boxstyle": "round", "facecolor": "#f8f9fa", "edgecolor": "#dadce0"})


def _epochs(ax: Any, data: ReportData) -> None:
    """Sample and delay onsets and the go cue as thin labelled lines (light bands keep the colour)."""
    sample = [t.sample_onset_s for t in data.trials if t.sample_onset_s is not None]
    delay = [t.delay_onset_s for t in data.trials if t.delay_onset_s is not None]
    marks = [("sample", float(np.median(sample)) if sample else -3.0),
             ("delay", float(np.median(delay)) if delay else -1.7), ("go", 0.0)]
    for name, x in marks:
        ax.axvline(x, color="#9aa0a6", lw=0.8, ls=":")
        ax.text(x, 0.01, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7, color="#5f6368",
                va="bottom", ha="left")
    ax.set_xlabel("time from go cue (s)")


def light_bands(conditions: dict[str, ConditionLight]) -> dict[str, tuple[float, float]]:
    """The light band every time-course figure draws per condition (s from the go cue; report.json too).

    Each condition's own window, where its light was: delivered, else the protocol's; never pooled.
    """
    return {name: c.window_s for name, c in conditions.items() if c.hemisphere is not None and c.window_s is not None}


def _light_bands(ax: Any, data: ReportData, colours: dict[str, str], names: list[str] | None = None) -> None:
    """Draw :func:`light_bands`, each in its condition's colour."""
    for name, (a, b) in light_bands(data.conditions).items():
        if names is not None and name not in names:
            continue
        c = data.conditions[name]
        ax.axvspan(a, b, color=colours[name], alpha=0.13, lw=0,
                   label=f"{name} light {a:+.1f}…{b:+.1f} s ({c.hemisphere} ALM)")
        if c.delivered_span_s is not None and (c.delivered_span_s[0] < a - 0.05 or c.delivered_span_s[1] > b + 0.05):
            ax.axvspan(c.delivered_span_s[0], c.delivered_span_s[1], color=colours[name], alpha=0.05, lw=0)


def save(fig: Any, path: Path) -> str:
    """Write the figure as PNG at the report's size; returns the file name."""
    fig.savefig(path, dpi=FIG_DPI, format="png")  # Figure without pyplot: Agg, no global state
    return path.name


def no_data(path: Path, title: str, reasons: list[str]) -> str:
    """A figure that says what it would show and why it cannot (never empty axes)."""
    fig = Figure(figsize=FIG_SIZE_IN)
    fig.text(0.5, 0.8, title, ha="center", fontsize=13)
    fig.text(0.5, 0.7, "not computed for this session:", ha="center", fontsize=10, color="#5f6368")
    body = "\n".join("• " + _wrap(r, 95).replace("\n", "\n   ") for r in reasons[:10])
    if len(reasons) > 10:
        body += f"\n… and {len(reasons) - 10} more (report.json 'unavailable')"
    fig.text(0.08, 0.62, body, ha="left", va="top", fontsize=9, color="#3c4043")
    return save(fig, path)


def figure_performance(res: Analysis, data: ReportData, path: Path) -> str:
    """Fraction correct per condition with Wilson 95 % intervals; Δ vs control and Fisher's p above each bar."""
    colours = condition_colours(data.conditions)
    conds = [c for c in (*res.labels, NOT_DELIVERED) if c in res.performance]
    if not conds:
        return no_data(path, "Performance per condition", ["no completed trials (a lick after the go cue)"])
    fig = Figure(figsize=FIG_SIZE_IN)
    ax = fig.subplots()
    for i, c in enumerate(conds):
        p = res.performance[c]
        ax.bar(i, p.fraction, color=colours.get(c, NOT_DELIVERED_COLOUR), alpha=0.85)
        ax.errorbar(i, p.fraction, yerr=[[p.fraction - p.ci_low], [p.ci_high - p.fraction]], color="k", capsize=5)
        ax.text(i, 0.03, f"n={p.n}", ha="center", color="white", fontsize=9)
        for side, dx, mk in (("right", 0.18, ">"), ("left", -0.18, "<")):
            q = res.performance.get(f"{c}/{side}")
            if q is not None and q.n:
                ax.plot(i + dx, q.fraction, mk, color="k", ms=6)
        v = res.versus_control.get(c)
        if v is not None:
            text = ("Δ n/a" if v.get("why") else
                    f"Δ {v['delta']:+.2f}\n[{v['ci_low']:+.2f}, {v['ci_high']:+.2f}]\np = {v['p_fisher']:.2g}")
            ax.text(i, min(p.ci_high if math.isfinite(p.ci_high) else 1.0, 1.0) + 0.03, text, ha="center",
                    va="bottom", fontsize=7.5)
    ax.axhline(0.5, color="#888", ls="--", lw=1)
    ax.set_xticks(range(len(conds)), conds, fontsize=8)
    ax.set_ylim(0, 1.35)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("fraction correct")
    ax.set_title(f"Performance per condition: Wilson 95 % CI; Δ vs {res.control} (Newcombe 95 % CI), "
                 "Fisher's exact p; ◀ ▶ lick-left / -right trials", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def figure_cd(res: Analysis, data: ReportData, path: Path) -> str:
    """Mean CD projection (p − db) per hemisphere, condition and instructed side, with 95 % bootstrap bands."""
    if all(tr.why for tr in res.cd.values()):
        return no_data(path, "CD projections", [f"{h} ALM: {tr.why}" for h, tr in res.cd.items()])
    colours = condition_colours(data.conditions)
    t_s = res.t_s
    fig = Figure(figsize=FIG_SIZE_IN)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, h in zip(axes, ("left", "right"), strict=True):
        tr = res.cd[h]
        _epochs(ax, data)
        _light_bands(ax, data, colours)
        for c, sides in tr.traces.items():
            for side, (mean, lo, hi, n) in sides.items():
                ax.plot(t_s, mean, color=colours[c], ls="-" if side > 0 else "--", lw=1.3,
                        label=f"{c}, instructed {'R' if side > 0 else 'L'} (n={n})")
                ax.fill_between(t_s, lo, hi, color=colours[c], alpha=0.12, lw=0)
        ax.axhline(0, color="#555", lw=0.8, ls="--")
        ax.set_title(f"{h} ALM: CD projection − boundary", fontsize=9)
        missing = [tr.why] if tr.why else [f"{c}: {why}" for c, why in tr.skipped.items()]
        if missing:
            _note(ax, missing, y=0.12, fontsize=7)
        ax.legend(fontsize=6, loc="upper left")
    axes[0].set_ylabel("p(t) − db (a.u.; bands: 95 % bootstrap over trials)")
    fig.tight_layout()
    return save(fig, path)


def _selectivity_label(c: str, cl: ConditionLight, h: str) -> str:
    if cl.hemisphere is None:
        return f"{c} (held-out half)"
    where = {h: "this side", OTHER.get(h, ""): "other side", "bilateral": "both sides"}.get(cl.hemisphere, "")
    return f"{c}: {cl.hemisphere} ALM lit ({where})"


def figure_selectivity(res: Analysis, data: ReportData, path: Path) -> str:
    """Selectivity of delay-selective neurons per condition, with bootstrap bands; M and t90 per panel."""
    sel = res.selectivity
    if all(s.why for s in sel.values()):
        return no_data(path, "Selectivity", [f"{h} ALM: {s.why}" for h, s in sel.items()])
    colours = condition_colours(data.conditions)
    t_s = res.t_s
    fig = Figure(figsize=FIG_SIZE_IN)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, h in zip(axes, ("left", "right"), strict=True):
        _epochs(ax, data)
        s = sel[h]
        _light_bands(ax, data, colours, [c for c in s.per_condition if data.conditions[c].hemisphere])
        if s.why:
            ax.set_title(f"{h} ALM", fontsize=9)
            _note(ax, [s.why])
            continue
        for c, trace in s.per_condition.items():
            ax.plot(t_s, trace, color=colours[c], lw=1.5, label=_selectivity_label(c, data.conditions[c], h))
            lo, hi = s.ci[c]
            ax.fill_between(t_s, lo, hi, color=colours[c], alpha=0.15, lw=0)
        parts = [f"M({m.condition}) = {m.value:.2f}" + (f" [{m.ci[0]:.2f}, {m.ci[1]:.2f}]" if m.ci else "")
                 for m in s.modularity.values() if m.value is not None]
        parts += [f"t90({r.condition}) = {r.t90_s:.2f} s" if r.t90_s is not None else
                  f"t90({r.condition}): no full recovery" for r in s.recovery.values() if r.why is None]
        ax.set_title(f"{h} ALM ({count(len(s.units), 'neuron')})" + ("\n" + "; ".join(parts) if parts else ""),
                     fontsize=8)
        missing = [f"{c}: {why}" for c, why in s.skipped.items()]
        missing += [f"M({m.condition}): {m.why}" for m in s.modularity.values()
                    if m.why and m.condition not in s.skipped]
        missing += [f"t90({r.condition}): {r.why}" for r in s.recovery.values()
                    if r.why and r.condition not in s.skipped]
        if missing:
            _note(ax, missing, y=0.12, fontsize=7)
        ax.axhline(0, color="#555", lw=0.8)
        ax.legend(fontsize=6, loc="upper left")
    axes[0].set_ylabel("selectivity (spikes/s, pref − non-pref)")
    fig.tight_layout()
    return save(fig, path)


def figure_modularity(res: Analysis, data: ReportData, path: Path) -> str:
    """M of each hemisphere per condition silencing the other one, each over its own light window."""
    colours = condition_colours(data.conditions)
    done = [(h, m) for h in ("left", "right") for m in res.selectivity[h].modularity.values() if m.value is not None]
    reasons = [f"{u.what}: {u.why}" for u in res.unavailable if u.what.startswith(("M ", "selectivity and M"))]
    if not done:
        return no_data(path, "Modularity M (selectivity during other-side light / control)", reasons)
    fig = Figure(figsize=FIG_SIZE_IN)
    ax = fig.subplots()
    ticks = []
    for i, (h, m) in enumerate(done):
        assert m.value is not None and m.window_s is not None
        ax.bar(i, m.value, color=colours[m.condition], alpha=0.85, label=f"{h} ALM, {m.condition}")
        if m.ci is not None:
            ax.errorbar(i, m.value, yerr=[[m.value - m.ci[0]], [m.ci[1] - m.value]], color="k", capsize=6)
        ticks.append(f"{h} ALM\n{m.condition} ({m.silenced} lit)\n{m.window_s[0]:+.2f}…{m.window_s[1]:+.2f} s")
    ax.axhline(1.0, color="#888", ls="--", lw=1)
    ax.set_xticks(range(len(done)), ticks, fontsize=8)
    ax.set_xlim(-0.7, max(len(done), 2) - 0.3)
    ax.set_ylabel("modularity M")
    ax.set_title("Modularity per condition over its own light window (95 % bootstrap CI over neurons)", fontsize=9)
    if reasons:
        _note(ax, reasons, y=0.85, fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def figure_decoder(res: Analysis, data: ReportData, path: Path) -> str:
    """Online decoder accuracy (sign of the decoded value vs the mouse's choice) over the trial."""
    acc = res.decoder_accuracy
    if not acc:
        return no_data(path, "Online decoder accuracy", [f"{c}: {why}" for c, why in res.decoder_skipped.items()])
    colours = condition_colours(data.conditions)
    t_s = res.t_s
    fig = Figure(figsize=FIG_SIZE_IN)
    ax = fig.subplots()
    _epochs(ax, data)
    _light_bands(ax, data, colours, list(acc))
    for c, (a, lo, hi, n) in acc.items():
        ax.plot(t_s, a, color=colours[c], lw=1.5, label=f"{c} (n={n})")
        ax.fill_between(t_s, lo, hi, color=colours[c], alpha=0.12, lw=0)
    ax.axhline(0.5, color="#888", ls="--", lw=1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("decoded choice = actual choice")
    ax.set_title("Online decoder accuracy over the trial (after the decoder's first fit; Wilson 95 % CI)", fontsize=9)
    if res.decoder_skipped:
        _note(ax, [f"{c}: {why}" for c, why in res.decoder_skipped.items()], y=0.12, fontsize=7)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save(fig, path)


def figure_light(dose: dict[str, Any], data: ReportData, path: Path) -> str:
    """Light dose per trial and hemisphere against the interlock limits."""
    fig = Figure(figsize=FIG_SIZE_IN)
    axes = fig.subplots(1, 3)
    tr = dose["trial"]
    lit = dose["power_mw"] > 0
    axes[0].plot(tr[lit], dose["power_mw"][lit], "o", ms=3, color="#00aaff", label="delivered")
    axes[0].axhline(dose["max_power_mw"], color="#b3261e", lw=1.5, label="cap")
    axes[0].set_title("power per spot (mW)", fontsize=9)
    axes[1].plot(tr[lit], dose["duration_s"][lit], "o", ms=3, color="#00aaff", label="delivered")
    axes[1].axhline(dose["max_continuous_s"], color="#b3261e", lw=1.5, label="cap")
    axes[1].set_title("light per trial (s)", fontsize=9)
    for j, (h, c) in enumerate((("left", PALETTE["left"][0]), ("right", PALETTE["right"][0]))):
        axes[2].plot(tr, dose["rolling_j"][:, j], color=c, lw=1.2, label=f"{h} (rolling)")
        e = dose["energy_j"][:, j]
        axes[2].plot(tr[e > 0], e[e > 0], ".", color=c, ms=3)
    axes[2].axhline(dose["energy_budget_j"], color="#b3261e", lw=1.5, label="budget")
    axes[2].set_title(f"energy per hemisphere (J; rolling {dose['energy_window_s']:.0f} s)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("trial")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Light dose vs interlock limits ({data.limits_source}); perturbed "
        f"{dose['fraction_perturbed']:.1%} of trials (max {dose['max_fraction_perturbed']:.0%}); "
        f"{count(int(dose['refused_trials']), 'trial')} with refusals",
        fontsize=9,
    )
    fig.tight_layout()
    return save(fig, path)


def figure_latency(lat: dict[str, Any], data: ReportData, path: Path) -> str:
    """Histogram of loop latencies on a log axis with p50/p99 and the deadline."""
    if data.internal_us.size == 0 and data.e2e_us.size == 0:
        return no_data(path, "Loop latency", ["no telemetry in this recording"])
    fig = Figure(figsize=FIG_SIZE_IN)
    ax = fig.subplots()
    edges = np.logspace(0, 6, 121)
    for k, raw, c in (("internal", data.internal_us, "#1a73e8"), ("e2e", data.e2e_us, "#d93025")):
        v = raw[np.isfinite(raw) & (raw > 0)]
        if not v.size:
            continue
        s = lat[k]
        ax.hist(np.clip(v, edges[0], edges[-1]), bins=list(edges), color=c, alpha=0.5,
                label=f"{k}: n={s['n']}, p50 {s['p50']:.0f} µs, p99 {s['p99']:.0f} µs, "
                f"misses {s['deadline_misses']} (> {data.deadline_us / 1e3:g} ms)")
        ax.axvline(s["p50"], color=c, lw=1)
        ax.axvline(s["p99"], color=c, lw=1, ls="--")
    ax.axvline(data.deadline_us, color="#b3261e", lw=2, label=f"deadline {data.deadline_us / 1e3:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency (µs)")
    ax.set_ylabel("loops")
    ax.set_title("Loop latency: internal (frame in → command out) and end to end (rig send → rig receive)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
