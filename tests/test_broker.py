"""The embedded MQTT broker runs in its own process: it serves, refuses a taken port clearly, and
never outlives the rigd that started it (not even one killed with SIGKILL)."""

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import aiomqtt
import pytest

from rig.broker import embedded_broker
from tests.rigd_process import measured_calibration, rigd


def _broker_children(parent: int) -> list[int]:
    """PIDs of ``python -m rig.broker`` processes whose parent is ``parent``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"rig.broker" in cmd:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_embedded_broker_is_a_child_process_that_serves_and_stops() -> None:
    async with embedded_broker() as url:
        host, port = url.removeprefix("mqtt://").split(":")
        assert host == "127.0.0.1" and int(port) != 1883
        (child,) = _broker_children(os.getpid())
        async with aiomqtt.Client(host, int(port)) as client:
            await client.subscribe("rigd-test/#")
            await client.publish("rigd-test/x", b"hello", qos=1)
            msg = await asyncio.wait_for(anext(aiter(client.messages)), 10)
            assert msg.payload == b"hello"
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not _alive(child)


async def test_embedded_broker_on_a_taken_port_says_so() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"127\.0\.0\.1:{port}.*(in use|Errno)"):
            async with embedded_broker(port=port):
                pass
    assert not _broker_children(os.getpid())


def test_broker_does_not_outlive_a_killed_rigd(tmp_path: Path) -> None:
    with rigd(tmp_path, "--rig", "external", "--calibration", str(measured_calibration(tmp_path)), name="orphan") as r:
        r.wait_ready()
        (child,) = _broker_children(r.proc.pid)
        assert _alive(child)
        os.kill(r.proc.pid, signal.SIGKILL)
        r.proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the broker outlived rigd"
