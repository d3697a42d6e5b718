"""Perturbation protocols experimenters write: the declarative file, its check, and the controller it builds.

This module owns the protocol language (docs/protocols.md): a TOML or YAML file validated by
pydantic, units in every field name (``power_mw_per_spot``, ``onset_s``, ``duration_s``,
``fraction``), for the common cases — condition blocks with epoch-locked windows, the
state-triggered experiment, decoder-threshold triggers, the modularity probe — and a small Python
API (:class:`ProtocolBuilder`) that produces the same validated spec. :func:`check_protocol`
validates types, ranges and units and the light dose per session and trial fractions against the
interlock's :class:`~hardware.calibration.SafetyLimits`, with errors naming field, value and allowed
range; :func:`build_controller` turns a protocol into a :class:`~controllers.base.Controller`.
A :class:`Protocol` keeps its exact text and sha256 for the session manifest.

It reads text and files only; it never talks to a light source (the interlock alone does).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controllers.base import Controller
from controllers.policies import LightSettings, ModularityProbe, StateTriggered, ThresholdTrigger
from controllers.schedulers import BlockScheduler, Condition, Constraints, LightWindow
from hardware.calibration import SafetyLimits, default_limits

# Physical sanity bounds (the interlock's limits are checked separately, with their own message).
_Power = Annotated[float, Field(gt=0, le=50)]
_Dur = Annotated[float, Field(gt=0, le=5)]
_Onset = Annotated[float, Field(ge=-10, le=5)]
_Frac = Annotated[float, Field(ge=0, le=1)]
Anchor = Literal["go_cue", "delay_onset", "sample_onset"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Meta(_Model):
    """Who/what: the protocol's name, kind and a methods-style description."""

    name: Annotated[str, Field(min_length=1)]
    kind: Literal["block", "state_triggered", "threshold", "modularity_probe"] = "block"
    description: str = ""
    seed: Annotated[int, Field(ge=0)] = 0
    reference: str = ""


class Session(_Model):
    """Session size, for dose estimates: trials and the mean trial period."""

    n_trials: Annotated[int, Field(ge=1, le=5000)] = 400
    trial_period_s: Annotated[float, Field(ge=2, le=120)] = 12.5  #: ~48 trials per 10 min (docs/safety.md)
    expects_delay_s: Annotated[float, Field(gt=0, le=10)] = 1.7
    sample_s: Annotated[float, Field(gt=0, le=10)] = 1.3
    presample_s: Annotated[float, Field(ge=0, le=10)] = 0.5
    response_window_s: Annotated[float, Field(gt=0, le=10)] = 1.5


class Light(_Model):
    """Light defaults for every condition (Chen et al., Cell 184:3717, 2021)."""

    power_mw_per_spot: _Power = 1.5
    waveform: Literal["sine", "constant"] = "sine"
    freq_hz: Annotated[float, Field(gt=0, le=1000)] = 40.0
    ramp_down_s: Annotated[float, Field(ge=0, le=2)] = 0.1
    spots_per_hemisphere: Annotated[int, Field(ge=1, le=8)] = 4
    deadline_budget_s: Annotated[float, Field(gt=0, le=1)] = 0.025


class Window(_Model):
    """Light window: ``onset_s`` after ``aligned_to``, lasting ``duration_s`` (ramp-down included)."""

    aligned_to: Anchor = "go_cue"
    onset_s: _Onset = -1.7
    duration_s: _Dur = 0.8


class ConditionSpec(_Model):
    """One condition: control (no ``hemisphere``) or photoinhibition; may override window and light."""

    name: Annotated[str, Field(min_length=1)]
    fraction: _Frac
    hemisphere: Literal["left", "right", "bilateral"] | None = None
    aligned_to: Anchor | None = None
    onset_s: _Onset | None = None
    duration_s: _Dur | None = None
    power_mw_per_spot: _Power | None = None
    spots_per_hemisphere: Annotated[int, Field(ge=1, le=8)] | None = None


class Randomisation(_Model):
    """Constraints on the per-trial draw (docs/protocols.md, "Scheduling rules")."""

    block_size: Annotated[int, Field(ge=1, le=200)] = 12
    max_fraction_perturbed: Annotated[float, Field(gt=0, le=1)] = 0.25
    max_run_perturbed: Annotated[int, Field(ge=1, le=100)] = 2
    no_repeat_site: bool = True
    redraw_after_early_lick: bool = True


class StateTriggeredSpec(_Model):
    """The state-triggered experiment: read the unperturbed hemisphere, label weak/strong, 50 % light per state."""

    perturb: Literal["left", "right", "alternate"] = "left"
    read_window_s: Annotated[float, Field(gt=0, le=2)] = 0.4
    eligible_fraction: _Frac = 0.5
    light_fraction: _Frac = 0.5
    median_trials: Annotated[int, Field(ge=3, le=1000)] = 40
    min_history: Annotated[int, Field(ge=1, le=1000)] = 10
    #: "signed": (CD − db)·y, aligned to the instructed side (docs/simulator.md "Conventions"); "abs": |CD − db|
    state_measure: Literal["signed", "abs"] = "signed"


