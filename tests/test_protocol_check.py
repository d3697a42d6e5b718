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
        node = d
        for h in head:
            node = node[int(h)] if h.isdigit() else node[h]
        if v is None:
            del node[last]
        else:
            node[last] = v
    return yaml.safe_dump(d)


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"light__power_mw_per_spot": -1.0}, "light.power_mw_per_spot", "greater than 0"),
    ({"light__power_mw_per_spot": "lots"}, "light.power_mw_per_spot", "valid number"),
    ({"window__duration_s": 9.0}, "window.duration_s", "less than or equal to 5"),
    ({"light__waveform": "square"}, "light.waveform", "sine"),
    ({"protocol__name": None}, "protocol.name", "missing"),
    ({"conditions__1__hemisphere": "middle"}, "conditions[1].hemisphere", "left"),
    ({"conditions__0__fraction": 1.5}, "conditions[0].fraction", "less than or equal to 1"),
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


@pytest.mark.parametrize(("change", "field", "allowed"), [
    ({"light__power_mw_per_spot": 12.0}, "conditions[0].power_mw_per_spot", "10.0 mW"),
    ({"window__duration_s": 1.5}, "conditions[0].duration_s", "1.3 s"),
    ({"light__ramp_down_s": 0.05}, "light.ramp_down_s", "0.1 s"),
    ({"light__spots_per_hemisphere": 6}, "conditions[0].spots_per_hemisphere", "1…4"),
    ({"window__onset_s": 1.0}, "conditions[0].onset_s", "go"),
])
def test_light_beyond_the_interlock_is_rejected_at_check_time(change: dict[str, Any], field: str,
                                                              allowed: str) -> None:
    # conditions[0] in the error is the first *perturbed* arm (left_alm is conditions[1] in the file;
    # the check numbers the photoinhibition arms by their index in [[conditions]])
    res = check_protocol(_chen_text(**change))
    assert not res.ok
    last = field.rsplit(".", maxsplit=1)[-1]
    hits = [e for e in res.errors if e.field.endswith(last) and allowed in e.allowed]
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
