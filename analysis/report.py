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
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from pynwb import NWBHDF5IO
from scipy import stats

from analysis import neural
from hardware.calibration import default_limits
from rig import wire
from rig.conditions import CONDITIONS, NOT_DELIVERED, canonical_condition, delivered_condition, join_recorded_acks
from rig.progress import count
from rig.session import Session
from rig.telemetry import FIELDS

FloatArray = npt.NDArray[np.float64]
NS = 1e9
COLOURS = {"control": "#222222", "left": "#1a73e8", "right": "#d93025", "bilateral": "#8e44ad"}
OTHER = {"left": "right", "right": "left"}
FIG_SIZE_IN = (9.0, 4.5)
FIG_DPI = 100  #: every figure is 900 × 450 px
BIN_S = 0.1  #: analysis bins (100-ms windows, as Yang et al., Nat Neurosci 2022)
WINDOW_S = (-3.5, 1.0)  #: trial span around the go cue (pre-sample to response)
N_BOOT = 1000  #: bootstrap resamples over neurons (Chen et al., Cell 2021)
DEFAULT_GO_AFTER_START_S = 3.5  #: pre-sample 0.5 + sample 1.3 + delay 1.7 s (docs/simulator.md)
SELECTIVE_MIN_HZ = 0.5  #: |preferred − non-preferred| > 0.5 spikes/s (Chen et al. 2021 analysis code)
DELAY_S = (-1.7, 0.0)


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
    condition: str  #: control / left / right / bilateral / not_delivered
    planned: str  #: condition the protocol asked for
    go_s: float  #: go cue, seconds on the session clock
    power_mw: float = 0.0
    spots_left: int = 0
    spots_right: int = 0
    duration_s: float = 0.0
    ramp_s: float = 0.0
    onset_s: float | None = None  #: light onset from the go cue
    status: str = "none"
    refused: tuple[str, ...] = ()

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
    for e in s.events():
        if e["event"] == "trial_start" and e.get("t_go_ns"):
            go.setdefault(int(e["trial"]), int(e["t_go_ns"]))
        elif e["event"] == "go_cue":
            go[int(e["trial"])] = int(e["t_rig_ns"])  # the actual cue beats the plan
    trials: list[Trial] = []
    for tr in join_recorded_acks(s.trials(), s.light_acks()):  # acks recorded after a summary count too
        k = int(tr["trial"])
        if k not in go:
            continue
        light = tr.get("light") or {}
        status = str(tr["light_status"])
        planned = str(tr["planned_condition"])
        cond = str(tr["delivered_condition"])
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
                onset_s=float(light["onset_t_s"]) if light.get("onset_t_s") is not None else None,
                status=status,
                refused=tuple(str(r) for r in tr.get("refused") or ()),
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
        t_frames = np.asarray(ts.timestamps[:], dtype=np.float64)
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
            if "photostim_delivered_condition" in r:  # planned and delivered columns (analysis.nwb_export)
                planned = canonical_condition(cond_name)
                got = str(r["photostim_delivered_condition"])
                lit = bool(r.get("photostim_delivered")) and got in ("left", "right", "bilateral")
                cond = delivered_condition(planned, got if lit else None, "applied" if lit else status)
                planned_lit = cond if lit else planned
            else:  # an older export: one condition column, delivered-ness from the ack status
                planned = canonical_condition(cond_name)
                lit = power > 0 and planned in ("left", "right", "bilateral")
                cond = delivered_condition(planned, planned if lit else None, status)
                planned_lit = planned
            onset = float(r.get("photostim_onset", np.nan))
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
            dec_t = np.asarray(d.timestamps[:], dtype=np.float64)
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


# -- analyses (numbers via analysis.neural) -------------------------------------------------------


@dataclasses.dataclass
class Selectivity:
    """Population selectivity of one hemisphere's delay-selective neurons."""

    units: list[int]
    pref: list[int]  #: preferred side of each unit (+1 right, -1 left), from the fitting half
    control_trials: list[int]  #: held-out control trials (indices into ReportData.trials)
    per_condition: dict[str, FloatArray]  #: mean over neurons, (n_bins,)
    ci: dict[str, tuple[FloatArray, FloatArray]]
    modularity: float
    modularity_ci: tuple[float, float]
    t90_s: float | None
    n_trials: dict[str, int]


