"""NWB export that DANDI accepts (issue 22 point 2; docs/nwb.md).

A short lockstep session with subject metadata (``--subject-file``) is exported with ``rigd export
nwb``; nwbinspector's DANDI configuration must report no CRITICAL and no best-practice violation, and
pynwb must read back the subject, electrodes, units, optogenetic epochs, epochs and every lick with
the values the session recorded. A session written by hand (a rig that describes its channels and
sends spike times) checks the description-driven electrodes and the exact spike times.
"""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nwbinspector import Importance, inspect_nwbfile, load_config
from pynwb import NWBHDF5IO

from rig import wire
from rig.conditions import join_recorded_acks
from rig.session import Recorder, Session, write_json_atomic
from tests.rigd_process import REPO, RIGD, rigd

SUBJECT = """\
[subject]
subject_id = "M1"
species = "Mus musculus"
sex = "F"
age = "P90D"
genotype = "VGAT-ChR2-EYFP"
strain = "C57BL/6J"
opsin = "ChR2(H134R)-EYFP in GABAergic interneurons"
description = "head-fixed, trained on the tactile delayed-response task"
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("nwb")
    subject = tmp / "m1.toml"
    subject.write_text(SUBJECT)
    # seed 5: 3 of the 12 trials are photoinhibited (left, right, bilateral)
    with rigd(tmp, "--rig", "sim", "--clock", "rig", "--trials", "12", "--seed", "5", "--subject-file",
              str(subject), "--no-ui") as r:
        r.wait_ready()
        rc = r.wait(timeout=600)
        out = r.output()
    assert rc == 0, out
    session = r.session_dir()
    res = subprocess.run([*RIGD, "export", "nwb", str(session)], capture_output=True, text=True, timeout=600,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr
    return session, session / "session.nwb"


def test_dandi_inspection_reports_no_critical_and_no_violation(exported: tuple[Path, Path]) -> None:
    _, path = exported
    msgs = list(inspect_nwbfile(nwbfile_path=str(path), config=load_config("dandi")))
    bad = [f"{m.importance.name} {m.check_function_name} {m.object_name}: {m.message}" for m in msgs
           if m.importance in (Importance.CRITICAL, Importance.BEST_PRACTICE_VIOLATION)]
    assert bad == []
    # what is left are suggestions (experimenter, institution…), never worse
    assert all(m.importance == Importance.BEST_PRACTICE_SUGGESTION for m in msgs), msgs


def test_manifest_records_the_subject_without_a_ledger(exported: tuple[Path, Path]) -> None:
    session, _ = exported
    m = json.loads((session / "manifest.json").read_text())
    info = m["config"]["subject_info"]
    assert info["subject_id"] == "M1" and info["species"] == "Mus musculus" and info["age"] == "P90D"
    assert m["config"]["subject"] is None  # metadata only: a lockstep session keeps no animal's light ledger
    assert all(Path(p).parent == session for p in m["ledgers"].values())


def test_pynwb_reads_back_what_the_session_recorded(exported: tuple[Path, Path]) -> None:
    session, path = exported
    s = Session.open(session)
    desc = s.rig_description()
    _, t_rig, counts = s.counts()
    events = s.events()
    summaries = {t["trial"]: t for t in join_recorded_acks(s.trials(), s.light_acks())}
    t0 = int(t_rig[0])  # session time 0: the first frame

    with NWBHDF5IO(str(path), "r") as io:
        f = io.read()
        # subject
        sub = f.subject
        assert (sub.subject_id, sub.species, sub.sex, sub.age) == ("M1", "Mus musculus", "F", "P90D")
        assert sub.genotype == "VGAT-ChR2-EYFP" and sub.strain == "C57BL/6J"
        assert "ChR2(H134R)" in sub.description and "SIMULATED" in sub.description

        # electrodes and groups: one channel per unit column, a group per hemisphere
        el = f.electrodes.to_dataframe()
        assert len(el) == desc["n_units"] == 80
        assert set(f.electrode_groups) == {"ALM_left", "ALM_right"}
        assert (el["location"] == "MOs").all()
        assert (el["hemisphere"].to_numpy() == np.where(np.arange(80) < 40, "left", "right")).all()

        # units: every spike of the counts, at its bin's end (the frame time), resolution = the bin
        units = f.units
        assert len(units) == 80 and units.resolution == pytest.approx(0.001)
        totals = counts.sum(axis=0)
        for u in (0, 5, 41, 79):
            st = np.asarray(units["spike_times"][u])
            assert st.size == totals[u]
            bins = np.round(st * 1000).astype(np.int64)  # frame index from the first frame
            assert np.allclose(st, bins * 1e-3)
            assert (np.bincount(bins, minlength=counts.shape[0]) == counts[:, u]).all()
        ud = units.to_dataframe()
        assert list(ud["fast_spiking"].to_numpy().nonzero()[0]) == sorted(desc["fs_units"])
        assert (ud["electrode_group"].map(lambda g: g.name).to_numpy()[:40] == "ALM_left").all()

        # binned counts as rate + starting_time (regular lockstep frames), unchanged for the report
        ts = f.processing["ecephys"]["binned_spike_counts"]
        assert ts.timestamps is None and ts.rate == pytest.approx(1000.0)
        assert ts.starting_time == 0.0  # the first frame
        assert np.array_equal(ts.data[:], counts)

        # trials: the report's columns kept, every lick, measured onset, description matching values
        tr = f.trials.to_dataframe()
        for col in ("photostim_condition", "photostim_delivered", "photostim_delivered_condition",
                    "photostim_onset", "photostim_duration", "photostim_power", "photostim_status",
                    "go_cue_time", "instructed_side", "outcome", "choice", "early_lick", "reaction_time"):
            assert col in tr.columns, col
        labels = set(tr["photostim_condition"])
        assert labels >= {"control", "left_alm"}
        assert all(lab in f.trials["photostim_condition"].description for lab in labels)
        licks = [e for e in events if e["event"] == "lick"]
        assert sum(len(x) for x in tr["lick_times"]) == len(licks) > len(tr)  # more than the first lick
        for k, row in tr.iterrows():
            mine = [(e["t_rig_ns"] - t0) * 1e-9 for e in licks if e["trial"] == k]
            assert np.allclose(list(row["lick_times"]), mine)
        lit = tr[tr["photostim_delivered"]]
        assert len(lit) == 3
        for k, row in lit.iterrows():
            light = summaries[k]["light"]
            go = next(e["t_rig_ns"] for e in events if e["trial"] == k and e["event"] == "go_cue")
            assert row["photostim_onset_measured"] == pytest.approx((light["t_light_change_rig_ns"] - go) * 1e-9)
            assert row["photostim_onset"] == pytest.approx(light["onset_t_s"])  # commanded, as before
            assert row["photostim_spots_left"] == bin(light["spots_left"]).count("1")
            assert row["photostim_spots_right"] == bin(light["spots_right"]).count("1")

        # epochs: sample, delay, response of every trial, at its events
        ep = f.epochs.to_dataframe()
        for k in range(12):
            mine = ep[ep["trial"] == k]
            evs = {e["event"]: (e["t_rig_ns"] - t0) * 1e-9 for e in events if e["trial"] == k}
            if summaries[k]["early_lick"]:
                continue
            assert list(mine["epoch"]) == ["sample", "delay", "response"]
            assert mine["start_time"].tolist() == pytest.approx([evs["sample_on"], evs["delay_on"], evs["go_cue"]])
            assert mine["stop_time"].tolist() == pytest.approx([evs["delay_on"], evs["go_cue"], evs["trial_end"]])

        # events: one table per event type; every lick with its side
        lick_tab = f.events["lick_events"].to_dataframe()
        assert len(lick_tab) == len(licks) and list(lick_tab["side"]) == [e["side"] for e in licks]

        # optogenetics (ndx-optogenetics): a site per hemisphere with 4 spots; one epoch per delivered command
        meta = f.lab_meta_data["optogenetic_experiment_metadata"]
        sites = meta.optogenetic_sites_table.to_dataframe()
        assert list(sites["hemisphere"]) == ["left", "right"] and list(sites["n_spots"]) == [4, 4]
        assert "ChR2(H134R)" in meta.optogenetic_sites_table["effector"][0].label
        oe = f.intervals["optogenetic_epochs"].to_dataframe()
        assert len(oe) == 3 and oe["stimulation_on"].all()
        for _, row in oe.iterrows():
            light = summaries[int(row["trial"])]["light"]
            assert row["start_time"] == pytest.approx((light["t_light_change_rig_ns"] - t0) * 1e-9)
            assert row["stop_time"] - row["start_time"] == pytest.approx(light["duration_s"], abs=1e-6)
            n = bin(light["spots_left"]).count("1") + bin(light["spots_right"]).count("1")
            assert row["power_per_spot_in_mW"] == pytest.approx(light["power_mw_per_spot"])
            assert row["power_in_mW"] == pytest.approx(light["power_mw_per_spot"] * n)
            assert row["waveform"] == light["waveform"] and row["period_in_ms"] == pytest.approx(25.0)
            lit_sides = [h for h, mask in (("left", light["spots_left"]), ("right", light["spots_right"])) if mask]
            assert list(row["optogenetic_sites"]["hemisphere"]) == lit_sides
        assert sorted(oe["trial"]) == sorted(k for k, t in summaries.items() if t["delivered"])


def test_lockstep_refuses_a_ledger_subject_and_points_at_the_subject_file(tmp_path: Path) -> None:
    env = {**os.environ, "RIGD_RUNTIME_DIR": str(tmp_path)}
    res = subprocess.run([*RIGD, "start", "--rig", "sim", "--clock", "rig", "--subject", "M1", "--no-ui"],
                         capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert res.returncode != 0 and "--subject-file" in res.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('species = "mouse"\nsex = "female"\n')
    res = subprocess.run([*RIGD, "start", "--rig", "sim", "--subject-file", str(bad), "--no-ui"],
                         capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    err = " ".join(res.stderr.split())
    assert res.returncode == 2 and "invalid subject metadata" in err and "species" in err and "sex" in err
    assert "Traceback" not in res.stderr


# -- a rig that describes its channels and sends spike times (a session written by hand) ---------


def _put(rec: Recorder, kind: wire.Kind, payload: Any, seq: int, t_ns: int, stream: int = 0) -> None:
    h, p = wire.encode(kind, payload, rig_id=1, stream_id=stream, seq=seq, t_rig_ns=t_ns, t_send_ns=t_ns)
    rec.put(h, p, t_ns)


def _hand_session(d: Path, desc: dict[str, Any]) -> None:
    rec = Recorder(d)
    _put(rec, wire.Kind.HEARTBEAT, wire.json_bytes(desc), 0, 0, 3)
    for i in range(100):  # 100 frames of 1 ms, 4 units; unit 2 fires in frames 10 and 50
        c = np.zeros(4, np.uint16)
        if i in (10, 50):
            c[2] = 1
        _put(rec, wire.Kind.SPIKE_COUNTS, c, i, (i + 1) * 1_000_000)
    # the spike times the rig measured: 8.25 ms and 48.75 ms from the first frame (offsets in µs after the
    # frame time)
    _put(rec, wire.Kind.SPIKE_EVENTS, np.array([[2, 250]], np.uint32), 0, 9_000_000, 4)
    _put(rec, wire.Kind.SPIKE_EVENTS, np.array([[2, 750]], np.uint32), 1, 49_000_000, 4)
    rec.close()
    write_json_atomic(d / "manifest.json", {"started": "2026-01-01T00:00:00+00:00", "config": {
        "rig": "external", "subject_info": {"subject_id": "R7", "species": "Mus musculus", "sex": "M",
                                            "age": "P60D"}}})


def test_a_rigs_described_channels_and_spike_times_are_exported(tmp_path: Path) -> None:
    from analysis.nwb_export import export_session

    desc = {"rig": "lab", "n_units": 4, "units_left": 2, "units_right": 2, "bin_s": 0.001,
            "electrode_groups": [{"name": "shank0", "location": "MOs", "hemisphere": "left", "device": "probeA"},
                                 {"name": "shank1", "location": "MOs", "hemisphere": "right", "device": "probeA"}],
            "channels": [{"group": "shank0", "rel_y": 0.0}, {"group": "shank0", "rel_y": 20.0},
                         {"group": "shank1", "rel_y": 0.0}],
            "unit_channels": [0, 1, 2, 2]}
    _hand_session(tmp_path / "s", desc)
    out = export_session(tmp_path / "s", tmp_path / "s.nwb")
    with NWBHDF5IO(str(out), "r") as io:
        f = io.read()
        assert f.subject.subject_id == "R7" and "SIMULATED" not in (f.subject.description or "")
        el = f.electrodes.to_dataframe()
        assert list(el["group_name"]) == ["shank0", "shank0", "shank1"]
        assert list(el["rel_y"]) == [0.0, 20.0, 0.0] and list(el["hemisphere"]) == ["left", "left", "right"]
        assert set(f.devices) >= {"probeA"}
        units = f.units
        assert units.resolution == pytest.approx(1e-6)
        assert np.allclose(units["spike_times"][2], [8.25e-3, 48.75e-3])  # the rig's times, not bin ends
        assert len(units["spike_times"][0]) == 0
        assert [list(units["electrodes"][u].index) for u in range(4)] == [[0], [1], [2], [2]]
    bad = dict(desc, channels=[{"group": "shank9"}])
    _hand_session(tmp_path / "b", bad)
    with pytest.raises(ValueError, match=r"rig description channels\[0\]\.group: expected one of \['shank0', "
                                         r"'shank1'\], got 'shank9'"):
        export_session(tmp_path / "b", tmp_path / "b.nwb")
