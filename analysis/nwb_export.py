"""NWB export of a recorded session (pynwb).

It owns the mapping from a rigd session directory to an NWB file: binned spike counts (with each
unit's hemisphere), the trials table with the delay-task fields and the planned and delivered
light of each trial, one optogenetic stimulus site per illuminated hemisphere with the delivered
time-averaged power as an OptogeneticSeries (only light the rig acknowledged APPLIED, at the onset
it measured: the rule of rig/conditions.py), the decoder outputs, alarms, and the protocol text
and hash. Times are seconds on the rig clock from the session's first frame. It reads the
session; it never changes it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from hdmf.backends.hdf5.h5_utils import H5DataIO
from pynwb import NWBHDF5IO, NWBFile, TimeSeries
from pynwb.core import DynamicTable
from pynwb.misc import AnnotationSeries
from pynwb.ogen import OptogeneticSeries

from rig import wire
from rig.conditions import join_recorded_acks, last_acks, light_delivered
from rig.session import Session

#: Stereotaxic coordinates of ALM (mm from bregma): Mahrach et al., eLife 9:e49967 (2020)
ALM_AP_MM = 2.5
ALM_ML_MM = 1.5


def _light_envelope(cmds: list[tuple[float, wire.LightCommandFields]], t_end: float
                    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Piecewise-linear time-averaged power (mW per spot) from START commands: (t, power)."""
    ts: list[float] = [0.0]
    ps: list[float] = [0.0]
    for t0, c in cmds:
        if c.action != wire.LightAction.START:
            continue
        flat = max(0.0, c.duration_s - c.ramp_down_s)
        for t, p in ((t0, 0.0), (t0, c.power_mw_per_spot), (t0 + flat, c.power_mw_per_spot),
                     (t0 + c.duration_s, 0.0)):
            if t >= ts[-1]:
                ts.append(t)
                ps.append(p)
    ts.append(max(t_end, ts[-1]))
    ps.append(0.0)
    return np.asarray(ts), np.asarray(ps)


