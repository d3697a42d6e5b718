"""Wire protocol v1: the byte layout every rigd message shares (see docs/wire-protocol.md).

This module owns the fixed 56-byte little-endian header, the message kinds, the payload dtypes,
and the packed structs of light commands and their acknowledgements. It encodes and decodes;
it never touches a socket, a clock or a file, and it needs nothing but numpy, so a lab rig can
vendor it. Every decoding error is a :class:`WireError` that says what was wrong, expected vs
got, so the ingest can count it and carry on.
"""

from __future__ import annotations

import enum
import json
import math
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

MAGIC = b"RIGD"
VERSION = 1

#: magic, version, kind, dtype, ndim, flags, dim0, dim1, rig_id, stream_id, seq, t_rig_ns,
#: t_send_ns, payload_nbytes
HEADER = struct.Struct("<4sHHBBHIIIIQqqI")
HEADER_SIZE = HEADER.size  # 56 bytes
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


#: the task's two sides as the wire names them (a trial event's ``instructed``, ``choice``, ``side``)
#: and as signs: left −1, right +1 (0: none or unknown). The one definition rigd, its simulator and
#: its analyses use.
SIDE_SIGN: dict[str, int] = {"left": -1, "right": 1}
SIDE_NAME: dict[int, str] = {-1: "left", 1: "right"}


def side_sign(name: object) -> int:
    """A side's sign from its wire name ("left" −1, "right" +1; anything else 0)."""
    return SIDE_SIGN.get(str(name), 0)


class Kind(enum.IntEnum):
    """Message kinds. Numbers are part of the protocol: never renumber, only append."""

    SPIKE_COUNTS = 1  #: binned spike counts, shape (n_units,) or (n_bins, n_units)
    SPIKE_EVENTS = 2  #: uint32 (n_spikes, 2): unit index, offset in µs from t_rig_ns
    RAW_SAMPLES = 3  #: int16 (n_samples, n_channels) broadband chunk
    TRIAL_EVENT = 4  #: UTF-8 JSON object (uint8 bytes), task/behaviour events
    LIGHT_COMMAND = 5  #: rigd → rig, packed LIGHT_COMMAND struct (uint8 bytes)
    LIGHT_ACK = 6  #: rig → rigd, packed LIGHT_ACK struct (uint8 bytes)
    DECODER_OUTPUT = 7  #: float32/float64 (n_outputs,) or (n_frames, n_outputs) decoded values
    HEARTBEAT = 8  #: UTF-8 JSON object (uint8 bytes); rig → rigd carries the rig description
    ALARM = 9  #: UTF-8 JSON object (uint8 bytes)
    LOG = 10  #: UTF-8 JSON object (uint8 bytes): decisions, trial summaries, telemetry summaries
    TELEMETRY = 11  #: float64 (n_loops, n_fields) per-loop stage timings (recorded by rigd)


class DType(enum.IntEnum):
    """Payload element types (all little-endian)."""

    NONE = 0
    U8 = 1
    U16 = 2
    I16 = 3
    I32 = 4
    U32 = 5
    F32 = 6
    F64 = 7
    I64 = 8


_NP_DTYPES: dict[DType, np.dtype[Any]] = {
    DType.U8: np.dtype("<u1"),
    DType.U16: np.dtype("<u2"),
    DType.I16: np.dtype("<i2"),
    DType.I32: np.dtype("<i4"),
    DType.U32: np.dtype("<u4"),
    DType.F32: np.dtype("<f4"),
    DType.F64: np.dtype("<f8"),
    DType.I64: np.dtype("<i8"),
}
def _key(d: np.dtype[Any]) -> str:
    return d.kind + str(d.itemsize)


_DTYPE_CODES: dict[str, DType] = {_key(v): k for k, v in _NP_DTYPES.items()}

