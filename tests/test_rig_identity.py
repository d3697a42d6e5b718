"""Who a rig is (rig/rig_identity.py): descriptions checked before anything is sized by them, and the
process behind a rig id followed through restarts and told apart from a second sender."""

import pytest

from rig import wire
from rig.rig_identity import DUPLICATE_WINDOW_NS, Heard, RigIdentity, UnitLimitError, validate_description

S = 1_000_000_000


def _hb(boot: object, host: str = "h", pid: int = 1) -> dict[str, object]:
    return {"n_units": 10, "boot_id": boot, "host": host, "pid": pid}


def test_a_rig_is_followed_through_a_restart_and_a_second_sender_is_told_apart() -> None:
    ident = RigIdentity()
    assert ident.hear({"n_units": 10}, 0) is Heard.KEEP  # no boot ids: nothing to follow
    assert ident.hear(_hb(1, pid=11), 0) is Heard.FIRST and ident.boot_id == 1
    assert ident.hear(_hb(1, pid=11), S) is Heard.KEEP and ident.seen_ns == S
    # a new process: a restart, the old one remembered
    assert ident.hear(_hb(2, pid=22), 2 * S) is Heard.RESTART
    assert ident.boot_id == 2 and ident.previous["pid"] == 11 and 1 in ident.boots
    # the old process speaks again while the new one is alive: two senders; the earlier holder keeps the id
    assert ident.hear(_hb(1, pid=11), 2 * S + 100) is Heard.DUPLICATE
    assert ident.boot_id == 1 and ident.previous["boot_id"] == 2
    # settled: the newcomer's heartbeats are dropped, the holder's kept, and no second diagnosis
    assert ident.hear(_hb(2, pid=22), 2 * S + 200) is Heard.DROP
    assert ident.hear(_hb(1, pid=11), 2 * S + 300) is Heard.KEEP


def test_an_old_boot_id_after_a_long_silence_is_a_restart_not_a_duplicate() -> None:
    ident = RigIdentity()
    ident.hear(_hb("a"), 0)
    ident.hear(_hb("b"), S)
    # the followed process ("b") has been silent longer than the window: "a" back is a (re)start
    assert ident.hear(_hb("a"), S + DUPLICATE_WINDOW_NS + 1) is Heard.RESTART


@pytest.mark.parametrize(("desc", "reason"), [
    ({}, "heartbeat"), ({"n_units": -1}, "heartbeat"), ({"n_units": 1.5}, "heartbeat"),
    ({"n_units": True}, "heartbeat"), ({"n_units": 10, "raw_channels": "x"}, "heartbeat"),
    ({"n_units": 10, "raw_channels": 4, "threshold_sd": 3.0}, "heartbeat"),
    ({"n_units": 10, "raw_channels": 4, "sample_rate_hz": float("nan")}, "heartbeat"),
    ({"n_units": 10, "boot_id": [1]}, "boot_id"), ({"n_units": 10, "boot_id": ""}, "boot_id"),
])
def test_bad_descriptions_are_refused_with_the_field(desc: dict[str, object], reason: str) -> None:
    with pytest.raises(wire.WireError) as e:
        validate_description(1, desc, 1000)
    assert e.value.reason == reason


def test_units_above_the_maximum_are_refused_before_anything_is_allocated() -> None:
    assert validate_description(1, {"n_units": 1000.0}, 1000) == 1000
    with pytest.raises(UnitLimitError) as e:
        validate_description(3, {"n_units": 10**9}, 1000)
    assert e.value.n == 10**9 and "rig 3 describes n_units=1000000000" in e.value.detail
    with pytest.raises(UnitLimitError, match="raw_channels=5000"):
        validate_description(3, {"n_units": 10, "raw_channels": 5000}, 1000)
