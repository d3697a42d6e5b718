"""The light interlock: every limit refuses with an alarm, and nothing out of limits ever reaches a source."""

import math
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controllers.base import LightRequest
from hardware.calibration import SafetyLimits, default_limits, load_calibration
from hardware.interlock import LightInterlock
from hardware.light_source import MintedCommand, RecordingLightSource, UnmintedCommandError, WireLightSource
from rig.wire import LightAction, LightCommandFields, Waveform, unpack_light_command

S = 1_000_000_000
MS = 1_000_000


Alarms = list[dict[str, Any]]


def _il(limits: SafetyLimits | None = None) -> tuple[LightInterlock, RecordingLightSource, Alarms]:
    alarms: list[dict[str, Any]] = []
    src = RecordingLightSource()
    il = LightInterlock(limits or default_limits(), src, alarms.append)
    return il, src, alarms


def _ask(il: LightInterlock, req: LightRequest, now: int = 10 * S, deadline: int | None = None) -> Any:
    return il.request(req, now_ns=now, cause_seq=7, cause_t_rig_ns=now - MS, cause_t_send_ns=now - MS,
                      deadline_rig_ns=now + 25 * MS if deadline is None else deadline)


def _chen(trial: int = 0, **kw: Any) -> LightRequest:
    sl, sr = LightRequest.spots_for(kw.get("hemisphere", "left"))
    base: dict[str, Any] = {"trial": trial, "hemisphere": "left", "power_mw_per_spot": 1.5, "duration_s": 0.8,
                            "ramp_down_s": 0.1, "spots_left": sl, "spots_right": sr}
    base.update(kw)
    return LightRequest(**base)


def test_default_calibration_gives_science_defaults() -> None:
    lim = load_calibration().safety_limits()
    assert (lim.max_power_mw_per_spot, lim.max_continuous_s, lim.min_ramp_down_s) == (10.0, 1.3, 0.1)
    assert (lim.energy_budget_j, lim.energy_window_s) == (1.0, 600.0)
    assert (lim.n_spots_left, lim.n_spots_right) == (4, 4)


def test_approved_request_reaches_source_as_one_whole_command() -> None:
    il, src, alarms = _il()
    il.heartbeat(10 * S)
    il.on_trial_start(0)
    d = _ask(il, _chen())
    assert d.approved and d.command_id == 1 and not alarms
    (cmd,) = src.commands
    assert cmd.action == LightAction.START and cmd.waveform == Waveform.SINE and cmd.trial == 0
    assert (cmd.spots_left, cmd.spots_right, cmd.power_mw_per_spot, cmd.freq_hz) == (0b1111, 0, 1.5, 40.0)
    assert math.isclose(cmd.duration_s, 0.8, rel_tol=1e-6) and cmd.deadline_rig_ns == 10 * S + 25 * MS
    assert cmd.cause_seq == 7


@pytest.mark.parametrize(("kw", "limit", "allowed"), [
    ({"power_mw_per_spot": 12.0}, "power", 10.0),
    ({"power_mw_per_spot": float("nan")}, "power", 10.0),
    ({"power_mw_per_spot": -1.0}, "power", 10.0),
    ({"duration_s": 1.5}, "duration", 1.3),
    ({"duration_s": float("inf")}, "duration", 1.3),
    ({"ramp_down_s": 0.05}, "ramp_down", 0.1),
    ({"spots_left": 0b10000}, "spots", 0b1111),
    ({"spots_left": 0, "spots_right": 0b1111}, "spots", None),  # says left, lights right
    ({"freq_hz": 5000.0}, "freq", 100.0),
])
def test_each_limit_refuses_with_alarm_naming_limit_value_and_allowed(kw: dict[str, Any], limit: str,
                                                                      allowed: float | None) -> None:
    il, src, alarms = _il()
    il.heartbeat(10 * S)
    il.on_trial_start(0)
    d = _ask(il, _chen(**kw))
    assert not d.approved and d.limit == limit and d.allowed == allowed
    assert src.commands == []  # never partially executed
    assert len(alarms) == 1 and alarms[0]["limit"] == limit and alarms[0]["reason"]
    assert il.status()["refusals"] == {limit: 1}