def export_session(session_dir: Path | str, output: Path | None = None) -> Path:
    """Write ``<session>/session.nwb`` (or ``output``); returns the path."""
    s = Session.open(session_dir)
    m = s.manifest
    seq, t_rig, counts = s.counts()
    if counts.shape[0] == 0:
        raise ValueError(f"{session_dir}: no spike-count frames recorded; nothing to export")
    t0 = int(t_rig[0])

    def sec(t_ns: int | float) -> float:
        return (float(t_ns) - t0) * 1e-9

    started = m.get("started")
    start_time = (dt.datetime.fromisoformat(started) if started
                  else dt.datetime.fromtimestamp((s.directory / "wire.rlog").stat().st_mtime, dt.UTC))
    proto = m.get("protocol", {})
    desc = s.rig_description()
    nwb = NWBFile(
        session_description=f"rigd session ({desc.get('rig', 'rig')}): delayed-response task with "
                            f"ALM photoinhibition; protocol {proto.get('name', '?')}",
        identifier=str(uuid.uuid5(uuid.NAMESPACE_URL, str(s.directory.resolve()))),
        session_start_time=start_time,
        session_id=s.directory.name,
        protocol=proto.get("text", ""),
        notes=f"protocol sha256 {proto.get('sha256', '?')}; rigd "
              f"{m.get('versions', {}).get('rigd', '?')}; counters {m.get('counters', {})}",
        experiment_description="Closed-loop control recorded by rigd (wire protocol v1).",
        source_script="rigd export nwb",
        source_script_file_name="analysis/nwb_export.py",
    )

    # binned spike counts + unit hemispheres
    bin_s = float(desc.get("bin_s", np.median(np.diff(t_rig)) * 1e-9 if len(t_rig) > 1 else 1e-3))
    n_units = counts.shape[1]
    n_left = int(desc.get("units_left", n_units // 2))
    ecephys = nwb.create_processing_module("ecephys", "binned spike counts per unit")
    ecephys.add(TimeSeries(
        name="binned_spike_counts", data=H5DataIO(counts, compression="gzip", compression_opts=1),
        unit="spikes", timestamps=(t_rig - t0) * 1e-9,
        description=f"spike counts per unit per {bin_s * 1e3:g} ms bin; timestamps are bin ends; "
                    "columns are units (see unit_info)", comments=f"frame seq {seq[0]}…{seq[-1]}"))
    units = DynamicTable(name="unit_info", description="hemisphere and class of each unit (column order)")
    units.add_column("hemisphere", "ALM hemisphere of the unit")
    units.add_column("fast_spiking", "putative fast-spiking interneuron (excited by light)")
    fs = set(int(i) for i in desc.get("fs_units", []))
    for i in range(n_units):
        units.add_row(hemisphere="left" if i < n_left else "right", fast_spiking=i in fs)
    ecephys.add(units)

    # trials: planned and delivered light (rig/conditions.py), acks recorded after a summary joined in
    events = s.events()
    starts = {e["trial"]: e for e in events if e["event"] == "trial_start"}
    ends = {e["trial"]: e["t_rig_ns"] for e in events if e["event"] == "trial_end"}
    go = {k: int(e.get("t_go_ns", e["t_rig_ns"])) for k, e in starts.items()}
    for e in events:
        if e["event"] == "go_cue" and e["trial"] in go:
            go[e["trial"]] = int(e["t_rig_ns"])  # the actual cue beats the plan
    acks = s.light_acks()
    cols = [("instructed_side", "instructed lick side (left/right)"),
            ("outcome", "hit, error, ignore or early_lick"),
            ("choice", "first lick side after the go cue (left/right/none)"),
            ("early_lick", "licked before the go cue (trial aborted)"),
            ("reaction_time", "first-lick latency after the go cue (s; nan if none)"),
            ("photostim_condition", "PLANNED: the protocol's condition for the trial (e.g. control, "
                                    "left_alm); what was delivered is photostim_delivered_condition"),
            ("photostim_delivered", "light reached the animal: its command was acknowledged APPLIED by the rig"),
            ("photostim_delivered_condition", "DELIVERED: control, left, right, bilateral, or not_delivered "
                                              "(planned light refused, late, invalid or never acknowledged)"),
            ("photostim_onset", "delivered light's commanded onset relative to the go cue (s; nan if none "
                                "delivered)"),
            ("photostim_onset_measured", "delivered light's onset relative to the go cue as the rig measured "
                                         "it (its ack's t_light_change; s; nan if none delivered or not said)"),
            ("photostim_duration", "delivered light's duration incl. ramp-down (s; 0 if none delivered)"),
            ("photostim_power", "delivered time-averaged power per spot (mW; 0 if none delivered)"),
            ("photostim_status", "what the rig reported for the trial's light command: none (no command), "
                                 "sent (never acknowledged), applied, late, invalid, watchdog_off"),
            ("go_cue_time", "planned go-cue time (s, session clock); epochs are aligned to it")]
    for name, description in cols:
        nwb.add_trial_column(name, description)
    last_t = sec(t_rig[-1])
    for tr in join_recorded_acks(s.trials(), acks):
        k = tr["trial"]
        if k not in starts:
            continue
        light = tr.get("light") or {}
        start = sec(starts[k]["t_rig_ns"])
        stop = sec(ends[k]) if k in ends else min(last_t, start + 30.0)
        rt = tr.get("reaction_time_s")
        delivered = bool(tr["delivered"])
        onset = light.get("onset_t_s")
        measured = np.nan
        if delivered and light.get("t_light_change_rig_ns"):
            measured = (int(light["t_light_change_rig_ns"]) - go[k]) * 1e-9
        nwb.add_trial(
            start_time=start, stop_time=max(stop, start), instructed_side=str(tr.get("instructed")),
            outcome=str(tr.get("outcome")), choice=str(tr.get("choice") or "none"),
            early_lick=bool(tr.get("early_lick")), reaction_time=float(rt) if rt is not None else np.nan,
            photostim_condition=str(tr.get("condition") or "control"), photostim_delivered=delivered,
            photostim_delivered_condition=str(tr["delivered_condition"]),
            photostim_onset=float(onset) if delivered and onset is not None else np.nan,
            photostim_onset_measured=measured,
            photostim_duration=float(light.get("duration_s", 0.0)) if delivered else 0.0,
            photostim_power=float(light.get("power_mw_per_spot", 0.0)) if delivered else 0.0,
            photostim_status=str(tr["light_status"]),
            go_cue_time=sec(starts[k].get("t_go_ns", starts[k]["t_rig_ns"])))

    # optogenetics: one site per hemisphere; only light the rig acknowledged APPLIED, from its onset
    device = nwb.create_device(name="light_source", description="rig light source behind rigd's interlock "
                               "(galvo-scanned spots over ALM)")
    last = last_acks(acks)
    delivered_cmds: list[tuple[int, wire.LightCommandFields]] = []
    for rec, c in s.light_commands():
        status, t_on = last.get((int(rec.header.rig_id), c.command_id), ("sent", 0))
        if c.action == wire.LightAction.START and light_delivered(status):
            delivered_cmds.append((t_on or c.t_start_rig_ns or c.cause_t_rig_ns, c))
    for hemi, sign, attr in (("left", -1, "spots_left"), ("right", 1, "spots_right")):
        site = nwb.create_ogen_site(
            name=f"ALM_{hemi}", device=device, description=f"{hemi} ALM, spots scanned by galvo",
            excitation_lambda=float(m.get("calibration", {}).get("wavelength_nm", 473.0)),
            location=f"ALM {hemi} (AP +{ALM_AP_MM} mm, ML {sign * ALM_ML_MM:+} mm from bregma)")
        # placed at the onset the rig measured (its ack's t_light_change; rig clock, like all times)
        mine = sorted(((sec(t), c) for t, c in delivered_cmds if getattr(c, attr)), key=lambda x: x[0])
        t, p = _light_envelope(mine, last_t)
        nwb.add_stimulus(OptogeneticSeries(
            name=f"photostim_{hemi}", data=p * 1e-3, site=site, timestamps=t,
            description="delivered time-averaged power per spot (W), piecewise linear: only light the "
                        "rig acknowledged APPLIED, from the onset it measured; refused, late, invalid "
                        "and unacknowledged commands are left out; the 40 Hz sinusoid is not resolved"))

    # decoder outputs
    dec = s.decoder_outputs()
    if dec.shape[0]:
        mod = nwb.create_processing_module("decoding", "online decoder outputs, one row per frame")
        mod.add(TimeSeries(name="decoder_output", data=dec[:, 3:7], unit="a.u.",
                           timestamps=(dec[:, 1] - t0) * 1e-9,
                           description="columns: value (+ = lick right), confidence P(right), "
                                       f"left-hemisphere CD, right-hemisphere CD; decoder "
                                       f"{m.get('config', {}).get('decoder', '?')}"))
    alarms = s.alarms()
    if alarms:
        nwb.add_acquisition(AnnotationSeries(
            name="alarms", data=[f"{a.get('source', '')}: {a.get('message', '')}" for a in alarms],
            timestamps=[max(0.0, sec(a.get("t_rig_ns", t0))) for a in alarms],
            description="alarms raised by rigd (interlock refusals, watchdogs, errors)"))

    out = Path(output) if output else s.directory / "session.nwb"
    with NWBHDF5IO(str(out), "w") as io:
        io.write(nwb)
    return out


def read_trials(path: Path) -> list[dict[str, Any]]:
    """Read the trials table of an NWB file back (used by tests and the report)."""
    with NWBHDF5IO(str(path), "r") as io:
        f = io.read()
        df = f.trials.to_dataframe()
        return [dict(r) for _, r in df.iterrows()]