def analyse(data: ReportData, steps: _Steps, seed: int = 0) -> dict[str, Any]:
    """Every number of the report (figures are drawn from this)."""
    trials = data.trials
    go = [t.go_s for t in trials]
    steps.start("cutting spike counts per trial", len(trials))
    counts, complete = bin_by_trial(data.t_frames_s, data.counts, go, data.frame_s, steps=steps)
    steps.done(len(trials))
    t_s: FloatArray = (WINDOW_S[0] + BIN_S * (np.arange(counts.shape[1]) + 0.5)).astype(np.float64)
    rates = counts / BIN_S
    completed = np.array([t.completed for t in trials], dtype=bool)
    cond = np.array([t.condition for t in trials])
    instructed = np.array([t.instructed for t in trials], dtype=np.int8)
    choice = np.array([t.choice for t in trials], dtype=np.int8)
    correct = np.array([t.outcome == "hit" for t in trials], dtype=bool)

    # performance per condition (analysis.neural, Wilson 95 % CIs) over completed trials
    perf = neural.performance_by_condition(correct[completed], cond[completed], instructed[completed])

    usable = complete & completed & (instructed != 0)
    rng = np.random.default_rng(seed)
    steps.start("selectivity and modularity (bootstrap over neurons)", 2)
    sel = {h: _selectivity(h, rates, t_s, usable, cond, instructed, data, rng) for h in ("left", "right")}
    for _ in sel:
        steps.advance()

    # CD projection per hemisphere per condition (CD fitted on control correct trials, delay mean)
    cd_proj: dict[str, dict[str, dict[int, FloatArray]]] = {}
    for h, hi in (("left", 0), ("right", 1)):
        units = [u for u in np.flatnonzero(data.hemisphere == hi) if u not in data.fs_units]
        fit = usable & (cond == "control") & correct
        delay = (t_s > DELAY_S[0]) & (t_s < DELAY_S[1])
        try:
            cd = neural.fit_coding_direction(
                rates[fit][:, delay][:, :, units].mean(axis=1), instructed[fit]
            )
        except ValueError:
            continue
        proj = cd.project(rates[:, :, units])
        cd_proj[h] = {
            c: {
                side: proj[usable & (cond == c) & (instructed == side)].mean(axis=0)
                for side in (1, -1)
                if (usable & (cond == c) & (instructed == side)).any()
            }
            for c in CONDITIONS
        }

    # online decoder accuracy over the trial (sign of value vs the mouse's choice)
    dec_acc: dict[str, tuple[FloatArray, FloatArray, FloatArray, int]] = {}
    if data.decoder.shape[0]:
        order = np.argsort(data.decoder_t_s, kind="stable")
        dt_s = (
            float(np.median(np.diff(data.decoder_t_s[order]))) if data.decoder.shape[0] > 1 else data.frame_s
        )
        dec, _ = bin_by_trial(data.decoder_t_s[order], data.decoder[order][:, :1], go, dt_s, mean=True)
        val = dec[:, :, 0]
        for c in CONDITIONS:
            selc = completed & (cond == c) & (choice != 0)
            if not selc.any():
                continue
            v = val[selc]
            ok = np.isfinite(v) & (v != 0)
            hit = (np.sign(v) == choice[selc][:, None]) & ok
            n = ok.sum(axis=0)
            acc = np.where(n > 0, hit.sum(axis=0) / np.maximum(n, 1), np.nan)
            lo_hi = [neural.performance(hit[ok[:, j], j]) for j in range(v.shape[1])]
            dec_acc[c] = (
                acc,
                np.array([p.ci_low for p in lo_hi]),
                np.array([p.ci_high for p in lo_hi]),
                int(selc.sum()),
            )

    n_perturbed = sum(t.condition in ("left", "right", "bilateral") for t in trials)
    return {
        "t_s": t_s,
        "performance": perf,
        "selectivity": sel,
        "cd": cd_proj,
        "decoder_accuracy": dec_acc,
        "n_trials": len(trials),
        "n_complete": int(usable.sum()),
        "n_perturbed": n_perturbed,
        "conditions": {c: int((cond == c).sum()) for c in sorted(set(cond.tolist()))},
    }


