"""The embedded MQTT broker rigd runs when no lab broker is configured (amqtt, in-process).

It owns only the broker's lifetime: pick a free port on the loopback interface (or a configured
one; never assume 1883 is free), start amqtt's Broker on the running event loop, and shut it down.
Lab installations point rigd at their own Mosquitto with ``--mqtt mqtt://host:port`` instead.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

from amqtt.broker import Broker


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def embedded_broker(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run an amqtt broker for the duration of the context; yields its ``mqtt://host:port`` URL."""
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    last_exc: Exception | None = None
    for _ in range(5):  # a port picked free can be taken before we bind it: retry with another
        p = port or free_port(host)
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{p}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(config)
        try:
            await broker.start()
        except Exception as exc:  # amqtt wraps bind errors in its own exception types
            last_exc = exc
            if port:
                break
            continue
        try:
            yield f"mqtt://{host}:{p}"
        finally:
            await broker.shutdown()
        return
    raise RuntimeError(f"could not start the embedded MQTT broker on {host}:{port or 'a free port'}: "
                       f"{last_exc}")
