"""Protocol language: shipped examples pass, every bad field is named, over-limit light is stopped twice."""

import hashlib
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from controllers.policies import StateTriggered
from controllers.protocol import (
    ProtocolBuilder,
    build_controller,
    check_protocol,
    load_protocol,
    methods_text,
    realising_block_sizes,
)
from controllers.schedulers import BlockScheduler
from controllers.trial_state import TrialTracker
from decoders.base import Estimate
from hardware.calibration import default_limits
from hardware.interlock import LightInterlock
from hardware.light_source import RecordingLightSource

ROOT = Path(__file__).resolve().parents[1]
CHEN = ROOT / "protocols" / "chen2021_early_delay.toml"
MS = 1_000_000


@pytest.mark.parametrize("name", ["chen2021_early_delay", "li2016_unilateral", "state_triggered"])
def test_shipped_protocols_pass_the_check(name: str) -> None:
    res = check_protocol(ROOT / "protocols" / f"{name}.toml")
    assert res.ok, res.report()
    assert res.summary["perturbed_fraction"] == pytest.approx(0.25, abs=1e-6)


def test_protocol_keeps_text_and_sha256_and_yaml_equals_toml() -> None:
    p = load_protocol(CHEN)
    assert p.text == CHEN.read_text() and p.sha256 == hashlib.sha256(CHEN.read_bytes()).hexdigest()
    y = load_protocol(yaml.safe_dump(tomllib.loads(CHEN.read_text())))
    assert y.format == "yaml" and y.spec == p.spec


def _chen_text(**changes: Any) -> str:
    d = tomllib.loads(CHEN.read_text())
    for path, v in changes.items():
        *head, last = path.split("__")
        node: Any = d
        for h in head:
            node = node[int(h)] if h.isdigit() else node[h]
        if v is None:
            del node[last]
        else:
            node[last] = v
    return yaml.safe_dump(d)


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"light__power_mw_per_spot": -1.0}, "light.power_mw_per_spot", "too small (allowed: > 0 mW)"),
    ({"light__power_mw_per_spot": "lots"}, "light.power_mw_per_spot", "valid number"),
    ({"window__duration_s": 9.0}, "window.duration_s", "too large (allowed: ≤ 5 s)"),
    ({"light__waveform": "square"}, "light.waveform", "sine"),
    ({"protocol__name": None}, "protocol.name", "missing"),
    ({"conditions__1__hemisphere": "middle"}, "conditions[1].hemisphere", "left"),
    ({"conditions__0__fraction": 1.5}, "conditions[0].fraction", "too large (allowed: ≤ 1)"),
    ({"light__power_mw": 1.5}, "light.power_mw", "unknown field"),
    ({"randomisation__block_size": "twelve"}, "randomisation.block_size", "valid integer"),
])
def test_every_bad_field_gives_an_error_naming_field_value_and_range(change: dict[str, Any], field: str,
                                                                      words: str) -> None:
    res = check_protocol(_chen_text(**change))
    assert not res.ok
    msgs = [str(e) for e in res.errors]
    assert any(e.field == field and words in str(e) for e in res.errors), msgs


def test_fractions_must_add_up_to_one() -> None:
    res = check_protocol(_chen_text(conditions__0__fraction=0.5))
    assert not res.ok and "add up to 1" in str(res.errors[0])


# -- issue 21 point 7: the rough edges of protocol errors, one test each ----------------------------


def _block(fractions: list[float], **randomisation: Any) -> str:
    """A block protocol with a control and one perturbed condition per further fraction."""
    d = tomllib.loads(CHEN.read_text())
    d["randomisation"].update({"max_fraction_perturbed": 0.3, **randomisation})
    sides = ["left", "right", "bilateral"]
    d["conditions"] = [{"name": "control", "fraction": fractions[0]}] + [
        {"name": f"{sides[i]}_alm", "hemisphere": sides[i], "fraction": f} for i, f in enumerate(fractions[1:])]
    return yaml.safe_dump(d)


