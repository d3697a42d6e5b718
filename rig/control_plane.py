"""The MQTT control plane (aiomqtt): status, telemetry, alarms out; stop and protocols in.

Topics (all under ``rigd/<name>/``, documented in docs/control-plane.md):

* ``status``      retained JSON, last-will ``{"state": "offline"}`` (retained); 1 Hz refresh at QoS 0
* ``telemetry``   JSON summary, 1 Hz, QoS 0
* ``alarms``      JSON, one message per alarm (QoS 1)
* ``session``     retained JSON: the current session (directory, start/stop, protocol hash)
* ``cmd/stop``    any payload: end the session and exit
* ``cmd/protocol``  protocol text (TOML/YAML); checked, reply on ``protocol/result``
* ``cmd/status``  any payload: publish status now

It owns the broker connection only; it never touches the per-frame path. If the broker goes
away (or restarts) it reconnects every second while alarms queue (bounded, drops counted); on
reconnecting it republishes the retained status and session and raises one alarm saying how long
the broker was gone. The loop keeps running regardless. Garbage on a command topic is counted
and answered on ``errors``. Every payload is strict RFC 8259 JSON: non-finite numbers go out as
``null`` (:func:`rig.session.strict_json`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import aiomqtt

from rig.errors import Counters
from rig.session import strict_json

log = logging.getLogger("rigd.control")
MAX_PENDING_ALARMS = 1000
MAX_COMMAND_BYTES = 1 << 20  #: a command payload above this is refused unread (a protocol is a few KiB)
COMMANDS = ("stop", "protocol", "status")
RECONNECT_S = 1.0
Alarm = dict[str, Any]


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` → (host, port); ValueError naming what is wrong."""
    u = urlparse(url)
    if u.scheme not in ("mqtt", "tcp") or not u.hostname:
        raise ValueError(f"--mqtt must look like mqtt://host:port, got {url!r}")
    return u.hostname, u.port or 1883


