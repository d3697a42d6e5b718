"""What the experimenter sees in the terminal: the start banner, live progress, the final summary.

It owns per-condition trial statistics (fed with each trial summary) and their rendering with
rich: a live table when stdout is a terminal, one plain line every few seconds otherwise (logs,
CI). It reads the service's status; it never touches the hot path.
"""

from __future__ import annotations

import asyncio
import collections
import math
import sys
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rig.conditions import CONDITIONS, NOT_DELIVERED, trial_condition

if TYPE_CHECKING:
    from rig.config import ServiceConfig


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with its noun in the right number: "1 trial", "0 trials", "40 trials"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


#: The order conditions are listed in, here and on the live page: rig/conditions.py's four, then
#: not_delivered, then anything else alphabetically.
_ORDER = {c: i for i, c in enumerate((*CONDITIONS, NOT_DELIVERED))}


def condition_order(name: str) -> tuple[int, str]:
    """Sort key of a condition name (rig/conditions.py's names; the terminal and the live page share it)."""
    return _ORDER.get(name, len(_ORDER)), name


class TrialStats:
    """Outcome counts per delivered condition (control, left, right, bilateral, not_delivered).

    A trial counts under the light that reached the animal (rig/conditions.py), not the plan: a
    refused, late, invalid or unacknowledged perturbation is ``not_delivered``. A ``light_update``
    (an acknowledgement that came after its trial's summary) moves the trial to its new condition.
    """

    def __init__(self) -> None:
        self.n = 0
        self.by_condition: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        #: (rig, trial) → (condition counted, outcome) for the trials a light_update may still move
        self._counted: collections.OrderedDict[tuple[int, int], tuple[str, str]] = collections.OrderedDict()

    def add(self, record: dict[str, Any]) -> None:
        """Count one finished trial (a ``type: trial`` summary) or apply a ``light_update``."""
        if record.get("type") == "light_update":
            self._update(record)
            return
        self.n += 1
        cond, outcome = trial_condition(record), str(record.get("outcome", "unknown"))
        c = self.by_condition[cond]
        c["n"] += 1
        c[outcome] += 1
        if record.get("light"):
            key = (int(record.get("rig_id", 1)), int(record.get("trial", -1)))
            self._counted[key] = (cond, outcome)
            while len(self._counted) > 64:
                self._counted.popitem(last=False)

    def _update(self, update: dict[str, Any]) -> None:
        key = (int(update.get("rig_id", 1)), int(update.get("trial", -1)))
        counted = self._counted.get(key)
        new = str(update.get("delivered_condition") or trial_condition(update))
        if counted is None or counted[0] == new:
            return
        old, outcome = counted
        for cond, d in ((old, -1), (new, 1)):
            c = self.by_condition[cond]
            c["n"] += d
            c[outcome] += d
        self._counted[key] = (new, outcome)

    def table(self) -> dict[str, dict[str, float]]:
        """Per condition: trials, hits, errors, ignores, early licks, fraction correct (of licked)."""
        out: dict[str, dict[str, float]] = {}
        for cond in sorted(self.by_condition, key=condition_order):
            c = self.by_condition[cond]
            if c["n"] <= 0:  # emptied by light updates
                continue
            licked = c["hit"] + c["error"]
            out[cond] = {"n": c["n"], "hit": c["hit"], "error": c["error"], "ignore": c["ignore"],
                         "early_lick": c["early_lick"],
                         "correct": round(c["hit"] / licked, 4) if licked else math.nan}
        return out


class _Status(Protocol):
    cfg: ServiceConfig

    def status(self) -> dict[str, Any]: ...


def _fmt_us(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.0f} µs"


def _decoder_line(d: dict[str, Any]) -> str:
    name = d.get("decoder") or "?"
    if not d.get("ready"):
        pool, need = d.get("pool_trials"), d.get("n_fit_trials")
        if pool is None:
            return f"{name}: calibrating"
        if need is None:
            return f"{name}: calibrating ({count(int(pool), 'control trial')} pooled)"
        return f"{name}: calibrating {int(pool)}/{int(need)} control trials (fits at {int(need)})"
    acc = d.get("online_accuracy")
    fit = d.get("fit_accuracy")
    parts = [f"{name}: fitted {d.get('n_fits', 0)}×"]
    if fit is not None:
        parts.append(f"cv acc {fit:.2f}")
    if acc is not None:
        parts.append(f"online acc {acc:.2f}")
    if d.get("age_trials") is not None:
        parts.append(f"age {count(int(d['age_trials']), 'trial')}")
    return ", ".join(parts)


