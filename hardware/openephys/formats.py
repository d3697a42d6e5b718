r"""The Open Ephys GUI's network message formats: ZMQ Interface packets in, Event Broadcaster packets both ways.

This module owns parsing and building the bytes, nothing else (no sockets). The formats are those
documented in the Open Ephys GUI docs (User Manual → Plugins → "ZMQ Interface" and "Event
Broadcaster", GUI ≥ 0.6):

* **ZMQ Interface** (a PUB socket on its data port, 5556 by default): multipart messages of an
  envelope (``b"DATA\0"`` or ``b"EVENT\0"``), a UTF-8 JSON header ``{"message_num", "type":
  "data"|"event"|"spike", "content"|"spike": {...}, "data_size", "timestamp"}`` and, when the
  header's ``data_size`` > 0 (always for data and spikes), a binary part: float32 samples of one
  channel (data), the waveform (spike), or the TTL payload ``line u8, state u8, word u64`` (event).
  Its listening port (data port + 1, a REP socket) takes JSON heartbeats
  ``{"application", "uuid", "type": "heartbeat"}`` and answers each one.
* **Event Broadcaster** (a PUB socket, 5557 by default): two parts, a little-endian u16 message
  type (0 TTL event, 1 spike) and, in its JSON format, a UTF-8 JSON object with ``event_type``
  ``"ttl"`` (``stream, source_node, sample_rate, channel_name, sample_number, line, state``) or
  ``"spike"`` (``stream, source_node, electrode, num_channels, sample_rate, sample_number,
  sorted_id, amp1…``).

Every parser raises :class:`FormatError` with what arrived and what was expected; nothing here
trusts the sender.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

ENVELOPE_DATA = b"DATA\x00"
ENVELOPE_EVENT = b"EVENT\x00"
EVENT_TYPE_TTL = 3  #: the ``type`` of a TTL event in a ZMQ Interface event header (EventChannel::TTL)
EB_TTL = 0  #: Event Broadcaster first part: TTL event
EB_SPIKE = 1  #: Event Broadcaster first part: spike
_TTL_PAYLOAD = struct.Struct("<BBQ")  #: ZMQ Interface TTL payload: line, state, word (10 bytes)
_EB_TYPE = struct.Struct("<H")
MAX_HEADER_BYTES = 64_000


class FormatError(ValueError):
    """A message that is not what the Open Ephys format says (the text says what and where)."""


@dataclass(frozen=True, slots=True)
class ContinuousBlock:
    """One channel's samples of one block (ZMQ Interface ``data``)."""

    stream: str
    channel: int  #: local channel index in the stream (``channel_num``)
    sample_num: int  #: index of the first sample
    sample_rate: float
    samples: npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class TTLEvent:
    """A TTL edge: from the ZMQ Interface (``event``, type 3) or the Event Broadcaster (``ttl``)."""

    stream: str
    line: int
    state: int  #: 1 rising, 0 falling
    sample_num: int
    sample_rate: float | None  #: the Event Broadcaster says it; the ZMQ Interface does not (its stream's rate)


@dataclass(frozen=True, slots=True)
class SpikeEvent:
    """A detected spike: from the ZMQ Interface (``spike``) or the Event Broadcaster (``spike``)."""

    stream: str
    electrode: str
    sorted_id: int
    sample_num: int
    sample_rate: float | None


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """A well-formed message this adapter does not use (a text event, a parameter message)."""

    what: str


Message = ContinuousBlock | TTLEvent | SpikeEvent | OtherEvent


def _json_object(raw: bytes, where: str) -> dict[str, Any]:
    if len(raw) > MAX_HEADER_BYTES:
        raise FormatError(f"{where}: JSON part of {len(raw)} bytes; expected at most {MAX_HEADER_BYTES}")
    try:
        obj = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{where}: JSON part unreadable ({exc}); expected a UTF-8 JSON object") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: JSON part is a {type(obj).__name__}; expected an object")
    return obj


