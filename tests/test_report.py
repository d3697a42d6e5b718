"""The session report on a simulated Chen 2021 session, a plain wire-protocol session and its NWB file.

How the session is made (and why): a live 400-trial session takes 400 × ~8 s, far too long for a
test, and an unpaced simulated rig would see every light command arrive after its deadline (its
clock runs faster than rigd's). So the test writes the session directly: trials of one simulated
mouse (μ = 0.6) from the offline generator ``sim.offline.generate_trialset`` (the live mouse
runs the same model code), laid out on a rig clock exactly as a rig sends them — heartbeat, trial
events, 5-ms spike-count frames, light commands and acks — plus what rigd records itself (trial
summaries, decoder outputs, telemetry, an interlock refusal), all through the real
:class:`rig.session.Recorder` in the real wire format, with a manifest like the supervisor's.
Conditions: 40 % control and 20 % each of left, right and bilateral early-delay photoinhibition
(−1.7…−0.9 s, 1.5 mW, 4 spots), 240 trials: enough perturbed trials for modularity without a
400-trial runtime. The report's numbers are compared with ``analysis.neural`` computed here on the
same session.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis import neural, stats
from analysis.report import BIN_S, WINDOW_S, bin_by_trial, load_session, write_report
from rig import wire
from rig.conditions import canonical_condition
from rig.session import MANIFEST_NAME, Recorder, Session, write_json_atomic
from rig.telemetry import FIELDS
from sim.offline import LightWindow, generate_trialset

NS = 1_000_000_000
FRAME_S = 0.005
UNITS = 40
SPLIT = {"control": 96, "left": 48, "right": 48, "bilateral": 48}
PROTOCOL_TEXT = '# test protocol\n[protocol]\nname = "chen2021-early-delay"\n'


def _write_session(directory: Path, seed: int = 3) -> dict[str, Any]:
    """Write a simulated session through the real Recorder; returns its ground truth."""
    sets = {}
    for i, (cond, n) in enumerate(SPLIT.items()):
        light = None if cond == "control" else LightWindow(cond)  # type: ignore[arg-type]
        sets[cond] = generate_trialset(
            n, seed, units_per_hemisphere=UNITS, bin_s=FRAME_S, light=light, session=i, t_end_s=1.0
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation([c for c, n in SPLIT.items() for _ in range(n)])
    taken = dict.fromkeys(SPLIT, 0)
    rec = Recorder(directory, flush_interval_s=0.05)
    t = 10 * NS
    seq = {"frames": 0, "events": 0, "light": 0, "acks": 0}

    def put(kind: wire.Kind, payload: Any, t_ns: int, stream: str, rig_id: int = 1) -> None:
        h, p = wire.encode(
            kind,
            payload,
            rig_id=rig_id,
            stream_id=list(seq).index(stream),
            seq=seq[stream],
            t_rig_ns=t_ns,
            t_send_ns=t_ns,
        )
        seq[stream] += 1
        rec.put(h, p, t_ns)

    fs = sets["control"].provenance["fs_units"]
    desc = {
        "rig": "sim",
        "n_units": 2 * UNITS,
        "units_left": UNITS,
        "units_right": UNITS,
        "bin_s": FRAME_S,
        "spots_per_hemisphere": 4,
        "fs_units": fs,
    }
    put(wire.Kind.HEARTBEAT, wire.json_bytes(desc), t, "events")
    truth: list[dict[str, Any]] = []
    cmd_id = 0
    dec_rows: list[list[float]] = []
    cd_w = rng.normal(size=2 * UNITS)
    for k, cond in enumerate(order):
        ts = sets[cond]
        j = taken[cond]
        taken[cond] += 1
        counts = ts.counts[j]  # (n_bins, n_units), bins from -3.5 s
        t_go = t + int(3.5 * NS)
        side = "right" if ts.instructed[j] > 0 else "left"
        choice = "right" if ts.choice[j] > 0 else "left"
        put(
            wire.Kind.TRIAL_EVENT,
            wire.json_bytes(
                {
                    "event": "trial_start",
                    "trial": k,
                    "instructed": side,
                    "delay_s": 1.7,
                    "t_sample_ns": t_go - int(3.0 * NS),
                    "t_delay_ns": t_go - int(1.7 * NS),
                    "t_go_ns": t_go,
                }
            ),
            t,
            "events",
        )
        light: dict[str, Any] | None = None
        for b in range(counts.shape[0]):
            t_end = t + round((b + 1) * FRAME_S * NS)
            put(wire.Kind.SPIKE_COUNTS, np.minimum(counts[b], 255).astype(np.uint8), t_end, "frames")
            t_s = (t_end - t_go) / NS
            v = float(np.tanh(counts[b].astype(float) @ cd_w * 0.05))
            dec_rows.append([seq["frames"], t_end, t_s, v, 0.5 + v / 2, v, v])
            if len(dec_rows) == 1000:
                rec.put_message(wire.Kind.DECODER_OUTPUT, np.array(dec_rows), t_end)
                dec_rows = []
            if cond != "control" and abs(t_s - (-1.7)) < FRAME_S / 2:
                sl = 0b1111 if cond in ("left", "bilateral") else 0
                sr = 0b1111 if cond in ("right", "bilateral") else 0
                cmd = wire.LightCommandFields(
                    cmd_id,
                    seq["frames"],
                    t_end,
                    t_end,
                    t_end + 10_000_000,
                    0,
                    k,
                    wire.LightAction.START,
                    wire.Waveform.SINE,
                    sl,
                    sr,
                    1.5,
                    0.8,
                    0.1,
                    40.0,
                )
                put(wire.Kind.LIGHT_COMMAND, cmd.pack(), t_end, "light", rig_id=1)
                ack = wire.LightAckFields(
                    cmd_id, seq["frames"], t_end, t_end + 900_000, t_end + 1_000_000, wire.AckStatus.APPLIED
                )
                put(wire.Kind.LIGHT_ACK, ack.pack(), t_end + 1_000_000, "acks")
                light = {
                    "command_id": cmd_id,
                    "action": "START",
                    "hemisphere": cond,
                    "spots_left": sl,
                    "spots_right": sr,
                    "power_mw_per_spot": 1.5,
                    "duration_s": 0.8,
                    "ramp_down_s": 0.1,
                    "waveform": "sine",
                    "freq_hz": 40.0,
                    "onset_t_s": round(t_s, 6),
                    "status": "applied",
                }
                cmd_id += 1
        put(wire.Kind.TRIAL_EVENT, wire.json_bytes({"event": "go_cue", "trial": k}), t_go, "events")
        outcome = "hit" if ts.correct[j] else "error"
        put(
            wire.Kind.TRIAL_EVENT,
            wire.json_bytes(
                {"event": "outcome", "trial": k, "outcome": outcome, "choice": choice, "reaction_time_s": 0.1}
            ),
            t_go + NS // 10,
            "events",
        )
        t_trial_end = t + int(4.5 * NS)
        put(wire.Kind.TRIAL_EVENT, wire.json_bytes({"event": "trial_end", "trial": k}), t_trial_end, "events")
        rec.log(
            {
                "type": "trial",
                "trial": k,
                "instructed": side,
                "outcome": outcome,
                "choice": choice,
                "correct": outcome == "hit",
                "early_lick": False,
                "reaction_time_s": 0.1,
                "condition": "control" if cond == "control" else f"{cond}_alm",
                "light": light,
                "refused": [],
                "late_decisions": 0,
                "decision": {},
                "t_start_rig_ns": t,
            },
            t_trial_end,
        )
        truth.append(
            {"condition": str(cond), "correct": bool(ts.correct[j]), "instructed": int(ts.instructed[j])}
        )
        t = t_trial_end + NS  # 1 s ITI on the rig clock
    if dec_rows:
        rec.put_message(wire.Kind.DECODER_OUTPUT, np.array(dec_rows), t)
    tel = np.zeros((500, len(FIELDS)))
    tel[:, FIELDS.index("internal_us")] = rng.lognormal(np.log(40.0), 0.5, 500)
    rec.put_message(wire.Kind.TELEMETRY, tel, t)
    rec.alarm(
        {
            "alarm": "light_refused",
            "limit": "max_fraction_perturbed",
            "reason": "fraction 0.61 > 0.3",
            "trial": 5,
        },
        t,
    )
    rec.close()
    write_json_atomic(
        directory / MANIFEST_NAME,
        {
            "format": "rigd-session",
            "format_version": 1,
            "protocol": {
                "name": "chen2021-early-delay",
                "text": PROTOCOL_TEXT,
                "sha256": "ab" * 32,
                "source": None,
            },
            "config": {"deadline_ms": 10.0, "mu_left": 0.6, "mu_right": 0.6, "seed": seed},
            "calibration": {
                "limits": {
                    "max_power_mw_per_spot": 10.0,
                    "max_continuous_s": 1.3,
                    "energy_budget_j": 1.0,
                    "energy_window_s": 600.0,
                    "max_fraction_perturbed": 0.3,
                }
            },
            "telemetry_fields": list(FIELDS),
            "counters": {"recorder_dropped": 0},
            "started": "2026-01-01T00:00:00+00:00",
        },
    )
    return {"trials": truth}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    d = tmp_path_factory.mktemp("report") / "sim-session"
    truth = _write_session(d)
    return d, truth


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def test_report_numbers_match_the_analysis_helpers(
    session: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    d, truth = session
    t0 = time.monotonic()
    page = write_report(d, tmp_path / "out")
    elapsed = time.monotonic() - t0
    nums = json.loads((tmp_path / "out" / "report.json").read_text())
    # performance: analysis.neural on the session's own trial summaries (completed trials, delivered light)
    s = Session.open(d)
    trials = s.trials()
    # conditions as the protocol names them (left_alm, right_alm, …), never merged by hemisphere
    cond = np.array([str(t["condition"]) for t in trials])
    hemi = np.array(
        [canonical_condition(t["light"]["hemisphere"] if t["light"] else t["condition"]) for t in trials]
    )
    correct = np.array([t["outcome"] == "hit" for t in trials])
    instructed = np.array([1 if t["instructed"] == "right" else -1 for t in trials], dtype=np.int8)
    expected = neural.performance_by_condition(correct, cond, instructed)
    assert set(nums["performance"]) == set(expected)
    for c, p in expected.items():
        got = nums["performance"][c]
        assert (got["n"], got["correct"]) == (p.n, p.correct)
        assert got["fraction"] == pytest.approx(p.fraction, abs=1e-12)
        assert (got["ci_low"], got["ci_high"]) == pytest.approx((p.ci_low, p.ci_high), abs=1e-12)
    # and the session's performance is the generator's ground truth
    assert set(nums["conditions"]) == {"control", "left_alm", "right_alm", "bilateral_alm"}
    for c in ("left_alm", "right_alm", "bilateral_alm"):  # the light window where the light was (−1.7…−0.9 s)
        assert nums["conditions"][c]["light_window_s"] == pytest.approx([-1.7, -0.9], abs=FRAME_S)
        ref = nums["performance"]["control"]
        got, p = nums["versus_control"][c], nums["performance"][c]
        cmp = stats.compare_proportions(p["correct"], p["n"], ref["correct"], ref["n"])
        assert (got["delta"], got["ci_low"], got["ci_high"], got["p_fisher"]) == pytest.approx(
            (cmp.delta, cmp.ci_low, cmp.ci_high, cmp.p_fisher), rel=1e-12)
        assert got["ci_low"] <= got["delta"] <= got["ci_high"] and 0 <= got["p_fisher"] <= 1
    assert nums["performance"]["control"]["correct"] == sum(
        t["correct"] for t in truth["trials"] if t["condition"] == "control"
    )
    # modularity: analysis.neural on counts binned here with analysis.report.bin_by_trial's contract checked
    data = load_session(d, _NoSteps())
    go = [t.go_s for t in data.trials]
    binned, complete = bin_by_trial(data.t_frames_s, data.counts, go, data.frame_s)
    assert complete.all()
    _, t_rig, raw = s.counts()
    first_go = round(go[0] * NS) + int(t_rig[0])
    in_trial0 = (t_rig > first_go + int(WINDOW_S[0] * NS)) & (t_rig <= first_go + int(WINDOW_S[1] * NS))
    assert binned[0].sum() == raw[in_trial0].astype(np.int64).sum()  # every spike of the trial, once
    t_s = (WINDOW_S[0] + BIN_S * (np.arange(binned.shape[1]) + 0.5)).astype(np.float64)
    rates = binned / BIN_S
    for h, other in (("left", "right"), ("right", "left")):
        hm = nums["modularity"][h]
        assert hm["why"] is None, f"no modularity for {h}: {hm['why']}"
        assert set(hm["by_condition"]) == {f"{other}_alm"}  # the one condition lighting the other side alone
        m = hm["by_condition"][f"{other}_alm"]
        units = np.array(hm["units"])
        assert units.size >= 3
        pref = np.array(hm["pref"], dtype=np.float64)
        ctrl = np.array(hm["control_trials"])
        assert set(ctrl) < set(np.flatnonzero(cond == "control"))
        oth = np.flatnonzero(hemi == other)
        sel_c = (neural.selectivity(rates[ctrl][:, :, units], instructed[ctrl]) * pref).mean(axis=1)
        sel_o = (neural.selectivity(rates[oth][:, :, units], instructed[oth]) * pref).mean(axis=1)
        assert m["window_s"] == pytest.approx([-1.7, -0.9], abs=FRAME_S)
        assert m["M"] == pytest.approx(neural.modularity(sel_o, sel_c, t_s, tuple(m["window_s"])), rel=1e-12)
        assert m["M"] == pytest.approx(neural.modularity(sel_o, sel_c, t_s), rel=1e-12)  # Chen 2021's window
        assert m["ci_low"] <= m["M"] <= m["ci_high"]
        # the mouse is modular (μ = 0.6 → M ≈ 0.89 on the latent, docs/simulator.md); a spike-based estimate from
        # ~40 units and 48 trials per condition is noisy, so only "clearly modular" is asserted
        assert m["M"] > 0.4
        assert set(hm["recovery"]) == {f"{h}_alm"} and hm["recovery"][f"{h}_alm"]["why"] is None
    # figures exist, are PNGs of the expected size, and are not blank
    for name in ("performance", "cd", "selectivity", "modularity", "decoder", "light", "latency"):
        png = tmp_path / "out" / f"{name}.png"
        assert png.stat().st_size > 15_000, name
        assert _png_size(png) == (900, 450), name
    text = page.read_text()
    assert "ab" * 32 in text and "chen2021-early-delay" in text and "light_refused" in text
    assert elapsed < 60


class _NoSteps:
    progress = None
    task = None

    def start(self, description: str, total: float | None) -> None: ...

    def advance(self, n: float = 1.0) -> None: ...

    def done(self, total: float) -> None: ...


def test_report_on_the_exported_nwb_file_gives_the_same_numbers(
    session: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from analysis.nwb_export import export_session

    d, _ = session
    direct = json.loads((write_report(d, tmp_path / "direct").parent / "report.json").read_text())
    nwb = export_session(d, tmp_path / "session.nwb")
    page = write_report(nwb, tmp_path / "nwb")
    from_nwb = json.loads((page.parent / "report.json").read_text())
    assert from_nwb["source"] == "nwb"
    assert from_nwb["performance"] == direct["performance"]
    assert from_nwb["conditions"].keys() == direct["conditions"].keys()
    for h, other in (("left", "right"), ("right", "left")):  # same spikes, trials and seed → same neurons and M
        assert from_nwb["modularity"][h]["units"] == direct["modularity"][h]["units"]
        m_nwb, m_dir = (d["modularity"][h]["by_condition"][f"{other}_alm"] for d in (from_nwb, direct))
        assert m_nwb["M"] == pytest.approx(m_dir["M"], rel=1e-9)
        assert m_nwb["window_s"] == pytest.approx(m_dir["window_s"], abs=1e-6)
    # rigd's NWB export carries go_cue_time, so no go-cue assumption is needed (or stated)
    assert not any("no go_cue_time column" in n for n in from_nwb["notes"])
    for name in ("performance", "selectivity", "latency"):
        assert _png_size(tmp_path / "nwb" / f"{name}.png") == (900, 450)