def render(status: dict[str, Any]) -> Group:
    """The live view of one status dict (also used for the final summary)."""
    t = Table(title=None, expand=False)
    for col in ("condition", "trials", "hit", "error", "early lick", "% correct"):
        t.add_column(col, justify="right" if col != "condition" else "left")
    for cond, row in status.get("outcomes", {}).items():
        pct = row["correct"]
        t.add_row(cond, str(int(row["n"])), str(int(row["hit"])), str(int(row["error"])),
                  str(int(row["early_lick"])), "–" if pct is None or math.isnan(pct) else f"{100 * pct:.0f} %")
    lat = status.get("latency_us", {})
    e2e, internal = lat.get("e2e", {}), lat.get("internal", {})
    target = status.get("trials_target")
    head = Text.assemble(
        (f"{status.get('state', '?')}  ", "bold"),
        f"trials {status.get('trials_done', 0)}" + (f"/{target}" if target else ""),
        f"   frames {status.get('frames', 0)}",
        f"   loop e2e p50 {_fmt_us(e2e.get('p50'))} p99 {_fmt_us(e2e.get('p99'))}",
        f"   internal p50 {_fmt_us(internal.get('p50'))} p99 {_fmt_us(internal.get('p99'))}",
    )
    c = status.get("counters", {})
    drops = c.get("recorder_dropped", 0) + c.get("late_decisions", 0) + c.get("ingest.missing_seq", 0)
    alarms = status.get("alarms", 0)
    tail = Text.assemble(
        f"drops {drops}   input errors {status.get('errors', 0)}   ",
        (f"alarms {alarms}", "bold red" if alarms else ""),
        f"   decoder {_decoder_line(status.get('decoder', {}))}",
    )
    last = [Text(f"  ⚠ {a.get('source', '')}: {a.get('message', '')}", style="red")
            for a in status.get("last_alarms", [])[-3:]]
    return Group(head, t, tail, *last)


def stop_plan(cfg: ServiceConfig) -> str:
    """When the session ends, what set it, and how to end it earlier (the banner's "stops" line)."""
    ends = []
    if cfg.trials is not None:
        why = ("the protocol's [session] n_trials; --trials N overrides" if cfg.trials_from == "protocol"
               else "--trials")
        ends.append(f"after {count(cfg.trials, 'trial')} ({why})")
    if cfg.duration_s is not None:
        ends.append(f"after {cfg.duration_s:g} s (--duration)")
    stop = "rigd stop" if cfg.name == "rigd" else f"rigd stop --name {cfg.name}"
    if not ends:
        return f"when stopped: Ctrl-C or `{stop}`"
    return f"{' or '.join(ends)}; earlier: Ctrl-C or `{stop}`"


class Progress:
    """Start banner, live table (TTY) or periodic lines, and the final summary."""

    def __init__(self, service: _Status, console: Console | None = None, live: bool | None = None) -> None:
        self.service = service
        self.console = console or Console()
        self.live_enabled = sys.stdout.isatty() if live is None else live
        self._live: Live | None = None

    def banner(self, info: dict[str, Any]) -> None:
        """Where everything is (printed once at start)."""
        broker = "embedded broker" if info.get("embedded_broker") else "lab broker"
        self.console.print(f"[bold]rigd[/bold] session {info['session_dir']}")
        self.console.print(f"  MQTT      {info['mqtt']} ({broker}; topics rigd/{info['name']}/…)")
        self.console.print(f"  ingest    {info['ingest']}   commands {info['command']}")
        if info.get("ui"):
            self.console.print(f"  live view {info['ui']}")
        if info.get("placement"):
            self.console.print(f"  loop      {info['placement']}", highlight=False, markup=False)
        cfg = self.service.cfg
        given = "seed" in cfg.model_fields_set
        self.console.print(f"  seed      {cfg.seed} ({'--seed' if given else 'fresh'}; "
                           f"--seed {cfg.seed} repeats this trial order)", highlight=False)
        self.console.print(f"  stops     {stop_plan(cfg)}", highlight=False, markup=False)

    async def run(self) -> None:
        """Refresh the live view at 2 Hz (or print a line every 5 s) until cancelled."""
        if self.live_enabled:
            self._live = Live(render(self.service.status()), console=self.console, refresh_per_second=4,
                              transient=False)
            self._live.start()
            while True:
                await asyncio.sleep(0.5)
                self._live.update(render(self.service.status()))
        else:
            while True:
                await asyncio.sleep(5.0)
                s = self.service.status()
                e2e = s["latency_us"]["e2e"]
                self.console.print(f"trials {s['trials_done']}  frames {s['frames']}  e2e p50 "
                                   f"{_fmt_us(e2e.get('p50'))} p99 {_fmt_us(e2e.get('p99'))}  "
                                   f"errors {s['errors']}  alarms {s['alarms']}", highlight=False)

    def close(self) -> None:
        """Stop the live view."""
        if self._live is not None:
            self._live.stop()
            self._live = None
