"""The conditions of a recorded session as its protocol names them, and where each one's light was.

It gathers two things every analysis of a finished session needs before it can compare conditions:

* the **label** a trial is analysed under (rig/conditions.py ``trial_label``, the one definition):
  the protocol's own condition name (``right_early``,
  ``right_late``, ``left_alm``…) when the trial got what the protocol planned, so that two
  conditions lighting the same hemisphere at different times are never merged; ``not_delivered``
  when planned light never reached the animal (the rule of rig/conditions.py: such trials sit
  outside every comparison);
* each condition's **light window**, on the go-cue clock the analyses use: the protocol's planned
  window (``onset_s`` after its ``aligned_to`` anchor, converted per trial with that trial's
  recorded sample and delay onsets) and the window the delivered light commands actually
  occupied (their measured onset, else the commanded one, and duration).

The protocol is read from the text recorded in the session (manifest ``protocol.text``, its
sha256 beside it) as TOML or YAML into ``controllers.protocol.ProtocolSpec`` (parsed, never
executed); a protocol that cannot be read
there (another language, a damaged manifest) leaves the delivered light alone to say where the
light was, and a note says so. Pure functions on plain values; no I/O.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Sequence
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from controllers.protocol import ProtocolSpec
from rig.conditions import NOT_DELIVERED

HEMISPHERES = ("left", "right", "bilateral")
CONTROL = "control"
#: delivered onsets spread wider than this (s) make a condition's light band a span, not one window
SPREAD_S = 0.05


@dataclasses.dataclass(frozen=True)
class PlannedWindow:
    """A protocol's light window: ``onset_s`` after ``aligned_to``, ``duration_s`` long (ramp included)."""

    aligned_to: str
    onset_s: float
    duration_s: float


@dataclasses.dataclass(frozen=True)
class TrialLight:
    """What the windows are computed from, per trial (all times in s from the trial's go cue)."""

    label: str
    role: str  #: rig/conditions.py delivered condition: control, left, right, bilateral, not_delivered
    planned_label: str  #: the protocol's label, delivered or not
    onset_s: float | None  #: delivered light's onset (measured, else commanded); None without light
    duration_s: float
    sample_onset_s: float | None  #: the trial's sample onset (from its recorded events)
    delay_onset_s: float | None  #: the trial's delay onset


@dataclasses.dataclass
class ConditionLight:
    """One condition of the session: its name, lit hemisphere and light windows (s from the go cue)."""

    name: str
    hemisphere: str | None  #: the lit hemisphere (left/right/bilateral); None for control
    planned: PlannedWindow | None  #: from the protocol; None for control or when not stated
    planned_from_go_s: tuple[float, float] | None  #: planned window on the go-cue clock (median over trials)
    delivered_from_go_s: tuple[float, float] | None  #: median delivered onset … median delivered end
    delivered_span_s: tuple[float, float] | None  #: earliest delivered onset … latest delivered end
    n_trials: int  #: trials analysed under this name
    n_delivered: int  #: of which with delivered light
    n_not_delivered: int  #: trials the protocol planned under this name whose light never arrived
    in_protocol: bool  #: the name is one of the protocol's conditions

    @property
    def window_s(self) -> tuple[float, float] | None:
        """Where the light was: delivered, else planned (s from the go cue)."""
        return self.delivered_from_go_s or self.planned_from_go_s

    @property
    def window_source(self) -> str:
        """Which of the two :attr:`window_s` is."""
        if self.delivered_from_go_s is not None:
            return "delivered light commands"
        return "protocol" if self.planned_from_go_s is not None else "none"

    def as_json(self) -> dict[str, Any]:
        """The fields report.json carries for the condition."""
        return {
            "hemisphere": self.hemisphere,
            "in_protocol": self.in_protocol,
            "protocol_window": None if self.planned is None else dataclasses.asdict(self.planned),
            "protocol_window_from_go_s": _pair(self.planned_from_go_s),
            "light_window_s": _pair(self.window_s),
            "light_window_source": self.window_source,
            "delivered_window_s": _pair(self.delivered_from_go_s),
            "delivered_span_s": _pair(self.delivered_span_s),
            "n_trials": self.n_trials,
            "n_delivered": self.n_delivered,
            "n_not_delivered": self.n_not_delivered,
        }


def _pair(p: tuple[float, float] | None) -> list[float] | None:
    return None if p is None else [float(p[0]), float(p[1])]


def _us(a: float, b: float) -> tuple[float, float]:
    """A window rounded to the microsecond (sums such as −1.7 + 0.8 land on −0.8999999…)."""
    return (round(a, 6), round(b, 6))


@dataclasses.dataclass(frozen=True)
class ProtocolConditions:
    """The conditions a protocol declares, in its order, with their planned windows."""

    kind: str
    order: list[str]
    hemisphere: dict[str, str | None]
    planned: dict[str, PlannedWindow | None]
    default_window: PlannedWindow | None  #: ``[window]``: light of conditions the controller names itself
    sample_s: float
    delay_s: float


