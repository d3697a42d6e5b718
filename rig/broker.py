"""The embedded MQTT broker rigd runs when no lab broker is configured (amqtt, in its own process).

It owns only the broker's lifetime: pick a free port on the loopback interface (or a configured
one; never assume 1883 is free), run amqtt's Broker in a child process, and stop it. The broker
is pure Python: run inside rigd it would take the GIL the hot loop needs for every control-plane
message (measured: it delayed ~1 % of frames by up to milliseconds), so it gets its own
interpreter. The child exits when rigd closes its stdin, so it never outlives a killed rigd. A
child that dies mid-session is restarted (same port first) and the restart reported.
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
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

START_TIMEOUT_S = 30.0
log = logging.getLogger("rigd.broker")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


Alarm = dict[str, Any]


class EmbeddedBroker:
    """The broker child process, supervised: if it dies mid-session it is started again.

    The restart goes to the same port (clients reconnect to the URL they know); if that port cannot
    be had again and none was asked for, to a new free one. Each restart is logged and handed to
    ``on_restart`` as an alarm carrying the broker's ``url`` (which a caller compares with the old
    one to follow a move). A broker that keeps dying is restarted with a growing pause.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 on_restart: Callable[[Alarm], None] | None = None) -> None:
        self.host = host
        self.requested_port = port
        self.on_restart = on_restart
        self.url = ""
        self.restarts = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._err: Any = None  # the running child's stderr (a temporary file)
        self._started = 0.0

    @property
    def port(self) -> int:
        """The port the broker serves on (0 before it started)."""
        return int(self.url.rsplit(":", 1)[1]) if self.url else 0

    async def start(self, port: int | None = None) -> str:
        """Start the child on ``port`` (default: the requested one); its URL, or RuntimeError why not."""
        port = self.requested_port if port is None else port
        err = tempfile.TemporaryFile()  # noqa: SIM115 - the child's stderr: kept open while it runs
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rig.broker", "--host", self.host, "--port", str(port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        except BaseException:  # cancelled while starting (rigd is stopping): leave no child behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            err.close()
            raise
        url = line.decode(errors="replace").strip()
        if not url.startswith("mqtt://"):
            try:
                await asyncio.wait_for(proc.wait(), 5.0)  # it exits by itself when it cannot serve
            except TimeoutError:
                proc.kill()
                await proc.wait()
            detail = _last_line(err) or f"exit status {proc.returncode}"
            err.close()
            raise RuntimeError(f"could not start the embedded MQTT broker on {self.host}:"
                               f"{port or 'a free port'}: {detail}")
        self.proc, self.url, self._started = proc, url, time.monotonic()
        if self._err is not None:
            self._err.close()
        self._err = err
        return url

    async def supervise(self) -> None:
        """Until cancelled: wait for the child to exit, then start it again (same port first)."""
        pause = 0.0
        while True:
            assert self.proc is not None
            rc = await self.proc.wait()
            old = self.url
            why = _last_line(self._err) if self._err is not None else ""
            # dying again within 10 s of a start: back off (0, 1, 2, 4 … 30 s), else restart at once
            pause = min(30.0, max(1.0, 2 * pause)) if time.monotonic() - self._started < 10.0 else 0.0
            log.warning("embedded MQTT broker %s exited (code %s%s); restarting", old, rc, f": {why}" if why else "")
            new = await self._restart(pause)
            self.restarts += 1
            moved = f"; it moved to {new} (port {self.port} was taken)" if new != old else ""
            msg = f"embedded MQTT broker {old} exited (code {rc}) and was restarted on {new}{moved}"
            log.warning("%s", msg)
            print(f"rigd: {msg}", file=sys.stderr, flush=True)
            if self.on_restart is not None:
                self.on_restart({"source": "broker", "severity": "error" if new != old else "warning",
                                 "message": msg, "url": new, "previous_url": old, "exit_code": rc,
                                 "restarts": self.restarts})

    async def _restart(self, pause: float) -> str:
        same = self.port
        while True:
            await asyncio.sleep(pause)
            for _ in range(3):  # the old port first: every client knows that URL
                try:
                    return await self.start(same)
                except RuntimeError as exc:
                    log.warning("%s", exc)
                    await asyncio.sleep(1.0)
            if not self.requested_port:  # no port was asked for: any free one will do
                try:
                    return await self.start(0)
                except RuntimeError as exc:
                    log.warning("%s", exc)
            pause = min(30.0, max(1.0, 2 * pause))

    async def stop(self) -> None:
        """Stop the child (close its stdin; SIGKILL after 5 s)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()  # the child's signal to stop
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._err is not None:
            self._err.close()
            self._err = None


def _last_line(f: Any) -> str:
    """The last line the child wrote to its stderr file (its one-line reason)."""
    try:
        f.seek(0)
        lines = f.read().decode(errors="replace").strip().splitlines()
    except (OSError, ValueError):
        return ""
    return lines[-1] if lines else ""


@contextlib.asynccontextmanager
async def embedded_broker(host: str = "127.0.0.1", port: int = 0,
                          on_restart: Callable[[Alarm], None] | None = None) -> AsyncIterator[str]:
    """Run the broker process for the duration of the context, restarting it if it dies.

    Yields its ``mqtt://host:port`` URL; ``on_restart(alarm)`` hears of each restart (see
    :class:`EmbeddedBroker`).
    """
    broker = EmbeddedBroker(host, port, on_restart)
    await broker.start()
    watch = asyncio.create_task(broker.supervise(), name="rigd-broker-supervisor")
    try:
        yield broker.url
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await broker.stop()


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
