"""Wire protocol v1: round trips, every kind of malformed header rejected with a reason, the spike-count
value rules, and the per-stream sequence rule (rig/streams.py)."""

import struct

import numpy as np
import pytest

from rig import wire
from rig.streams import MAX_GAP, RESYNC_RUN, Seq, StreamSequences


def _msg(arr: np.ndarray, kind: wire.Kind = wire.Kind.SPIKE_COUNTS) -> tuple[bytes, bytes]:
    h, p = wire.encode(kind, arr, rig_id=7, stream_id=0, seq=42, t_rig_ns=123, t_send_ns=456)
    return h, bytes(p) if not isinstance(p, bytes) else p


def test_counts_round_trip_is_zero_copy_view() -> None:
    counts = np.arange(1000, dtype=np.uint16)
    h, p = _msg(counts)
    assert len(h) == wire.HEADER_SIZE == 56
    hdr = wire.unpack_header(h)
    assert (hdr.kind, hdr.rig_id, hdr.seq, hdr.t_rig_ns, hdr.t_send_ns) == (wire.Kind.SPIKE_COUNTS, 7, 42, 123, 456)
    out = wire.payload_array(hdr, p)
    assert out.dtype == np.dtype("<u2") and out.shape == (1000,)
    np.testing.assert_array_equal(out, counts)
    assert not out.flags.owndata  # a view onto the received buffer


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [(0, b"XXXX", "magic"), (4, struct.pack("<H", 9), "version"), (6, struct.pack("<H", 99), "kind"),
     (8, struct.pack("<B", 77), "dtype"), (9, struct.pack("<B", 3), "shape"),
     (52, struct.pack("<I", 5), "payload_size")],
)
def test_malformed_header_fields_are_named(offset: int, value: bytes, reason: str) -> None:
    h, _ = _msg(np.zeros(10, np.uint8))
    bad = h[:offset] + value + h[offset + len(value):]
    with pytest.raises(wire.WireError) as ei:
        wire.unpack_header(bad)
    assert ei.value.reason == reason


def test_payload_length_mismatch_and_truncated_header() -> None:
    h, p = _msg(np.zeros(10, np.uint16))
    hdr = wire.unpack_header(h)
    with pytest.raises(wire.WireError, match="payload_size"):
        wire.payload_array(hdr, p[:-1])
    with pytest.raises(wire.WireError, match="header_size"):
        wire.unpack_header(h[:-3])


def test_dtype_not_allowed_for_kind() -> None:
    h, _ = _msg(np.zeros(3, np.float64))
    with pytest.raises(wire.WireError, match="dtype"):
        wire.unpack_header(h)


def test_light_command_and_ack_round_trip() -> None:
    cmd = wire.LightCommandFields(1, 2, 3, 4, 5, 0, 6, wire.LightAction.START, wire.Waveform.SINE,
                                  0b1111, 0, 1.5, 0.75, 0.125, 40.0)  # f32-exact values
    assert wire.unpack_light_command(cmd.pack()) == cmd
    ack = wire.LightAckFields(1, 2, 4, 10, 11, wire.AckStatus.APPLIED)
    assert wire.unpack_light_ack(ack.pack()) == ack
    with pytest.raises(wire.WireError):
        wire.unpack_light_command(cmd.pack()[:-1])


def test_json_payload_must_be_object() -> None:
    h, p = wire.encode(wire.Kind.TRIAL_EVENT, b"[1,2]", rig_id=1, seq=0, t_rig_ns=0, t_send_ns=0)
    with pytest.raises(wire.WireError, match="json"):
        wire.payload_json(wire.unpack_header(h), bytes(p))
    h, p = wire.encode(wire.Kind.TRIAL_EVENT, wire.json_bytes({"event": "go_cue", "trial": 3}),
                       rig_id=1, seq=0, t_rig_ns=0, t_send_ns=0)
    assert wire.payload_json(wire.unpack_header(h), bytes(p))["event"] == "go_cue"


# --- spike count values (docs/wire-protocol.md, "Spike count values") ------------------------------