class ThresholdSpec(_Model):
    """Decoder-threshold trigger: light when confidence crosses ``threshold`` between from_s and to_s."""

    hemisphere: Literal["left", "right", "bilateral"] = "left"
    threshold: Annotated[float, Field(ge=0.5, le=1)] = 0.8
    direction: Literal["right", "left", "either"] = "right"
    from_s: _Onset = -1.7
    to_s: _Onset = 0.0
    armed_fraction: _Frac = 0.25


class ProbeSpec(_Model):
    """Modularity probe (Chen 2021's M, online): stop when the bootstrap CI of M is narrower than ``ci_width``."""

    perturb: Literal["left", "right"] = "left"
    light_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.25
    ci_width: Annotated[float, Field(gt=0, le=2)] = 0.1
    min_trials: Annotated[int, Field(ge=2, le=1000)] = 5


class ProtocolSpec(_Model):
    """A whole protocol file."""

    protocol: Meta
    session: Session = Session()
    light: Light = Light()
    window: Window = Window()
    conditions: list[ConditionSpec] = []
    randomisation: Randomisation = Randomisation()
    state_triggered: StateTriggeredSpec | None = None
    threshold: ThresholdSpec | None = None
    modularity_probe: ProbeSpec | None = None

    @model_validator(mode="after")
    def _kind_sections(self) -> ProtocolSpec:
        kind = self.protocol.kind
        for section in ("state_triggered", "threshold", "modularity_probe"):
            if kind == section and getattr(self, section) is None:
                object.__setattr__(self, section, {"state_triggered": StateTriggeredSpec,
                                                   "threshold": ThresholdSpec,
                                                   "modularity_probe": ProbeSpec}[section]())
        return self


@dataclass(frozen=True)
class Protocol:
    """A validated protocol with its exact source text and sha256 (they go into the session)."""

    spec: ProtocolSpec
    text: str
    sha256: str
    format: str
    path: str | None = None

    @property
    def name(self) -> str:
        """The protocol's name."""
        return self.spec.protocol.name


@dataclass(frozen=True)
class ProtocolIssue:
    """One problem found by :func:`check_protocol`: field path, offending value, allowed range."""

    field: str
    message: str
    value: Any = None
    allowed: str = ""

    def __str__(self) -> str:
        v = "" if self.value is None else f" = {self.value!r}"
        a = f" (allowed: {self.allowed})" if self.allowed else ""
        return f"{self.field}{v}: {self.message}{a}"


@dataclass
class CheckResult:
    """What :func:`check_protocol` found; ``ok`` when there are no errors."""

    errors: list[ProtocolIssue] = field(default_factory=list)
    warnings: list[ProtocolIssue] = field(default_factory=list)
    protocol: Protocol | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True if the protocol may run."""
        return not self.errors and self.protocol is not None

    def report(self) -> str:
        """Human-readable report (what ``rigd protocol check`` prints)."""
        lines = []
        if self.protocol is not None:
            lines.append(f"protocol {self.protocol.name!r} ({self.protocol.format}, sha256 "
                         f"{self.protocol.sha256[:12]}…)")
        lines += [f"ERROR   {e}" for e in self.errors] + [f"warning {w}" for w in self.warnings]
        for k, v in self.summary.items():
            lines.append(f"  {k}: {v}")
        lines.append("OK" if self.ok else f"REJECTED: {len(self.errors)} error(s)")
        return "\n".join(lines)


class ProtocolError(ValueError):
    """A protocol that cannot be loaded or validated; ``issues`` name every offending field."""

    def __init__(self, issues: list[ProtocolIssue], spec: ProtocolSpec | None = None) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues
        #: the parsed spec when only the block conditions failed (its light can still be checked)
        self.spec = spec


# --- loading -----------------------------------------------------------------------------------


#: Unit of a field, from the suffix of its name (units are in every field name, docs/protocols.md).
_UNITS = (("_mw_per_spot", "mW"), ("_hz", "Hz"), ("_j", "J"), ("_s", "s"))
#: How pydantic's range bounds read in an error ("gt 0.0" → "> 0").
_BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
#: Largest block the [randomisation] section accepts (Randomisation.block_size).
MAX_BLOCK_SIZE = 200
#: How close fraction × block size must be to a whole number of trials for the block to realise it
#: (0.08333333 × 12 is 1 trial; 0.7 × 12 = 8.4 is not).
TRIAL_TOLERANCE = 0.01


def _unit(name: str) -> str:
    return next((f" {u}" for suffix, u in _UNITS if name.endswith(suffix)), "")


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        m = _submodel(arg)
        if m is not None:
            return m
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model whose fields ``loc`` (a pydantic error location, without its last key) names."""
    model: type[BaseModel] | None = ProtocolSpec
    for key in loc:
        if isinstance(key, int):
            continue
        if model is None or key not in model.model_fields:
            return None
        model = _submodel(model.model_fields[key].annotation)
    return model


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    """The hint for an unknown key: the closest field of its own section, else of another section."""
    key = str(loc[-1])
    if len(loc) == 1:
        close = difflib.get_close_matches(key, list(ProtocolSpec.model_fields), n=1, cutoff=0.6)
        if close:
            return f"unknown section [{key}]; did you mean [{close[0]}]?"
        return f"unknown section [{key}] (sections: {', '.join(ProtocolSpec.model_fields)})"
    model = _model_at(loc[:-1])
    own = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(key, own, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]}?"
    for section, info in ProtocolSpec.model_fields.items():
        sub = _submodel(info.annotation)
        if sub is None or sub is model:
            continue
        close = difflib.get_close_matches(key, list(sub.model_fields), n=1, cutoff=0.75)
        if close:
            return f"unknown field here; did you mean {close[0]}, a field of [{section}]?"
    return (f"unknown field (check spelling and units in the name; fields here: {', '.join(own)})" if own
            else "unknown field (check spelling and units in the name)")