#: Which payload dtypes each kind may carry (None: any numeric dtype).
_ALLOWED_DTYPES: dict[Kind, frozenset[DType] | None] = {
    Kind.SPIKE_COUNTS: frozenset({DType.U8, DType.U16, DType.I16, DType.I32, DType.U32, DType.F32}),
    Kind.SPIKE_EVENTS: frozenset({DType.U32}),
    Kind.RAW_SAMPLES: frozenset({DType.I16, DType.F32}),
    Kind.TRIAL_EVENT: frozenset({DType.U8}),
    Kind.LIGHT_COMMAND: frozenset({DType.U8}),
    Kind.LIGHT_ACK: frozenset({DType.U8}),
    Kind.DECODER_OUTPUT: frozenset({DType.F32, DType.F64}),
    Kind.TELEMETRY: frozenset({DType.F64}),
    Kind.HEARTBEAT: frozenset({DType.U8, DType.NONE}),
    Kind.ALARM: frozenset({DType.U8}),
    Kind.LOG: frozenset({DType.U8}),
}
#: the largest spike count one unit may report in one frame (the uint16 range); larger, negative or
#: non-finite counts reject the frame (docs/wire-protocol.md, "Spike count values")
MAX_COUNT = 65535
#: per checked SPIKE_COUNTS dtype: an unsigned view of the same width and the largest valid value in
#: it, so one integer max() checks every rule (negative ints and floats, NaN and ±inf all read above
#: it; non-negative floats order like their bit patterns). u8 and u16 cannot break the rules.
_COUNT_LIMITS: dict[DType, tuple[np.dtype[Any], int]] = {
    DType.I16: (np.dtype("<u2"), 32767),
    DType.I32: (np.dtype("<u4"), MAX_COUNT),
    DType.U32: (np.dtype("<u4"), MAX_COUNT),
    DType.F32: (np.dtype("<u4"), int(np.array(MAX_COUNT, "<f4").view("<u4"))),
}
_KIND_BY_CODE: dict[int, Kind] = {int(k): k for k in Kind}
_DTYPE_BY_CODE: dict[int, DType] = {int(d): d for d in DType}
_ITEMSIZE: dict[DType, int] = {DType.NONE: 0, **{d: t.itemsize for d, t in _NP_DTYPES.items()}}
_JSON_KINDS = frozenset({Kind.TRIAL_EVENT, Kind.HEARTBEAT, Kind.ALARM, Kind.LOG})


