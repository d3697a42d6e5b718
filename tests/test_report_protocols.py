"""The session report follows the protocol that ran: its condition names, windows and light bands.

Three real lockstep sessions of the simulated mouse (``rigd start --rig sim --clock rig``, 5-ms
frames, short ITI: deterministic for a seed and much faster than real time), one after another:

* a late-delay right-ALM protocol (onset −0.8 s from the go cue, 0.8 s long, so the light ends at
  the go cue), 40 trials: M of the left ALM is measured over −0.8…0 s (recomputed here with
  ``analysis.neural`` over that window), t90 of the right ALM says why it is not defined;
* an early-vs-late right-ALM block protocol (two conditions lighting the same hemisphere), 120
  trials: both conditions are reported under their own names, each with its own window, M and
  light band, and Δ against control with its CI and Fisher's p;
* the default protocol (Chen et al. 2021), 40 trials (the README's example): every figure or
  number it cannot give says "needs ≥ N … (has n)" in report.json and on the page.

Assertions are on report.json's numbers and fields and on the page's text, never on pixels.
"""

from __future__ import annotations

import json
import re
from html import escape as html_escape
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis import neural, stats
from analysis.report import BIN_S, WINDOW_S, bin_by_trial, load_session, write_report
from tests.rigd_process import rigd

pytestmark = pytest.mark.slow

LATE = """
[protocol]
name = "late-delay right ALM"
kind = "block"

[window]
aligned_to = "go_cue"
onset_s = -0.8
duration_s = 0.8

[randomisation]
block_size = 4
max_fraction_perturbed = 0.25

[[conditions]]
name = "control"
fraction = 0.75

[[conditions]]
name = "right_late"
hemisphere = "right"
fraction = 0.25
"""

EARLY_LATE = """
[protocol]
name = "early vs late right ALM"
kind = "block"

[window]
aligned_to = "go_cue"
onset_s = -1.7
duration_s = 0.8

[randomisation]
block_size = 8
max_fraction_perturbed = 0.25

[[conditions]]
name = "control"
fraction = 0.75

[[conditions]]
name = "right_early"
hemisphere = "right"
fraction = 0.125

[[conditions]]
name = "right_late"
hemisphere = "right"
fraction = 0.125
onset_s = -0.8
"""

FAST = ("--rig", "sim", "--clock", "rig", "--bin-ms", "5", "--iti-s", "0.3", "--no-ui")
SESSIONS = {  # name: (protocol text or None for the default, trials, seed)
    "late": (LATE, 40, 273067364),  # a seed whose right_late trials reach 5 per instructed side
    "early_late": (EARLY_LATE, 120, 12),
    "default": (None, 40, 7),
}


class _NoSteps:
    def start(self, description: str, total: float | None) -> None: ...

    def advance(self, n: float = 1.0) -> None: ...

    def done(self, total: float) -> None: ...


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any], str]]:
    """Run the three sessions, then report each: {name: (session dir, report.json, html)}."""
    tmp = tmp_path_factory.mktemp("report-protocols")
    dirs: dict[str, Path] = {}
    for name, (text, n, seed) in SESSIONS.items():  # one at a time: lockstep sessions use every CPU they get
        (tmp / name).mkdir()
        args = [*FAST, "--trials", str(n), "--seed", str(seed)]
        if text is not None:
            proto = tmp / f"{name}.toml"
            proto.write_text(text)
            args += ["--protocol", str(proto)]
        with rigd(tmp / name, *args, name=f"report-{name}") as r:
            assert r.wait(540) == 0, r.output()[-3000:]
        (dirs[name],) = (tmp / name / "sessions").iterdir()
    out = {}
    for name, d in dirs.items():
        page = write_report(d)
        out[name] = (d, json.loads((page.parent / "report.json").read_text()), page.read_text())
    return out


def _rates(d: Path) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], Any]:
    data = load_session(d, _NoSteps())  # type: ignore[arg-type]
    counts, _ = bin_by_trial(data.t_frames_s, data.counts, [t.go_s for t in data.trials], data.frame_s)
    t_s = WINDOW_S[0] + BIN_S * (np.arange(counts.shape[1]) + 0.5)
    return counts / BIN_S, t_s, data


