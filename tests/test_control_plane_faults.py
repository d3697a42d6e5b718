"""The control plane at its edges: strict JSON on the wire, and a broker that dies or restarts.

Real brokers and real processes: a status with NaN/inf arrives as RFC 8259 JSON (null), the
embedded broker killed under a running rigd is restarted on the same port, and a lab Mosquitto
stopped and started again mid-session gets the retained status back within seconds while the hot
loop loses no frame. (tests/test_service_input.py covers a broker that goes away for good.)
"""

import asyncio
import json
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from rig.broker import embedded_broker
from rig.control_plane import ControlPlane, parse_mqtt_url
from rig.errors import Counters
from rig.session import Session, strict_json, write_json_atomic
from tests.rigd_process import mosquitto, rigd

pytestmark = pytest.mark.slow
Msg = tuple[str, Any, bool, float]  # topic, strict-JSON object, retained, arrival (monotonic)


def _no_constants(name: str) -> Any:
    raise ValueError(f"not RFC 8259 JSON: bare {name}")


def strict_loads(data: bytes | str) -> Any:
    """Parse as a strict parser (JavaScript's JSON.parse) would: NaN/Infinity are errors."""
    return json.loads(data, parse_constant=_no_constants)


class Watcher:
    """Every message on ``topic`` (paho, its own thread; reconnects and resubscribes by itself)."""

    def __init__(self, url: str, topic: str) -> None:
        host, port = parse_mqtt_url(url)
        self.msgs: list[Msg] = []
        self.not_json: list[tuple[str, bytes, str]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.reconnect_delay_set(0.2, 0.5)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        if "/cmd/" in m.topic:
            return  # what clients (this test) send rigd, not what rigd publishes
        try:
            obj = strict_loads(m.payload)
        except ValueError as exc:  # JSONDecodeError is a ValueError too
            self.not_json.append((m.topic, bytes(m.payload), str(exc)))
            obj = None
        with self.cond:
            self.msgs.append((m.topic, obj, bool(m.retain), time.monotonic()))
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[Msg], bool], timeout: float, start: int = 0) -> tuple[int, Msg]:
        """The first message from index ``start`` on that satisfies ``pred`` (waits for it)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.msgs):
                    if pred(self.msgs[i]):
                        return i, self.msgs[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching message in {timeout} s; last: {self.msgs[-3:]}")
                self.cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _status(name: str, *, retained: bool | None = None, state: str = "running",
            after_frames: int = -1) -> Callable[[Msg], bool]:
    def pred(m: Msg) -> bool:
        t, o, r, _ = m
        return (t == f"rigd/{name}/status" and isinstance(o, dict) and o.get("state") == state
                and o.get("frames", 0) > after_frames and (retained is None or r == retained))
    return pred


def _reconnected(name: str) -> Callable[[Msg], bool]:
    """A status published after rigd reconnected to a broker."""
    base = _status(name)
    return lambda m: base(m) and m[1]["counters"].get("control_plane.reconnects", 0) >= 1


def _broker_child(parent: int) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == parent and stat[0] != "Z" and b"rig.broker" in cmd:
            return int(d.name)
    return None


def _wait(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise TimeoutError(what)


# --- strict JSON ---------------------------------------------------------------------------------


def test_strict_json_turns_every_non_finite_number_into_null() -> None:
    obj = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float32("nan"), "d": np.float64(2.0),
           "e": np.array([1.0, np.nan, np.inf]), "f": {"g": (np.int64(3), np.inf)}, "h": Path("/x"),
           "i": np.array([[np.nan]], dtype=np.float32)}
    out = strict_loads(strict_json(obj))
    assert out == {"a": None, "b": [None, None, 1.5], "c": None, "d": 2.0, "e": [1.0, None, None],
                   "f": {"g": [3, None]}, "h": "/x", "i": [[None]]}
    assert strict_loads(strict_json({"x": np.float32(0.5)})) == {"x": 0.5}  # a number, not the string "0.5"


def test_manifest_writer_is_strict_and_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    write_json_atomic(path, {"fit_accuracy": math.nan, "p99": np.float64("inf")})
    assert strict_loads(path.read_text()) == {"fit_accuracy": None, "p99": None}


async def _nan_status_over_broker() -> tuple[list[Msg], list[tuple[str, bytes, str]], Counters]:
    nan_status = {"state": "running", "frames": 0,
                  "latency_us": {"e2e": {"p50": math.nan, "p99": np.float64("nan"), "max": math.inf},
                                 "internal": {"p50": np.float32("nan"), "hist": np.array([np.nan, 1.0])}},
                  "decoder": {"fit_accuracy": math.nan, "online_accuracy": -math.inf},
                  "outcomes": {"control": {"n": 0, "correct": math.nan}}}
    counters = Counters()

    async def on_command(verb: str, payload: bytes) -> dict[str, Any] | None:
        return {"ok": True, "echo_len": len(payload), "score": math.nan}

    async with embedded_broker() as url:
        cp = ControlPlane(url, "strict", lambda: nan_status, lambda: {"e2e": {"p50": math.nan}},
                          on_command, counters, telemetry_period_s=0.2)
        task = asyncio.create_task(cp.run())
        await asyncio.wait_for(cp.connected.wait(), 20)
        w = Watcher(url, "rigd/strict/#")
        try:
            await asyncio.to_thread(w.wait_for, lambda m: m[0] == "rigd/strict/status" and m[2], 20)
            cp.alarm({"source": "test", "severity": "info", "message": "nan inside", "value": math.nan})
            w.client.publish("rigd/strict/cmd/status", b"", qos=1)
            await asyncio.to_thread(w.wait_for, lambda m: m[0] == "rigd/strict/status/result", 20)
            await asyncio.to_thread(w.wait_for, lambda m: m[0] == "rigd/strict/alarms", 20)
            await asyncio.to_thread(w.wait_for, lambda m: m[0] == "rigd/strict/telemetry", 20)
        finally:
            w.close()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return w.msgs, w.not_json, counters


def test_a_status_holding_nan_arrives_on_a_real_broker_as_strict_json() -> None:
    msgs, not_json, counters = asyncio.run(_nan_status_over_broker())
    assert not not_json, not_json  # every payload parsed without NaN/Infinity
    status = next(o for t, o, _, _ in msgs if t == "rigd/strict/status")
    assert status["decoder"] == {"fit_accuracy": None, "online_accuracy": None}
    assert status["latency_us"]["e2e"] == {"p50": None, "p99": None, "max": None}
    assert status["latency_us"]["internal"] == {"p50": None, "hist": [None, 1.0]}
    assert status["outcomes"]["control"]["correct"] is None
    assert next(o for t, o, _, _ in msgs if t == "rigd/strict/alarms")["value"] is None
    assert next(o for t, o, _, _ in msgs if t == "rigd/strict/status/result")["score"] is None
    assert counters.get("control_plane.publish_dropped") == 0


# --- broker restarts -----------------------------------------------------------------------------


def test_embedded_broker_killed_mid_session_is_restarted_and_status_republished(tmp_path: Path) -> None:
    with rigd(tmp_path, "--rig", "sim", name="bk") as r:
        info = r.wait_ready()
        url = info["mqtt"]
        w = Watcher(url, "rigd/bk/#")
        try:
            _, (_, first, _, _) = w.wait_for(_status("bk", after_frames=0), 30)
            old = _broker_child(r.proc.pid)
            assert old is not None
            n_before = len(w.msgs)
            os.kill(old, signal.SIGKILL)  # the broker dies under a running session
            new = _wait(lambda: (c := _broker_child(r.proc.pid)) not in (None, old) and c, 30,
                        "rigd did not start the broker again")
            # the first client reconnects by itself to the old URL and hears rigd again; one that
            # subscribes after that gets the status the new broker holds retained
            _, (_, back, _, _) = w.wait_for(_reconnected("bk"), 30, start=n_before)
            w2 = Watcher(url, "rigd/bk/status")
            try:
                _, (_, st, _, _) = w2.wait_for(_status("bk", retained=True, after_frames=back["frames"] - 1), 30)
            finally:
                w2.close()
        finally:
            w.close()
        assert _broker_child(r.proc.pid) == new
        assert st["counters"]["control_plane.reconnects"] >= 1 and st["frames"] > first["frames"]
        assert st["counters"].get("errors.loop.internal", 0) == 0
        alarms = [a for a in st["last_alarms"] if a.get("source") in ("broker", "control_plane")]
        assert any(a["source"] == "broker" and a["url"] == url and "restarted" in a["message"] for a in alarms), alarms
        assert any(a["source"] == "control_plane" and "reconnected" in a["message"] for a in alarms), alarms
        assert r.proc.poll() is None  # the session goes on
        assert not w.not_json


def test_mosquitto_restarted_mid_session_gets_status_back_and_the_loop_loses_nothing(tmp_path: Path) -> None:
    with mosquitto(tmp_path) as (url, broker), \
            rigd(tmp_path, "--rig", "sim", "--mqtt", url, name="mq") as r:
        r.wait_ready()
        w = Watcher(url, "rigd/mq/#")
        try:
            _, (_, before, _, _) = w.wait_for(_status("mq", after_frames=500), 60)
            n_before = len(w.msgs)
            broker.terminate()  # the lab broker restarts (e.g. a package upgrade)
            broker.wait(10)
            _wait(lambda: "unavailable" in r.output(), 30, "rigd did not notice the broker going away")
            t_down = time.monotonic()
            again = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                port = parse_mqtt_url(url)[1]
                _wait(lambda: _port_open(port), 20, "mosquitto did not come back")
                t_back = time.monotonic()
                # the first client reconnects by itself and hears rigd again; one that subscribes
                # after that, knowing nothing but what the broker holds, gets the retained status
                _, (_, _, _, t_st) = w.wait_for(_reconnected("mq"), 30, start=n_before)
                w2 = Watcher(url, "rigd/mq/status")
                try:
                    _, (_, st, _, _) = w2.wait_for(_status("mq", retained=True, after_frames=before["frames"]), 30)
                finally:
                    w2.close()
                assert t_st - t_back < 5.0, f"status republished {t_st - t_back:.1f} s after the broker returned"
                # the loop ran on through the outage: frames at the sim's 1 kHz, no internal errors
                assert st["frames"] - before["frames"] > 500 * (t_back - t_down)
                c = st["counters"]
                assert c["control_plane.disconnects"] >= 1 and c["control_plane.reconnects"] >= 1
                assert c.get("errors.loop.internal", 0) == 0
                assert r.cli("stop", "--name", "mq").returncode == 0
                assert r.wait(30) == 0
            finally:
                again.terminate()
                again.wait(10)
        finally:
            w.close()
        assert not w.not_json
        seq, _, _ = Session.open(r.session_dir()).counts()
        assert seq.size > 0 and np.all(np.diff(seq) == 1), "a frame went missing around the broker restart"


def _port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False