class ControlPlane:
    """One rigd instance's presence on the broker.

    Args:
        url: broker URL.
        name: instance name (topic prefix ``rigd/<name>``).
        status: returns the current status dict (called from the event loop).
        telemetry: returns the current telemetry summary dict.
        on_command: ``await on_command(verb, payload)`` for ``cmd/<verb>`` messages; returns a
            reply dict (published on ``<verb>/result``) or None.
        counters: where garbage and drops are counted.
        on_alarm: where the control plane's own alarms go (broker lost and back); default: published
            directly on ``alarms``. A service passes its alarm sink so they are counted and listed.
    """

    def __init__(
        self,
        url: str,
        name: str,
        status: Callable[[], dict[str, Any]],
        telemetry: Callable[[], dict[str, Any]],
        on_command: Callable[[str, bytes], Awaitable[dict[str, Any] | None]],
        counters: Counters,
        telemetry_period_s: float = 1.0,
        on_alarm: Callable[[Alarm], None] | None = None,
    ) -> None:
        self.host, self.port = parse_mqtt_url(url)
        self.url = url
        self.prefix = f"rigd/{name}"
        self._status = status
        self._telemetry = telemetry
        self._on_command = on_command
        self.counters = counters
        self.period = telemetry_period_s
        self._alarms: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_PENDING_ALARMS)
        self._session: dict[str, Any] | None = None
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._final: dict[str, Any] | None = None
        self._on_alarm = on_alarm if on_alarm is not None else self.alarm
        self._lost_at: float | None = None  # monotonic time the broker connection was lost
        self._lost_reason = ""
        self._url_changed = asyncio.Event()

    # -- called from the event loop (or via call_soon_threadsafe) ------------------------------

    def alarm(self, alarm: dict[str, Any]) -> None:
        """Queue an alarm for publication (drops and counts when the broker is away too long)."""
        try:
            self._alarms.put_nowait(alarm)
        except asyncio.QueueFull:
            self.counters.inc("control_plane.alarms_dropped")

    def set_session(self, session: dict[str, Any]) -> None:
        """The session description published (retained) on ``session``."""
        self._session = session

    def set_url(self, url: str) -> None:
        """Use another broker from the next connection on (the embedded broker restarted elsewhere)."""
        self.host, self.port = parse_mqtt_url(url)
        self.url = url
        self._url_changed.set()

    async def publish_now(self, subtopic: str, obj: dict[str, Any], retain: bool = False, qos: int = 1) -> None:
        """Publish one JSON message if connected (else count it as dropped)."""
        c = self._client
        if c is None:
            self.counters.inc("control_plane.publish_dropped")
            return
        try:
            await c.publish(f"{self.prefix}/{subtopic}", strict_json(obj), qos=qos, retain=retain)
        except aiomqtt.MqttError:
            self.counters.inc("control_plane.publish_dropped")

    async def close(self, final_status: dict[str, Any]) -> None:
        """Publish the final retained status before disconnecting."""
        self._final = final_status
        await self.publish_now("status", final_status, retain=True)

    # -- the connection -----------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected until cancelled, reconnecting every second."""
        will = aiomqtt.Will(f"{self.prefix}/status", strict_json({"state": "offline"}), qos=1, retain=True)
        while True:
            self._url_changed.clear()
            try:
                async with aiomqtt.Client(self.host, self.port, will=will, keepalive=5,
                                          timeout=5) as client:
                    self._client = client
                    self.counters.inc("control_plane.connects")
                    await client.subscribe(f"{self.prefix}/cmd/#", qos=1)
                    self.connected.set()  # connected *and* listening for commands
                    self._back()  # first: the status published next counts the reconnection
                    # a broker that restarted has lost every retained message: publish them again
                    status = self._safe(self._status, "status")
                    if status is not None:
                        await self.publish_now("status", status, retain=True)
                    if self._session is not None:
                        await self.publish_now("session", self._session, retain=True)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._publisher())
                        tg.create_task(self._alarm_publisher())
                        tg.create_task(self._listener(client))
                        tg.create_task(self._until_url_changes())
            except* aiomqtt.MqttError as eg:
                self._lost(f"{eg.exceptions[0]}")
            except* Exception as eg:  # a bug here must not end the session: count it, reconnect
                self.counters.error("control_plane", "internal", f"{type(eg.exceptions[0]).__name__}: "
                                    f"{eg.exceptions[0]}")
                log.exception("control plane: internal error; reconnecting", exc_info=eg.exceptions[0])
                self._lost(f"internal error {eg.exceptions[0]!r}")
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(RECONNECT_S)

    def _lost(self, reason: str) -> None:
        self.counters.inc("control_plane.disconnects")
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            self._lost_reason = reason
            log.warning("control plane: broker %s unavailable (%s); retrying every %.0f s", self.url,
                        reason, RECONNECT_S)

    def _back(self) -> None:
        """Connected again after a loss: count it and raise one alarm for the whole outage."""
        if self._lost_at is None:
            return
        gone_s = time.monotonic() - self._lost_at
        self._lost_at = None
        self.counters.inc("control_plane.reconnects")
        msg = (f"MQTT broker {self.url} was unreachable for {gone_s:.1f} s ({self._lost_reason}); "
               "reconnected, retained status and session republished")
        log.warning("control plane: %s", msg)
        self._on_alarm({"source": "control_plane", "severity": "warning", "message": msg,
                        "broker": self.url, "unreachable_s": round(gone_s, 3)})

    async def _until_url_changes(self) -> None:
        await self._url_changed.wait()
        raise aiomqtt.MqttError(f"broker moved to {self.url}")

    def _safe(self, fn: Callable[[], dict[str, Any]], what: str) -> dict[str, Any] | None:
        """``fn()``, or None with the failure counted: a status bug must not cost the connection."""
        try:
            return fn()
        except Exception as exc:
            self.counters.error("control_plane", f"{what}_failed", f"building {what}: {type(exc).__name__}: {exc}")
            return None

    async def _publisher(self) -> None:
        # the 1 Hz refresh goes at QoS 0: no PUBACK to wait for, so two fewer wake-ups of this thread
        # a second, each of which takes the GIL from the polling hot loop (docs/benchmarks.md); the
        # next refresh replaces a lost one, and the first and the final status go at QoS 1
        while True:
            status = self._safe(self._status, "status")
            if status is not None:
                await self.publish_now("status", status, retain=True, qos=0)
            telemetry = self._safe(self._telemetry, "telemetry")
            if telemetry is not None:
                await self.publish_now("telemetry", telemetry, qos=0)
            await asyncio.sleep(self.period)

    async def _alarm_publisher(self) -> None:
        while True:
            alarm = await self._alarms.get()
            c = self._client
            if c is None:
                raise aiomqtt.MqttError("not connected")
            await c.publish(f"{self.prefix}/alarms", strict_json(alarm), qos=1)

    async def _listener(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            await self.handle(str(msg.topic), msg.payload)

    async def handle(self, topic: str, payload: Any) -> None:
        """Parse and act on one message from ``<prefix>/cmd/#``: anything else is counted and answered.

        ``payload`` is what the MQTT client delivers (bytes; str, numbers or None are accepted as their
        text). Never raises for any input: unknown topics, oversized payloads and commands that fail
        are counted under ``errors.mqtt.<reason>`` and answered on ``errors`` or ``<verb>/result``.
        """
        verb = topic.removeprefix(f"{self.prefix}/cmd/") if topic.startswith(f"{self.prefix}/cmd/") else None
        if verb not in COMMANDS:
            self.counters.error("mqtt", "unknown_topic", f"unknown command topic {topic!r}; "
                                f"expected {self.prefix}/cmd/{'|'.join(COMMANDS)}")
            await self.publish_now("errors", {"topic": topic, "error": "unknown command topic",
                                              "expected": [f"{self.prefix}/cmd/{v}" for v in COMMANDS]})
            return
        data = _payload_bytes(payload)
        if len(data) > MAX_COMMAND_BYTES:
            self.counters.error("mqtt", "too_large", f"{topic}: payload of {len(data)} bytes; "
                                f"at most {MAX_COMMAND_BYTES} accepted")
            await self.publish_now(f"{verb}/result", {"ok": False, "errors": [
                f"payload of {len(data)} bytes is larger than the {MAX_COMMAND_BYTES} bytes accepted"]})
            return
        try:
            reply = await self._on_command(verb, data)
        except Exception as exc:  # a bad command must never take the service down
            self.counters.error("mqtt", "command_failed", f"{topic}: {type(exc).__name__}: {exc}")
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if reply is not None:
            await self.publish_now(f"{verb}/result", reply)


def _payload_bytes(payload: Any) -> bytes:
    """The payload as bytes, whatever type the MQTT client delivered it as."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode("utf-8", "surrogatepass")