def test_late_delay_protocol_measures_in_its_own_window(reports: dict[str, tuple[Path, dict[str, Any], str]]) -> None:
    d, nums, html = reports["late"]
    assert list(nums["conditions"]) == ["control", "right_late"]  # the protocol's names, its order
    assert not any(k in nums["performance"] for k in ("right", "left", "bilateral"))
    late = nums["conditions"]["right_late"]
    assert late["protocol_window"] == {"aligned_to": "go_cue", "onset_s": -0.8, "duration_s": 0.8}
    assert late["protocol_window_from_go_s"] == pytest.approx([-0.8, 0.0], abs=1e-9)
    assert late["light_window_source"] == "delivered light commands"
    assert late["light_window_s"] == pytest.approx([-0.8, 0.0], abs=0.005)  # measured onsets, within a frame
    assert nums["light_bands_s"] == {"right_late": late["light_window_s"]}
    assert late["n_delivered"] == late["n_trials"] > 0
    # M of the left ALM (right ALM lit) over −0.8…0 s, recomputed from the session's spikes
    left = nums["modularity"]["left"]
    assert left["why"] is None, left["why"]
    m = left["by_condition"]["right_late"]
    assert m["why"] is None, m["why"]
    assert m["window_s"] == late["light_window_s"] and m["silenced"] == "right"
    rates, t_s, data = _rates(d)
    label = np.array([t.label for t in data.trials])
    instructed = np.array([t.instructed for t in data.trials], dtype=np.int8)
    completed = np.array([t.completed for t in data.trials])
    units, pref, ctrl = np.array(left["units"]), np.array(left["pref"], float), np.array(left["control_trials"])
    lit = np.flatnonzero((label == "right_late") & completed)
    sel_c = (neural.selectivity(rates[ctrl][:, :, units], instructed[ctrl]) * pref).mean(axis=1)
    sel_l = (neural.selectivity(rates[lit][:, :, units], instructed[lit]) * pref).mean(axis=1)
    assert m["M"] == pytest.approx(neural.modularity(sel_l, sel_c, t_s, (-0.8, 0.0)), rel=1e-9)
    # t90 is counted from this light's end (the go cue): nothing to recover in, and the report says so
    rec = nums["modularity"]["right"]["recovery"]["right_late"]
    assert rec["light_end_s"] == pytest.approx(0.0, abs=0.005) and rec["t90_s"] is None
    assert "ends at +0.00 s, at the go cue" in rec["why"]
    assert nums["modularity"]["right"]["by_condition"] == {}
    whys = {u["what"]: u["why"] for u in nums["unavailable"]}
    assert whys["M of the right ALM"] == "no condition of this session lights the left ALM alone"
    assert "-0.80 … +0.00 s" in html.split("<h2>Conditions</h2>")[1].split("<h2>")[0]


