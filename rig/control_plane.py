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
away it reconnects every second while alarms queue (bounded, drops counted), and the loop
keeps running regardless. Garbage on a command topic is counted and answered on ``errors``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import aiomqtt

from rig.errors import Counters

log = logging.getLogger("rigd.control")
MAX_PENDING_ALARMS = 1000


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

    async def publish_now(self, subtopic: str, obj: dict[str, Any], retain: bool = False, qos: int = 1) -> None:
        """Publish one JSON message if connected (else count it as dropped)."""
        c = self._client
        if c is None:
            self.counters.inc("control_plane.publish_dropped")
            return
        try:
            await c.publish(f"{self.prefix}/{subtopic}", json.dumps(obj, default=str), qos=qos, retain=retain)
        except aiomqtt.MqttError:
            self.counters.inc("control_plane.publish_dropped")

    async def close(self, final_status: dict[str, Any]) -> None:
        """Publish the final retained status before disconnecting."""
        self._final = final_status
        await self.publish_now("status", final_status, retain=True)

    # -- the connection -----------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected until cancelled, reconnecting every second."""
        will = aiomqtt.Will(f"{self.prefix}/status", json.dumps({"state": "offline"}), qos=1, retain=True)
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, will=will, keepalive=5,
                                          timeout=5) as client:
                    self._client = client
                    self.counters.inc("control_plane.connects")
                    await client.subscribe(f"{self.prefix}/cmd/#", qos=1)
                    self.connected.set()  # connected *and* listening for commands
                    await self.publish_now("status", self._status(), retain=True)
                    if self._session is not None:
                        await self.publish_now("session", self._session, retain=True)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._publisher())
                        tg.create_task(self._alarm_publisher())
                        tg.create_task(self._listener(client))
            except* aiomqtt.MqttError as eg:
                self.counters.inc("control_plane.disconnects")
                log.warning("control plane: broker %s unavailable (%s); retrying", self.url,
                            eg.exceptions[0])
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(1.0)

    async def _publisher(self) -> None:
        # the 1 Hz refresh goes at QoS 0: no PUBACK to wait for, so two fewer wake-ups of this thread
        # a second, each of which takes the GIL from the polling hot loop (docs/benchmarks.md); the
        # next refresh replaces a lost one, and the first and the final status go at QoS 1
        while True:
            await self.publish_now("status", self._status(), retain=True, qos=0)
            await self.publish_now("telemetry", self._telemetry(), qos=0)
            await asyncio.sleep(self.period)

    async def _alarm_publisher(self) -> None:
        while True:
            alarm = await self._alarms.get()
            c = self._client
            if c is None:
                raise aiomqtt.MqttError("not connected")
            await c.publish(f"{self.prefix}/alarms", json.dumps(alarm, default=str), qos=1)

    async def _listener(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            topic = str(msg.topic)
            verb = topic.removeprefix(f"{self.prefix}/cmd/")
            payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else str(msg.payload).encode()
            if verb not in ("stop", "protocol", "status"):
                self.counters.error("mqtt", "unknown_topic", f"unknown command topic {topic!r}; "
                                    f"expected {self.prefix}/cmd/stop|protocol|status")
                await self.publish_now("errors", {"topic": topic, "error": "unknown command topic"})
                continue
            try:
                reply = await self._on_command(verb, bytes(payload))
            except Exception as exc:  # a bad command must never take the service down
                self.counters.error("mqtt", "command_failed", f"{topic}: {exc}")
                reply = {"ok": False, "error": str(exc)}
            if reply is not None:
                await self.publish_now(f"{verb}/result", reply)