def _selectivity(
    h: str,
    rates: FloatArray,
    t_s: FloatArray,
    usable: npt.NDArray[np.bool_],
    cond: npt.NDArray[np.str_],
    instructed: npt.NDArray[np.int8],
    data: ReportData,
    rng: np.random.Generator,
) -> Selectivity | None:
    """Delay-selective neurons of hemisphere ``h`` and their selectivity per condition (Chen et al. 2021).

    Preferred side and selection come from one random half of the control trials, control
    selectivity from the other half (no selection bias); photoinhibition conditions use all their
    trials. Trials: all completed trials labelled by instructed side (docs/report.md).
    """
    hi = 0 if h == "left" else 1
    other = OTHER[h]
    units = np.array(
        [u for u in np.flatnonzero(data.hemisphere == hi) if u not in data.fs_units], dtype=np.intp
    )
    ctrl = np.flatnonzero(usable & (cond == "control"))
    if units.size == 0 or ctrl.size < 8:
        return None
    perm = rng.permutation(ctrl)
    fit_half, test_half = np.sort(perm[: ctrl.size // 2]), np.sort(perm[ctrl.size // 2 :])
    delay = (t_s > DELAY_S[0]) & (t_s < DELAY_S[1])
    pi_win = (t_s > neural.PI_WINDOW_S[0]) & (t_s < neural.PI_WINDOW_S[1])
    d_rate = rates[fit_half][:, delay][:, :, units].mean(axis=1)  # (n_fit, n_units)
    r_side, l_side = instructed[fit_half] > 0, instructed[fit_half] < 0
    if r_side.sum() < 2 or l_side.sum() < 2:
        return None
    diff = d_rate[r_side].mean(axis=0) - d_rate[l_side].mean(axis=0)
    p = stats.ttest_ind(d_rate[r_side], d_rate[l_side], axis=0, equal_var=False).pvalue
    keep = (np.nan_to_num(p, nan=1.0) < 0.05) & (np.abs(diff) > SELECTIVE_MIN_HZ)
    # light-excited (putative inhibitory) units: > 2× control rate during own-hemisphere light (Chen et al. 2021)
    own = np.flatnonzero(usable & (cond == h))
    if own.size:
        own_rate = rates[own][:, pi_win][:, :, units].mean(axis=(0, 1))
        ctrl_rate = rates[ctrl][:, pi_win][:, :, units].mean(axis=(0, 1))
        keep &= ~(own_rate > 2 * np.maximum(ctrl_rate, 1e-9))
    units, pref = units[keep], np.sign(diff[keep])
    if units.size == 0:
        return None
    per_neuron: dict[str, FloatArray] = {}
    n_trials: dict[str, int] = {}
    for c in CONDITIONS:
        idx = test_half if c == "control" else np.flatnonzero(usable & (cond == c))
        ins = instructed[idx]
        n_trials[c] = int(idx.size)
        if (ins > 0).sum() < 2 or (ins < 0).sum() < 2:
            continue
        s = neural.selectivity(rates[idx][:, :, units], ins)  # (n_bins, n_units), right − left
        per_neuron[c] = s * pref[None, :]
    per_condition = {c: v.mean(axis=1) for c, v in per_neuron.items()}
    boot = rng.integers(0, units.size, size=(N_BOOT, units.size))
    ci = {
        c: (
            np.percentile(v[:, boot].mean(axis=2), 2.5, axis=1),
            np.percentile(v[:, boot].mean(axis=2), 97.5, axis=1),
        )
        for c, v in per_neuron.items()
    }
    m, m_ci, t90 = math.nan, (math.nan, math.nan), None
    if "control" in per_neuron and other in per_neuron:
        m = neural.modularity(per_condition[other], per_condition["control"], t_s)
        w_other = per_neuron[other][pi_win].mean(axis=0)
        w_ctrl = per_neuron["control"][pi_win].mean(axis=0)
        mb = w_other[boot].mean(axis=1) / w_ctrl[boot].mean(axis=1)
        m_ci = (float(np.percentile(mb, 2.5)), float(np.percentile(mb, 97.5)))
    if "control" in per_neuron and h in per_neuron:
        t90 = neural.t90_recovery_s(
            per_condition[h], per_condition["control"], t_s, t_light_end_s=neural.PI_WINDOW_S[1]
        )
    return Selectivity(
        [int(u) for u in units],
        [int(x) for x in pref],
        [int(i) for i in test_half],
        per_condition,
        ci,
        float(m),
        m_ci,
        t90,
        n_trials,
    )


# -- figures -----------------------------------------------------------------------------------


def _light_window(data: ReportData) -> tuple[float, float] | None:
    lit = [t for t in data.trials if t.condition in ("left", "right", "bilateral") and t.onset_s is not None]
    if not lit:
        return None
    on = float(np.median([t.onset_s for t in lit if t.onset_s is not None]))
    return on, on + float(np.median([t.duration_s for t in lit]))


def _shade(ax: Any, data: ReportData) -> None:
    for a, b, colour in ((-3.0, -1.7, "#4285f4"), (-1.7, 0.0, "#fbbc05")):
        ax.axvspan(a, b, color=colour, alpha=0.06, lw=0)
    w = _light_window(data)
    if w is not None:
        ax.axvspan(w[0], w[1], color="#00aaff", alpha=0.18, lw=0, label="light")
    ax.axvline(0.0, color="#888", lw=0.8, ls=":")
    ax.set_xlabel("time from go cue (s)")


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=FIG_DPI, format="png")  # Figure without pyplot: Agg, no global state
    return path.name


def _no_data(path: Path, title: str, why: str) -> str:
    fig = Figure(figsize=FIG_SIZE_IN)
    fig.text(0.5, 0.55, title, ha="center", fontsize=13)
    fig.text(0.5, 0.42, why, ha="center", fontsize=10, color="#666", wrap=True)
    return _save(fig, path)


def figure_performance(res: dict[str, Any], path: Path) -> str:
    """Fraction correct per condition with Wilson 95 % intervals."""
    perf: dict[str, neural.Performance] = res["performance"]
    conds = [c for c in (*CONDITIONS, NOT_DELIVERED) if c in perf]
    if not conds:
        return _no_data(path, "Performance per condition", "no completed trials")
    fig = Figure(figsize=FIG_SIZE_IN)
    ax = fig.subplots()
    for i, c in enumerate(conds):
        p = perf[c]
        ax.bar(i, p.fraction, color=COLOURS.get(c, "#999"), alpha=0.8)
        ax.errorbar(
            i, p.fraction, yerr=[[p.fraction - p.ci_low], [p.ci_high - p.fraction]], color="k", capsize=5
        )
        ax.text(i, 0.03, f"n={p.n}", ha="center", color="white", fontsize=9)
        for side, dx, mk in (("right", 0.18, ">"), ("left", -0.18, "<")):
            q = perf.get(f"{c}/{side}")
            if q is not None and q.n:
                ax.plot(i + dx, q.fraction, mk, color="k", ms=6)
    ax.axhline(0.5, color="#888", ls="--", lw=1)
    ax.set_xticks(range(len(conds)), conds)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction correct")
    ax.set_title("Performance per condition (bars: Wilson 95 % CI; ◀ ▶ lick-left / lick-right trials)")
    fig.tight_layout()
    return _save(fig, path)


def figure_cd(res: dict[str, Any], data: ReportData, path: Path) -> str:
    """Mean CD projection (p − db) per hemisphere, condition and instructed side."""
    if not res["cd"]:
        return _no_data(path, "CD projections", "too few control trials to fit a coding direction")
    t_s = res["t_s"]
    fig = Figure(figsize=FIG_SIZE_IN)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, h in zip(axes, ("left", "right"), strict=True):
        _shade(ax, data)
        for c, sides in res["cd"].get(h, {}).items():
            for side, trace in sides.items():
                ax.plot(
                    t_s,
                    trace,
                    color=COLOURS[c],
                    ls="-" if side > 0 else "--",
                    lw=1.4,
                    label=f"{c} ({'R' if side > 0 else 'L'})",
                )
        ax.axhline(0, color="#555", lw=0.8, ls="--")
        ax.set_title(f"{h} ALM: CD projection − boundary")
    axes[0].set_ylabel("p(t) − db (a.u.)")
    axes[1].legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def figure_selectivity(res: dict[str, Any], data: ReportData, path: Path) -> str:
    """Draw the selectivity of delay-selective neurons per condition, with bootstrap CIs."""
    sel: dict[str, Selectivity | None] = res["selectivity"]
    if not any(sel.values()):
        return _no_data(path, "Selectivity", "no delay-selective neurons or too few control trials")
    t_s = res["t_s"]
    fig = Figure(figsize=FIG_SIZE_IN)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, h in zip(axes, ("left", "right"), strict=True):
        _shade(ax, data)
        s = sel[h]
        if s is None:
            ax.set_title(f"{h} ALM: no delay-selective neurons")
            continue
        for c, trace in s.per_condition.items():
            label = {
                "control": "control",
                h: f"{h} PI (this side)",
                OTHER[h]: f"{OTHER[h]} PI (other side)",
                "bilateral": "bilateral PI",
            }[c]
            ax.plot(t_s, trace, color=COLOURS[c], lw=1.5, label=label)
            lo, hi = s.ci[c]
            ax.fill_between(t_s, lo, hi, color=COLOURS[c], alpha=0.15, lw=0)
        t90 = "no full recovery" if s.t90_s is None else f"t90 {s.t90_s:.2f} s"
        ax.set_title(
            f"{h} ALM ({count(len(s.units), 'neuron')}): M = {s.modularity:.2f} "
            f"[{s.modularity_ci[0]:.2f}, {s.modularity_ci[1]:.2f}], {t90}",
            fontsize=9,
        )
        ax.axhline(0, color="#555", lw=0.8)
    axes[0].set_ylabel("selectivity (spikes/s, pref − non-pref)")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def figure_modularity(res: dict[str, Any], path: Path) -> str:
    """Modularity of each hemisphere with its bootstrap CI."""
    sel: dict[str, Selectivity | None] = res["selectivity"]
    fig = Figure(figsize=FIG_SIZE_IN)
    ax = fig.subplots()
    for i, h in enumerate(("left", "right")):
        s = sel[h]
        if s is None or not math.isfinite(s.modularity):
            ax.text(i, 0.5, "n/a", ha="center")
            continue
        ax.bar(i, s.modularity, color=COLOURS[h], alpha=0.8)
        ax.errorbar(
            i,
            s.modularity,
            yerr=[[s.modularity - s.modularity_ci[0]], [s.modularity_ci[1] - s.modularity]],
            color="k",
            capsize=6,
        )
    ax.axhline(1.0, color="#888", ls="--", lw=1)
    ax.set_xticks([0, 1], ["left ALM (right silenced)", "right ALM (left silenced)"])
    ax.set_ylabel("modularity M")
    ax.set_title("Modularity: selectivity during other-side PI / control, −1.7…−0.9 s (95 % bootstrap CI)")
    fig.tight_layout()
    return _save(fig, path)


def figure_decoder(res: dict[str, Any], data: ReportData, path: Path) -> str:
    """Online decoder accuracy (sign of the decoded value vs the mouse's choice) over the trial."""
    acc = res["decoder_accuracy"]
    if not acc:
        return _no_data(path, "Decoder accuracy", "no decoder outputs recorded")
    t_s = res["t_s"]
    fig = Figure(figsize=FIG_SIZE_IN)
    ax = fig.subplots()
    _shade(ax, data)
    for c, (a, lo, hi, n) in acc.items():
        ax.plot(t_s, a, color=COLOURS[c], lw=1.5, label=f"{c} (n={n})")
        ax.fill_between(t_s, lo, hi, color=COLOURS[c], alpha=0.12, lw=0)
    ax.axhline(0.5, color="#888", ls="--", lw=1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("decoded choice = actual choice")
    ax.set_title("Online decoder accuracy over the trial (after the decoder's first fit; Wilson 95 % CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


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


def figure_light(dose: dict[str, Any], data: ReportData, path: Path) -> str:
    """Light dose per trial and hemisphere against the interlock limits."""
    fig = Figure(figsize=FIG_SIZE_IN)
    axes = fig.subplots(1, 3)
    tr = dose["trial"]
    lit = dose["power_mw"] > 0
    axes[0].plot(tr[lit], dose["power_mw"][lit], "o", ms=3, color="#00aaff")
    axes[0].axhline(dose["max_power_mw"], color="#b3261e", lw=1.5, label="cap")
    axes[0].set_title("power per spot (mW)", fontsize=9)
    axes[1].plot(tr[lit], dose["duration_s"][lit], "o", ms=3, color="#00aaff")
    axes[1].axhline(dose["max_continuous_s"], color="#b3261e", lw=1.5, label="cap")
    axes[1].set_title("light per trial (s)", fontsize=9)
    for j, (h, c) in enumerate((("left", COLOURS["left"]), ("right", COLOURS["right"]))):
        axes[2].plot(tr, dose["rolling_j"][:, j], color=c, lw=1.2, label=f"{h} (rolling)")
        e = dose["energy_j"][:, j]
        axes[2].plot(tr[e > 0], e[e > 0], ".", color=c, ms=3)
    axes[2].axhline(dose["energy_budget_j"], color="#b3261e", lw=1.5, label="budget")
    axes[2].set_title(f"energy per hemisphere (J; rolling {dose['energy_window_s']:.0f} s)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("trial")
        ax.set_ylim(bottom=0)
    axes[2].legend(fontsize=7)
    fig.suptitle(
        f"Light dose vs interlock limits ({data.limits_source}); perturbed "
        f"{dose['fraction_perturbed']:.1%} of trials (max {dose['max_fraction_perturbed']:.0%}); "
        f"{count(int(dose['refused_trials']), 'trial')} with refusals",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, path)


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


def figure_latency(lat: dict[str, Any], data: ReportData, path: Path) -> str:
    """Histogram of loop latencies on a log axis with p50/p99 and the deadline."""
    if data.internal_us.size == 0 and data.e2e_us.size == 0:
        return _no_data(path, "Loop latency", "no telemetry in this recording")
    fig = Figure(figsize=FIG_SIZE_IN)
    ax = fig.subplots()
    edges = np.logspace(0, 6, 121)
    for k, raw, c in (("internal", data.internal_us, "#1a73e8"), ("e2e", data.e2e_us, "#d93025")):
        v = raw[np.isfinite(raw) & (raw > 0)]
        if not v.size:
            continue
        s = lat[k]
        ax.hist(
            np.clip(v, edges[0], edges[-1]),
            bins=list(edges),
            color=c,
            alpha=0.5,
            label=f"{k}: n={s['n']}, p50 {s['p50']:.0f} µs, p99 {s['p99']:.0f} µs, "
            f"misses {s['deadline_misses']}",
        )
        ax.axvline(s["p50"], color=c, lw=1)
        ax.axvline(s["p99"], color=c, lw=1, ls="--")
    ax.axvline(data.deadline_us, color="#b3261e", lw=2, label=f"deadline {data.deadline_us / 1e3:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency (µs)")
    ax.set_ylabel("loops")
    ax.set_title("Loop latency: internal (frame in → command out) and end to end (rig send → rig receive)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# -- the page ------------------------------------------------------------------------------------


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def summary_numbers(
    data: ReportData, res: dict[str, Any], dose: dict[str, Any], lat: dict[str, Any]
) -> dict[str, Any]:
    """Collect the numbers of the report for report.json."""
    sel: dict[str, Selectivity | None] = res["selectivity"]
    return {
        "session": data.name,
        "source": data.source,
        "n_trials": res["n_trials"],
        "n_complete_trials_with_counts": res["n_complete"],
        "conditions": res["conditions"],
        "performance": {
            c: {
                "n": p.n,
                "correct": p.correct,
                "fraction": p.fraction,
                "ci_low": p.ci_low,
                "ci_high": p.ci_high,
            }
            for c, p in res["performance"].items()
        },
        "modularity": {
            h: None
            if s is None
            else {
                "M": s.modularity,
                "ci_low": s.modularity_ci[0],
                "ci_high": s.modularity_ci[1],
                "t90_s": s.t90_s,
                "units": s.units,
                "pref": s.pref,
                "control_trials": s.control_trials,
                "n_trials": s.n_trials,
            }
            for h, s in sel.items()
        },
        "light": {k: v for k, v in dose.items() if not isinstance(v, np.ndarray)},
        "latency_us": lat,
        "protocol": {k: data.protocol.get(k) for k in ("name", "sha256")},
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


def _html(data: ReportData, nums: dict[str, Any], figs: dict[str, str]) -> str:
    e = html.escape
    perf_rows = "".join(
        f"<tr><td>{e(c)}</td><td>{p['n']}</td><td>{p['correct']}</td><td>{_num(p['fraction'])}</td>"
        f"<td>[{_num(p['ci_low'])}, {_num(p['ci_high'])}]</td></tr>"
        for c, p in nums["performance"].items()
    )
    mod_cells = []
    for h, m in nums["modularity"].items():
        if m is None:
            mod_cells.append(
                f"<tr><td>{h} ALM</td><td colspan=4>n/a (too few trials or no delay-selective "
                "neurons)</td></tr>"
            )
            continue
        t90 = "no full recovery" if m["t90_s"] is None else _num(m["t90_s"], ".2f")
        mod_cells.append(
            f"<tr><td>{h} ALM</td><td>{_num(m['M'])}</td><td>[{_num(m['ci_low'])}, "
            f"{_num(m['ci_high'])}]</td><td>{len(m['units'])}</td><td>{t90}</td></tr>"
        )
    mod_rows = "".join(mod_cells)
    lat = nums["latency_us"]
    lat_rows = "".join(
        f"<tr><td>{k}</td><td>{v.get('n', 0)}</td><td>{_num(v.get('p50'), '.0f')}</td>"
        f"<td>{_num(v.get('p99'), '.0f')}</td><td>{_num(v.get('max'), '.0f')}</td>"
        f"<td>{v.get('deadline_misses', '–')}</td></tr>"
        for k, v in lat.items()
        if isinstance(v, dict)
    )
    refusals = [a for a in data.alarms if a.get("alarm") == "light_refused"]
    alarm_rows = "".join(
        f"<li class='{'refusal' if a.get('alarm') == 'light_refused' else ''}'>"
        f"{e(str(a.get('alarm') or a.get('source') or 'alarm'))}: "
        f"{e(str(a.get('reason') or a.get('message') or ''))}</li>"
        for a in data.alarms[:50]
    )
    meta_rows = "".join(
        f"<tr><td>{e(str(k))}</td><td>{e(json.dumps(v, default=str))}</td></tr>"
        for k, v in data.meta.items()
        if k not in ("versions", "counters")
    )
    counters = data.meta.get("counters") or {}
    drops = {k: v for k, v in counters.items() if any(w in k for w in ("drop", "late", "missing", "lost"))}
    captions = {
        "performance": "Fraction correct of completed trials (lick after the go cue, no early lick) per "
        "light "
        "condition actually delivered; Wilson 95 % CIs (analysis.neural.performance_by_condition).",
        "cd": "Coding direction per hemisphere fitted on control correct trials (delay mean, class-mean difference; "
        "analysis.neural.fit_coding_direction), projected on every completed trial; solid: instructed right, "
        "dashed: instructed left. Blue band: light window.",
        "selectivity": "Selectivity (preferred − non-preferred rate) of delay-selective neurons; "
        "preferred side "
        "and selection on one half of the control trials, control selectivity on the other half; "
        "all completed trials by instructed side. Bands: 95 % bootstrap over neurons "
        f"({N_BOOT} resamples). t90: recovery of the silenced hemisphere after light offset.",
        "modularity": "M = selectivity during photoinhibition of the other hemisphere / control, over "
        "−1.7…−0.9 s (Chen et al., Cell 2021; analysis.neural.modularity); 95 % bootstrap CI over neurons.",
        "decoder": "The online decoder's sign vs the mouse's choice, per 100-ms bin, completed trials.",
        "light": "Commanded light per trial against the interlock limits.",
        "latency": "Internal: frame received → command sent (rigd clock). End to end: rig send → command "
        "received at the rig (rig clock, from acknowledgements).",
    }
    fig_html = "".join(
        f"<figure><img src='{e(f)}' width='900' height='450' alt='{e(k)}'>"
        f"<figcaption>{e(captions.get(k, ''))}</figcaption></figure>"
        for k, f in figs.items()
    )
    notes = "".join(f"<li>{e(n)}</li>" for n in data.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rigd report — {e(data.name)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 960px; color: #1d2329; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 3px 10px; }}
figure {{ margin: 18px 0; }} figcaption {{ color: #555; font-size: 12px; max-width: 900px; }}
pre {{ background: #f6f7f9; padding: 10px; overflow-x: auto; font-size: 12px; }}
li.refusal {{ color: #b3261e; font-weight: 600; }} code {{ font-size: 12px; }}
</style></head><body>
<h1>Session report: {e(data.name)}</h1>
<p>Source: {e(data.source)} · {count(int(nums["n_trials"]), "trial")}
({nums["n_complete_trials_with_counts"]} completed with spike counts) ·
conditions {e(json.dumps(nums["conditions"]))}</p>
{f"<ul class='notes'>{notes}</ul>" if notes else ""}
<h2>Performance per condition</h2>
<table><tr><th>condition</th><th>n</th><th>correct</th><th>fraction</th>
<th>95 % CI</th></tr>{perf_rows}</table>
<h2>Modularity and recovery</h2>
<table><tr><th>hemisphere</th><th>M</th><th>95 % CI</th><th>neurons</th>
<th>t90 (s)</th></tr>{mod_rows}</table>
<h2>Figures</h2>{fig_html}
<h2>Latency (µs)</h2>
<table><tr><th></th><th>n</th><th>p50</th><th>p99</th><th>max</th>
<th>deadline misses</th></tr>{lat_rows}</table>
<h2>Alarms ({len(data.alarms)}; interlock refusals {len(refusals)})</h2>
<ul>{alarm_rows}</ul>
<h2>Drop counters</h2><pre>{e(json.dumps(drops, indent=1))}</pre>
<h2>Protocol</h2>
<p>{e(str(data.protocol.get("name")))} · sha256 <code>{e(str(data.protocol.get("sha256")))}</code></p>
<pre>{e(str(data.protocol.get("text") or "(no protocol text recorded)"))}</pre>
<h2>Session</h2><table>{meta_rows}</table>
<p style="color:#888">generated by rigd report {e(nums["generated"])}</p>
</body></html>
"""


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
    res = analyse(data, steps)
    dose = light_dose(data)
    lat = latency_summary(data)
    steps.start("drawing figures", 7)
    figs: dict[str, str] = {}
    drawers: list[tuple[str, Callable[[Path], str]]] = [
        ("performance", lambda p: figure_performance(res, p)),
        ("cd", lambda p: figure_cd(res, data, p)),
        ("selectivity", lambda p: figure_selectivity(res, data, p)),
        ("modularity", lambda p: figure_modularity(res, p)),
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
    page = out / "report.html"
    page.write_text(_html(data, nums, figs), encoding="utf-8")
    return page