def test_a_fractions_error_names_the_fractions_not_the_whole_protocol() -> None:
    res = check_protocol(_chen_text(conditions__0__fraction=0.5))
    (e,) = res.errors
    assert e.field == "conditions[*].fraction" and e.value == [0.5, 0.08333333, 0.08333333, 0.08333334]
    assert "'protocol'" not in str(e) and "add up to 0.75" in str(e) and len(str(e)) < 200
    names = check_protocol(_chen_text(conditions__1__name="control"))
    assert [str(x) for x in names.errors] == [
        "conditions[1].name = 'control': a second condition named 'control' (allowed: unique names)"]


def test_a_light_section_power_is_reported_once_as_the_light_field() -> None:
    res = check_protocol(_chen_text(light__power_mw_per_spot=25.0))
    (e,) = res.errors  # one error, not one per perturbed condition
    assert e.field == "light.power_mw_per_spot" and e.value == 25.0 and "10.0 mW" in e.allowed
    assert "'left_alm'" in e.message and "'bilateral_alm'" in e.message
    # a condition's own override is reported as that condition's field
    own = check_protocol(_chen_text(conditions__2__power_mw_per_spot=25.0))
    assert [x.field for x in own.errors] == ["conditions[2].power_mw_per_spot"]


@pytest.mark.parametrize(("change", "field", "hint"), [
    ({"window__duration_s": None, "window__duraton_s": 0.8}, "window.duraton_s", "did you mean duration_s?"),
    ({"light__power_mw": 1.5}, "light.power_mw", "did you mean power_mw_per_spot?"),
    ({"light__freq": 40.0}, "light.freq", "did you mean freq_hz?"),
    ({"window__ramp_down_s": 0.1}, "window.ramp_down_s", "did you mean ramp_down_s, a field of [light]?"),
    ({"randomisation__blok_size": 12}, "randomisation.blok_size", "did you mean block_size?"),
])
def test_an_unknown_field_gets_a_did_you_mean_from_its_own_section(change: dict[str, Any], field: str,
                                                                   hint: str) -> None:
    (e,) = check_protocol(_chen_text(**change)).errors
    assert e.field == field and hint in e.message, str(e)
    assert "power_mw_per_spot" not in e.message or "power_mw" in field  # no stock suggestion


def test_an_unknown_section_gets_a_did_you_mean_and_no_dump_of_its_contents() -> None:
    text = CHEN.read_text().replace("[light]", "[lihgt]").replace("[randomisation]", "[randomization]")
    res = check_protocol(text)
    assert [str(e) for e in res.errors] == [
        "lihgt: unknown section [lihgt]; did you mean [light]?",
        "randomization: unknown section [randomization]; did you mean [randomisation]?"]
    (far,) = check_protocol(CHEN.read_text() + "\n[zzz]\nx = 1\n").errors
    assert "unknown section [zzz]" in far.message and "light" in far.message  # lists the sections


@pytest.mark.parametrize(("change", "text"), [
    ({"light__freq_hz": -1.0}, "light.freq_hz = -1.0: too small (allowed: > 0 Hz)"),
    ({"light__ramp_down_s": -0.1}, "light.ramp_down_s = -0.1: too small (allowed: ≥ 0 s)"),
    ({"session__n_trials": 0}, "session.n_trials = 0: too small (allowed: ≥ 1)"),
    ({"randomisation__block_size": 500}, "randomisation.block_size = 500: too large (allowed: ≤ 200)"),
])
def test_a_range_error_reads_as_a_comparison_with_units(change: dict[str, Any], text: str) -> None:
    (e,) = check_protocol(_chen_text(**change)).errors
    assert str(e) == text
    assert "gt " not in str(e) and "0.0" not in e.allowed


def test_allowed_values_are_listed_once() -> None:
    (e,) = check_protocol(_chen_text(light__waveform="square")).errors
    assert str(e) == "light.waveform = 'square': not one of the allowed values (allowed: 'sine' or 'constant')"
    assert str(e).count("'sine'") == 1