class WireError(ValueError):
    """A message that does not follow the protocol. ``reason`` is a short counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class Header(NamedTuple):
    """The fixed header of every message (a named tuple: cheap to build on the hot path)."""

    kind: Kind
    dtype: DType
    shape: tuple[int, ...]
    rig_id: int
    stream_id: int
    seq: int
    t_rig_ns: int
    t_send_ns: int
    payload_nbytes: int
    flags: int = 0
    version: int = VERSION


def np_dtype(code: DType) -> np.dtype[Any]:
    """The numpy dtype of a payload dtype code."""
    return _NP_DTYPES[code]


def dtype_code(dtype: npt.DTypeLike) -> DType:
    """The payload dtype code of a numpy dtype (little-endian); WireError if not in the protocol."""
    d = np.dtype(dtype)
    key = _key(d)
    if key not in _DTYPE_CODES or d.byteorder == ">":
        raise WireError("dtype", f"numpy dtype {d} is not a wire dtype; expected one of "
                        f"{sorted(v.name for v in _NP_DTYPES.values())}")
    return _DTYPE_CODES[key]


def pack_header(
    kind: Kind,
    dtype: DType,
    shape: tuple[int, ...],
    *,
    rig_id: int,
    stream_id: int,
    seq: int,
    t_rig_ns: int,
    t_send_ns: int,
    flags: int = 0,
) -> bytes:
    """Pack a header; the payload size follows from dtype and shape."""
    if len(shape) > 2:
        raise WireError("shape", f"at most 2 dimensions, got shape {shape}")
    dims = (*tuple(shape), 0, 0)[:2]
    itemsize = 0 if dtype == DType.NONE else _NP_DTYPES[dtype].itemsize
    n = itemsize
    for s in shape:
        n *= s
    if not shape:
        n = 0
    return HEADER.pack(MAGIC, VERSION, int(kind), int(dtype), len(shape), flags, dims[0], dims[1],
                       rig_id, stream_id, seq, t_rig_ns, t_send_ns, n)


def unpack_header(buf: bytes | memoryview) -> Header:
    """Parse and validate a header. Raises WireError naming the field, expected and got."""
    if len(buf) != HEADER_SIZE:
        raise WireError("header_size", f"header must be {HEADER_SIZE} bytes, got {len(buf)}")
    (magic, version, kind, dtype, ndim, flags, d0, d1, rig_id, stream_id, seq, t_rig, t_send,
     nbytes) = HEADER.unpack(buf)
    if magic != MAGIC:
        raise WireError("magic", f"expected magic {MAGIC!r}, got {bytes(magic)!r}")
    if version != VERSION:
        raise WireError("version", f"expected protocol version {VERSION}, got {version}")
    k = _KIND_BY_CODE.get(kind)
    if k is None:
        raise WireError("kind", f"unknown kind {kind}; expected one of {[int(x) for x in Kind]}")
    dt = _DTYPE_BY_CODE.get(dtype)
    if dt is None:
        raise WireError("dtype", f"unknown dtype code {dtype}; expected 0..{len(DType) - 1}")
    allowed = _ALLOWED_DTYPES[k]
    if allowed is not None and dt not in allowed:
        raise WireError("dtype", f"kind {k.name} expects dtype in "
                        f"{sorted(a.name for a in allowed)}, got {dt.name}")
    if ndim == 1:
        shape: tuple[int, ...] = (d0,)
        expected = _ITEMSIZE[dt] * d0
    elif ndim == 0:
        shape, expected = (), 0
    elif ndim == 2:
        shape = (d0, d1)
        expected = _ITEMSIZE[dt] * d0 * d1
    else:
        raise WireError("shape", f"ndim must be 0, 1 or 2, got {ndim}")
    if nbytes != expected:
        raise WireError("payload_size", f"header says payload_nbytes={nbytes} but dtype {dt.name} × "
                        f"shape {shape} is {expected} bytes")
    if nbytes > MAX_PAYLOAD_BYTES:
        raise WireError("oversize", f"payload of {nbytes} bytes exceeds the {MAX_PAYLOAD_BYTES} limit")
    return Header(k, dt, shape, rig_id, stream_id, seq, t_rig, t_send, nbytes, flags, version)


def check_payload(header: Header, payload: bytes | memoryview) -> None:
    """Raise WireError if the payload's length does not match the header."""
    if len(payload) != header.payload_nbytes:
        raise WireError("payload_size", f"{header.kind.name}: header announces "
                        f"{header.payload_nbytes} payload bytes, got {len(payload)}")


def payload_array(header: Header, payload: bytes | memoryview) -> npt.NDArray[Any]:
    """Zero-copy numpy view of a numeric payload (validated against the header)."""
    check_payload(header, payload)
    if header.dtype == DType.NONE:
        return np.empty(0, dtype=np.uint8)
    arr = np.frombuffer(payload, dtype=_NP_DTYPES[header.dtype])
    return arr if len(header.shape) == 1 else arr.reshape(header.shape)


def count_limit(dtype: DType) -> tuple[np.dtype[Any], int] | None:
    """How to check a SPIKE_COUNTS dtype's values: (unsigned view dtype, largest valid value).

    For :func:`counts_valid`; None for u8/u16, whose every value is valid.
    """
    return _COUNT_LIMITS.get(dtype)


def counts_valid(counts: npt.NDArray[Any], limit: tuple[np.dtype[Any], int]) -> bool:
    """Fast check (one reduction) that every count is finite and in [0, MAX_COUNT].

    It may refuse a frame holding ``-0.0``; :func:`bad_count` gives the exact answer.
    """
    return counts.size == 0 or int(counts.view(limit[0]).max()) <= limit[1]


