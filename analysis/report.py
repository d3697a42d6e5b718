"""The session report: one HTML page with PNG figures, after a session, from its recording.

It owns the report's pipeline: read a rigd session directory (any session that follows the wire
protocol) or an NWB file written by ``analysis.nwb_export``, cut the spike counts, the online decoder
outputs and the light per trial around the go cue, compute the Chen et al. (2021) quantities
with the analysis helpers of :mod:`analysis.neural` (performance with Wilson CIs, selectivity,
coding direction, modularity, t90 recovery), draw the figures with matplotlib (Agg), and write
``report.html``, ``report.json`` (every number in the page) and the PNGs. It reads the session;
it never changes it. Long steps report to a rich.progress-compatible ``progress``.

Trial conventions (docs/report.md, said on the page too): performance counts completed trials
(a lick after the go cue, no early lick); a trial's condition is the light it actually received
(a refused, late, invalid or unacknowledged command leaves the trial "not delivered", outside
every comparison: rig/conditions.py, with acks recorded after a trial's summary joined in);
selectivity uses all completed trials labelled by the instructed side.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pynwb import NWBHDF5IO
from scipy import stats as scipy_stats

from analysis import neural, stats
from analysis.condition_windows import (
    ConditionLight,
    TrialLight,
    condition_lights,
    read_protocol,
    window_notes,
)
from analysis.report_figures import (
    figure_cd,
    figure_decoder,
    figure_latency,
    figure_light,
    figure_modularity,
    figure_performance,
    figure_selectivity,
    light_bands,
)
from analysis.report_page import page
from hardware.calibration import default_limits
from rig import wire
from rig.conditions import NOT_DELIVERED, canonical_condition, delivered_condition, join_recorded_acks, trial_label
from rig.progress import count
from rig.session import Session
from rig.telemetry import FIELDS

FloatArray = npt.NDArray[np.float64]
NS = 1e9
OTHER = {"left": "right", "right": "left"}
BIN_S = 0.1  #: analysis bins (100-ms windows, as Yang et al., Nat Neurosci 2022)
WINDOW_S = (-3.5, 1.0)  #: trial span around the go cue (pre-sample to response)
N_BOOT = stats.N_BOOT  #: bootstrap resamples (Chen et al., Cell 2021)
DEFAULT_GO_AFTER_START_S = 3.5  #: pre-sample 0.5 + sample 1.3 + delay 1.7 s (docs/simulator.md)
SELECTIVE_MIN_HZ = 0.5  #: |preferred − non-preferred| > 0.5 spikes/s (Chen et al. 2021 analysis code)
DELAY_S = (-1.7, 0.0)  #: the delay epoch when a recording carries no delay onsets (docs/simulator.md)


class ProgressLike(Protocol):
    """The part of ``rich.progress.Progress`` the report uses."""

    def add_task(self, description: str, *, total: float | None = ...) -> Any:
        """Start a task; returns its id."""
        ...

    def update(
        self,
        task_id: Any,
        *,
        completed: float | None = ...,
        advance: float | None = ...,
        description: str | None = ...,
    ) -> None:
        """Move a task on."""
        ...


class _Steps:
    """Progress steps that do nothing without a progress object."""

    def __init__(self, progress: ProgressLike | None) -> None:
        self.progress = progress
        self.task: Any = None

    def start(self, description: str, total: float | None) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(description, total=total)

    def advance(self, n: float = 1.0) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=n)

    def done(self, total: float) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=total)


# -- the data a report needs, whatever the source ----------------------------------------------


@dataclasses.dataclass
class Trial:
    """One trial as the report sees it."""

    trial: int
    instructed: int  #: +1 right, -1 left, 0 unknown
    choice: int
    outcome: str
    early_lick: bool
    condition: str  #: delivered (rig/conditions.py): control / left / right / bilateral / not_delivered
    planned: str  #: the protocol's condition label for the trial (``right_late``…), delivered or not
    go_s: float  #: go cue, seconds on the session clock
    power_mw: float = 0.0
    spots_left: int = 0
    spots_right: int = 0
    duration_s: float = 0.0
    ramp_s: float = 0.0
    onset_s: float | None = None  #: delivered light's onset from the go cue (measured, else commanded)
    status: str = "none"
    refused: tuple[str, ...] = ()
    sample_onset_s: float | None = None  #: the trial's sample onset from its go cue
    delay_onset_s: float | None = None  #: the trial's delay onset from its go cue

    @property
    def label(self) -> str:
        """The condition the trial is analysed under: the protocol's name, or ``not_delivered``."""
        return trial_label(self.planned, self.condition)

    @property
    def completed(self) -> bool:
        """A lick after the go cue and no early lick."""
        return self.outcome in ("hit", "error") and not self.early_lick


@dataclasses.dataclass
class ReportData:
    """Everything the figures need, from a session directory or an NWB file."""

    source: str
    name: str
    trials: list[Trial]
    t_frames_s: FloatArray  #: end of each spike-count frame (session clock, s)
    counts: npt.NDArray[Any]  #: (n_frames, n_units)
    frame_s: float
    hemisphere: npt.NDArray[np.int8]  #: 0 left, 1 right
    fs_units: set[int]
    decoder_t_s: FloatArray  #: decoder rows on the session clock
    decoder: FloatArray  #: (n_rows, 3): value, left, right
    limits: dict[str, Any]
    limits_source: str
    internal_us: FloatArray
    e2e_us: FloatArray
    deadline_us: float
    protocol: dict[str, Any]
    meta: dict[str, Any]
    alarms: list[dict[str, Any]]
    notes: list[str] = dataclasses.field(default_factory=list)
    conditions: dict[str, ConditionLight] = dataclasses.field(default_factory=dict)

    def finish(self) -> ReportData:
        """Name the conditions and find their light windows (the recorded protocol + delivered light)."""
        proto, why = read_protocol(str(self.protocol.get("text") or ""))
        if why:
            self.notes.append(why)
        lights = [TrialLight(t.label, t.condition, t.planned, t.onset_s, t.duration_s, t.sample_onset_s,
                             t.delay_onset_s) for t in self.trials]
        self.conditions = condition_lights(lights, proto)
        self.notes.extend(window_notes(self.conditions, BIN_S))
        return self