def _issues_from_validation(exc: ValidationError) -> list[ProtocolIssue]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
        ctx = e.get("ctx") or {}
        typ = e["type"]
        value = e.get("input") if typ != "missing" else None
        msg, allowed = e["msg"], ""
        name = str(e["loc"][-1]) if e["loc"] else ""
        if typ == "missing":
            msg = "required field is missing"
        elif typ == "extra_forbidden":
            msg = _did_you_mean(tuple(e["loc"]))
        elif typ in ("literal_error", "enum"):
            msg, allowed = "not one of the allowed values", str(ctx.get("expected", ""))
        elif typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            (bound, limit), = ((k, v) for k, v in ctx.items() if k in _BOUNDS)
            msg = "too small" if bound in ("gt", "ge") else "too large"
            allowed = f"{_BOUNDS[bound]} {_num(limit)}{_unit(name)}"
        elif typ in ("too_short", "string_too_short"):
            msg, allowed = "too short", f"at least {ctx.get('min_length', 1)}"
        elif typ in ("too_long", "string_too_long"):
            msg, allowed = "too long", f"at most {ctx.get('max_length')}"
        elif msg.startswith("Input should be "):
            msg = "should be " + msg.removeprefix("Input should be ")
        if isinstance(value, dict | list):  # a whole section or list: its name says enough
            value = None
        out.append(ProtocolIssue(loc or "<protocol>", msg, value, allowed))
    return out


def _block_issues(spec: ProtocolSpec) -> list[ProtocolIssue]:
    """What a block protocol's conditions must satisfy before anything is built (named per field)."""
    if spec.protocol.kind != "block":
        return []
    if not spec.conditions:
        return [ProtocolIssue("conditions", "a block protocol needs [[conditions]] (e.g. control + "
                              "photoinhibition)")]
    out = []
    fractions = [c.fraction for c in spec.conditions]
    total = sum(fractions)
    if abs(total - 1) > 0.01:
        out.append(ProtocolIssue("conditions[*].fraction", f"fractions add up to {total:.4g}; they must "
                                 "add up to 1", fractions, "sum = 1 ± 0.01"))
    names = [c.name for c in spec.conditions]
    for i, n in enumerate(names):
        if n in names[:i]:
            out.append(ProtocolIssue(f"conditions[{i}].name", f"a second condition named {n!r}", n,
                                     "unique names"))
    return out


def block_realises(fractions: list[float], block_size: int) -> bool:
    """Whether a block of ``block_size`` trials realises ``fractions`` (docs/protocols.md).

    It does when every fraction times the block size is a whole number of trials (within
    :data:`TRIAL_TOLERANCE`; at least one trial for a fraction above 0) and those numbers add up to
    the block.
    """
    counts = [round(f * block_size) for f in fractions]
    return sum(counts) == block_size and all(
        abs(f * block_size - n) <= TRIAL_TOLERANCE and (n >= 1 or f == 0)
        for f, n in zip(fractions, counts, strict=True))


def realising_block_sizes(fractions: list[float], largest: int = MAX_BLOCK_SIZE) -> list[int]:
    """Every block size up to ``largest`` that realises ``fractions`` (:func:`block_realises`)."""
    return [b for b in range(1, largest + 1) if block_realises(fractions, b)]