def read_protocol(text: str) -> tuple[ProtocolConditions | None, str | None]:
    """The protocol's conditions from its recorded text; (None, why) when it cannot be read."""
    if not text.strip():
        return None, "no protocol text recorded: light windows come from the delivered light alone"
    why = "not a TOML or YAML protocol"
    try:
        data: Any = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None
    try:
        spec = ProtocolSpec.model_validate(data) if isinstance(data, dict) else None
    except ValidationError as exc:
        spec, why = None, f"{exc.error_count()} field(s) rigd's protocol language does not accept"
    if spec is None:
        return None, (f"the recorded protocol could not be read ({why}): light windows come from the "
                      "delivered light alone")
    w = spec.window
    default = PlannedWindow(w.aligned_to, w.onset_s, w.duration_s)
    order: list[str] = []
    hemi: dict[str, str | None] = {}
    planned: dict[str, PlannedWindow | None] = {}
    for c in spec.conditions:
        order.append(c.name)
        hemi[c.name] = c.hemisphere
        planned[c.name] = None if c.hemisphere is None else PlannedWindow(
            c.aligned_to or w.aligned_to, c.onset_s if c.onset_s is not None else w.onset_s,
            c.duration_s or w.duration_s)
    kind = spec.protocol.kind
    s = spec.session
    return ProtocolConditions(kind, order, hemi, planned, None if kind == "threshold" else default,
                              s.sample_s, s.expects_delay_s), None


def _from_go(p: PlannedWindow, t: TrialLight, proto: ProtocolConditions | None) -> float:
    """Planned onset on the go-cue clock for one trial (its own recorded anchors; else the protocol's)."""
    delay = t.delay_onset_s if t.delay_onset_s is not None else -(proto.delay_s if proto else 1.7)
    if p.aligned_to == "go_cue":
        return p.onset_s
    if p.aligned_to == "delay_onset":
        return delay + p.onset_s
    sample = t.sample_onset_s if t.sample_onset_s is not None else delay - (proto.sample_s if proto else 1.3)
    return sample + p.onset_s


def condition_lights(trials: Sequence[TrialLight], proto: ProtocolConditions | None) -> dict[str, ConditionLight]:
    """Every analysed condition (protocol order first, then in order of appearance) with its windows.

    ``not_delivered`` is not a condition here: its trials are counted under the condition they
    were planned as (``n_not_delivered``).
    """
    names: list[str] = list(proto.order) if proto else []
    for t in trials:
        if t.label != NOT_DELIVERED and t.label not in names:
            names.append(t.label)
    out: dict[str, ConditionLight] = {}
    for name in names:
        mine = [t for t in trials if t.label == name]
        not_delivered = sum(1 for t in trials if t.label == NOT_DELIVERED and t.planned_label == name)
        lit = [t for t in mine if t.role in HEMISPHERES and t.onset_s is not None and math.isfinite(t.onset_s)]
        roles = {t.role for t in mine if t.role in HEMISPHERES}
        hemisphere = proto.hemisphere.get(name) if proto and name in proto.hemisphere else None
        if hemisphere is None and roles:
            hemisphere = sorted(roles)[0]
        planned = proto.planned.get(name) if proto and name in proto.planned else None
        if planned is None and hemisphere is not None and proto is not None and name not in proto.planned:
            planned = proto.default_window  # a label the controller made (state_…, probe_…)
        planned_go = None
        if planned is not None:
            ref = mine or [t for t in trials if t.label == NOT_DELIVERED and t.planned_label == name] or list(trials)
            onsets = [_from_go(planned, t, proto) for t in ref] if ref else [planned.onset_s]
            on = float(np.median(onsets))
            planned_go = _us(on, on + planned.duration_s)
        delivered = span = None
        if lit:
            on_d = np.array([float(t.onset_s) for t in lit if t.onset_s is not None])
            end_d = on_d + np.array([t.duration_s for t in lit])
            delivered = _us(float(np.median(on_d)), float(np.median(end_d)))
            span = _us(float(on_d.min()), float(end_d.max()))
        out[name] = ConditionLight(name, hemisphere, planned, planned_go, delivered, span, len(mine), len(lit),
                                   not_delivered, bool(proto and name in proto.order))
    return out


def window_notes(conds: dict[str, ConditionLight], bin_s: float) -> list[str]:
    """Where delivered light departs from the protocol's plan by more than one analysis bin."""
    notes = []
    for c in conds.values():
        if c.delivered_from_go_s is None or c.planned_from_go_s is None:
            continue
        d_on = c.delivered_from_go_s[0] - c.planned_from_go_s[0]
        d_end = c.delivered_from_go_s[1] - c.planned_from_go_s[1]
        if max(abs(d_on), abs(d_end)) > bin_s:
            notes.append(f"{c.name}: light delivered at {c.delivered_from_go_s[0]:+.2f}…"
                         f"{c.delivered_from_go_s[1]:+.2f} s, the protocol planned "
                         f"{c.planned_from_go_s[0]:+.2f}…{c.planned_from_go_s[1]:+.2f} s from the go cue; "
                         "analyses use the delivered window")
        if c.delivered_span_s is not None and (
                c.delivered_span_s[0] < c.delivered_from_go_s[0] - SPREAD_S
                or c.delivered_span_s[1] > c.delivered_from_go_s[1] + SPREAD_S):
            notes.append(f"{c.name}: delivered onsets vary ({c.delivered_span_s[0]:+.2f}…"
                         f"{c.delivered_span_s[1]:+.2f} s); analyses use the median window "
                         f"{c.delivered_from_go_s[0]:+.2f}…{c.delivered_from_go_s[1]:+.2f} s")
    return notes