def _popcount(x: int) -> int:
    return bin(int(x)).count("1")


def _limits_dict(limits: Any) -> dict[str, Any]:
    return dict(limits) if isinstance(limits, dict) else {}


def load_session(session_dir: Path, steps: _Steps) -> ReportData:
    """Read a rigd session directory."""
    steps.start("reading the session log", None)
    s = Session.open(session_dir)
    m = s.manifest
    _, t_rig, counts = s.counts()
    if counts.shape[0] == 0:
        raise ValueError(f"{session_dir}: no spike-count frames recorded; nothing to report")
    order = np.argsort(t_rig, kind="stable")
    t_rig, counts = t_rig[order], counts[order]
    t0 = int(t_rig[0])
    desc = s.rig_description()
    n_units = counts.shape[1]
    n_left = int(desc.get("units_left", n_units // 2))
    frame_s = float(desc.get("bin_s", np.median(np.diff(t_rig)) * 1e-9 if len(t_rig) > 1 else 1e-3))
    go: dict[int, int] = {}
    anchors: dict[int, dict[str, int]] = {}  # sample/delay onsets: the actual event beats the plan
    for e in s.events():
        k = int(e.get("trial", -1))
        if e["event"] == "trial_start":
            if e.get("t_go_ns"):
                go.setdefault(k, int(e["t_go_ns"]))
            for key, field in (("sample", "t_sample_ns"), ("delay", "t_delay_ns")):
                if e.get(field):
                    anchors.setdefault(k, {}).setdefault(key, int(e[field]))
        elif e["event"] == "go_cue":
            go[k] = int(e["t_rig_ns"])  # the actual cue beats the plan
        elif e["event"] in ("sample_on", "delay_on"):
            anchors.setdefault(k, {})[e["event"].removesuffix("_on")] = int(e["t_rig_ns"])
    trials: list[Trial] = []
    for tr in join_recorded_acks(s.trials(), s.light_acks()):  # acks recorded after a summary count too
        k = int(tr["trial"])
        if k not in go:
            continue
        light = tr.get("light") or {}
        status = str(tr["light_status"])
        planned = str(tr.get("condition") or tr["planned_condition"])  # the protocol's own label
        cond = str(tr["delivered_condition"])
        anchor = anchors.get(k, {})
        measured = light.get("t_light_change_rig_ns")
        onset = ((int(measured) - go[k]) / NS if measured
                 else float(light["onset_t_s"]) if light.get("onset_t_s") is not None else None)
        trials.append(
            Trial(
                trial=k,
                instructed=wire.side_sign(tr.get("instructed")),
                choice=wire.side_sign(tr.get("choice")),
                outcome=str(tr.get("outcome", "unknown")),
                early_lick=bool(tr.get("early_lick")),
                condition=cond,
                planned=planned,
                go_s=(go[k] - t0) / NS,
                power_mw=float(light.get("power_mw_per_spot", 0.0)),
                spots_left=int(light.get("spots_left", 0)),
                spots_right=int(light.get("spots_right", 0)),
                duration_s=float(light.get("duration_s", 0.0)),
                ramp_s=float(light.get("ramp_down_s", 0.0)),
                onset_s=onset,
                status=status,
                refused=tuple(str(r) for r in tr.get("refused") or ()),
                sample_onset_s=(anchor["sample"] - go[k]) / NS if "sample" in anchor else None,
                delay_onset_s=(anchor["delay"] - go[k]) / NS if "delay" in anchor else None,
            )
        )
    notes: list[str] = []
    try:
        dec = s.decoder_outputs()
    except ValueError as exc:  # e.g. an empty decoder chunk: report without the decoder
        dec = np.zeros((0, 7))
        notes.append(f"decoder outputs unreadable ({exc}); decoder figure left empty")
    tel = s.telemetry()
    internal = (
        tel[:, FIELDS.index("internal_us")] if tel.shape[0] and tel.shape[1] == len(FIELDS) else np.zeros(0)
    )
    e2e = np.array(
        [
            (a.t_received_rig_ns - a.cause_t_send_ns) * 1e-3
            for _, a in s.light_acks()
            if a.status in (wire.AckStatus.APPLIED, wire.AckStatus.LATE) and a.cause_t_send_ns
        ],
        dtype=np.float64,
    )
    interlock_limits = _limits_dict(m.get("interlock", {}).get("limits"))
    cal_limits = _limits_dict(m.get("calibration", {}).get("limits"))
    limits, limits_source = (
        (interlock_limits, "manifest: interlock.limits")
        if interlock_limits
        else (
            (cal_limits, "manifest: calibration.limits")
            if cal_limits
            else (_default_limits(), "shipped defaults")
        )
    )
    cfg = m.get("config", {})
    proto = m.get("protocol", {})
    steps.done(1)
    return ReportData(
        source="session",
        name=s.directory.name,
        trials=trials,
        t_frames_s=(t_rig - t0) / NS,
        counts=counts,
        frame_s=frame_s,
        hemisphere=(np.arange(n_units) >= n_left).astype(np.int8),
        fs_units={int(i) for i in desc.get("fs_units", [])},
        decoder_t_s=(dec[:, 1] - t0) / NS if dec.shape[0] else np.zeros(0),
        decoder=dec[:, [3, 5, 6]] if dec.shape[0] else np.zeros((0, 3)),
        limits=limits,
        limits_source=limits_source,
        internal_us=np.asarray(internal, np.float64),
        e2e_us=e2e,
        deadline_us=float(cfg.get("deadline_ms", 10.0)) * 1e3,
        protocol={
            "name": proto.get("name", "?"),
            "sha256": proto.get("sha256", "?"),
            "text": proto.get("text", ""),
            "source": proto.get("source"),
        },
        meta={
            "directory": str(s.directory),
            "started": m.get("started"),
            "stopped": m.get("stopped"),
            "stop_reason": m.get("stop_reason"),
            "rig": desc.get("rig", cfg.get("rig")),
            "seeds": m.get("seeds"),
            "versions": m.get("versions"),
            "counters": m.get("counters", {}),
            "config": {
                k: cfg.get(k)
                for k in (
                    "mu_left",
                    "mu_right",
                    "units_per_hemisphere",
                    "decoder",
                    "deadline_ms",
                    "trials",
                    "seed",
                    "day",
                )
            },
            "torn_bytes": s.torn_bytes,
            "bad_records": s.bad_records,
        },
        alarms=s.alarms(),
        notes=notes,
    )


def _default_limits() -> dict[str, Any]:
    return default_limits().model_dump()


def load_nwb(path: Path, steps: _Steps) -> ReportData:
    """Read an NWB file written by ``analysis.nwb_export.export_session``."""
    steps.start("reading the NWB file", None)
    notes: list[str] = []
    with NWBHDF5IO(str(path), "r") as io:
        f = io.read()
        ts = f.processing["ecephys"]["binned_spike_counts"]
        counts = np.asarray(ts.data[:])
        t_frames = np.asarray(ts.get_timestamps(), dtype=np.float64)
        ui = f.processing["ecephys"]["unit_info"].to_dataframe()
        hemisphere = (ui["hemisphere"].to_numpy() == "right").astype(np.int8)
        fs_units = {int(i) for i in np.flatnonzero(ui["fast_spiking"].to_numpy().astype(bool))}
        df = f.trials.to_dataframe()
        if "go_cue_time" in df.columns:
            go = df["go_cue_time"].to_numpy(dtype=np.float64)
        else:
            go = df["start_time"].to_numpy(dtype=np.float64) + DEFAULT_GO_AFTER_START_S
            notes.append(
                f"the NWB trials table has no go_cue_time column: go cue taken as trial start + "
                f"{DEFAULT_GO_AFTER_START_S} s (pre-sample 0.5 s + sample 1.3 s + delay 1.7 s)"
            )
        trials: list[Trial] = []
        for i, (_, r) in enumerate(df.iterrows()):
            cond_name = str(r.get("photostim_condition", "control"))
            status = str(r.get("photostim_status", "none"))
            power = float(r.get("photostim_power", 0.0))
            spots = 0b1111  # the trials table has no spot masks: 4 spots per lit hemisphere (Chen 2021)
            planned = cond_name  # the protocol's label (the export's PLANNED column)
            if "photostim_delivered_condition" in r:  # planned and delivered columns (analysis.nwb_export)
                got = str(r["photostim_delivered_condition"])
                lit = bool(r.get("photostim_delivered")) and got in ("left", "right", "bilateral")
                cond = delivered_condition(planned, got if lit else None, "applied" if lit else status)
                planned_lit = cond if lit else canonical_condition(planned)
            else:  # an older export: one condition column, delivered-ness from the ack status
                planned_lit = canonical_condition(cond_name)
                lit = power > 0 and planned_lit in ("left", "right", "bilateral")
                cond = delivered_condition(planned_lit, planned_lit if lit else None, status)
            onset = float(r.get("photostim_onset", np.nan))
            measured = float(r.get("photostim_onset_measured", np.nan))
            if math.isfinite(measured):
                onset = measured
            trials.append(
                Trial(
                    trial=i,
                    instructed=wire.side_sign(r.get("instructed_side")),
                    choice=wire.side_sign(r.get("choice")),
                    outcome=str(r.get("outcome")),
                    early_lick=bool(r.get("early_lick")),
                    condition=cond,
                    planned=planned,
                    go_s=float(go[i]),
                    power_mw=power,
                    spots_left=spots if lit and planned_lit in ("left", "bilateral") else 0,
                    spots_right=spots if lit and planned_lit in ("right", "bilateral") else 0,
                    duration_s=float(r.get("photostim_duration", 0.0)),
                    ramp_s=0.1 if lit else 0.0,
                    onset_s=onset if math.isfinite(onset) else None,
                    status=status,
                )
            )
        if any(t.condition != "control" for t in trials):
            notes.append(
                "NWB: spot masks and ramp-down are not stored; light dose assumes 4 spots per lit "
                "hemisphere and a 0.1 s ramp (the Chen et al. 2021 protocol)"
            )
        dec_t, dec = np.zeros(0), np.zeros((0, 3))
        if "decoding" in f.processing:
            d = f.processing["decoding"]["decoder_output"]
            arr = np.asarray(d.data[:], dtype=np.float64)
            dec_t = np.asarray(d.get_timestamps(), dtype=np.float64)
            dec = arr[:, [0, 2, 3]]
        proto_text = str(f.protocol or "")
        m = re.search(r"protocol sha256 ([0-9a-f]{64}|\?)", str(f.notes or ""))
        alarms: list[dict[str, Any]] = []
        if "alarms" in f.acquisition:
            alarms = [{"message": str(a)} for a in f.acquisition["alarms"].data[:]]
        name = str(f.session_id or path.stem)
        meta = {
            "directory": str(path),
            "started": str(f.session_start_time),
            "rig": "nwb",
            "description": str(f.session_description),
        }
    frame_s = float(np.median(np.diff(t_frames))) if len(t_frames) > 1 else 1e-3
    notes.append(
        "NWB files carry no loop telemetry: the latency figure is empty; interlock limits are the "
        "shipped defaults"
    )
    steps.done(1)
    return ReportData(
        source="nwb",
        name=name,
        trials=trials,
        t_frames_s=t_frames,
        counts=counts,
        frame_s=frame_s,
        hemisphere=hemisphere,
        fs_units=fs_units,
        decoder_t_s=dec_t,
        decoder=dec,
        limits=_default_limits(),
        limits_source="shipped defaults (not stored in NWB)",
        internal_us=np.zeros(0),
        e2e_us=np.zeros(0),
        deadline_us=10_000.0,
        protocol={"name": "(from NWB)", "sha256": m.group(1) if m else "?", "text": proto_text},
        meta=meta,
        alarms=alarms,
        notes=notes,
    )


# -- per-trial alignment -----------------------------------------------------------------------


def bin_by_trial(
    t_end_s: FloatArray,
    values: npt.NDArray[Any],
    go_s: Sequence[float],
    frame_s: float,
    *,
    bin_s: float = BIN_S,
    window_s: tuple[float, float] = WINDOW_S,
    mean: bool = False,
    steps: _Steps | None = None,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Sum (or average) time-sorted rows per trial in bins around each go cue.

    A row belongs to the bin holding its centre (end − frame/2). Returns (n_trials, n_bins, k)
    and which trials were complete (≥ 90 % of the expected rows present).
    """
    n_bins = round((window_s[1] - window_s[0]) / bin_s)
    k = values.shape[1]
    out = np.zeros((len(go_s), n_bins, k), dtype=np.float64)
    complete = np.zeros(len(go_s), dtype=bool)
    centre = t_end_s - 0.5 * frame_s
    for i, g in enumerate(go_s):
        lo, hi = g + window_s[0], g + window_s[1]
        i0, i1 = np.searchsorted(centre, [lo, hi], side="left")
        if steps is not None:
            steps.advance()
        if i1 <= i0:
            continue
        b = np.minimum(((centre[i0:i1] - lo) / bin_s).astype(np.int64), n_bins - 1)
        starts = np.searchsorted(b, np.arange(n_bins), side="left")
        ends = np.r_[starts[1:], i1 - i0]
        seg = values[i0:i1].astype(np.float64)
        if mean:
            seg = np.where(np.isfinite(seg), seg, 0.0)
        sums = np.add.reduceat(seg, np.minimum(starts, i1 - i0 - 1), axis=0)
        n = (ends - starts).astype(np.float64)
        sums[n == 0] = 0.0
        out[i] = sums / np.maximum(n, 1)[:, None] if mean else sums
        if mean:
            out[i][n == 0] = np.nan
        complete[i] = (i1 - i0) >= 0.9 * (hi - lo) / frame_s
    return out, complete


# -- analyses (numbers via analysis.neural and analysis.stats) ------------------------------------


MIN_PER_SIDE = 5  #: completed trials per instructed side a condition needs for selectivity, M and CD traces
MIN_DECODER_TRIALS = 10  #: completed trials a condition needs for its decoder-accuracy curve
MIN_NEURONS = 3  #: delay-selective neurons a hemisphere needs for selectivity bands and M's CI (bootstrap)
HEMI_INDEX = {"left": 0, "right": 1}


def needs_trials(need: int, n_left: int, n_right: int, what: str = "completed trials per instructed side") -> str:
    """The one wording of "too few trials" (docs/report.md): what is needed and what there is."""
    return f"needs ≥ {need} {what} (has {n_left} left, {n_right} right)"


@dataclasses.dataclass
class Unavailable:
    """A figure or number the session cannot give, and why (shown on the page and in report.json)."""

    what: str
    why: str


@dataclasses.dataclass
class Modularity:
    """M of one hemisphere while one condition silences the other (Chen et al., Cell 2021)."""

    condition: str
    silenced: str
    window_s: tuple[float, float] | None  #: the condition's light window (s from the go cue)
    window_source: str
    value: float | None = None
    ci: tuple[float, float] | None = None
    n_trials: int = 0
    why: str | None = None


@dataclasses.dataclass
class Recovery:
    """t90 of a silenced hemisphere after one condition's light ends."""

    condition: str
    light_end_s: float | None
    t90_s: float | None = None
    why: str | None = None


@dataclasses.dataclass
class Selectivity:
    """Population selectivity of one hemisphere's delay-selective neurons, per condition."""

    hemisphere: str
    units: list[int]
    pref: list[int]  #: preferred side of each unit (+1 right, -1 left), from the fitting half
    control_trials: list[int]  #: held-out control trials (indices into ReportData.trials)
    per_condition: dict[str, FloatArray]  #: mean over neurons, (n_bins,)
    ci: dict[str, tuple[FloatArray, FloatArray]]
    n_trials: dict[str, int]
    modularity: dict[str, Modularity]
    recovery: dict[str, Recovery]
    skipped: dict[str, str]  #: conditions without a selectivity curve, and why
    why: str | None = None  #: why there is no selectivity at all for this hemisphere


@dataclasses.dataclass
class CdTraces:
    """CD projection (p − db) of one hemisphere: per condition and instructed side, mean and 95 % band."""

    hemisphere: str
    traces: dict[str, dict[int, tuple[FloatArray, FloatArray, FloatArray, int]]]
    skipped: dict[str, str]
    why: str | None = None


@dataclasses.dataclass
class Analysis:
    """Every number of the report (figures are drawn from this)."""

    t_s: FloatArray
    labels: list[str]  #: analysed conditions, protocol order (never merged)
    control: str  #: the reference condition's name
    performance: dict[str, neural.Performance]
    versus_control: dict[str, dict[str, Any]]
    selectivity: dict[str, Selectivity]
    cd: dict[str, CdTraces]
    decoder_accuracy: dict[str, tuple[FloatArray, FloatArray, FloatArray, int]]
    decoder_skipped: dict[str, str]
    n_trials: int
    n_complete: int
    unavailable: list[Unavailable]


def _side_counts(mask: npt.NDArray[np.bool_], instructed: npt.NDArray[np.int8]) -> tuple[int, int]:
    return int((mask & (instructed < 0)).sum()), int((mask & (instructed > 0)).sum())


def _bins_in(t_s: FloatArray, window: tuple[float, float]) -> npt.NDArray[np.bool_]:
    return np.asarray((t_s > window[0]) & (t_s < window[1]), dtype=bool)


def analyse(data: ReportData, steps: _Steps, seed: int = 0) -> Analysis:
    """Every number of the report, per condition as the protocol names it (conditions never merged)."""
    trials = data.trials
    go = [t.go_s for t in trials]
    steps.start("cutting spike counts per trial", len(trials))
    counts, complete = bin_by_trial(data.t_frames_s, data.counts, go, data.frame_s, steps=steps)
    steps.done(len(trials))
    t_s: FloatArray = (WINDOW_S[0] + BIN_S * (np.arange(counts.shape[1]) + 0.5)).astype(np.float64)
    rates = counts / BIN_S
    completed = np.array([t.completed for t in trials], dtype=bool)
    label = np.array([t.label for t in trials])
    role = np.array([t.condition for t in trials])
    instructed = np.array([t.instructed for t in trials], dtype=np.int8)
    choice = np.array([t.choice for t in trials], dtype=np.int8)
    correct = np.array([t.outcome == "hit" for t in trials], dtype=bool)
    labels = [c for c in data.conditions if (label == c).any()]
    controls = [c for c in labels if data.conditions[c].hemisphere is None]
    control = controls[0] if len(controls) == 1 else "control"
    is_control = role == "control"  # every no-light trial is the reference (one control name in practice)
    unavailable: list[Unavailable] = []

    # performance per condition (analysis.neural, Wilson 95 % CIs) over completed trials, and Δ vs control
    perf = neural.performance_by_condition(correct[completed], label[completed], instructed[completed])
    ref = neural.performance(correct[completed & is_control])
    versus: dict[str, dict[str, Any]] = {}
    for c in labels:
        if c in controls:
            continue
        p = perf.get(c) or neural.performance(np.zeros(0, dtype=bool))
        if p.n == 0 or ref.n == 0:
            why = f"needs ≥ 1 completed trial in {c} and in {control} (has {p.n} and {ref.n})"
            versus[c] = {"n": p.n, "n_control": ref.n, "why": why}
            unavailable.append(Unavailable(f"Δ fraction correct, {c} vs {control}", why))
            continue
        cmp = stats.compare_proportions(p.correct, p.n, ref.correct, ref.n)
        versus[c] = {"n": p.n, "n_control": ref.n, "delta": cmp.delta, "ci_low": cmp.ci_low,
                     "ci_high": cmp.ci_high, "p_fisher": cmp.p_fisher, "odds_ratio": cmp.odds_ratio,
                     "why": None}

    usable = complete & completed & (instructed != 0)
    rng = np.random.default_rng(seed)
    delays = [t.delay_onset_s for t in trials if t.delay_onset_s is not None]
    delay_s = (float(np.median(delays)) if delays else DELAY_S[0], 0.0)
    steps.start("selectivity and modularity (bootstrap over neurons)", 2)
    sel: dict[str, Selectivity] = {}
    for h in ("left", "right"):
        sel[h] = _selectivity(h, rates, t_s, usable, label, is_control, instructed, data, labels, controls,
                              delay_s, rng)
        steps.advance()
        if sel[h].why:
            unavailable.append(Unavailable(f"selectivity and M of the {h} ALM", sel[h].why or ""))
        for m in sel[h].modularity.values():
            if m.why:
                unavailable.append(Unavailable(f"M of the {h} ALM with {m.condition} ({m.silenced} ALM lit)", m.why))
        for r in sel[h].recovery.values():
            if r.why:
                unavailable.append(Unavailable(f"t90 of the {h} ALM after {r.condition}", r.why))
        if not sel[h].why and not sel[h].modularity:
            unavailable.append(Unavailable(
                f"M of the {h} ALM", f"no condition of this session lights the {OTHER[h]} ALM alone"))

    cd = {h: _cd_traces(h, rates, t_s, usable, label, is_control, correct, instructed, data, labels, controls,
                        delay_s, rng) for h in ("left", "right")}
    for h, tr in cd.items():
        if tr.why:
            unavailable.append(Unavailable(f"CD projection of the {h} ALM", tr.why))
        for c, why in tr.skipped.items():
            unavailable.append(Unavailable(f"CD projection of the {h} ALM in {c}", why))

    dec_acc, dec_skipped = _decoder_accuracy(data, go, completed, label, choice, labels)
    for c, why in dec_skipped.items():
        unavailable.append(Unavailable(f"decoder accuracy in {c}", why))
    return Analysis(t_s, labels, control, perf, versus, sel, cd, dec_acc, dec_skipped, len(trials),
                    int(usable.sum()), unavailable)


def _decoder_accuracy(data: ReportData, go: list[float], completed: npt.NDArray[np.bool_],
                      label: npt.NDArray[np.str_], choice: npt.NDArray[np.int8], labels: list[str]
                      ) -> tuple[dict[str, tuple[FloatArray, FloatArray, FloatArray, int]], dict[str, str]]:
    """Online decoder's sign vs the mouse's choice per bin, per condition with enough trials."""
    acc: dict[str, tuple[FloatArray, FloatArray, FloatArray, int]] = {}
    skipped: dict[str, str] = {}
    if not data.decoder.shape[0]:
        return acc, {"all conditions": "no decoder outputs recorded"}
    order = np.argsort(data.decoder_t_s, kind="stable")
    dt_s = float(np.median(np.diff(data.decoder_t_s[order]))) if data.decoder.shape[0] > 1 else data.frame_s
    dec, _ = bin_by_trial(data.decoder_t_s[order], data.decoder[order][:, :1], go, dt_s, mean=True)
    val = dec[:, :, 0]
    for c in labels:
        selc = completed & (label == c) & (choice != 0)
        if selc.sum() < MIN_DECODER_TRIALS:
            skipped[c] = f"needs ≥ {MIN_DECODER_TRIALS} completed trials per condition (has {int(selc.sum())})"
            continue
        v = val[selc]
        ok = np.isfinite(v) & (v != 0)
        hit = (np.sign(v) == choice[selc][:, None]) & ok
        n = ok.sum(axis=0)
        a = np.where(n > 0, hit.sum(axis=0) / np.maximum(n, 1), np.nan)
        lo_hi = [neural.performance(hit[ok[:, j], j]) for j in range(v.shape[1])]
        acc[c] = (a, np.array([p.ci_low for p in lo_hi]), np.array([p.ci_high for p in lo_hi]), int(selc.sum()))
    return acc, skipped


def _cd_traces(h: str, rates: FloatArray, t_s: FloatArray, usable: npt.NDArray[np.bool_],
               label: npt.NDArray[np.str_], is_control: npt.NDArray[np.bool_], correct: npt.NDArray[np.bool_],
               instructed: npt.NDArray[np.int8], data: ReportData, labels: list[str], controls: list[str],
               delay_s: tuple[float, float], rng: np.random.Generator) -> CdTraces:
    """CD of hemisphere ``h`` fitted on control correct trials (delay mean), projected per condition."""
    units = [u for u in np.flatnonzero(data.hemisphere == HEMI_INDEX[h]) if u not in data.fs_units]
    fit = usable & is_control & correct
    nl, nr = _side_counts(fit, instructed)
    if not units:
        return CdTraces(h, {}, {}, f"no {h}-hemisphere units recorded")
    if min(nl, nr) < MIN_PER_SIDE:
        return CdTraces(h, {}, {}, needs_trials(MIN_PER_SIDE, nl, nr, "correct control trials per instructed "
                                                "side to fit a coding direction"))
    delay = _bins_in(t_s, delay_s)
    cd = neural.fit_coding_direction(rates[fit][:, delay][:, :, units].mean(axis=1), instructed[fit])
    proj = cd.project(rates[:, :, units])
    traces: dict[str, dict[int, tuple[FloatArray, FloatArray, FloatArray, int]]] = {}
    skipped: dict[str, str] = {}
    for c in labels:
        sel_c = usable & (label == c)
        nl, nr = _side_counts(sel_c, instructed)
        if min(nl, nr) < MIN_PER_SIDE:
            skipped[c] = needs_trials(MIN_PER_SIDE, nl, nr)
            continue
        traces[c] = {}
        for side in (1, -1):
            rows = proj[sel_c & (instructed == side)]
            lo, hi = stats.bootstrap_ci(rows, rng=rng)
            traces[c][side] = (rows.mean(axis=0), lo, hi, int(rows.shape[0]))
    return CdTraces(h, traces, skipped)


def _selectivity(h: str, rates: FloatArray, t_s: FloatArray, usable: npt.NDArray[np.bool_],
                 label: npt.NDArray[np.str_], is_control: npt.NDArray[np.bool_], instructed: npt.NDArray[np.int8],
                 data: ReportData, labels: list[str], controls: list[str], delay_s: tuple[float, float],
                 rng: np.random.Generator) -> Selectivity:
    """Delay-selective neurons of hemisphere ``h``, their selectivity per condition, M and t90 (Chen et al. 2021).

    Preferred side and selection come from one random half of each side's control trials, control
    selectivity from the other half (no selection bias); light conditions use all their trials.
    M and t90 are measured in each condition's own light window (docs/report.md).
    """
    other = OTHER[h]
    empty = Selectivity(h, [], [], [], {}, {}, {}, {}, {}, {})
    units = np.array([u for u in np.flatnonzero(data.hemisphere == HEMI_INDEX[h]) if u not in data.fs_units],
                     dtype=np.intp)
    if units.size == 0:
        return dataclasses.replace(empty, why=f"no {h}-hemisphere units recorded")
    ctrl = np.flatnonzero(usable & is_control)
    by_side = [ctrl[instructed[ctrl] == s] for s in (-1, 1)]
    if min(len(b) for b in by_side) < 2 * MIN_PER_SIDE:
        return dataclasses.replace(empty, why=needs_trials(
            2 * MIN_PER_SIDE, len(by_side[0]), len(by_side[1]),
            "completed control trials per instructed side (half to select neurons, half to measure)"))
    halves = [rng.permutation(b) for b in by_side]
    fit_half = np.sort(np.concatenate([b[: b.size // 2] for b in halves]))
    test_half = np.sort(np.concatenate([b[b.size // 2:] for b in halves]))
    delay = _bins_in(t_s, delay_s)
    d_rate = rates[fit_half][:, delay][:, :, units].mean(axis=1)  # (n_fit, n_units)
    r_side, l_side = instructed[fit_half] > 0, instructed[fit_half] < 0
    diff = d_rate[r_side].mean(axis=0) - d_rate[l_side].mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = scipy_stats.ttest_ind(d_rate[r_side], d_rate[l_side], axis=0, equal_var=False).pvalue
    keep = (np.nan_to_num(p, nan=1.0) < 0.05) & (np.abs(diff) > SELECTIVE_MIN_HZ)
    # light-excited (putative inhibitory) units: > 2× control rate under their own hemisphere's light,
    # each lighting condition in its own window (Chen et al. 2021)
    for c in labels:
        cl = data.conditions[c]
        if cl.hemisphere not in (h, "bilateral") or cl.window_s is None or not _bins_in(t_s, cl.window_s).any():
            continue
        own = np.flatnonzero(usable & (label == c))
        if own.size:
            win = _bins_in(t_s, cl.window_s)
            own_rate = rates[own][:, win][:, :, units].mean(axis=(0, 1))
            ctrl_rate = rates[ctrl][:, win][:, :, units].mean(axis=(0, 1))
            keep &= ~(own_rate > 2 * np.maximum(ctrl_rate, 1e-9))
    n_candidates = units.size
    units, pref = units[keep], np.sign(diff[keep])
    if units.size < MIN_NEURONS:
        return dataclasses.replace(empty, control_trials=[int(i) for i in test_half], why=(
            f"needs ≥ {MIN_NEURONS} delay-selective neurons for a bootstrap over neurons (has {units.size} of "
            f"{count(n_candidates, 'unit')}: Welch p < 0.05 and |Δ| > {SELECTIVE_MIN_HZ} spikes/s on "
            f"{count(int(fit_half.size), 'control trial')})"))
    per_neuron: dict[str, FloatArray] = {}
    n_trials: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for c in labels:
        idx = test_half if c in controls else np.flatnonzero(usable & (label == c))
        ins = instructed[idx]
        n_trials[c] = int(idx.size)
        nl, nr = int((ins < 0).sum()), int((ins > 0).sum())
        need = MIN_PER_SIDE
        if min(nl, nr) < need:
            skipped[c] = needs_trials(need, nl, nr)
            continue
        s = neural.selectivity(rates[idx][:, :, units], ins)  # (n_bins, n_units), right − left
        per_neuron[c] = s * pref[None, :]
    per_condition = {c: v.mean(axis=1) for c, v in per_neuron.items()}
    ci = {c: stats.bootstrap_ci(v.T, rng=rng) for c, v in per_neuron.items()}
    ctrl_name = next((c for c in controls if c in per_neuron), None)
    modularity: dict[str, Modularity] = {}
    recovery: dict[str, Recovery] = {}
    for c in labels:
        cl = data.conditions[c]
        if cl.hemisphere == other:
            modularity[c] = _modularity(c, other, cl, per_neuron, ctrl_name, skipped, t_s, n_trials, rng)
        elif cl.hemisphere == h:
            recovery[c] = _recovery(c, cl, per_condition, ctrl_name, skipped, t_s)
    return Selectivity(h, [int(u) for u in units], [int(x) for x in pref], [int(i) for i in test_half],
                       per_condition, ci, n_trials, modularity, recovery, skipped)


def _modularity(c: str, silenced: str, cl: ConditionLight, per_neuron: dict[str, FloatArray],
                ctrl_name: str | None, skipped: dict[str, str], t_s: FloatArray, n_trials: dict[str, int],
                rng: np.random.Generator) -> Modularity:
    """M over the condition's own light window, with its 95 % bootstrap CI over neurons."""
    m = Modularity(c, silenced, cl.window_s, cl.window_source, n_trials=n_trials.get(c, 0))
    if cl.window_s is None:
        m.why = "no light window: neither the protocol nor any delivered light command gives one"
    elif not _bins_in(t_s, cl.window_s).any():
        m.why = (f"light window {cl.window_s[0]:+.2f}…{cl.window_s[1]:+.2f} s holds no whole "
                 f"{BIN_S * 1e3:.0f}-ms analysis bin")
    elif c in skipped:
        m.why = skipped[c]
    elif ctrl_name is None:
        m.why = "no control selectivity"
    if m.why:
        return m
    assert cl.window_s is not None and ctrl_name is not None
    win = _bins_in(t_s, cl.window_s)
    w_c, w_ctrl = per_neuron[c][win].mean(axis=0), per_neuron[ctrl_name][win].mean(axis=0)
    if w_ctrl.mean() <= 0:
        m.why = (f"control selectivity over {cl.window_s[0]:+.2f}…{cl.window_s[1]:+.2f} s is "
                 f"{w_ctrl.mean():.2f} spikes/s (≤ 0): M is undefined")
        return m
    t_mid = t_s  # M = mean selectivity in the window under light / control (analysis.neural.modularity)
    m.value = neural.modularity(per_neuron[c].mean(axis=1), per_neuron[ctrl_name].mean(axis=1), t_mid, cl.window_s)
    if w_c.size >= 2:
        lo, hi = stats.bootstrap_ci((w_c, w_ctrl), _ratio_of_means, rng=rng)
        m.ci = (float(lo), float(hi))
    return m


def _ratio_of_means(a: FloatArray, b: FloatArray, axis: int = 0) -> FloatArray:
    return np.asarray(np.mean(a, axis=axis) / np.mean(b, axis=axis), dtype=np.float64)


def _recovery(c: str, cl: ConditionLight, per_condition: dict[str, FloatArray], ctrl_name: str | None,
              skipped: dict[str, str], t_s: FloatArray) -> Recovery:
    """t90 of the silenced hemisphere after the condition's own light end."""
    end = cl.window_s[1] if cl.window_s is not None else None
    r = Recovery(c, end)
    if end is None:
        r.why = "no light window: neither the protocol nor any delivered light command gives one"
    elif end > -BIN_S / 2:
        r.why = (f"the light ends at {end:+.2f} s, at the go cue: no delay is left after it to recover in "
                 f"(t90 needs ≥ {BIN_S:g} s of delay after the light)")
    elif c in skipped:
        r.why = skipped[c]
    elif ctrl_name is None:
        r.why = "no control selectivity"
    else:
        r.t90_s = neural.t90_recovery_s(per_condition[c], per_condition[ctrl_name], t_s, t_light_end_s=end)
    return r


# -- light and latency ----------------------------------------------------------------------------


def light_dose(data: ReportData) -> dict[str, Any]:
    """Per trial and per hemisphere: power per spot, duration, energy (J), rolling energy vs budget."""
    lim = data.limits
    window_s = float(lim.get("energy_window_s", 600.0))
    rows = []
    for t in data.trials:
        flat = max(0.0, t.duration_s - t.ramp_s) + 0.5 * t.ramp_s  # linear ramp: half its power
        lit = t.condition in ("left", "right", "bilateral")
        e_l = t.power_mw * 1e-3 * _popcount(t.spots_left) * flat if lit else 0.0
        e_r = t.power_mw * 1e-3 * _popcount(t.spots_right) * flat if lit else 0.0
        rows.append((t.trial, t.go_s, t.power_mw if lit else 0.0, t.duration_s if lit else 0.0, e_l, e_r))
    a = np.array(rows, dtype=np.float64).reshape(-1, 6)
    rolling = np.zeros((a.shape[0], 2))
    for i in range(a.shape[0]):
        inside = (a[:, 1] > a[i, 1] - window_s) & (a[:, 1] <= a[i, 1])
        rolling[i] = a[inside, 4:6].sum(axis=0)
    n = len(data.trials)
    perturbed = int(sum(t.condition in ("left", "right", "bilateral") for t in data.trials))
    return {
        "trial": a[:, 0],
        "power_mw": a[:, 2],
        "duration_s": a[:, 3],
        "energy_j": a[:, 4:6],
        "rolling_j": rolling,
        "fraction_perturbed": perturbed / n if n else math.nan,
        "max_power_mw": float(lim.get("max_power_mw_per_spot", math.nan)),
        "max_continuous_s": float(lim.get("max_continuous_s", math.nan)),
        "energy_budget_j": float(lim.get("energy_budget_j", math.nan)),
        "energy_window_s": window_s,
        "max_fraction_perturbed": float(lim.get("max_fraction_perturbed", math.nan)),
        "refused_trials": int(sum(bool(t.refused) for t in data.trials)),
    }


def latency_summary(data: ReportData) -> dict[str, Any]:
    """p50/p99/max and deadline misses of the internal and end-to-end latencies (µs)."""
    out: dict[str, Any] = {"deadline_us": data.deadline_us}
    for k, raw in (("internal", data.internal_us), ("e2e", data.e2e_us)):
        v = raw[np.isfinite(raw)]
        out[k] = (
            {
                "n": int(v.size),
                "p50": float(np.percentile(v, 50)),
                "p99": float(np.percentile(v, 99)),
                "max": float(v.max()),
                "deadline_misses": int((v > data.deadline_us).sum()),
            }
            if v.size
            else {"n": 0}
        )
    return out


# -- report.json and the page ----------------------------------------------------------------------


def summary_numbers(data: ReportData, res: Analysis, dose: dict[str, Any], lat: dict[str, Any]) -> dict[str, Any]:
    """Collect the numbers of the report for report.json (docs/report.md lists the fields)."""
    completed = {c: sum(1 for t in data.trials if t.label == c and t.completed) for c in data.conditions}
    return {
        "session": data.name,
        "source": data.source,
        "n_trials": res.n_trials,
        "n_complete_trials_with_counts": res.n_complete,
        "control": res.control,
        "conditions": {c: {**cl.as_json(), "n_completed": completed[c]} for c, cl in data.conditions.items()},
        "light_bands_s": {c: list(w) for c, w in light_bands(data.conditions).items()},
        "not_delivered": sum(1 for t in data.trials if t.label == NOT_DELIVERED),
        "performance": {c: {"n": p.n, "correct": p.correct, "fraction": p.fraction, "ci_low": p.ci_low,
                            "ci_high": p.ci_high} for c, p in res.performance.items()},
        "versus_control": res.versus_control,
        "modularity": {h: {
            "units": s.units,
            "pref": s.pref,
            "control_trials": s.control_trials,
            "n_trials": s.n_trials,
            "why": s.why,
            "by_condition": {c: {"M": m.value, "ci_low": m.ci[0] if m.ci else None,
                                 "ci_high": m.ci[1] if m.ci else None, "silenced": m.silenced,
                                 "window_s": list(m.window_s) if m.window_s else None,
                                 "window_source": m.window_source, "n_trials": m.n_trials, "why": m.why}
                             for c, m in s.modularity.items()},
            "recovery": {c: {"t90_s": r.t90_s, "light_end_s": r.light_end_s, "why": r.why}
                         for c, r in s.recovery.items()},
            "selectivity_skipped": s.skipped,
        } for h, s in res.selectivity.items()},
        "cd": {h: {"why": tr.why, "traces": {c: {("right" if side > 0 else "left"): v[3] for side, v in sides.items()}
                                             for c, sides in tr.traces.items()}, "skipped": tr.skipped}
               for h, tr in res.cd.items()},
        "decoder": {"n_trials": {c: v[3] for c, v in res.decoder_accuracy.items()}, "skipped": res.decoder_skipped},
        "unavailable": [dataclasses.asdict(u) for u in res.unavailable],
        "minimum_trials": {"per_instructed_side": MIN_PER_SIDE, "control_per_instructed_side": 2 * MIN_PER_SIDE,
                           "decoder_per_condition": MIN_DECODER_TRIALS,
                           "delay_selective_neurons": MIN_NEURONS},
        "light": {k: v for k, v in dose.items() if not isinstance(v, np.ndarray)},
        "latency_us": lat,
        "protocol": {k: data.protocol.get(k) for k in ("name", "sha256", "source")},
        "notes": data.notes,
        "generated": dt.datetime.now(dt.UTC).isoformat(),
    }


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, float | np.floating):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


def write_report(
    session_dir: Path | str, out_dir: Path | str | None = None, progress: ProgressLike | None = None
) -> Path:
    """Write ``report.html`` (+ ``report.json`` and PNG figures) for a session; returns the HTML path.

    Args:
        session_dir: a rigd session directory, or an NWB file exported by ``rigd export nwb``.
        out_dir: where to write (default: ``<session>/report`` or ``<file stem>_report`` beside it).
        progress: a ``rich.progress.Progress`` (or anything with ``add_task``/``update``).

    """
    src = Path(session_dir)
    steps = _Steps(progress)
    if src.is_file() and src.suffix.lower() == ".nwb":
        data = load_nwb(src, steps)
        out = Path(out_dir) if out_dir is not None else src.with_name(src.stem + "_report")
    elif src.is_dir():
        data = load_session(src, steps)
        out = Path(out_dir) if out_dir is not None else src / "report"
    else:
        raise FileNotFoundError(f"{src}: not a rigd session directory nor an .nwb file")
    out.mkdir(parents=True, exist_ok=True)
    data.finish()
    res = analyse(data, steps)
    dose = light_dose(data)
    lat = latency_summary(data)
    steps.start("drawing figures", 7)
    figs: dict[str, str] = {}
    drawers: list[tuple[str, Callable[[Path], str]]] = [
        ("performance", lambda p: figure_performance(res, data, p)),
        ("cd", lambda p: figure_cd(res, data, p)),
        ("selectivity", lambda p: figure_selectivity(res, data, p)),
        ("modularity", lambda p: figure_modularity(res, data, p)),
        ("decoder", lambda p: figure_decoder(res, data, p)),
        ("light", lambda p: figure_light(dose, data, p)),
        ("latency", lambda p: figure_latency(lat, data, p)),
    ]
    for key, draw in drawers:
        figs[key] = draw(out / f"{key}.png")
        steps.advance()
    nums = summary_numbers(data, res, dose, lat)
    nums["figures"] = figs
    (out / "report.json").write_text(json.dumps(_jsonable(nums), indent=1, allow_nan=False))
    html_path = out / "report.html"
    html_path.write_text(page(data, nums, figs), encoding="utf-8")
    return html_path
