"""NWB export of a recorded session (pynwb, NWB 2.11; DANDI's ``nwbinspector --config dandi`` clean).

It owns the mapping from a rigd session directory to an NWB file (docs/nwb.md says what each part
holds and where it comes from):

* the **subject** (pynwb ``Subject``) from the metadata ``rigd start --subject-file``/flags recorded in
  the manifest (``config.subject_info``);
* **electrode groups and electrodes** from the rig's description (its heartbeat): the groups and
  channels it describes, or by default one group per ALM hemisphere with one channel per unit column;
* a **units** table (spike times: from SPIKE_EVENTS where the rig sent them, else from the binned
  counts at bin resolution, each spike at its bin's centre) next to the binned counts themselves
  (``processing/ecephys``, kept for analysis/report.py);
* the **trials** table (the delay-task fields, planned and delivered light of each trial, every lick),
  **epochs** (sample, delay, response of every trial) and the task's events as ``EventsTable``s
  (one per event type; the rig's light changes as measured by its acknowledgements among them);
* **optogenetics** through ndx-optogenetics (one site per ALM hemisphere with its spot count; one
  epoch per delivered light command: power, duration, waveform, spots) and the core
  ``OptogeneticSeries`` envelope per hemisphere. Only light the rig acknowledged APPLIED counts, at
  the onset it measured (the rule of rig/conditions.py);
* the decoder outputs, alarms, and the protocol text and hash.

Times are seconds on the rig clock from the session's first frame (a frame's time is the end of its
bin). It reads the session; it never
changes it.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from hdmf.backends.hdf5.h5_utils import H5DataIO
from hdmf.common import VectorData
from ndx_ophys_devices import Effector, ExcitationSource, ExcitationSourceModel
from ndx_optogenetics import (
    OptogeneticEffectors,
    OptogeneticEpochsTable,
    OptogeneticExperimentMetadata,
    OptogeneticSitesTable,
)
from pynwb import NWBHDF5IO, NWBFile, TimeSeries
from pynwb.core import DynamicTable
from pynwb.ecephys import ElectrodeGroup
from pynwb.event import EventsTable, TimestampVectorData
from pynwb.file import Subject
from pynwb.misc import AnnotationSeries, Units
from pynwb.ogen import OptogeneticSeries

from rig import wire
from rig.conditions import canonical_condition, join_recorded_acks, last_acks, light_delivered
from rig.session import RIGD_RIG_ID, Session

#: Stereotaxic coordinates of ALM (mm from bregma): Mahrach et al., eLife 9:e49967 (2020)
ALM_AP_MM = 2.5
ALM_ML_MM = 1.5
#: ALM lies in the secondary motor area; "MOs" is its Allen Mouse Brain CCF acronym (nwbinspector checks
#: electrode locations against that ontology)
ALM_CCF = "MOs"
HEMISPHERES = ("left", "right")
#: what each task event means (docs/wire-protocol.md, "Trial events"); a rig's own events are kept too
EVENT_MEANINGS = {
    "trial_start": "trial start (the rig's planned sample, delay and go-cue times are in the trials table)",
    "sample_on": "sample epoch onset (pole in reach)", "delay_on": "delay epoch onset",
    "go_cue": "go cue (response epoch onset)", "lick": "a lick (every lick, with its side)",
    "early_lick": "lick before the go cue (trial aborted)", "outcome": "trial outcome decided",
    "trial_end": "trial end",
}
_EVENT_SKIP = {"event", "t_rig_ns", "rig_id"}


@dataclass(frozen=True)
class _Clock:
    """Session time: seconds on the rig clock from the first frame."""

    t0_ns: int

    def __call__(self, t_ns: int | float) -> float:
        return (float(t_ns) - self.t0_ns) * 1e-9


def _regular(t_ns: npt.NDArray[np.int64]) -> int | None:
    """The constant step (ns) of a series of rig times, or None when they are not evenly spaced."""
    if t_ns.size < 2:
        return None
    d = np.diff(t_ns)
    step = int(d[0])
    return step if step > 0 and bool((d == step).all()) else None


def _series_time(t_ns: npt.NDArray[np.int64], clock: _Clock) -> dict[str, Any]:
    """``rate`` + ``starting_time`` for evenly spaced frames (NWB best practice), else ``timestamps``."""
    step = _regular(t_ns)
    if step is not None:
        return {"starting_time": clock(int(t_ns[0])), "rate": 1e9 / step}
    return {"timestamps": (t_ns - clock.t0_ns) * 1e-9}


# --- subject ---------------------------------------------------------------------------------


def _subject(m: dict[str, Any], desc: dict[str, Any]) -> Subject:
    """The Subject from the manifest's ``config.subject_info`` (rig/config.py SubjectInfo)."""
    cfg = m.get("config", {})
    info: dict[str, Any] = dict(cfg.get("subject_info") or {})
    simulated = cfg.get("rig", desc.get("rig")) == "sim" or desc.get("rig") == "sim"
    sid = (info.get("subject_id") or cfg.get("subject")
           or (f"sim-seed{cfg.get('seed', '?')}" if simulated else "unknown"))
    text = str(info.get("description") or "")
    if simulated:
        what = (f"replay of the recorded session {cfg['replay']}" if cfg.get("replay")
                else f"rigd's simulated mouse ({desc.get('model', 'reduced')} model, docs/simulator.md)")
        text = (text + "; " if text else "") + f"SIMULATED: no animal; the data come from {what}"
    if not info:
        text = (text + "; " if text else "") + ("no subject metadata was recorded (rigd start --subject-file "
                                                 "or --species/--sex/--age: docs/nwb.md)")
    if info.get("opsin"):
        text = (text + "; " if text else "") + f"opsin: {info['opsin']}"
    kw: dict[str, Any] = {k: info[k] for k in ("species", "sex", "age", "genotype", "strain", "weight")
                          if info.get(k)}
    if info.get("age"):
        kw["age__reference"] = info.get("age_reference", "birth")
    if info.get("date_of_birth"):
        dob = dt.datetime.fromisoformat(str(info["date_of_birth"]))
        kw["date_of_birth"] = dob if dob.tzinfo else dob.replace(tzinfo=dt.UTC)
    return Subject(subject_id=str(sid), description=text or None, **kw)