@pytest.mark.parametrize(("fractions", "block_size", "ok", "allowed"), [
    ([0.7, 0.3], 12, False, "a multiple of 10: 10, 20, 30, 40"),  # 8.4 + 3.6 trials: not a block of 12
    ([0.7, 0.3], 10, True, ""),
    ([0.75, 0.125, 0.125], 12, False, "a multiple of 8: 8, 16, 24, 32"),  # 9 + 1.5 + 1.5
    ([0.75, 0.125, 0.125], 8, True, ""),
    ([0.75, 0.125, 0.125], 16, True, ""),
    ([0.75, 0.08333333, 0.08333333, 0.08333334], 12, True, ""),  # Chen 2021: 9 + 1 + 1 + 1
    ([0.72, 0.28], 20, False, "a multiple of 25: 25, 50, 75, 100"),
])
def test_block_sizes_realise_fractions_consistently(fractions: list[float], block_size: int, ok: bool,
                                                    allowed: str) -> None:
    res = check_protocol(_block(fractions, block_size=block_size))
    block_errors = [e for e in res.errors if e.field == "randomisation.block_size"]
    if ok:
        assert res.ok, res.report()
        # what the check accepts the scheduler builds and draws in those exact numbers per block
        sched = build_controller(res.protocol or load_protocol(_block(fractions, block_size=block_size)))
        assert isinstance(sched, BlockScheduler)
        assert realising_block_sizes(fractions)[0] <= block_size
    else:
        (e,) = block_errors
        assert e.value == block_size and allowed in e.allowed and f"a block of {block_size} trials" in e.message
        # every block size the error offers realises the fractions: the check accepts it
        first = int(allowed.split(": ")[1].split(",", maxsplit=1)[0])
        assert check_protocol(_block(fractions, block_size=first)).ok


def test_too_many_perturbed_trials_advice_stays_within_the_interlock() -> None:
    # 0.5 perturbed: above the interlock's 0.3 cap; the advice is to lower the fractions, never to
    # raise randomisation.max_fraction_perturbed above the cap
    res = check_protocol(_block([0.5, 0.5], block_size=2))
    (e,) = res.errors
    assert e.field == "conditions" and e.allowed == "≤ 0.3" and "lower the perturbed conditions' fractions" in e.message
    assert "max_fraction_perturbed" not in str(e)
    # 0.3 perturbed with the randomisation at 0.25: raising it is the advice, but only up to the cap
    (r,) = check_protocol(_block([0.7, 0.3], block_size=10, max_fraction_perturbed=0.25)).errors
    assert r.field == "randomisation.max_fraction_perturbed"
    assert r.allowed == "0.3 ≤ max_fraction_perturbed ≤ 0.3" and "interlock allows up to 0.3" in r.message
    # a randomisation limit above the interlock's cap is a warning: the interlock is what holds
    d = yaml.safe_load(_chen_text())
    d["randomisation"]["max_fraction_perturbed"] = 0.5
    warned = check_protocol(yaml.safe_dump(d))
    assert warned.ok and any(w.field == "randomisation.max_fraction_perturbed" and w.allowed == "≤ 0.3"
                             for w in warned.warnings)
    # with a stricter calibration the advice follows that calibration's cap
    tight = default_limits().model_copy(update={"max_fraction_perturbed": 0.2})
    (t,) = check_protocol(CHEN, tight).errors
    assert t.allowed == "≤ 0.2" and "cap (0.2" in t.message


@pytest.mark.parametrize(("change", "field", "allowed"), [
    ({"light__power_mw_per_spot": 12.0}, "light.power_mw_per_spot", "10.0 mW"),
    ({"window__duration_s": 1.5}, "window.duration_s", "1.3 s"),
    ({"light__ramp_down_s": 0.05}, "light.ramp_down_s", "0.1 s"),
    ({"light__spots_per_hemisphere": 6}, "light.spots_per_hemisphere", "1…4"),
    ({"window__onset_s": 1.0}, "window.onset_s", "go"),
])
def test_light_beyond_the_interlock_is_rejected_at_check_time(change: dict[str, Any], field: str,
                                                              allowed: str) -> None:
    # the error names the field the setting came from: [light]/[window] defaults here
    res = check_protocol(_chen_text(**change))
    assert not res.ok
    hits = [e for e in res.errors if e.field == field and allowed in e.allowed]
    assert hits, [str(e) for e in res.errors]