def test_conditions_sharing_a_hemisphere_are_never_merged(
        reports: dict[str, tuple[Path, dict[str, Any], str]]) -> None:
    _, nums, html = reports["early_late"]
    assert list(nums["conditions"]) == ["control", "right_early", "right_late"]
    c = nums["conditions"]
    assert c["right_early"]["hemisphere"] == c["right_late"]["hemisphere"] == "right"
    assert c["right_early"]["protocol_window_from_go_s"] == pytest.approx([-1.7, -0.9], abs=1e-9)
    assert c["right_late"]["protocol_window_from_go_s"] == pytest.approx([-0.8, 0.0], abs=1e-9)
    assert nums["light_bands_s"]["right_early"] == pytest.approx([-1.7, -0.9], abs=0.005)
    assert nums["light_bands_s"]["right_late"] == pytest.approx([-0.8, 0.0], abs=0.005)
    assert set(nums["light_bands_s"]) == {"right_early", "right_late"}  # no pooled/median band
    assert {k for k in nums["performance"] if "/" not in k} == {"control", "right_early", "right_late"}
    assert c["right_early"]["n_trials"] > 0 and c["right_late"]["n_trials"] > 0
    # Δ against control per condition: Newcombe CI and Fisher's exact test from the counts on the page
    ref = nums["performance"]["control"]
    for name in ("right_early", "right_late"):
        v, p = nums["versus_control"][name], nums["performance"][name]
        cmp = stats.compare_proportions(p["correct"], p["n"], ref["correct"], ref["n"])
        assert v["delta"] == pytest.approx(p["fraction"] - ref["fraction"])
        assert (v["ci_low"], v["ci_high"], v["p_fisher"]) == pytest.approx((cmp.ci_low, cmp.ci_high, cmp.p_fisher))
        assert v["ci_low"] <= v["delta"] <= v["ci_high"] and 0.0 <= v["p_fisher"] <= 1.0
    # M of the left ALM once per condition, each over its own window
    by = nums["modularity"]["left"]["by_condition"]
    assert set(by) == {"right_early", "right_late"}
    assert by["right_early"]["window_s"] == pytest.approx([-1.7, -0.9], abs=0.005)
    assert by["right_late"]["window_s"] == pytest.approx([-0.8, 0.0], abs=0.005)
    for name in ("right_early", "right_late"):
        assert (by[name]["M"] is None) == (by[name]["why"] is not None)
        if by[name]["M"] is not None:
            assert by[name]["ci_low"] <= by[name]["M"] <= by[name]["ci_high"]
    rec = nums["modularity"]["right"]["recovery"]
    assert rec["right_early"]["light_end_s"] == pytest.approx(-0.9, abs=0.005)
    assert rec["right_late"]["t90_s"] is None and "at the go cue" in rec["right_late"]["why"]
    # CD traces per condition (never merged), each with its n per instructed side
    assert set(nums["cd"]["left"]["traces"]) | set(nums["cd"]["left"]["skipped"]) == {
        "control", "right_early", "right_late"}
    # tables, not raw JSON: condition counts and session fields
    assert "<h2>Conditions</h2>" in html and "right_early" in html and "right_late" in html
    assert '{"control"' not in html and "{'control'" not in html
    assert "<td>config</td><td><table>" in html


def test_a_small_session_says_what_it_cannot_compute(reports: dict[str, tuple[Path, dict[str, Any], str]]) -> None:
    _, nums, html = reports["default"]
    names = [k for k in nums["conditions"]]
    assert names == ["control", "left_alm", "right_alm", "bilateral_alm"]  # the default protocol's names
    small = [c for c in names[1:] if nums["conditions"][c]["n_completed"] < 2 * 5]
    assert small, nums["conditions"]
    whys = [u["why"] for u in nums["unavailable"]]
    assert whys, "a 40-trial session cannot give every number"
    for u in nums["unavailable"]:
        assert u["why"] and u["what"]
    for c in small:  # too few trials: the decoder curve and CD traces say how many are needed and how many exist
        n = nums["conditions"][c]["n_completed"]
        assert nums["decoder"]["skipped"][c] == f"needs ≥ 10 completed trials per condition (has {n})"
        for h in ("left", "right"):
            cd = nums["cd"][h]
            need = "needs ≥ 5 completed trials per instructed side (has "
            assert cd["why"] is not None or cd["skipped"][c].startswith(need)
    for h in ("left", "right"):
        m = nums["modularity"][h]
        entries = [m["why"]] if m["why"] else [b["why"] for b in m["by_condition"].values()]
        for why in entries:
            assert why is not None and "needs ≥" in why and "(has " in why, why
    # the page says it too, in its own section, and never prints NaN for what it could not compute
    section = html.split("What this session cannot show")[1].split("<h2>Figures</h2>")[0]
    for why in whys:
        assert html_escape(why) in section
    assert not re.search(r"\bnan\b", html, re.IGNORECASE)
    assert "1 neurons" not in html


def test_the_report_reads_an_nwb_export_of_an_evenly_framed_session(
        reports: dict[str, tuple[Path, dict[str, Any], str]], tmp_path: Path) -> None:
    """A lockstep session's frames are evenly spaced: the export writes `rate`, not timestamps, and the
    report read from that NWB file gives the session's numbers."""
    from analysis.nwb_export import export_session

    d, direct, _ = reports["early_late"]
    nwb = export_session(d, tmp_path / "session.nwb")
    from_nwb = json.loads((write_report(nwb, tmp_path / "nwb").parent / "report.json").read_text())
    assert from_nwb["source"] == "nwb"
    assert from_nwb["performance"] == direct["performance"]
    assert from_nwb["light_bands_s"].keys() == direct["light_bands_s"].keys()
    for name, band in direct["light_bands_s"].items():
        assert from_nwb["light_bands_s"][name] == pytest.approx(band, abs=1e-6), name