def _int(obj: dict[str, Any], key: str, where: str, *, low: int = 0) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v != int(v) or v < low:
        raise FormatError(f"{where}: {key!r} = {v!r}; expected a whole number ≥ {low}")
    return int(v)


def _rate(obj: dict[str, Any], key: str, where: str) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and 1.0 <= v <= 1e7):
        raise FormatError(f"{where}: {key!r} = {v!r}; expected a sample rate in [1, 1e7] Hz")
    return float(v)


def parse_zmq_interface(parts: list[bytes]) -> Message:
    """One ZMQ Interface message (its multipart frames) → a :data:`Message`; :class:`FormatError` if malformed."""
    if len(parts) not in (2, 3):
        raise FormatError(f"ZMQ Interface message of {len(parts)} parts; expected 2 or 3 (envelope, JSON header, data)")
    envelope = bytes(parts[0])
    if envelope not in (ENVELOPE_DATA, ENVELOPE_EVENT):
        raise FormatError(f"ZMQ Interface envelope {envelope[:16]!r}; expected b'DATA\\x00' or b'EVENT\\x00'")
    head = _json_object(parts[1], "ZMQ Interface header")
    kind = head.get("type")
    data = bytes(parts[2]) if len(parts) == 3 else b""
    size = head.get("data_size", len(data))
    if size != len(data):
        raise FormatError(f"ZMQ Interface {kind} message: data_size {size!r} but {len(data)} data bytes")
    if kind == "data":
        c = head.get("content")
        if not isinstance(c, dict):
            raise FormatError("ZMQ Interface data header without a 'content' object")
        where = "ZMQ Interface data content"
        n = _int(c, "num_samples", where)
        if len(data) != 4 * n:
            raise FormatError(f"ZMQ Interface data: num_samples {n} needs {4 * n} float32 bytes, got {len(data)}")
        return ContinuousBlock(str(c.get("stream", "")), _int(c, "channel_num", where), _int(c, "sample_num", where),
                               _rate(c, "sample_rate", where), np.frombuffer(data, dtype="<f4"))
    if kind == "event":
        c = head.get("content")
        if not isinstance(c, dict):
            raise FormatError("ZMQ Interface event header without a 'content' object")
        where = "ZMQ Interface event content"
        etype = _int(c, "type", where)
        if etype != EVENT_TYPE_TTL:
            return OtherEvent(f"event type {etype}")
        if len(data) < 2:
            raise FormatError(f"ZMQ Interface TTL event with {len(data)} data bytes; expected line u8, state u8, "
                              "word u64")
        line, state = data[0], data[1]
        return TTLEvent(str(c.get("stream", "")), int(line), 1 if state else 0, _int(c, "sample_num", where), None)
    if kind == "spike":
        s = head.get("spike")
        if not isinstance(s, dict):
            raise FormatError("ZMQ Interface spike header without a 'spike' object")
        where = "ZMQ Interface spike"
        return SpikeEvent(str(s.get("stream", "")), str(s.get("electrode", "")), _int(s, "sorted_id", where),
                          _int(s, "sample_num", where), None)
    if kind in ("param", "parameter"):
        return OtherEvent(str(kind))
    raise FormatError(f"ZMQ Interface header type {kind!r}; expected 'data', 'event' or 'spike'")