def test_too_large_fraction_and_dose_are_rejected() -> None:
    b = (ProtocolBuilder("too much", seed=1).session(trial_period_s=8.0).light(power_mw_per_spot=9.0)
         .window(onset_s=-1.7, duration_s=1.2).control(0.6).photoinhibit("bilateral", 0.4)
         .randomise(block_size=5, max_fraction_perturbed=0.4)
         .build())
    res = check_protocol(b)
    fields = {e.field for e in res.errors}
    assert "conditions" in fields  # 0.4 > 0.3 of the interlock
    assert "light dose (left hemisphere)" in fields  # 9 mW × 4 × 1.2 s × 0.4 × 75 trials/10 min = 1.3 J
    tight = default_limits().model_copy(update={"energy_budget_j": 0.01})
    res2 = check_protocol(CHEN, tight)
    assert any("dose" in e.field and "0.01 J" in e.allowed for e in res2.errors)


def test_forced_over_limit_protocol_is_refused_by_the_interlock_with_an_alarm() -> None:
    p = load_protocol(_chen_text(light__power_mw_per_spot=12.0))
    assert not check_protocol(p).ok
    ctrl = build_controller(p, seed=0)  # forced: built anyway
    alarms: list[dict[str, Any]] = []
    src = RecordingLightSource()
    il = LightInterlock(default_limits(), src, alarms.append)
    tr, est = TrialTracker(), Estimate()
    n_req = 0
    t = 0
    for k in range(48):
        t_go = t + 3500 * MS
        tr.on_event({"event": "trial_start", "trial": k, "instructed": "left", "delay_s": 1.7,
                     "t_sample_ns": t + 500 * MS, "t_delay_ns": t + 1800 * MS, "t_go_ns": t_go}, t)
        il.on_trial_start(k)
        for tf in range(t, t_go, 10 * MS):
            il.heartbeat(tf)
            st = tr.on_frame(tf)
            r = ctrl.step(st, est, tf)
            if r is not None:
                n_req += 1
                d = il.request(r, now_ns=tf, cause_seq=0, cause_t_rig_ns=tf, cause_t_send_ns=tf,
                               deadline_rig_ns=tf + int(r.deadline_budget_s * 1e9))
                assert not d.approved and d.limit == "power" and d.value == 12.0 and d.allowed == 10.0
        ctrl.on_trial_end(tr.state)
        tr.on_event({"event": "trial_end", "trial": k}, t_go + MS)
        t = t_go + 2000 * MS
    assert n_req > 0 and src.commands == [] and len(alarms) == n_req
    assert all(a["alarm"] == "light_refused" and a["limit"] == "power" for a in alarms)


def test_python_api_builds_the_same_controller_kinds() -> None:
    p = (ProtocolBuilder("Chen 2021 early-delay photoinhibition", seed=1)
         .light(power_mw_per_spot=1.5, waveform="sine", freq_hz=40, ramp_down_s=0.1)
         .window(onset_s=-1.7, duration_s=0.8, aligned_to="go_cue")
         .control(fraction=0.75)
         .photoinhibit("left", fraction=0.25 / 3).photoinhibit("right", fraction=0.25 / 3)
         .photoinhibit("bilateral", fraction=0.25 / 3)
         .build())
    assert check_protocol(p).ok and p.format == "python" and len(p.sha256) == 64
    assert isinstance(build_controller(p), BlockScheduler)
    assert isinstance(build_controller(load_protocol(ROOT / "protocols" / "state_triggered.toml")),
                      StateTriggered)
    assert "75% control" in methods_text(p) and "40-Hz sinusoidal" in methods_text(p)