def _block_size_issue(spec: ProtocolSpec) -> ProtocolIssue | None:
    fractions = [c.fraction for c in spec.conditions]
    size = spec.randomisation.block_size
    if block_realises(fractions, size):
        return None
    sizes = realising_block_sizes(fractions)
    per_block = ", ".join(f"{c.name} {_num(round(c.fraction * size, 3))}" for c in spec.conditions)
    given = "" if "block_size" in spec.randomisation.model_fields_set else " (the default)"
    msg = (f"a block of {size} trials{given} cannot realise the fractions "
           f"{', '.join(_num(f) for f in fractions)} ({per_block} trials per block)")
    if not sizes:
        return ProtocolIssue("randomisation.block_size", msg, size,
                             f"none up to {MAX_BLOCK_SIZE} realises them: make every fraction a whole "
                             "number of trials per block (e.g. k/12)")
    if sizes == list(range(sizes[0], MAX_BLOCK_SIZE + 1, sizes[0])):
        allowed = f"a multiple of {sizes[0]}: {', '.join(map(str, sizes[:4]))}, … (up to {MAX_BLOCK_SIZE})"
    else:
        allowed = ", ".join(map(str, sizes[:8])) + (", …" if len(sizes) > 8 else "")
    return ProtocolIssue("randomisation.block_size", msg, size, f"block_size = {allowed}")


def _read(path_or_text: str | Path) -> tuple[str, str | None, str]:
    """Return (text, path, format hint)."""
    if isinstance(path_or_text, Path) or ("\n" not in path_or_text and len(path_or_text) < 4096
                                          and Path(path_or_text).suffix in (".toml", ".yaml", ".yml")):
        p = Path(path_or_text)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProtocolError([ProtocolIssue(str(p), f"cannot read protocol file: {exc}")]) from None
        return text, str(p), "yaml" if p.suffix in (".yaml", ".yml") else "toml"
    return str(path_or_text), None, ""