def test_calibrated_spot_maximum_caps_power_below_service_cap() -> None:
    lim = default_limits().model_copy(update={"spot_max_power_mw_left": (10.0, 2.0, 10.0, 10.0)})
    il, _src, _ = _il(lim)
    il.heartbeat(10 * S)
    il.on_trial_start(0)
    d = _ask(il, _chen(power_mw_per_spot=3.0))
    assert not d.approved and d.limit == "power" and d.allowed == 2.0 and "calibrated" in d.reason
    assert _ask(il, _chen(power_mw_per_spot=3.0, spots_left=0b1101)).approved  # spot 1 not used


def test_one_command_per_trial_stale_trial_and_deadline() -> None:
    il, src, _ = _il()
    il.heartbeat(10 * S)
    il.on_trial_start(0)
    assert _ask(il, _chen()).approved
    assert _ask(il, _chen()).limit == "one_per_trial"
    il.on_trial_start(1)
    assert _ask(il, _chen(trial=0)).limit == "trial"
    assert _ask(il, _chen(trial=1), deadline=10 * S - 1).limit == "deadline"  # late decision → no light
    assert len(src.commands) == 1


def test_fraction_limit_with_small_n_allowance() -> None:
    il, src, alarms = _il()
    t = 10 * S
    for k in range(100):
        il.heartbeat(t)
        il.on_trial_start(k)
        _ask(il, _chen(trial=k, hemisphere="left" if k % 2 else "right",
                       spots_left=0b1111 if k % 2 else 0, spots_right=0 if k % 2 else 0b1111), now=t)
        n_started = k + 1
        assert len(src.commands) <= 0.3 * n_started + 3
        t += 12 * S
    assert len(src.commands) == math.floor(0.3 * 100 + 3)  # asked every trial: capped exactly at the limit
    assert il.status()["refusals"]["fraction"] == 100 - len(src.commands)
    assert all(a["limit"] == "fraction" for a in alarms)


def test_rolling_energy_budget_per_hemisphere() -> None:
    lim = default_limits().model_copy(update={"energy_budget_j": 0.03, "max_fraction_perturbed": 0.3,
                                              "small_n_allowance": 10})
    il, _src, _ = _il(lim)
    # 10 mW × 4 spots × 0.5 s = 0.02 J per command: the second within 10 min exceeds 0.03 J
    t = 10 * S
    res = []
    for k in range(3):
        il.heartbeat(t)
        il.on_trial_start(k)
        res.append(_ask(il, _chen(trial=k, power_mw_per_spot=10.0, duration_s=0.5), now=t))
        t += 10 * S
    assert res[0].approved and res[1].limit == "energy_left" and res[2].limit == "energy_left"
    assert "0.04" in res[1].reason and res[1].allowed == 0.03
    # the right hemisphere has its own budget
    il.heartbeat(t)
    il.on_trial_start(3)
    assert _ask(il, _chen(trial=3, hemisphere="right", spots_left=0, spots_right=0b1111,
                          power_mw_per_spot=10.0, duration_s=0.5), now=t).approved
    # after the 10-min window the left budget is free again
    t2 = 10 * S + 601 * S
    il.heartbeat(t2)
    il.on_trial_start(4)
    assert _ask(il, _chen(trial=4, power_mw_per_spot=10.0, duration_s=0.5), now=t2).approved
    assert il.status()["energy_used_j"]["left"] == pytest.approx(0.02, rel=1e-6)


