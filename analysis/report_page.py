"""The session report's HTML page, written from the numbers of report.json (nothing computed here).

It owns what an experimenter reads: the conditions as the protocol names them with their light
windows, performance with Δ against control (95 % CI, Fisher's exact test) per condition,
modularity and recovery per condition in that condition's window, what the session cannot show
and why, the figures with their captions, and the session's fields, counters, alarms and protocol
as tables (never raw JSON). docs/report.md describes every section.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

from rig.progress import count

if TYPE_CHECKING:
    from analysis.report import ReportData

e = html.escape

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 960px; color: #1d2329; }
table { border-collapse: collapse; margin: 8px 0 16px; }
td, th { border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 18px 0; } figcaption { color: #555; font-size: 12px; max-width: 900px; }
pre { background: #f6f7f9; padding: 10px; overflow-x: auto; font-size: 12px; }
li.refusal { color: #b3261e; font-weight: 600; } code { font-size: 12px; }
.why { color: #5f6368; font-style: italic; } ul.unavailable li { margin: 2px 0; }
"""


def num(x: Any, fmt: str = ".3f") -> str:
    """A number for the page ("–" for missing or non-finite)."""
    if x is None or isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return "–"
    return format(x, fmt)


def _window(w: list[float] | None) -> str:
    return "–" if not w else f"{w[0]:+.2f} … {w[1]:+.2f} s"


def _protocol_window(c: dict[str, Any]) -> str:
    w = c.get("protocol_window")
    if not w:
        return "–"
    anchor = str(w["aligned_to"]).replace("_", " ")
    return f"{w['onset_s']:+.2f} s from the {anchor}, {w['duration_s']:.2f} s"