# --- electrodes and units --------------------------------------------------------------------


def _bad(where: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"rig description {where}: expected {expected}, got {got!r}")


def _electrodes(nwb: NWBFile, desc: dict[str, Any], n_units: int) -> tuple[list[int], list[ElectrodeGroup]]:
    """Electrode groups and electrodes from the rig description; per unit: its electrode row and group.

    A rig may describe ``electrode_groups`` (name, location, hemisphere, description, device),
    ``channels`` (group, location, rel_x/rel_y µm on the probe, x/y/z) and ``unit_channels`` (each
    unit column's channel); without them every unit column is its own channel, in a group per
    hemisphere (units ``0 … units_left-1`` left, the rest right: docs/wire-protocol.md).
    """
    rig_name = str(desc.get("rig", "rig"))
    groups_d = desc.get("electrode_groups")
    channels = desc.get("channels")
    unit_ch = desc.get("unit_channels")
    if groups_d is None and channels is None and unit_ch is None:
        n_left = int(desc.get("units_left", n_units // 2))
        device = nwb.create_device(name=f"{rig_name}_recording", description=(
            f"the recording device of rig {rig_name!r} as its description names it; it described units per "
            "hemisphere only, so each unit column is its own channel"
            + (" (simulated units: docs/simulator.md)" if rig_name == "sim" else "")))
        groups = []
        for hemi, sign, first, last in (("left", -1, 0, n_left), ("right", 1, n_left, n_units)):
            groups.append(nwb.create_electrode_group(
                name=f"ALM_{hemi}", device=device, location=ALM_CCF,
                description=f"{hemi} ALM (AP +{ALM_AP_MM} mm, ML {sign * ALM_ML_MM:+} mm from bregma; Mahrach et "
                            f"al. 2020), units {first}…{last - 1}"))
        nwb.add_electrode_column("hemisphere", "ALM hemisphere of the channel")
        for u in range(n_units):
            g = groups[0] if u < n_left else groups[1]
            nwb.add_electrode(group=g, location=ALM_CCF, hemisphere="left" if u < n_left else "right")
        return list(range(n_units)), [groups[0] if u < n_left else groups[1] for u in range(n_units)]
    if not isinstance(groups_d, list) or not groups_d or not all(isinstance(g, dict) for g in groups_d):
        raise _bad("electrode_groups", "a non-empty list of objects (name, location, …)", groups_d)
    if not isinstance(channels, list) or not channels or not all(isinstance(c, dict) for c in channels):
        raise _bad("channels", "a non-empty list of objects (group, location, …)", channels)
    devices: dict[str, Any] = {}
    by_name: dict[str, ElectrodeGroup] = {}
    hemi_of: dict[str, str] = {}
    for i, g in enumerate(groups_d):
        name = g.get("name")
        if not isinstance(name, str) or not name or "/" in name or name in by_name:
            raise _bad(f"electrode_groups[{i}].name", "a unique name without '/'", name)
        dev_name = str(g.get("device") or f"{rig_name}_recording")
        if dev_name not in devices:
            devices[dev_name] = nwb.create_device(name=dev_name, description=f"recording device named by rig "
                                                  f"{rig_name!r}")
        hemi_of[name] = str(g.get("hemisphere", ""))
        by_name[name] = nwb.create_electrode_group(
            name=name, device=devices[dev_name], location=str(g.get("location") or ALM_CCF),
            description=str(g.get("description") or f"electrode group {name} of rig {rig_name!r}"))
    nwb.add_electrode_column("hemisphere", "hemisphere of the channel's group (as the rig described it)")
    for i, c in enumerate(channels):
        gname = c.get("group")
        if gname not in by_name:
            raise _bad(f"channels[{i}].group", f"one of {sorted(by_name)}", gname)
        kw: dict[str, Any] = {}
        for col in ("x", "y", "z", "rel_x", "rel_y"):
            if col in c:
                v = c[col]
                if not isinstance(v, int | float) or not math.isfinite(float(v)):
                    raise _bad(f"channels[{i}].{col}", "a finite number", v)
                kw[col] = float(v)
        nwb.add_electrode(group=by_name[gname], location=str(c.get("location") or by_name[gname].location),
                          hemisphere=hemi_of[gname], **kw)
    if unit_ch is None:
        if len(channels) != n_units:
            raise _bad("unit_channels", f"each unit's channel (needed: {len(channels)} channels for "
                       f"{n_units} units)", None)
        unit_ch = list(range(n_units))
    if (not isinstance(unit_ch, list) or len(unit_ch) != n_units
            or not all(isinstance(k, int) and 0 <= k < len(channels) for k in unit_ch)):
        raise _bad("unit_channels", f"{n_units} channel indices in 0…{len(channels) - 1}", unit_ch)
    return list(unit_ch), [by_name[channels[k]["group"]] for k in unit_ch]


def _spike_events(s: Session, clock: _Clock) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Spike times the rig sent (SPIKE_EVENTS: unit, µs after t_rig_ns): (unit, time s)."""
    units: list[npt.NDArray[np.int64]] = []
    times: list[npt.NDArray[np.float64]] = []
    for r in s.records(wire.Kind.SPIKE_EVENTS):
        if r.header.rig_id == RIGD_RIG_ID or not r.header.payload_nbytes:
            continue
        a = wire.payload_array(r.header, r.payload).reshape(-1, 2)
        units.append(a[:, 0].astype(np.int64))
        times.append(clock(r.header.t_rig_ns) + a[:, 1].astype(np.float64) * 1e-6)
    if not units:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(units), np.concatenate(times)


def _units(nwb: NWBFile, s: Session, desc: dict[str, Any], clock: _Clock, t_rig: npt.NDArray[np.int64],
           counts: npt.NDArray[Any], bin_s: float) -> None:
    """The units table: spike times per unit, hemisphere, fast-spiking flag, electrode and group."""
    n_units = counts.shape[1]
    n_left = int(desc.get("units_left", n_units // 2))
    fs = {int(i) for i in desc.get("fs_units", [])}
    rows, groups = _electrodes(nwb, desc, n_units)
    ev_units, ev_times = _spike_events(s, clock)
    if ev_units.size:
        resolution = 1e-6
        how = ("spike times as the rig sent them (SPIKE_EVENTS: frame time + offset in µs; resolution 1 µs); "
               "the binned counts are in processing/ecephys/binned_spike_counts")
        order = np.lexsort((ev_times, ev_units))
        units_sorted, spikes = ev_units[order], ev_times[order]
        bounds = np.searchsorted(units_sorted, np.arange(n_units + 1))
    else:
        resolution = bin_s
        how = (f"spike times RECONSTRUCTED from the rig's binned counts ({bin_s * 1e3:g} ms bins; the rig sent no "
               "spike times): each spike is stamped with its bin's end (the frame's time, as rigd aligns "
               f"frames), so a bin with n spikes gives n equal times and a spike happened up to {bin_s:g} s "
               f"before its time; resolution = the bin width ({bin_s:g} s). The counts themselves are in "
               "processing/ecephys/binned_spike_counts")
        ends = (t_rig - clock.t0_ns) * 1e-9  # t_rig_ns is each bin's end
        ct = np.ascontiguousarray(counts.T)
        u_idx, f_idx = np.nonzero(ct)
        spikes = np.repeat(ends[f_idx], ct[u_idx, f_idx].astype(np.int64))
        per_unit = np.bincount(u_idx, weights=ct[u_idx, f_idx], minlength=n_units).astype(np.int64)
        bounds = np.concatenate([[0], np.cumsum(per_unit)])
    nwb.units = Units(name="units", description=how, resolution=resolution, electrode_table=nwb.electrodes)
    nwb.add_unit_column("hemisphere", "ALM hemisphere of the unit (left: columns 0 … units_left-1)")
    nwb.add_unit_column("fast_spiking", "putative fast-spiking interneuron (the rig's fs_units)")
    nwb.add_unit_column("unit_column", "the unit's column in the rig's SPIKE_COUNTS frames (and in "
                                       "processing/ecephys/binned_spike_counts)")
    for u in range(n_units):
        nwb.add_unit(spike_times=spikes[bounds[u]:bounds[u + 1]], electrodes=[rows[u]], electrode_group=groups[u],
                     hemisphere="left" if u < n_left else "right", fast_spiking=u in fs, unit_column=u)


# --- trials, epochs, events --------------------------------------------------------------------


def _popcount(mask: int) -> int:
    return bin(int(mask) & 0xFF).count("1")


def _trial_epochs(start: dict[str, Any], evs: dict[str, list[int]], stop_ns: int) -> list[tuple[str, int, int]]:
    """(epoch, start ns, stop ns) of a trial's sample, delay and response epochs from its events.

    An epoch starts at its event (sample_on, delay_on, go_cue) or, without one, at the planned time
    in trial_start; an early lick ends the trial's epochs there (the trial is aborted).
    """
    planned = {"sample": start.get("t_sample_ns"), "delay": start.get("t_delay_ns"), "response": start.get("t_go_ns")}
    onset: dict[str, int | None] = {}
    for name, ev in (("sample", "sample_on"), ("delay", "delay_on"), ("response", "go_cue")):
        got = evs.get(ev)
        p = planned[name]
        onset[name] = got[0] if got else (int(p) if p else None)
    abort = evs.get("early_lick", [None])[0]
    end = min(stop_ns, abort) if abort is not None else stop_ns
    out = []
    names = ("sample", "delay", "response")
    for i, name in enumerate(names):
        t = onset[name]
        if t is None or t >= end:
            continue
        nxt = [int(x) for x in (onset[n] for n in names[i + 1:]) if x is not None]
        stop = min([end, *nxt])
        if stop > t:
            out.append((name, int(t), int(stop)))
    return out


def _events_tables(nwb: NWBFile, events: list[dict[str, Any]], clock: _Clock, resolution: float) -> None:
    """One EventsTable per task event type (every lick included), with the event's fields as columns."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_type.setdefault(str(e.get("event")), []).append(e)
    for name, unsorted in sorted(by_type.items()):
        evs = sorted(unsorted, key=lambda e: int(e["t_rig_ns"]))
        keys = sorted({k for e in evs for k in e if k not in _EVENT_SKIP})
        cols: list[Any] = [TimestampVectorData(
            name="timestamp", description="when the rig says the event happened (its header t_rig_ns, session "
            "clock)", data=[clock(e["t_rig_ns"]) for e in evs], resolution=resolution)]
        for key in keys:
            k = key
            vals = [e.get(key) for e in evs]
            if all(isinstance(v, bool) for v in vals if v is not None) and any(v is not None for v in vals):
                data: list[Any] = [str(v) if v is not None else "" for v in vals]
            elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals if v is not None):
                if k.endswith("_ns"):  # a rig time: as session seconds
                    data = [clock(v) if v else np.nan for v in vals]
                    k = k[:-3] + "_time"
                elif k == "trial":
                    data = [int(v) if v is not None else -1 for v in vals]
                else:
                    data = [float(v) if v is not None else np.nan for v in vals]
            else:
                data = [str(v) if v is not None else "" for v in vals]
            cols.append(VectorData(name=k, description=f"the event's {k!r} field (docs/wire-protocol.md, Trial "
                                   "events; rig times as session seconds)", data=data))
        meaning = EVENT_MEANINGS.get(name, "an event the rig sent that docs/wire-protocol.md does not define")
        nwb.add_events_table(EventsTable(name=f"{name}_events", description=f"{name}: {meaning}", columns=cols))


# --- optogenetics ------------------------------------------------------------------------------


def _light_envelope(cmds: list[tuple[float, float, wire.LightCommandFields]], t_end: float
                    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Piecewise-linear time-averaged power (mW per spot) of delivered STARTs: (onset, end, command) → (t, power)."""
    ts: list[float] = [0.0]
    ps: list[float] = [0.0]
    for t0, t1, c in cmds:
        ramp = min(c.ramp_down_s, max(0.0, t1 - t0))
        flat_end = t1 - ramp
        for t, p in ((t0, 0.0), (t0, c.power_mw_per_spot), (flat_end, c.power_mw_per_spot), (t1, 0.0)):
            if t >= ts[-1]:
                ts.append(t)
                ps.append(p)
    ts.append(max(t_end, ts[-1]))
    ps.append(0.0)
    return np.asarray(ts), np.asarray(ps)


@dataclass(frozen=True)
class _Delivered:
    """One START the rig acknowledged APPLIED: when its light was on (session seconds) and what it was."""

    rig_id: int
    onset_s: float
    end_s: float
    onset_measured: bool
    cmd: wire.LightCommandFields


def _delivered_light(s: Session, clock: _Clock) -> list[_Delivered]:
    """Every delivered START at its measured onset, ended early by a later STOPPED RAMP_DOWN / ALL_OFF."""
    acks = s.light_acks()
    last = last_acks(acks)
    stops: dict[int, list[tuple[int, float]]] = {}  # rig → (t_light_change, ramp) of applied offs
    cmds = {(int(r.header.rig_id), c.command_id): c for r, c in s.light_commands()}
    for rec, a in acks:
        c = cmds.get((int(rec.header.rig_id), a.command_id))
        if a.status == wire.AckStatus.STOPPED and c is not None and a.t_light_change_rig_ns:
            ramp = c.ramp_down_s if c.action == wire.LightAction.RAMP_DOWN else 0.0
            stops.setdefault(int(rec.header.rig_id), []).append((a.t_light_change_rig_ns, float(ramp)))
    out = []
    for (rig, cid), c in cmds.items():
        status, t_on = last.get((rig, cid), ("sent", 0))
        if c.action != wire.LightAction.START or not light_delivered(status):
            continue
        t_ns = t_on or c.t_start_rig_ns or c.cause_t_rig_ns
        end_ns = t_ns + c.duration_s * 1e9
        for t_stop, ramp in stops.get(rig, []):
            if t_ns <= t_stop < end_ns:
                end_ns = min(end_ns, t_stop + ramp * 1e9)
        out.append(_Delivered(rig, clock(t_ns), clock(end_ns), bool(t_on), c))
    return sorted(out, key=lambda d: d.onset_s)


def _optogenetics(nwb: NWBFile, m: dict[str, Any], desc: dict[str, Any], info: dict[str, Any],
                  delivered: list[_Delivered], last_t: float) -> None:
    """Core ogen sites + envelopes, and ndx-optogenetics sites (spot counts) and per-command epochs."""
    cal = m.get("calibration", {})
    wavelength = float(cal.get("wavelength_nm", 473.0))
    n_spots = {h: len(cal.get(f"spots_{h}", [])) or int(desc.get("spots_per_hemisphere", 0)) for h in HEMISPHERES}
    device = nwb.create_device(name="light_source", description="rig light source behind rigd's interlock "
                               "(galvo-scanned spots over ALM through the skull; Li et al. 2016, Chen et al. 2021)")
    for hemi, sign, attr in (("left", -1, "spots_left"), ("right", 1, "spots_right")):
        site = nwb.create_ogen_site(
            name=f"ALM_{hemi}", device=device, description=f"{hemi} ALM, {n_spots[hemi]} spots scanned by galvo",
            excitation_lambda=wavelength,
            location=f"ALM {hemi} (AP +{ALM_AP_MM} mm, ML {sign * ALM_ML_MM:+} mm from bregma)")
        mine = [(d.onset_s, d.end_s, d.cmd) for d in delivered if getattr(d.cmd, attr)]
        t, p = _light_envelope(mine, last_t)
        nwb.add_stimulus(OptogeneticSeries(
            name=f"photostim_{hemi}", data=p * 1e-3, site=site, timestamps=t,
            description="delivered time-averaged power per spot (W), piecewise linear: only light the "
                        "rig acknowledged APPLIED, from the onset it measured (ended early by an applied "
                        "RAMP_DOWN or ALL_OFF); refused, late, invalid and unacknowledged commands are left "
                        "out; a sinusoid's cycles are not resolved (see optogenetic_epochs)"))
    # ndx-optogenetics: the source, the effector and one site per hemisphere
    model = ExcitationSourceModel(name="light_source_model", description="the rig's light source",
                                  manufacturer="not recorded by rigd", source_type="laser",
                                  excitation_mode="one-photon", wavelength_range_in_nm=[wavelength, wavelength])
    cap = float(cal.get("limits", {}).get("max_power_mw_per_spot", 10.0)) * 1e-3
    source = ExcitationSource(name="excitation_source", description=f"{wavelength:g} nm light source; power cap "
                              "per spot from the session's calibration", model=model, power_in_W=cap)
    nwb.add_device_model(model)
    nwb.add_device(source)
    opsin = str(info.get("opsin") or info.get("genotype") or "not recorded (rigd start --subject-file: opsin)")
    effector = Effector(name="effector", label=opsin, description="the light-gated effector the photoinhibition "
                        "acts through (subject metadata)")
    sites = OptogeneticSitesTable(description="one site per ALM hemisphere: the galvo-scanned spots over it "
                                  "(spot count and coordinates from the session's calibration)")
    sites.add_column("hemisphere", "ALM hemisphere")
    sites.add_column("n_spots", "number of galvo spots over the hemisphere (Li et al. 2016: 1; Chen et al. 2021: 4)")
    sites.add_column("location", "brain area (Allen CCF acronym; ALM lies in MOs)")
    sites.add_column("spots_ap_ml_mm", "each spot's AP, ML (mm from bregma) as 'ap,ml' pairs")
    for hemi in HEMISPHERES:
        spots = cal.get(f"spots_{hemi}", [])
        sites.add_row(excitation_source=source, effector=effector, hemisphere=hemi, n_spots=n_spots[hemi],
                      location=ALM_CCF,
                      spots_ap_ml_mm="; ".join(f"{sp.get('ap_mm')},{sp.get('ml_mm')}" for sp in spots))
    nwb.add_lab_meta_data(OptogeneticExperimentMetadata(
        optogenetic_sites_table=sites, optogenetic_effectors=OptogeneticEffectors(effectors=[effector]),
        stimulation_software="rigd (closed-loop photoinhibition behind its light interlock; docs/safety.md)"))
    if not delivered:
        return  # no delivered light: no epochs table (an empty table is a best-practice violation)
    epochs = OptogeneticEpochsTable(
        name="optogenetic_epochs", target_tables={"optogenetic_sites": sites},
        description="one row per light command the rig acknowledged APPLIED (only delivered light): from the "
                    "onset the rig measured (its ack's t_light_change) to the end of its commanded duration, "
                    "ramp-down included (earlier if an applied RAMP_DOWN/ALL_OFF cut it). power_in_mW is the "
                    "time-averaged power summed over the lit spots; per spot in power_per_spot_in_mW. A sine "
                    "waveform is one pulse per cycle (pulse_length = period = 1/freq); one train per command "
                    "(intertrain_interval_in_ms 0)")
    for col, d in (("trial", "trial number of the command"), ("command_id", "the light command's id"),
                   ("waveform", "constant or sine (raised sinusoid, mean = the set-point)"),
                   ("freq_hz", "sine frequency (Hz; 0 for constant)"),
                   ("power_per_spot_in_mW", "time-averaged power per spot at the brain surface (mW)"),
                   ("ramp_down_s", "linear ramp to zero at the end (s, included in the epoch)"),
                   ("spots_left", "number of left-hemisphere spots lit"),
                   ("spots_right", "number of right-hemisphere spots lit"),
                   ("spot_mask_left", "bit mask of the left spots lit (bit i = spot i)"),
                   ("spot_mask_right", "bit mask of the right spots lit"),
                   ("onset_measured", "the onset is the rig's measured light change (False: commanded time)")):
        epochs.add_column(col, d)
    for lit in delivered:
        c = lit.cmd
        dur_ms = (lit.end_s - lit.onset_s) * 1e3
        sine = c.waveform == wire.Waveform.SINE and c.freq_hz > 0
        period = 1e3 / c.freq_hz if sine else dur_ms
        n_sp = _popcount(c.spots_left) + _popcount(c.spots_right)
        epochs.add_row(
            start_time=lit.onset_s, stop_time=max(lit.end_s, lit.onset_s + 1e-6), stimulation_on=True,
            pulse_length_in_ms=period, period_in_ms=period,
            number_pulses_per_pulse_train=max(1, round(dur_ms / period)), number_trains=1,
            intertrain_interval_in_ms=0.0, power_in_mW=float(c.power_mw_per_spot) * n_sp,
            wavelength_in_nm=wavelength,
            optogenetic_sites=[i for i, a in enumerate((c.spots_left, c.spots_right)) if a],
            trial=int(c.trial), command_id=int(c.command_id), waveform=c.waveform.name.lower(),
            freq_hz=float(c.freq_hz), power_per_spot_in_mW=float(c.power_mw_per_spot),
            ramp_down_s=float(c.ramp_down_s), spots_left=_popcount(c.spots_left),
            spots_right=_popcount(c.spots_right), spot_mask_left=int(c.spots_left),
            spot_mask_right=int(c.spots_right), onset_measured=lit.onset_measured)
    nwb.add_time_intervals(epochs)


# --- the file ----------------------------------------------------------------------------------


def export_session(session_dir: Path | str, output: Path | None = None) -> Path:
    """Write ``<session>/session.nwb`` (or ``output``); returns the path."""
    s = Session.open(session_dir)
    m = s.manifest
    seq, t_rig, counts = s.counts()
    if counts.shape[0] == 0:
        raise ValueError(f"{session_dir}: no spike-count frames recorded; nothing to export")
    desc = s.rig_description()
    bin_s = float(desc.get("bin_s", np.median(np.diff(t_rig)) * 1e-9 if len(t_rig) > 1 else 1e-3))
    clock = _Clock(int(t_rig[0]))  # time 0: the first frame (the end of its bin)
    sec: Callable[[int | float], float] = clock

    started = m.get("started")
    start_time = (dt.datetime.fromisoformat(started) if started
                  else dt.datetime.fromtimestamp((s.directory / "wire.rlog").stat().st_mtime, dt.UTC))
    proto = m.get("protocol", {})
    info: dict[str, Any] = dict(m.get("config", {}).get("subject_info") or {})
    nwb = NWBFile(
        session_description=f"rigd session ({desc.get('rig', 'rig')}): delayed-response task with "
                            f"ALM photoinhibition; protocol {proto.get('name', '?')}",
        identifier=str(uuid.uuid5(uuid.NAMESPACE_URL, str(s.directory.resolve()))),
        session_start_time=start_time,
        session_id=s.directory.name,
        protocol=proto.get("text", ""),
        notes=f"protocol sha256 {proto.get('sha256', '?')}; rigd "
              f"{m.get('versions', {}).get('rigd', '?')}; counters {m.get('counters', {})}; times are seconds "
              "on the rig clock from the session's first frame (session_start_time is rigd's wall clock "
              "at start)",
        experiment_description="Closed-loop control recorded by rigd (wire protocol v1): tactile delayed-response "
                               "task with ALM photoinhibition (Chen et al., Cell 2021).",
        keywords=["ALM", "photoinhibition", "delayed response", "closed loop", "optogenetics"],
        source_script="rigd export nwb",
        source_script_file_name="analysis/nwb_export.py",
        subject=_subject(m, desc),
    )

    # binned spike counts + unit hemispheres (analysis/report.py reads both), and the units table
    n_units = counts.shape[1]
    n_left = int(desc.get("units_left", n_units // 2))
    ecephys = nwb.create_processing_module("ecephys", "binned spike counts per unit")
    ecephys.add(TimeSeries(
        name="binned_spike_counts", data=H5DataIO(counts, compression="gzip", compression_opts=1),
        unit="spikes", **_series_time(t_rig, clock),
        description=f"spike counts per unit per {bin_s * 1e3:g} ms bin; times are bin ends; "
                    "columns are units (see unit_info and the units table's unit_column)",
        comments=f"frame seq {seq[0]}…{seq[-1]}"))
    unit_info = DynamicTable(name="unit_info", description="hemisphere and class of each unit (column order)")
    unit_info.add_column("hemisphere", "ALM hemisphere of the unit")
    unit_info.add_column("fast_spiking", "putative fast-spiking interneuron (excited by light)")
    fs = {int(i) for i in desc.get("fs_units", [])}
    for i in range(n_units):
        unit_info.add_row(hemisphere="left" if i < n_left else "right", fast_spiking=i in fs)
    ecephys.add(unit_info)
    _units(nwb, s, desc, clock, t_rig, counts, bin_s)

    # trials: planned and delivered light (rig/conditions.py), acks recorded after a summary joined in
    events = s.events()
    starts = {e["trial"]: e for e in events if e["event"] == "trial_start"}
    ends = {e["trial"]: e["t_rig_ns"] for e in events if e["event"] == "trial_end"}
    by_trial: dict[int, dict[str, list[int]]] = {}
    licks: dict[int, list[tuple[float, str]]] = {}
    for e in events:
        if "trial" not in e:
            continue
        by_trial.setdefault(int(e["trial"]), {}).setdefault(str(e["event"]), []).append(int(e["t_rig_ns"]))
        if e["event"] == "lick":
            licks.setdefault(int(e["trial"]), []).append((sec(e["t_rig_ns"]), str(e.get("side", ""))))
    go = {k: int(e.get("t_go_ns", e["t_rig_ns"])) for k, e in starts.items()}
    for e in events:
        if e["event"] == "go_cue" and e["trial"] in go:
            go[e["trial"]] = int(e["t_rig_ns"])  # the actual cue beats the plan
    acks = s.light_acks()
    summaries = join_recorded_acks(s.trials(), acks)
    labels = sorted({str(tr.get("condition") or "control") for tr in summaries})
    cols = [("instructed_side", "instructed lick side (left/right)"),
            ("outcome", "hit, error, ignore or early_lick"),
            ("choice", "first lick side after the go cue (left/right/none)"),
            ("early_lick", "licked before the go cue (trial aborted)"),
            ("reaction_time", "first-lick latency after the go cue (s; nan if none)"),
            ("photostim_condition", "PLANNED: the protocol's condition label for the trial, as the protocol "
                                    f"names it (in this file: {', '.join(labels) or 'none'}); canonical in "
                                    "photostim_planned_condition, delivered in photostim_delivered_condition"),
            ("photostim_planned_condition", "PLANNED, canonical: control, left, right or bilateral (Chen et al. "
                                            "2021's four conditions)"),
            ("photostim_delivered", "light reached the animal: its command was acknowledged APPLIED by the rig"),
            ("photostim_delivered_condition", "DELIVERED: control, left, right, bilateral, or not_delivered "
                                              "(planned light refused, late, invalid or never acknowledged)"),
            ("photostim_onset", "delivered light's commanded onset relative to the go cue (s; nan if none "
                                "delivered); the measured one is photostim_onset_measured"),
            ("photostim_onset_measured", "delivered light's onset relative to the go cue as the rig measured "
                                         "it (its ack's t_light_change; s; nan if none delivered or not said)"),
            ("photostim_duration", "delivered light's duration incl. ramp-down (s; 0 if none delivered)"),
            ("photostim_power", "delivered time-averaged power per spot (mW; 0 if none delivered)"),
            ("photostim_spots_left", "left-hemisphere spots lit by the delivered light (count; 0 if none)"),
            ("photostim_spots_right", "right-hemisphere spots lit by the delivered light (count; 0 if none)"),
            ("photostim_waveform", "delivered light's waveform: constant or sine ('' if none delivered)"),
            ("photostim_status", "what the rig reported for the trial's light command: none (no command), "
                                 "sent (never acknowledged), applied, late, invalid, watchdog_off"),
            ("go_cue_time", "planned go-cue time (s, session clock); epochs are aligned to it"),
            ("go_cue_time_measured", "the go_cue event's time (s, session clock; the planned one if the rig "
                                     "sent no go_cue event)")]
    last_t = sec(t_rig[-1])
    epochs_rows: list[tuple[float, float, str, int]] = []
    trial_rows: list[dict[str, Any]] = []
    for tr in summaries:
        k = tr["trial"]
        if k not in starts:
            continue
        light = tr.get("light") or {}
        start = sec(starts[k]["t_rig_ns"])
        stop = sec(ends[k]) if k in ends else min(last_t, start + 30.0)
        rt = tr.get("reaction_time_s")
        delivered = bool(tr["delivered"])
        planned_onset = light.get("onset_t_s")
        measured = np.nan
        if delivered and light.get("t_light_change_rig_ns"):
            measured = (int(light["t_light_change_rig_ns"]) - go[k]) * 1e-9
        lk = licks.get(k, [])
        trial_rows.append(dict(
            start_time=start, stop_time=max(stop, start + bin_s), instructed_side=str(tr.get("instructed")),
            outcome=str(tr.get("outcome")), choice=str(tr.get("choice") or "none"),
            early_lick=bool(tr.get("early_lick")), reaction_time=float(rt) if rt is not None else np.nan,
            photostim_condition=str(tr.get("condition") or "control"),
            photostim_planned_condition=canonical_condition(tr.get("condition")),
            photostim_delivered=delivered,
            photostim_delivered_condition=str(tr["delivered_condition"]),
            photostim_onset=float(planned_onset) if delivered and planned_onset is not None else np.nan,
            photostim_onset_measured=measured,
            photostim_duration=float(light.get("duration_s", 0.0)) if delivered else 0.0,
            photostim_power=float(light.get("power_mw_per_spot", 0.0)) if delivered else 0.0,
            photostim_spots_left=_popcount(light.get("spots_left", 0)) if delivered else 0,
            photostim_spots_right=_popcount(light.get("spots_right", 0)) if delivered else 0,
            photostim_waveform=str(light.get("waveform", "")) if delivered else "",
            photostim_status=str(tr["light_status"]),
            go_cue_time=sec(starts[k].get("t_go_ns", starts[k]["t_rig_ns"])),
            go_cue_time_measured=sec(go[k]),
            lick_times=[t for t, _ in lk], lick_sides=[side for _, side in lk]))
        end_ns = int(ends.get(k, starts[k]["t_rig_ns"] + int((stop - start) * 1e9)))
        for name, a_ns, b_ns in _trial_epochs(starts[k], by_trial.get(k, {}), end_ns):
            epochs_rows.append((sec(a_ns), sec(b_ns), name, int(k)))
    if trial_rows:  # (a table without rows cannot be written)
        for name, description in cols:
            nwb.add_trial_column(name, description)
        any_lick = any(row["lick_times"] for row in trial_rows)
        if any_lick:  # (a ragged column of nothing but empty lists has no dtype to write)
            nwb.add_trial_column("lick_times", "every lick of the trial (s, session clock), in order", index=True)
            nwb.add_trial_column("lick_sides", "the side of each lick in lick_times (left/right)", index=True)
        for row in trial_rows:
            if not any_lick:
                del row["lick_times"], row["lick_sides"]
            nwb.add_trial(**row)
    if epochs_rows:
        nwb.add_epoch_column("trial", "the trial the epoch belongs to")
        nwb.add_epoch_column("epoch", "sample, delay or response")
        for t_a, t_b, name, trial in sorted(epochs_rows):
            nwb.add_epoch(start_time=t_a, stop_time=t_b, tags=[name], epoch=name, trial=trial)
    _events_tables(nwb, events, clock, bin_s)

    # optogenetics: only light the rig acknowledged APPLIED, from its measured onset
    _optogenetics(nwb, m, desc, info, _delivered_light(s, clock), last_t)

    # decoder outputs
    dec = s.decoder_outputs()
    if dec.shape[0]:
        mod = nwb.create_processing_module("decoding", "online decoder outputs, one row per frame")
        mod.add(TimeSeries(name="decoder_output", data=dec[:, 3:7], unit="a.u.",
                           **_series_time(dec[:, 1].astype(np.int64), clock),
                           description="columns: value (+ = lick right), confidence P(right), "
                                       f"left-hemisphere CD, right-hemisphere CD; decoder "
                                       f"{m.get('config', {}).get('decoder', '?')}"))
    alarms = s.alarms()
    if alarms:
        nwb.add_acquisition(AnnotationSeries(
            name="alarms", data=[f"{a.get('source', '')}: {a.get('message', '')}" for a in alarms],
            timestamps=[max(0.0, sec(a.get("t_rig_ns", clock.t0_ns))) for a in alarms],
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