def test_watchdog_turns_light_off_and_refuses_until_heartbeat_resumes() -> None:
    il, src, alarms = _il()
    il.on_trial_start(0)
    assert _ask(il, _chen()).limit == "watchdog"  # never heard a heartbeat
    il.heartbeat(10 * S)
    assert not il.check_watchdog(10 * S + 200 * MS)
    assert il.check_watchdog(10 * S + 300 * MS)  # 0.3 s > 0.25 s
    assert src.commands[-1].action == LightAction.ALL_OFF
    assert alarms[-1]["alarm"] == "watchdog"
    assert _ask(il, _chen(), now=10 * S + 310 * MS).limit == "watchdog"
    il.check_watchdog(10 * S + 400 * MS)
    assert sum(c.action == LightAction.ALL_OFF for c in src.commands) == 1  # one ALL_OFF per stall
    il.heartbeat(10 * S + 500 * MS)
    assert _ask(il, _chen(), now=10 * S + 510 * MS).approved


def test_light_sources_accept_only_minted_commands() -> None:
    raw = LightCommandFields(1, 0, 0, 0, 0, 0, 0, LightAction.START, Waveform.SINE, 15, 0, 50.0, 10.0, 0.0,
                             40.0)
    sent: list[bytes] = []
    for src in (RecordingLightSource(), WireLightSource(sent.append)):
        with pytest.raises(UnmintedCommandError):
            src.send(raw)  # type: ignore[arg-type]
    with pytest.raises(UnmintedCommandError):
        MintedCommand(raw, object())  # type: ignore[arg-type]
    assert sent == []


def test_wire_light_source_sends_the_packed_command() -> None:
    sent: list[bytes] = []
    il = LightInterlock(default_limits(), WireLightSource(sent.append), lambda a: None)
    il.heartbeat(0)
    il.on_trial_start(0)
    d = _ask(il, _chen(), now=1)
    assert d.approved and d.command is not None
    assert unpack_light_command(sent[0]) == d.command


# --- property-based: arbitrary request sequences never exceed a limit at the source ----------------------

_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                    st.floats(min_value=0, max_value=12), st.sampled_from([0.1, 0.8, 1.3, 1.5, 10.0]))
_masks = st.one_of(st.integers(min_value=-2, max_value=300), st.sampled_from([0, 1, 0b1111, 0b10000]))
_requests = st.builds(
    LightRequest, trial=st.integers(min_value=-1, max_value=40),
    hemisphere=st.sampled_from(["left", "right", "bilateral"]), power_mw_per_spot=_floats,
    duration_s=_floats, ramp_down_s=_floats, waveform=st.sampled_from(["sine", "constant"]),
    freq_hz=_floats, spots_left=_masks, spots_right=_masks)
_raw = st.builds(
    LightCommandFields, command_id=st.integers(0, 2**64 - 1), cause_seq=st.integers(0, 2**64 - 1),
    cause_t_rig_ns=st.integers(-(2**63), 2**63 - 1), cause_t_send_ns=st.integers(-(2**63), 2**63 - 1),
    deadline_rig_ns=st.integers(-(2**63), 2**63 - 1), t_start_rig_ns=st.integers(-(2**63), 2**63 - 1),
    trial=st.integers(0, 40), action=st.one_of(st.sampled_from(list(LightAction)), st.integers(0, 9)),
    waveform=st.one_of(st.sampled_from(list(Waveform)), st.integers(0, 9)), spots_left=_masks,
    spots_right=_masks, power_mw_per_spot=_floats, duration_s=_floats, ramp_down_s=_floats, freq_hz=_floats)
_ops = st.lists(st.one_of(
    st.tuples(st.just("trial")), st.tuples(st.just("heartbeat")),
    st.tuples(st.just("wait"), st.integers(0, 200 * S)),
    st.tuples(st.just("request"), _requests, st.integers(-50 * MS, 50 * MS)),
    st.tuples(st.just("raw"), _raw),
    st.tuples(st.just("watchdog")),
), max_size=80)