def bad_count(counts: npt.NDArray[Any]) -> tuple[int, str] | None:
    """The first unit whose count breaks the value rules and what it is, or None if all are valid."""
    flat = counts.reshape(-1)
    if flat.dtype.kind == "f":
        bad = ~np.isfinite(flat) | (flat < 0) | (flat > MAX_COUNT)
    else:
        bad = (flat < 0) | (flat > MAX_COUNT)
    idx = np.flatnonzero(bad)
    if not idx.size:
        return None
    i = int(idx[0])
    v = flat[i].item()
    return i, (repr(v) if not isinstance(v, float) or not math.isfinite(v) else f"{v:g}")


def payload_json(header: Header, payload: bytes | memoryview) -> dict[str, Any]:
    """Decode a JSON payload; WireError if it is not a UTF-8 JSON object."""
    check_payload(header, payload)
    if header.kind not in _JSON_KINDS:
        raise WireError("kind", f"{header.kind.name} does not carry JSON")
    if header.payload_nbytes == 0:
        return {}
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError("json", f"{header.kind.name} payload is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("json", f"{header.kind.name} payload must be a JSON object, got "
                        f"{type(obj).__name__}")
    return obj


MAX_JSON_DEPTH = 64  #: deeper nesting (or a reference cycle) is written as the object's str()