def parse_event_broadcaster(parts: list[bytes]) -> Message:
    """One Event Broadcaster message (JSON format) → a :data:`Message`; :class:`FormatError` if malformed."""
    if len(parts) != 2:
        raise FormatError(f"Event Broadcaster message of {len(parts)} parts; expected 2 (u16 type, JSON)")
    if len(parts[0]) != 2:
        raise FormatError(f"Event Broadcaster type part of {len(parts[0])} bytes; expected a u16 (0 TTL, 1 spike)")
    obj = _json_object(parts[1], "Event Broadcaster JSON (is the plugin's format set to JSON?)")
    et = obj.get("event_type")
    where = f"Event Broadcaster {et} event"
    if et == "ttl":
        return TTLEvent(str(obj.get("stream", "")), _int(obj, "line", where), 1 if obj.get("state") else 0,
                        _int(obj, "sample_number", where), _rate(obj, "sample_rate", where))
    if et == "spike":
        return SpikeEvent(str(obj.get("stream", "")), str(obj.get("electrode", "")), _int(obj, "sorted_id", where),
                          _int(obj, "sample_number", where), _rate(obj, "sample_rate", where))
    raise FormatError(f"Event Broadcaster event_type {et!r}; expected 'ttl' or 'spike'")


# -- building (the test publisher, and rigd's own broadcast) ---------------------------------------


def zmq_interface_data(message_num: int, block: ContinuousBlock, timestamp_ms: int = 0) -> list[bytes]:
    """A ZMQ Interface ``data`` message for one channel's block (as the plugin sends it)."""
    samples = np.ascontiguousarray(block.samples, dtype="<f4")
    head = {"message_num": message_num, "type": "data",
            "content": {"stream": block.stream, "channel_num": block.channel, "num_samples": int(samples.size),
                        "sample_num": block.sample_num, "sample_rate": block.sample_rate},
            "data_size": int(samples.nbytes), "timestamp": timestamp_ms}
    return [ENVELOPE_DATA, json.dumps(head).encode(), samples.tobytes()]


def zmq_interface_ttl(message_num: int, ev: TTLEvent, source_node: int = 100, timestamp_ms: int = 0) -> list[bytes]:
    """A ZMQ Interface TTL ``event`` message (payload: line u8, state u8, TTL word u64)."""
    word = (1 << ev.line) if ev.state else 0
    payload = _TTL_PAYLOAD.pack(ev.line, ev.state, word)
    head = {"message_num": message_num, "type": "event",
            "content": {"stream": ev.stream, "source_node": source_node, "type": EVENT_TYPE_TTL,
                        "sample_num": ev.sample_num},
            "data_size": len(payload), "timestamp": timestamp_ms}
    return [ENVELOPE_EVENT, json.dumps(head).encode(), payload]


def zmq_interface_spike(message_num: int, sp: SpikeEvent, waveform: npt.NDArray[np.float32], *,
                        source_node: int = 100, threshold: float = -50.0, timestamp_ms: int = 0) -> list[bytes]:
    """A ZMQ Interface ``spike`` message (waveform float32, one channel × samples)."""
    w = np.ascontiguousarray(waveform, dtype="<f4")
    head = {"message_num": message_num, "type": "spike",
            "spike": {"stream": sp.stream, "source_node": source_node, "electrode": sp.electrode,
                      "sample_num": sp.sample_num, "num_channels": 1, "num_samples": int(w.size),
                      "sorted_id": sp.sorted_id, "threshold": [threshold]},
            "data_size": int(w.nbytes), "timestamp": timestamp_ms}
    return [ENVELOPE_EVENT, json.dumps(head).encode(), w.tobytes()]


def heartbeat(application: str, uuid: str) -> bytes:
    """The JSON heartbeat a ZMQ Interface client sends to the plugin's listening port."""
    return json.dumps({"application": application, "uuid": uuid, "type": "heartbeat"}).encode()


def event_broadcaster_ttl(fields: dict[str, Any]) -> list[bytes]:
    """An Event Broadcaster TTL message (JSON format): ``fields`` must hold the documented TTL keys.

    Extra keys ride along (the plugin adds event metadata the same way); listeners ignore what
    they do not know.
    """
    for key in ("stream", "source_node", "sample_rate", "channel_name", "sample_number", "line", "state"):
        if key not in fields:
            raise FormatError(f"Event Broadcaster TTL without {key!r}")
    obj = {"event_type": "ttl", **fields}
    return [_EB_TYPE.pack(EB_TTL), json.dumps(obj, allow_nan=False).encode()]
