"""The embedded MQTT broker rigd runs when no lab broker is configured (amqtt, in its own process).

It owns only the broker's lifetime: pick a free port on the loopback interface (or a configured
one; never assume 1883 is free), run amqtt's Broker in a child process, and stop it. The broker
is pure Python: run inside rigd it would take the GIL the hot loop needs for every control-plane
message (measured: it delayed ~1 % of frames by up to milliseconds), so it gets its own
interpreter. The child exits when rigd closes its stdin, so it never outlives a killed rigd.
Lab installations point rigd at their own Mosquitto with ``--mqtt mqtt://host:port`` instead.

    python -m rig.broker [--host 127.0.0.1] [--port 0]   # prints mqtt://host:port once serving
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

START_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def embedded_broker(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run the broker process for the duration of the context; yields its ``mqtt://host:port`` URL."""
    with tempfile.TemporaryFile() as err:  # its stderr: read back if it fails to start
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rig.broker", "--host", host, "--port", str(port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err)
        try:
            assert proc.stdout is not None
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
            except TimeoutError:
                line = b""
            url = line.decode(errors="replace").strip()
            if not url.startswith("mqtt://"):
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)  # it exits by itself when it cannot serve
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                err.seek(0)
                detail = err.read().decode(errors="replace").strip().splitlines()[-1:]  # its one-line reason
                raise RuntimeError(f"could not start the embedded MQTT broker on {host}:{port or 'a free port'}: "
                                   + (detail[0] if detail else f"exit status {proc.returncode}"))
            yield url
        finally:
            if proc.returncode is None:
                assert proc.stdin is not None
                proc.stdin.close()  # the child's signal to stop
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def serve(host: str, port: int) -> None:
    """Child side: start amqtt on ``host:port`` (0: a free one), print the URL, stop at stdin EOF."""
    from amqtt.broker import Broker

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
            print(f"mqtt://{host}:{p}", flush=True)
            await _until_stdin_closes()
        finally:
            await broker.shutdown()
        return
    print(f"{type(last_exc).__name__}: {last_exc}", file=sys.stderr, flush=True)
    raise SystemExit(1)


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    eof = asyncio.ensure_future(reader.read())  # rigd never writes: this returns at EOF
    halt = asyncio.ensure_future(stop.wait())
    await asyncio.wait({eof, halt}, return_when=asyncio.FIRST_COMPLETED)
    for t in (eof, halt):
        t.cancel()


def main() -> None:
    """``python -m rig.broker``: the child process :func:`embedded_broker` starts."""
    ap = argparse.ArgumentParser(description="rigd's embedded MQTT broker (amqtt)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    a = ap.parse_args()
    # Ctrl-C in rigd's terminal reaches the whole process group: rigd, not the user, ends the broker
    # (after its last status has gone out), by closing our stdin
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(serve(a.host, a.port))


if __name__ == "__main__":
    main()
