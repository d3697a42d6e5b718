"""Wire protocol v1: round trips and every kind of malformed header is rejected with a reason."""

import struct

import numpy as np
import pytest

from rig import wire


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
        wire.payload_json(wire.unpack_header(h), p)
    h, p = wire.encode(wire.Kind.TRIAL_EVENT, wire.json_bytes({"event": "go_cue", "trial": 3}),
                       rig_id=1, seq=0, t_rig_ns=0, t_send_ns=0)
    assert wire.payload_json(wire.unpack_header(h), p)["event"] == "go_cue"