def _parse(text: str, fmt: str) -> tuple[dict[str, Any], str]:
    if fmt in ("", "toml"):
        try:
            return tomllib.loads(text), "toml"
        except tomllib.TOMLDecodeError as exc:
            if fmt == "toml":
                raise ProtocolError([ProtocolIssue("<toml>", f"not valid TOML: {exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProtocolError([ProtocolIssue("<yaml>", f"neither valid TOML nor YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ProtocolError([ProtocolIssue("<protocol>", "a protocol must be a table/mapping of sections",
                                           type(data).__name__)])
    return data, "yaml"


def load_protocol(path_or_text: str | Path) -> Protocol:
    """Read and validate a protocol file (or its text); ProtocolError names every bad field."""
    text, path, hint = _read(path_or_text)
    data, fmt = _parse(text, hint)
    try:
        spec = ProtocolSpec.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(_issues_from_validation(exc)) from None
    if issues := _block_issues(spec):
        raise ProtocolError(issues, spec)
    return Protocol(spec, text, hashlib.sha256(text.encode("utf-8")).hexdigest(), fmt, path)


def protocol_from_spec(spec: ProtocolSpec | dict[str, Any]) -> Protocol:
    """Wrap a spec built in Python; its text is the canonical JSON of the spec (hashed likewise)."""
    try:
        s = spec if isinstance(spec, ProtocolSpec) else ProtocolSpec.model_validate(spec)
    except ValidationError as exc:
        raise ProtocolError(_issues_from_validation(exc)) from None
    if issues := _block_issues(s):
        raise ProtocolError(issues)
    text = json.dumps(s.model_dump(mode="json"), indent=1, sort_keys=True)
    return Protocol(s, text, hashlib.sha256(text.encode()).hexdigest(), "python")


# --- checking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Arm:
    """One way a trial can get light, for dose and limit checks.

    ``label`` names the arm in messages ("conditions[1] 'left_alm'"); ``sources`` maps each
    setting (power_mw_per_spot, duration_s, onset_s, spots_per_hemisphere) to the protocol field it
    came from: the condition's own override, or the ``[light]``/``[window]`` default it inherits.
    """

    label: str
    hemisphere: str
    fraction: float
    power_mw_per_spot: float
    duration_s: float
    onset_from_go_s: float
    n_spots: int
    sources: dict[str, str] = field(default_factory=dict)

    def source(self, setting: str) -> str:
        """The protocol field a setting of this arm came from."""
        return self.sources[setting]


def _onset_from_go(anchor: str, onset_s: float, s: Session) -> float:
    if anchor == "go_cue":
        return onset_s
    if anchor == "delay_onset":
        return onset_s - s.expects_delay_s
    return onset_s - s.expects_delay_s - s.sample_s


def light_window_from_go(spec: ProtocolSpec) -> tuple[float, float]:
    """The protocol's ``[window]`` as (onset, end) in seconds from the go cue (ramp included)."""
    onset = _onset_from_go(spec.window.aligned_to, spec.window.onset_s, spec.session)
    return onset, onset + spec.window.duration_s


def _arms(spec: ProtocolSpec) -> list[_Arm]:
    s, lt, w = spec.session, spec.light, spec.window
    kind = spec.protocol.kind
    light_sources = {"power_mw_per_spot": "light.power_mw_per_spot", "duration_s": "window.duration_s",
                     "onset_s": "window.onset_s", "spots_per_hemisphere": "light.spots_per_hemisphere"}
    if kind == "block":
        arms = []
        for i, c in enumerate(spec.conditions):
            if c.hemisphere is None:
                continue
            anchor = c.aligned_to or w.aligned_to
            onset = c.onset_s if c.onset_s is not None else w.onset_s
            own = {k: f"conditions[{i}].{k}" for k in light_sources if getattr(c, k) is not None}
            arms.append(_Arm(f"conditions[{i}] {c.name!r}", c.hemisphere, c.fraction,
                             c.power_mw_per_spot or lt.power_mw_per_spot, c.duration_s or w.duration_s,
                             _onset_from_go(anchor, onset, s),
                             c.spots_per_hemisphere or lt.spots_per_hemisphere, {**light_sources, **own}))
        return arms
    onset = _onset_from_go(w.aligned_to, w.onset_s, s)
    if kind == "state_triggered":
        st = spec.state_triggered or StateTriggeredSpec()
        f = st.eligible_fraction * st.light_fraction
        hemis = ["left", "right"] if st.perturb == "alternate" else [st.perturb]
        return [_Arm("state_triggered", h, f / len(hemis), lt.power_mw_per_spot, w.duration_s, onset,
                     lt.spots_per_hemisphere, light_sources) for h in hemis]
    if kind == "threshold":
        th = spec.threshold or ThresholdSpec()
        return [_Arm("threshold", th.hemisphere, th.armed_fraction, lt.power_mw_per_spot, w.duration_s,
                     th.from_s, lt.spots_per_hemisphere, {**light_sources, "onset_s": "threshold.from_s"})]
    pr = spec.modularity_probe or ProbeSpec()
    return [_Arm("modularity_probe", pr.perturb, pr.light_fraction, lt.power_mw_per_spot, w.duration_s, onset,
                 lt.spots_per_hemisphere, light_sources)]


#: Where a too-large perturbed fraction is set, per protocol kind (field, what to lower).
_FRACTION_FIELDS = {"block": ("conditions", "the perturbed conditions' fractions"),
                    "state_triggered": ("state_triggered", "eligible_fraction × light_fraction"),
                    "threshold": ("threshold.armed_fraction", "armed_fraction"),
                    "modularity_probe": ("modularity_probe.light_fraction", "light_fraction")}


class _ArmIssues:
    """Per-arm errors merged by field: one error per protocol field, naming every arm it affects."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str, str, str], list[str]] = {}
        self._values: dict[tuple[str, str, str, str], Any] = {}

    def add(self, arm: _Arm, fld: str, message: str, value: Any, allowed: str) -> None:
        key = (fld, message, repr(value), allowed)
        self._found.setdefault(key, []).append(arm.label)
        self._values[key] = value

    def issues(self) -> list[ProtocolIssue]:
        out = []
        for key, labels in self._found.items():
            fld, message, _, allowed = key
            if not fld.startswith("conditions[") and labels[0].startswith("conditions["):
                message += f" (used by {', '.join(labels)})"
            out.append(ProtocolIssue(fld, message, self._values[key], allowed))
        return out


def _check_limits(spec: ProtocolSpec, lim: SafetyLimits, res: CheckResult) -> None:
    err, warn = res.errors.append, res.warnings.append
    lt, s = spec.light, spec.session
    if lt.ramp_down_s < lim.min_ramp_down_s:
        err(ProtocolIssue("light.ramp_down_s", "linear ramp-down shorter than the interlock minimum",
                          lt.ramp_down_s, f"≥ {lim.min_ramp_down_s} s"))
    if lt.waveform == "sine" and lt.freq_hz > lim.max_freq_hz:
        err(ProtocolIssue("light.freq_hz", "frequency above the interlock maximum", lt.freq_hz,
                          f"0 < freq_hz ≤ {lim.max_freq_hz} Hz"))
    arms = _arms(spec)
    if not arms and spec.protocol.kind == "block":  # no conditions to check: the [light] defaults alone
        mask = (1 << min(lt.spots_per_hemisphere, 8)) - 1
        cap = lim.power_cap_mw(mask, mask)
        if lt.power_mw_per_spot > cap:
            err(ProtocolIssue("light.power_mw_per_spot", "more power per spot than the interlock allows "
                              "(service cap / calibrated spot maximum)", lt.power_mw_per_spot, f"0 < P ≤ {cap} mW"))
    t_trial0 = -(s.presample_s + s.sample_s + s.expects_delay_s)
    per_arm = _ArmIssues()
    for a in arms:
        n_cal = min(lim.n_spots_left if a.hemisphere in ("left", "bilateral") else 8,
                    lim.n_spots_right if a.hemisphere in ("right", "bilateral") else 8)
        if a.n_spots > n_cal:
            per_arm.add(a, a.source("spots_per_hemisphere"), "more spots than the rig calibration has",
                        a.n_spots, f"1…{n_cal}")
            continue
        mask = (1 << a.n_spots) - 1
        cap = lim.power_cap_mw(mask if a.hemisphere != "right" else 0, mask if a.hemisphere != "left" else 0)
        if a.power_mw_per_spot > cap:
            per_arm.add(a, a.source("power_mw_per_spot"), "more power per spot than the interlock allows "
                        "(service cap / calibrated spot maximum)", a.power_mw_per_spot, f"0 < P ≤ {cap} mW")
        if a.duration_s > lim.max_continuous_s:
            per_arm.add(a, a.source("duration_s"), "longer continuous light than the interlock allows",
                        a.duration_s, f"0 < duration_s ≤ {lim.max_continuous_s} s (ramp included)")
        if lt.ramp_down_s > a.duration_s:
            per_arm.add(a, "light.ramp_down_s", "ramp-down longer than the light window", lt.ramp_down_s,
                        f"≤ duration_s = {a.duration_s} s")
        end = a.onset_from_go_s + a.duration_s
        if a.onset_from_go_s < t_trial0 or end > s.response_window_s:
            per_arm.add(a, a.source("onset_s"), "light window falls outside the trial "
                        f"({a.onset_from_go_s:+.2f}…{end:+.2f} s from the go cue)", a.onset_from_go_s,
                        f"{t_trial0:+.2f} s ≤ onset, end ≤ {s.response_window_s:+.2f} s from go")
    res.errors.extend(per_arm.issues())
    total = round(sum(a.fraction for a in arms), 4)
    cap_f = lim.max_fraction_perturbed
    fld, lower = _FRACTION_FIELDS[spec.protocol.kind]
    if total > cap_f + 1e-9:
        err(ProtocolIssue(fld, f"perturbed-trial fraction above the interlock's cap ({cap_f:g}, set by the "
                          f"rig's calibration, docs/safety.md); lower {lower}", total, f"≤ {cap_f:g}"))
    elif spec.protocol.kind == "block" and total > spec.randomisation.max_fraction_perturbed + 1e-9:
        err(ProtocolIssue("randomisation.max_fraction_perturbed", "the conditions ask for a larger perturbed "
                          f"fraction ({total:g}) than the randomisation allows; raise it to at least "
                          f"{total:g} (the interlock allows up to {cap_f:g}) or lower {lower}",
                          spec.randomisation.max_fraction_perturbed, f"{total:g} ≤ max_fraction_perturbed ≤ "
                          f"{cap_f:g}"))
    if spec.protocol.kind == "block" and spec.randomisation.max_fraction_perturbed > cap_f + 1e-9:
        warn(ProtocolIssue("randomisation.max_fraction_perturbed", "above the interlock's cap: the "
                           f"interlock refuses light on trials beyond {cap_f:g} of the session",
                           spec.randomisation.max_fraction_perturbed, f"≤ {cap_f:g}"))
    # dose: expected per session and per rolling window, per hemisphere
    trials_per_window = lim.energy_window_s / s.trial_period_s
    dose = {"left": 0.0, "right": 0.0}
    per_trial_max = {"left": 0.0, "right": 0.0}
    for a in arms:
        j = a.power_mw_per_spot * 1e-3 * a.n_spots * a.duration_s
        for h in ("left", "right"):
            if a.hemisphere in (h, "bilateral"):
                dose[h] += a.fraction * j
                per_trial_max[h] = max(per_trial_max[h], j)
    for h in ("left", "right"):
        window_j = dose[h] * trials_per_window
        if window_j > lim.energy_budget_j:
            err(ProtocolIssue(f"light dose ({h} hemisphere)", f"expected {window_j:.3f} J per "
                              f"{lim.energy_window_s:.0f} s exceeds the interlock's rolling budget",
                              round(window_j, 4),
                              f"≤ {lim.energy_budget_j} J per {lim.energy_window_s:.0f} s"))
        worst = (lim.max_fraction_perturbed * trials_per_window + lim.small_n_allowance) * per_trial_max[h]
        if window_j <= lim.energy_budget_j < worst:
            warn(ProtocolIssue(f"light dose ({h} hemisphere)", "a cluster of perturbed trials could "
                               "reach the energy budget; the interlock would then refuse light on some "
                               "trials",
                               round(worst, 4), f"≤ {lim.energy_budget_j} J"))
    res.summary.update({
        "kind": spec.protocol.kind,
        "expected_trials": _expected_counts(spec),
        "perturbed_fraction": round(total, 4),
        "dose_per_session_j": {h: round(dose[h] * s.n_trials, 4) for h in dose},
        "dose_per_window_j": {h: round(dose[h] * trials_per_window, 4) for h in dose},
        "energy_budget_j": f"{lim.energy_budget_j} J per {lim.energy_window_s:.0f} s per hemisphere",
    })


def _expected_counts(spec: ProtocolSpec) -> dict[str, float]:
    n = spec.session.n_trials
    if spec.protocol.kind == "block":
        return {c.name: round(c.fraction * n, 1) for c in spec.conditions}
    arms = _arms(spec)
    out = {a.hemisphere + "_light": round(a.fraction * n, 1) for a in arms}
    out["no_light"] = round(n * (1 - sum(a.fraction for a in arms)), 1)
    return out


def check_protocol(path_or_text: str | Path | Protocol, limits: SafetyLimits | None = None) -> CheckResult:
    """Validate a protocol against the language and the interlock limits (default calibration if None)."""
    res = CheckResult()
    try:
        proto = path_or_text if isinstance(path_or_text, Protocol) else load_protocol(path_or_text)
    except ProtocolError as exc:
        res.errors.extend(exc.issues)
        if exc.spec is not None:  # only the conditions failed: the light settings are still checked
            _check_limits(exc.spec, limits or default_limits(), res)
        return res
    res.protocol = proto
    spec = proto.spec
    if spec.protocol.kind == "block" and (issue := _block_size_issue(spec)) is not None:
        res.errors.append(issue)
    _check_limits(spec, limits or default_limits(), res)
    return res


# --- building ----------------------------------------------------------------------------------


def _conditions(spec: ProtocolSpec) -> list[Condition]:
    lt, w = spec.light, spec.window
    out = []
    for c in spec.conditions:
        win = None
        if c.hemisphere is not None:
            win = LightWindow(c.onset_s if c.onset_s is not None else w.onset_s,
                              c.duration_s or w.duration_s, c.aligned_to or w.aligned_to)
        out.append(Condition(c.name, c.fraction, c.hemisphere, win,
                             power_mw_per_spot=c.power_mw_per_spot or lt.power_mw_per_spot,
                             ramp_down_s=lt.ramp_down_s, waveform=lt.waveform, freq_hz=lt.freq_hz,
                             n_spots=c.spots_per_hemisphere or lt.spots_per_hemisphere))
    return out


def build_controller(protocol: Protocol | ProtocolSpec, seed: int | None = None) -> Controller:
    """Build the controller a protocol describes (seed: the protocol's own unless given).

    It does not check limits: run :func:`check_protocol` first; whatever is built, the interlock
    still refuses anything out of limits at run time.
    """
    spec = protocol.spec if isinstance(protocol, Protocol) else protocol
    sd = spec.protocol.seed if seed is None else seed
    lt, w = spec.light, spec.window
    settings = LightSettings(power_mw_per_spot=lt.power_mw_per_spot, duration_s=w.duration_s,
                             ramp_down_s=lt.ramp_down_s, waveform=lt.waveform, freq_hz=lt.freq_hz,
                             n_spots=lt.spots_per_hemisphere, deadline_budget_s=lt.deadline_budget_s)
    onset = _onset_from_go(w.aligned_to, w.onset_s, spec.session)
    kind = spec.protocol.kind
    if kind == "block":
        r = spec.randomisation
        return BlockScheduler(_conditions(spec), sd, Constraints(
            block_size=r.block_size, max_fraction_perturbed=r.max_fraction_perturbed,
            max_run_perturbed=r.max_run_perturbed, no_repeat_site=r.no_repeat_site,
            redraw_after_early_lick=r.redraw_after_early_lick), name=spec.protocol.name)
    if kind == "state_triggered":
        s = spec.state_triggered or StateTriggeredSpec()
        return StateTriggered(perturb=s.perturb, onset_s=onset, read_window_s=s.read_window_s,
                              eligible_fraction=s.eligible_fraction, light_fraction=s.light_fraction,
                              median_trials=s.median_trials, min_history=s.min_history, light=settings,
                              seed=sd, state_measure=s.state_measure)
    if kind == "threshold":
        t = spec.threshold or ThresholdSpec()
        return ThresholdTrigger(hemisphere=t.hemisphere, threshold=t.threshold, direction=t.direction,
                                from_s=t.from_s, to_s=t.to_s, armed_fraction=t.armed_fraction,
                                light=settings, seed=sd)
    p = spec.modularity_probe or ProbeSpec()
    return ModularityProbe(perturb=p.perturb, onset_s=onset, light_fraction=p.light_fraction,
                           ci_width=p.ci_width, min_trials=p.min_trials, light=settings, seed=sd)


# --- Python API --------------------------------------------------------------------------------


class ProtocolBuilder:
    """Write a protocol in Python so that it reads like a methods paragraph.

    Example::

        protocol = (ProtocolBuilder("Chen 2021 early-delay photoinhibition", seed=1)
                    .light(power_mw_per_spot=1.5, waveform="sine", freq_hz=40, ramp_down_s=0.1)
                    .window(onset_s=-1.7, duration_s=0.8, aligned_to="go_cue")
                    .control(fraction=0.75)
                    .photoinhibit("left", fraction=0.25 / 3)
                    .photoinhibit("right", fraction=0.25 / 3)
                    .photoinhibit("bilateral", fraction=0.25 / 3)
                    .build())
    """

    def __init__(self, name: str, *, seed: int = 0, description: str = "", n_trials: int = 400) -> None:
        self._d: dict[str, Any] = {"protocol": {"name": name, "seed": seed, "description": description,
                                                "kind": "block"},
                                   "session": {"n_trials": n_trials}, "conditions": []}

    def light(self, **kw: Any) -> ProtocolBuilder:
        """Light defaults (power_mw_per_spot, waveform, freq_hz, ramp_down_s, spots_per_hemisphere)."""
        self._d.setdefault("light", {}).update(kw)
        return self

    def window(self, **kw: Any) -> ProtocolBuilder:
        """Light window (onset_s, duration_s, aligned_to)."""
        self._d.setdefault("window", {}).update(kw)
        return self

    def session(self, **kw: Any) -> ProtocolBuilder:
        """Session facts (n_trials, trial_period_s, expects_delay_s, …)."""
        self._d.setdefault("session", {}).update(kw)
        return self

    def control(self, fraction: float, name: str = "control") -> ProtocolBuilder:
        """Add control trials."""
        self._d["conditions"].append({"name": name, "fraction": fraction})
        return self

    def photoinhibit(self, hemisphere: str, fraction: float, name: str | None = None,
                     **overrides: Any) -> ProtocolBuilder:
        """Add a photoinhibition condition (overrides: onset_s, duration_s, aligned_to, power_mw_per_spot)."""
        self._d["conditions"].append({"name": name or f"{hemisphere}_alm", "fraction": fraction,
                                      "hemisphere": hemisphere, **overrides})
        return self

    def randomise(self, **kw: Any) -> ProtocolBuilder:
        """Randomisation constraints (block_size, max_fraction_perturbed, max_run_perturbed, …)."""
        self._d.setdefault("randomisation", {}).update(kw)
        return self

    def state_triggered(self, **kw: Any) -> ProtocolBuilder:
        """Make this the state-triggered experiment (perturb, read_window_s, eligible_fraction…)."""
        self._d["protocol"]["kind"] = "state_triggered"
        self._d["state_triggered"] = kw
        self._d.pop("conditions", None)
        return self

    def build(self) -> Protocol:
        """Validate and return the protocol (ProtocolError names every bad field)."""
        return protocol_from_spec(self._d)


def methods_text(protocol: Protocol | ProtocolSpec) -> str:
    """Write a methods-section paragraph generated from the protocol (for reports and the session)."""
    spec = protocol.spec if isinstance(protocol, Protocol) else protocol
    lt, w = spec.light, spec.window
    wave = f"{lt.freq_hz:g}-Hz sinusoidal" if lt.waveform == "sine" else "constant"
    light = (f"{wave} light at {lt.power_mw_per_spot:g} mW per spot (time-averaged), "
             f"{lt.spots_per_hemisphere} spots per hemisphere, ending with a {lt.ramp_down_s * 1e3:.0f}-ms "
             "linear ramp-down")
    anchor = {"go_cue": "the go cue", "delay_onset": "delay onset", "sample_onset": "sample onset"}
    if spec.protocol.kind == "block":
        parts = []
        for c in spec.conditions:
            if c.hemisphere is None:
                parts.append(f"{c.fraction:.0%} control")
            else:
                on = c.onset_s if c.onset_s is not None else w.onset_s
                du = c.duration_s or w.duration_s
                parts.append(f"{c.fraction:.1%} {c.hemisphere} ALM ({on:+g} s from "
                             f"{anchor[c.aligned_to or w.aligned_to]}, {du:g} s)")
        return (f"{spec.protocol.name}: trials were randomised in blocks of {spec.randomisation.block_size} "
                f"({', '.join(parts)}); photoinhibition used {light}.")
    return (f"{spec.protocol.name}: {spec.protocol.kind.replace('_', '-')} photoinhibition, window "
            f"{w.onset_s:+g} s from {anchor[w.aligned_to]} for {w.duration_s:g} s, {light}.")

