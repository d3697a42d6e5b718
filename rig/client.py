"""The publisher client a lab rig imports to talk to rigd (needs only pyzmq, numpy and rig.wire).

It owns the rig's two sockets: a PUB that *connects* to rigd's ingest endpoint (frames, trial
events, light acknowledgements, heartbeats) and a SUB that *connects* to rigd's command endpoint
(light commands and rigd's heartbeats). It numbers every stream, stamps every message with the
rig's clock, and hands received light commands to the rig's own code. It knows nothing about
decoders, protocols or sessions. The simulated mouse uses exactly this class.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from rig import wire

#: Stream ids a rig uses (sequence numbers count per rig and stream).
STREAM_COUNTS = 0
STREAM_EVENTS = 1
STREAM_ACKS = 2
STREAM_HEARTBEAT = 3
STREAM_EVENTS_SPIKES = 4
STREAM_RAW = 5


@dataclass
class Received:
    """Messages from rigd collected by :meth:`RigClient.poll`."""

    commands: list[wire.LightCommandFields] = field(default_factory=list)
    heartbeats: int = 0
    #: the rig ids rigd's latest heartbeat says it holds a description of (None: no heartbeat came)
    rigd_rigs: frozenset[int] | None = None
    errors: list[str] = field(default_factory=list)


class RigClient:
    """A rig's connection to rigd.

    Args:
        rig_id: this rig's id (rigd accepts only the ids it is configured for).
        ingest_endpoint: rigd's ingest endpoint, e.g. ``tcp://127.0.0.1:5555``.
        command_endpoint: rigd's command endpoint, e.g. ``tcp://127.0.0.1:5556``.
        description: what the rig announces in its heartbeats (units per hemisphere, bin size…).
        clock_ns: the rig's clock; ``time.monotonic_ns`` unless the rig has its own.
    """

    def __init__(
        self,
        rig_id: int,
        ingest_endpoint: str,
        command_endpoint: str,
        description: dict[str, Any] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.rig_id = rig_id
        self.description = dict(description or {})
        self.clock_ns = clock_ns
        self._ctx = context or zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, 100_000)
        self._pub.setsockopt(zmq.LINGER, 1000)
        self._pub.connect(ingest_endpoint)
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.connect(command_endpoint)
        self._seq = [0] * 8
        self.last_rigd_heartbeat_ns = 0

    # -- sending ------------------------------------------------------------------------------

    def _send(self, kind: wire.Kind, stream: int, payload: npt.NDArray[Any] | bytes | None,
              t_rig_ns: int | None = None) -> int:
        seq = self._seq[stream]
        self._seq[stream] = seq + 1
        now = self.clock_ns()
        header, body = wire.encode(kind, payload, rig_id=self.rig_id, stream_id=stream, seq=seq,
                                   t_rig_ns=now if t_rig_ns is None else t_rig_ns, t_send_ns=now)
        self._pub.send_multipart([header, body], copy=False)
        return seq

    def send_counts(self, counts: npt.NDArray[Any], t_rig_ns: int | None = None) -> int:
        """Publish one bin of spike counts, shape (n_units,) or (n_bins, n_units). Returns its seq."""
        return self._send(wire.Kind.SPIKE_COUNTS, STREAM_COUNTS, counts, t_rig_ns)

    def send_spikes(self, unit_and_offset_us: npt.NDArray[np.uint32], t_rig_ns: int | None = None) -> int:
        """Publish spike events: uint32 array (n_spikes, 2) of unit index and µs offset."""
        return self._send(wire.Kind.SPIKE_EVENTS, STREAM_EVENTS_SPIKES, unit_and_offset_us, t_rig_ns)

    def send_raw(self, samples: npt.NDArray[np.int16], t_rig_ns: int | None = None) -> int:
        """Publish a chunk of broadband samples, int16 (n_samples, n_channels)."""
        return self._send(wire.Kind.RAW_SAMPLES, STREAM_RAW, samples, t_rig_ns)

    def send_event(self, event: str, trial: int, t_rig_ns: int | None = None, **fields: Any) -> int:
        """Publish a trial/behaviour event (see docs/wire-protocol.md for names and fields)."""
        obj = {"event": event, "trial": trial, **fields}
        return self._send(wire.Kind.TRIAL_EVENT, STREAM_EVENTS, wire.json_bytes(obj), t_rig_ns)

    def send_ack(self, command: wire.LightCommandFields, status: wire.AckStatus,
                 t_received_rig_ns: int, t_light_change_rig_ns: int = 0) -> int:
        """Acknowledge a light command with the time the light actually changed."""
        ack = wire.LightAckFields(command.command_id, command.cause_seq, command.cause_t_send_ns,
                                  t_received_rig_ns, t_light_change_rig_ns, status)
        return self._send(wire.Kind.LIGHT_ACK, STREAM_ACKS, ack.pack())

    def heartbeat(self, **status: Any) -> int:
        """Publish a heartbeat carrying the rig description and any status fields."""
        return self._send(wire.Kind.HEARTBEAT, STREAM_HEARTBEAT,
                          wire.json_bytes({**self.description, **status}))

    # -- receiving ----------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> Received:
        """Collect every message rigd has sent, waiting up to ``timeout_ms`` for the first."""
        out = Received()
        if timeout_ms and not self._sub.poll(timeout_ms):
            return out
        while True:
            try:
                frames = self._sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return out
            try:
                if len(frames) != 2:
                    raise wire.WireError("frames", f"expected 2 frames, got {len(frames)}")
                h = wire.unpack_header(frames[0].buffer)
                wire.check_payload(h, frames[1].buffer)
                if h.kind == wire.Kind.HEARTBEAT:
                    out.heartbeats += 1
                    self.last_rigd_heartbeat_ns = self.clock_ns()
                    rigs = wire.payload_json(h, frames[1].buffer).get("rigs")
                    out.rigd_rigs = frozenset(r for r in rigs if isinstance(r, int)) if isinstance(rigs, list) \
                        else frozenset()
                elif h.kind == wire.Kind.LIGHT_COMMAND and h.rig_id == self.rig_id:
                    out.commands.append(wire.unpack_light_command(frames[1].buffer))
            except wire.WireError as exc:
                out.errors.append(str(exc))

    def connect(self, timeout_s: float = 10.0) -> None:
        """Announce the rig with heartbeats until rigd's heartbeat lists this rig's id.

        Seeing rigd's heartbeat alone proves only rigd → rig; PUB/SUB drops what the rig sends
        before rigd's subscription reaches it, so the rig waits until rigd says it holds this rig's
        description (both directions up): nothing sent after ``connect`` returns is lost to the join.
        Raises TimeoutError if that does not happen in ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        heard_rigd = False
        while time.monotonic() < deadline:
            self.heartbeat()
            end = min(deadline, time.monotonic() + 0.1)
            while (left := end - time.monotonic()) > 0:
                got = self.poll(timeout_ms=max(1, round(left * 1e3)))
                heard_rigd = heard_rigd or bool(got.heartbeats)
                if got.rigd_rigs is not None and self.rig_id in got.rigd_rigs:
                    return
        if heard_rigd:
            raise TimeoutError(f"rigd answers but does not list rig {self.rig_id} after {timeout_s} s "
                               f"(is {self.rig_id} among the config's rig_ids, and does the description "
                               f"carry 'n_units'? rigd status counts errors.ingest.unknown_rig and "
                               f"errors.heartbeat)")
        raise TimeoutError(f"rigd did not answer within {timeout_s} s "
                           f"(is it running and are the endpoints right?)")

    def close(self) -> None:
        """Close both sockets (pending messages get up to 1 s to leave)."""
        self._pub.close()
        self._sub.close()

    def __enter__(self) -> RigClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