def finite(obj: Any, depth: int = 0) -> Any:
    """``obj`` with every non-finite float (also in numpy scalars and arrays) replaced by None.

    What makes a message RFC 8259 JSON (no bare NaN/Infinity): used for the wire's JSON kinds and,
    by rig/session.py, for everything rigd writes as JSON (control plane, manifest).
    """
    if isinstance(obj, float):  # np.float64 too
        return float(obj) if math.isfinite(obj) else None
    if depth > MAX_JSON_DEPTH:
        return str(obj)
    if isinstance(obj, dict):
        return {k: finite(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [finite(v, depth + 1) for v in obj]
    if isinstance(obj, np.ndarray | np.generic):
        return finite(obj.tolist(), depth + 1)
    return obj


def json_bytes(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON encoding used for JSON kinds (strict JSON: nan/inf become null)."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (ValueError, TypeError):
        return json.dumps(finite(obj), separators=(",", ":"), allow_nan=False,
                          default=str).encode("utf-8")


# --- light commands ------------------------------------------------------------------------


class LightAction(enum.IntEnum):
    """What a light command asks the rig to do."""

    START = 1  #: start the waveform at once (or at t_start_rig_ns if set)
    RAMP_DOWN = 2  #: begin the ramp-down now
    ALL_OFF = 3  #: light off at once (emergency / end of session)


class Waveform(enum.IntEnum):
    """Temporal profile of the light during a command (time-averaged power is the set-point)."""

    CONSTANT = 0
    SINE = 1  #: (1 - cos(2π f t)) / 2 × 2 × P, i.e. a raised sinusoid with mean P


class AckStatus(enum.IntEnum):
    """The rig's answer to a light command."""

    APPLIED = 0  #: the light changed as commanded at t_light_change_rig_ns
    LATE = 1  #: arrived after its deadline: not executed
    INVALID = 2  #: malformed or outside the rig's own limits: not executed
    WATCHDOG_OFF = 3  #: the rig-side watchdog turned the light off (no heartbeat from rigd)
    STOPPED = 4  #: a light-off / ramp-down command was applied


#: command_id, cause_seq, cause_t_rig_ns, cause_t_send_ns, deadline_rig_ns, t_start_rig_ns,
#: trial, action, waveform, spots_left, spots_right, power_mw_per_spot, duration_s,
#: ramp_down_s, freq_hz
LIGHT_COMMAND = struct.Struct("<QQqqqqIBBBBffff")
#: command_id, cause_seq, cause_t_send_ns, t_received_rig_ns, t_light_change_rig_ns, status, pad
LIGHT_ACK = struct.Struct("<QQqqqB7x")


@dataclass(frozen=True, slots=True)
class LightCommandFields:
    """Decoded LIGHT_COMMAND payload. Powers are time-averaged mW per spot at the brain surface."""

    command_id: int
    cause_seq: int
    cause_t_rig_ns: int
    cause_t_send_ns: int
    deadline_rig_ns: int
    t_start_rig_ns: int
    trial: int
    action: LightAction
    waveform: Waveform
    spots_left: int
    spots_right: int
    power_mw_per_spot: float
    duration_s: float
    ramp_down_s: float
    freq_hz: float

    def pack(self) -> bytes:
        """The packed payload bytes."""
        return LIGHT_COMMAND.pack(
            self.command_id, self.cause_seq, self.cause_t_rig_ns, self.cause_t_send_ns,
            self.deadline_rig_ns, self.t_start_rig_ns, self.trial, int(self.action),
            int(self.waveform), self.spots_left, self.spots_right, self.power_mw_per_spot,
            self.duration_s, self.ramp_down_s, self.freq_hz)


def unpack_light_command(payload: bytes | memoryview) -> LightCommandFields:
    """Decode a LIGHT_COMMAND payload; WireError on wrong size or enum values."""
    if len(payload) != LIGHT_COMMAND.size:
        raise WireError("payload_size", f"LIGHT_COMMAND payload must be {LIGHT_COMMAND.size} bytes, "
                        f"got {len(payload)}")
    f = LIGHT_COMMAND.unpack(payload)
    try:
        action, waveform = LightAction(f[7]), Waveform(f[8])
    except ValueError as exc:
        raise WireError("light_command", f"bad enum in LIGHT_COMMAND: {exc}") from None
    return LightCommandFields(f[0], f[1], f[2], f[3], f[4], f[5], f[6], action, waveform,
                              f[9], f[10], f[11], f[12], f[13], f[14])


@dataclass(frozen=True, slots=True)
class LightAckFields:
    """Decoded LIGHT_ACK payload (all times on the rig's clock)."""

    command_id: int
    cause_seq: int
    cause_t_send_ns: int
    t_received_rig_ns: int
    t_light_change_rig_ns: int
    status: AckStatus

    def pack(self) -> bytes:
        """The packed payload bytes."""
        return LIGHT_ACK.pack(self.command_id, self.cause_seq, self.cause_t_send_ns,
                              self.t_received_rig_ns, self.t_light_change_rig_ns, int(self.status))


def unpack_light_ack(payload: bytes | memoryview) -> LightAckFields:
    """Decode a LIGHT_ACK payload; WireError on wrong size or status."""
    if len(payload) != LIGHT_ACK.size:
        raise WireError("payload_size", f"LIGHT_ACK payload must be {LIGHT_ACK.size} bytes, "
                        f"got {len(payload)}")
    f = LIGHT_ACK.unpack(payload)
    try:
        status = AckStatus(f[5])
    except ValueError:
        raise WireError("light_ack", f"unknown ack status {f[5]}") from None
    return LightAckFields(f[0], f[1], f[2], f[3], f[4], status)


def encode(
    kind: Kind,
    payload: npt.NDArray[Any] | bytes | None,
    *,
    rig_id: int,
    stream_id: int = 0,
    seq: int,
    t_rig_ns: int,
    t_send_ns: int,
) -> tuple[bytes, bytes | npt.NDArray[Any]]:
    """Build the two frames of a message: (header, payload). Arrays go out without a copy."""
    if payload is None:
        return pack_header(kind, DType.NONE, (), rig_id=rig_id, stream_id=stream_id, seq=seq,
                           t_rig_ns=t_rig_ns, t_send_ns=t_send_ns), b""
    if isinstance(payload, bytes | bytearray | memoryview):
        b = bytes(payload)
        return pack_header(kind, DType.U8, (len(b),), rig_id=rig_id, stream_id=stream_id, seq=seq,
                           t_rig_ns=t_rig_ns, t_send_ns=t_send_ns), b
    arr = payload if payload.flags.c_contiguous else np.ascontiguousarray(payload)
    return pack_header(kind, dtype_code(arr.dtype), tuple(arr.shape), rig_id=rig_id,
                       stream_id=stream_id, seq=seq, t_rig_ns=t_rig_ns, t_send_ns=t_send_ns), arr