def _cell(value: Any) -> str:
    """A session field as table text: scalars as they are, lists joined, mappings as nested rows."""
    if isinstance(value, dict):
        if not value:
            return "–"
        rows = "".join(f"<tr><td>{e(str(k))}</td><td>{_cell(v)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list | tuple):
        return e(", ".join(str(v) for v in value)) if value else "–"
    if value is None or value == "":
        return "–"
    return e(str(value))


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(rows_cell for rows_cell in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _td(text: str, *, numeric: bool = False, colspan: int = 1) -> str:
    cls = " class='num'" if numeric else ""
    span = f" colspan={colspan}" if colspan > 1 else ""
    return f"<td{cls}{span}>{text}</td>"


def conditions_table(nums: dict[str, Any]) -> str:
    """The session's conditions, as the protocol names them, with their light windows and counts."""
    rows = []
    for name, c in nums["conditions"].items():
        rows.append([_td(e(name)), _td(e(c["hemisphere"] or "none")), _td(e(_protocol_window(c))),
                     _td(e(_window(c["protocol_window_from_go_s"]))), _td(e(_window(c["light_window_s"]))),
                     _td(e(c["light_window_source"])), _td(str(c["n_trials"]), numeric=True),
                     _td(str(c["n_completed"]), numeric=True), _td(str(c["n_not_delivered"]), numeric=True)])
    return _table(["condition", "lit", "protocol window", "= from go cue", "light window (analysed)", "from",
                   "trials", "completed", "planned, not delivered"], rows)


def performance_table(nums: dict[str, Any]) -> str:
    """Fraction correct per condition with Wilson CIs and Δ vs control with its CI and Fisher's p."""
    rows = []
    for c, p in nums["performance"].items():
        if "/" in c:
            continue
        v = nums["versus_control"].get(c)
        if v is None:
            delta = [_td("reference" if c == nums["control"] else "–", colspan=3)]
        elif v.get("why"):
            delta = [_td(f"<span class='why'>{e(v['why'])}</span>", colspan=3)]
        else:
            delta = [_td(num(v["delta"], "+.3f"), numeric=True),
                     _td(f"[{num(v['ci_low'], '+.3f')}, {num(v['ci_high'], '+.3f')}]", numeric=True),
                     _td(num(v["p_fisher"], ".3g"), numeric=True)]
        rows.append([_td(e(c)), _td(str(p["n"]), numeric=True), _td(str(p["correct"]), numeric=True),
                     _td(num(p["fraction"]), numeric=True),
                     _td(f"[{num(p['ci_low'])}, {num(p['ci_high'])}]", numeric=True), *delta])
    return _table(["condition", "n", "correct", "fraction", "95 % CI (Wilson)", f"Δ vs {e(nums['control'])}",
                   "95 % CI (Newcombe)", "Fisher's exact p"], rows)


def modularity_table(nums: dict[str, Any]) -> str:
    """M per hemisphere and condition (its own window) and t90 per condition, or why not."""
    rows = []
    for h, m in nums["modularity"].items():
        if m["why"]:
            rows.append([_td(f"{h} ALM"), _td(f"<span class='why'>{e(m['why'])}</span>", colspan=6)])
            continue
        for c, b in m["by_condition"].items():
            if b["why"]:
                cells = [_td(f"<span class='why'>{e(b['why'])}</span>", colspan=2)]
            else:
                cells = [_td(num(b["M"]), numeric=True),
                         _td(f"[{num(b['ci_low'])}, {num(b['ci_high'])}]", numeric=True)]
            rows.append([_td(f"{h} ALM"), _td(f"M with {e(c)} ({e(b['silenced'])} ALM lit)"),
                         _td(e(_window(b["window_s"]))), *cells, _td(str(len(m["units"])), numeric=True),
                         _td(str(b["n_trials"]), numeric=True)])
        for c, r in m["recovery"].items():
            value = (f"<span class='why'>{e(r['why'])}</span>" if r["why"] else
                     "no full recovery before the go cue" if r["t90_s"] is None else f"{r['t90_s']:.2f} s")
            end = "–" if r["light_end_s"] is None else f"light ends {r['light_end_s']:+.2f} s"
            rows.append([_td(f"{h} ALM"), _td(f"t90 after {e(c)}"), _td(e(end)), _td(value, colspan=2),
                         _td(str(len(m["units"])), numeric=True), _td("")])
        if not m["by_condition"]:
            rows.append([_td(f"{h} ALM"), _td("M"), _td("–"),
                         _td(f"<span class='why'>no condition of this session lights the "
                             f"{'right' if h == 'left' else 'left'} ALM alone</span>", colspan=4)])
    return _table(["hemisphere", "quantity", "window", "value", "95 % CI", "neurons", "trials"], rows)


CAPTIONS = {
    "performance": "Fraction correct of completed trials (lick after the go cue, no early lick) per condition "
    "as the protocol names it, counting the light actually delivered; Wilson 95 % CIs "
    "(analysis.stats.wilson). Above each bar: Δ against control with Newcombe's 95 % CI and Fisher's exact p "
    "(analysis.stats.compare_proportions).",
    "cd": "Coding direction per hemisphere fitted on control correct trials (delay mean, class-mean difference; "
    "analysis.neural.fit_coding_direction), projected on every completed trial; solid: instructed right, "
    "dashed: instructed left; bands: 95 % bootstrap over trials. Shaded: each condition's light, where it was.",
    "selectivity": "Selectivity (preferred − non-preferred rate) of delay-selective neurons; preferred side and "
    "selection on one half of the control trials, control selectivity on the other half; all completed trials "
    "by instructed side. Bands: 95 % bootstrap over neurons. M and t90 per condition, each in that "
    "condition's own light window.",
    "modularity": "M = selectivity during photoinhibition of the other hemisphere / control over that "
    "condition's own light window (Chen et al., Cell 184:3717, 2021; analysis.neural.modularity); 95 % "
    "bootstrap CI over neurons.",
    "decoder": "The online decoder's sign vs the mouse's choice, per 100-ms bin, completed trials, per "
    "condition with enough trials.",
    "light": "Commanded light per trial against the interlock limits.",
    "latency": "Internal: frame received → command sent (rigd clock). End to end: rig send → command received "
    "at the rig (rig clock, from acknowledgements).",
}


def page(data: ReportData, nums: dict[str, Any], figs: dict[str, str]) -> str:
    """The whole report.html."""
    lat = nums["latency_us"]
    lat_rows = [[_td(e(k)), _td(str(v.get("n", 0)), numeric=True), _td(num(v.get("p50"), ".0f"), numeric=True),
                 _td(num(v.get("p99"), ".0f"), numeric=True), _td(num(v.get("max"), ".0f"), numeric=True),
                 _td(str(v.get("deadline_misses", "–")), numeric=True)]
                for k, v in lat.items() if isinstance(v, dict)]
    refusals = [a for a in data.alarms if a.get("alarm") == "light_refused"]
    alarm_rows = "".join(
        f"<li class='{'refusal' if a.get('alarm') == 'light_refused' else ''}'>"
        f"{e(str(a.get('alarm') or a.get('source') or 'alarm'))}: "
        f"{e(str(a.get('reason') or a.get('message') or ''))}</li>"
        for a in data.alarms[:50])
    meta_rows = [[_td(e(str(k))), _td(_cell(v))] for k, v in data.meta.items() if k not in ("versions", "counters")]
    counters = data.meta.get("counters") or {}
    drops = [[_td(e(k)), _td(e(str(v)), numeric=True)] for k, v in counters.items()
             if any(w in k for w in ("drop", "late", "missing", "lost"))]
    unavailable = "".join(f"<li><b>{e(u['what'])}</b>: {e(u['why'])}</li>" for u in nums["unavailable"])
    fig_html = "".join(
        f"<figure><img src='{e(f)}' width='900' height='450' alt='{e(k)}'>"
        f"<figcaption>{e(CAPTIONS.get(k, ''))}</figcaption></figure>" for k, f in figs.items())
    notes = "".join(f"<li>{e(n)}</li>" for n in data.notes)
    proto = data.protocol
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rigd report — {e(data.name)}</title>
<style>{CSS}</style></head><body>
<h1>Session report: {e(data.name)}</h1>
<p>Source: {e(data.source)} · {count(int(nums["n_trials"]), "trial")}
({nums["n_complete_trials_with_counts"]} completed with spike counts) · protocol {e(str(proto.get("name")))}</p>
{f"<ul class='notes'>{notes}</ul>" if notes else ""}
<h2>Conditions</h2>
<p>Each condition as the protocol names it (never merged by hemisphere); a trial counts under it only when its
light was delivered (rig/conditions.py). Times are seconds from the go cue; every analysis uses each
condition's own light window.</p>
{conditions_table(nums)}
<h2>Performance per condition</h2>
{performance_table(nums)}
<h2>Modularity and recovery</h2>
{modularity_table(nums)}
<h2>What this session cannot show ({len(nums["unavailable"])})</h2>
{f"<ul class='unavailable'>{unavailable}</ul>" if unavailable else "<p>Every figure and number was computed.</p>"}
<h2>Figures</h2>{fig_html}
<h2>Latency (µs)</h2>
{_table(["", "n", "p50", "p99", "max", "deadline misses"], lat_rows)}
<h2>Alarms ({len(data.alarms)}; interlock refusals {len(refusals)})</h2>
<ul>{alarm_rows}</ul>
<h2>Drop counters</h2>
{_table(["counter", "value"], drops) if drops else "<p>none recorded</p>"}
<h2>Protocol</h2>
<p>{e(str(proto.get("name")))} · sha256 <code>{e(str(proto.get("sha256")))}</code>
{f" · {e(str(proto.get('source')))}" if proto.get("source") else ""}</p>
<pre>{e(str(proto.get("text") or "(no protocol text recorded)"))}</pre>
<h2>Session</h2>
{_table(["field", "value"], meta_rows)}
<p style="color:#888">generated by rigd report {e(nums["generated"])}</p>
</body></html>
"""