def _f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_no_request_sequence_exceeds_any_limit_at_the_source(ops: list[tuple[Any, ...]]) -> None:
    # small energy budget and window so that random sequences actually reach it
    lim = default_limits().model_copy(update={"energy_budget_j": 0.05, "energy_window_s": 60.0,
                                              "spot_max_power_mw_right": (10.0, 10.0, 4.0, 10.0)})
    clock = [0]
    src = RecordingLightSource(forward=lambda f: clock[0])  # records the time each command arrived
    alarms: list[dict[str, Any]] = []
    il = LightInterlock(lim, src, alarms.append)
    trial, last_hb = -1, None
    hb_at_send: list[int | None] = []
    trials_at_send: list[int] = []
    n_refused = 0
    for op in ops:
        n_before = len(src.commands)
        if op[0] == "trial":
            trial += 1
            il.on_trial_start(trial)
        elif op[0] == "heartbeat":
            il.heartbeat(clock[0])
            last_hb = clock[0]
        elif op[0] == "wait":
            clock[0] += op[1]
        elif op[0] == "watchdog":
            il.check_watchdog(clock[0])
        elif op[0] == "request":
            d = il.request(op[1], now_ns=clock[0], cause_seq=1, cause_t_rig_ns=clock[0], cause_t_send_ns=0,
                           deadline_rig_ns=clock[0] + op[2])
            n_refused += not d.approved
        else:
            d = il.request_command(op[1], now_ns=clock[0])
            n_refused += not d.approved
        for _ in range(len(src.commands) - n_before):
            hb_at_send.append(last_hb)
            trials_at_send.append(trial + 1)
    assert len(alarms) >= n_refused  # every refusal raised an alarm
    starts = [(c, t, hb, n) for c, t, hb, n in zip(src.commands, src.results, hb_at_send, trials_at_send,
                                                   strict=True) if c.action == LightAction.START]
    per_trial: dict[int, int] = {}
    for k, (c, t, hb, n_trials) in enumerate(starts):
        assert isinstance(t, int)
        assert c.waveform in (Waveform.SINE, Waveform.CONSTANT)
        assert 0 <= c.spots_left <= 0b1111 and 0 <= c.spots_right <= 0b1111
        assert c.spots_left or c.spots_right
        cap = min([10.0] + [(10.0, 10.0, 4.0, 10.0)[i] for i in range(4) if c.spots_right >> i & 1])
        p, d, r = _f32(c.power_mw_per_spot), _f32(c.duration_s), _f32(c.ramp_down_s)
        assert 0 < p <= cap
        assert 0 < d <= 1.3
        assert 0.1 <= r <= d
        if c.waveform == Waveform.SINE:
            assert 0 < _f32(c.freq_hz) <= 100
        assert c.deadline_rig_ns >= t  # never sent after its deadline
        assert hb is not None and t - hb <= 0.25 * S  # never sent with a stale service heartbeat
        per_trial[c.trial] = per_trial.get(c.trial, 0) + 1
        assert k + 1 <= 0.3 * n_trials + 3  # perturbed fraction with the small-N allowance
        # rolling energy per hemisphere over the previous 60 s (commands at most 1.3 s long)
        for side in ("spots_left", "spots_right"):
            e = sum(_f32(c2.power_mw_per_spot) * 1e-3 * bin(getattr(c2, side)).count("1")
                    * _f32(c2.duration_s) for c2, t2, _, _ in starts[: k + 1] if t - 60 * S < t2 <= t)
            assert e <= 0.05 + 1e-12
    assert all(v == 1 for v in per_trial.values())  # at most one light command per trial


def test_property_sequences_do_reach_the_source() -> None:
    """Guard against a vacuous property test: well-formed sequences get approved commands through."""
    ops: list[tuple[Any, ...]] = []
    for k in range(40):  # 1 in 4 trials perturbed, within the 30 % limit
        ops += [("trial",), ("heartbeat",)]
        ops += [("request", _chen(trial=k), 10 * MS)] if k % 4 == 0 else []
        ops += [("wait", 5 * S)]
    il, src, _ = _il()
    clock, trial = 0, -1
    for op in ops:
        if op[0] == "trial":
            trial += 1
            il.on_trial_start(trial)
        elif op[0] == "heartbeat":
            il.heartbeat(clock)
        elif op[0] == "wait":
            clock += op[1]
        else:
            assert _ask(il, op[1], now=clock, deadline=clock + op[2]).approved
    assert len(src.commands) == 10