@pytest.mark.parametrize("dtype", ["<i2", "<i4", "<u4", "<f4"])
def test_count_values_outside_the_rules_are_found_for_every_checked_dtype(dtype: str) -> None:
    limit = wire.count_limit(wire.dtype_code(dtype))
    assert limit is not None
    good = np.array([0, 1, 7, min(wire.MAX_COUNT, np.iinfo(dtype).max if dtype[1] != "f" else wire.MAX_COUNT)],
                    dtype=dtype)
    assert wire.counts_valid(good, limit) and wire.bad_count(good) is None
    bads: list[float] = [-1] if dtype != "<u4" else []
    if dtype in ("<i4", "<u4", "<f4"):
        bads.append(wire.MAX_COUNT + 1)
    if dtype == "<f4":
        bads += [float("nan"), float("inf"), -float("inf"), 1e30, 65535.5, -1e-30]
    for v in bads:
        arr = np.array([3, 2, 1, v], dtype=dtype)
        assert not wire.counts_valid(arr, limit), (dtype, v)
        found = wire.bad_count(arr)
        assert found is not None and found[0] == 3, (dtype, v, found)


def test_u8_and_u16_counts_need_no_check_and_minus_zero_is_a_valid_count() -> None:
    assert wire.count_limit(wire.DType.U8) is None and wire.count_limit(wire.DType.U16) is None
    z = np.array([0.0, -0.0, 2.0], np.float32)
    limit = wire.count_limit(wire.DType.F32)
    assert limit is not None
    assert not wire.counts_valid(z, limit)  # the one-reduction check is conservative ...
    assert wire.bad_count(z) is None  # ... the exact one accepts it
    assert wire.bad_count(np.array([1.0, np.nan], np.float32)) == (1, "nan")


# --- sequence numbers (rig/streams.py) ---------------------------------------------------------------


def test_in_sequence_gaps_duplicates_and_old_seqs() -> None:
    s = StreamSequences()
    assert s.check(0, 100).seq is Seq.ACCEPT  # a stream starts anywhere
    assert s.check(0, 101) == (Seq.ACCEPT, 0, 100, 0, 0)
    assert s.check(0, 111).missing == 9
    assert s.check(0, 111).seq is Seq.DUPLICATE
    assert s.check(0, 50).seq is Seq.OLD
    assert s.check(1, 0).seq is Seq.ACCEPT  # streams are independent
    assert s.last == {0: 111, 1: 0}


def test_one_stray_far_jump_is_dropped_and_the_stream_goes_on() -> None:
    s = StreamSequences()
    s.check(0, 10)
    assert s.check(0, 10 + 10**6).seq is Seq.JUMP
    assert s.check(0, 11) == (Seq.ACCEPT, 0, 10, 0, 0)
    assert s.check(0, 10 + MAX_GAP + 11).seq is Seq.JUMP  # further than MAX_GAP past 11
    v = s.check(0, 11 + MAX_GAP)  # exactly MAX_GAP past 11: a gap, not a jump
    assert v.seq is Seq.ACCEPT and v.missing == MAX_GAP - 1
    assert s.last[0] == 11 + MAX_GAP


def test_a_run_of_off_sequence_messages_resynchronises_the_stream() -> None:
    s = StreamSequences()
    for q in range(500, 600):
        s.check(0, q)
    verdicts = [s.check(0, q) for q in range(RESYNC_RUN + 2)]  # the rig restarted: 0, 1, 2, ...
    assert [v.seq for v in verdicts[:RESYNC_RUN - 1]] == [Seq.OLD] * (RESYNC_RUN - 1)
    assert verdicts[RESYNC_RUN - 1] == (Seq.RESYNC, 0, 599, RESYNC_RUN, 0)
    assert [v.seq for v in verdicts[RESYNC_RUN:]] == [Seq.ACCEPT, Seq.ACCEPT]
    assert s.last[0] == RESYNC_RUN + 1


def test_a_run_is_broken_by_an_accepted_message_and_restarts_at_a_non_consecutive_seq() -> None:
    s = StreamSequences(resync_run=3)
    s.check(0, 1000)
    assert s.check(0, 5).seq is Seq.OLD
    assert s.check(0, 6).seq is Seq.OLD
    assert s.check(0, 1001).seq is Seq.ACCEPT  # the real stream goes on: the run 5, 6 is over
    assert s.check(0, 7).seq is Seq.OLD  # a new run of one, not the third of 5, 6, 7
    assert s.check(0, 8).seq is Seq.OLD
    assert s.check(0, 20).seq is Seq.OLD  # not consecutive: a new run at 20 (4 off-sequence in a row)
    assert s.check(0, 21).seq is Seq.OLD
    v = s.check(0, 22)
    assert v == (Seq.RESYNC, 0, 1001, 5, 20)
    s.reset()
    assert s.last == {} and s.check(0, 0).seq is Seq.ACCEPT


def test_stream_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="resync_run"):
        StreamSequences(resync_run=1)
