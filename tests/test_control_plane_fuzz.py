"""Fuzz of the control plane's command parsing: whatever arrives on MQTT, nothing escapes.

Arbitrary topics and arbitrary bytes go through :meth:`ControlPlane.handle` (what the MQTT
listener calls for every message) into the real ``Service.on_command`` of a service built as
``rigd start`` builds it. Each input is either accepted (a stop requested, a status published, a
protocol checked ok) or counted under ``errors.*`` with an answer that names what was wrong; every
answer is strict JSON. Only the broker's publish is replaced by a list, to see the answers.
"""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocols
from controllers.protocol import load_protocol
from rig.config import ServiceConfig
from rig.control_plane import COMMANDS, MAX_COMMAND_BYTES, ControlPlane
from rig.session import strict_json
from rig.supervisor import Service

PREFIX = "rigd/fuzz"
SHIPPED = [p.read_bytes() for p in Path(protocols.__file__).parent.glob("*.toml")]


class RecordingPlane(ControlPlane):
    """The real control plane; what it would publish is kept (and serialised strictly)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sent: list[tuple[str, Any]] = []

    async def publish_now(self, subtopic: str, obj: dict[str, Any], retain: bool = False, qos: int = 1) -> None:
        text = strict_json(obj)  # allow_nan=False: a non-finite number here raises
        self.sent.append((subtopic, json.loads(text, parse_constant=_bare)))


def _bare(name: str) -> Any:
    raise AssertionError(f"bare {name} in a control-plane payload")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[asyncio.AbstractEventLoop, Service,
                                                                      RecordingPlane]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    mp = pytest.MonkeyPatch()
    mp.setenv("RIGD_RUNTIME_DIR", str(tmp / "runtime"))
    loop = asyncio.new_event_loop()

    async def build() -> tuple[Service, RecordingPlane]:
        cfg = ServiceConfig(name="fuzz", rig="external", session_dir=tmp)
        protocol = load_protocol(protocols.shipped()[protocols.DEFAULT])
        directory = tmp / "session"
        directory.mkdir()
        svc = Service(cfg, protocol, directory)
        # the fuzz asks this in-process service to stop many times: its shutdown clock (which ends
        # the process when a real shutdown overruns) must not run in the test process
        guard = getattr(svc, "guard", None)
        if guard is not None:
            guard.finished()
        cp = RecordingPlane("mqtt://127.0.0.1:1", cfg.name, svc.status, svc.telemetry_summary,
                            svc.on_command, svc.counters)
        svc.control = cp
        return svc, cp

    svc, cp = loop.run_until_complete(build())
    try:
        yield loop, svc, cp
    finally:
        svc.recorder.close()
        close_ledgers = getattr(svc, "close_ledgers", None)  # its writer thread would hold the process
        if close_ledgers is not None:
            close_ledgers()
        svc.hot.stop()  # never started: its sockets are closed here, or the context's term() waits
        svc.hot.sub.close(linger=0)
        svc.hot.pub.close(linger=0)
        svc.hot.ctx.term()
        loop.close()
        mp.undo()


def _errors(svc: Service) -> int:
    return sum(v for k, v in svc.counters.snapshot().items() if k.startswith("errors."))


def _exercise(plane: tuple[asyncio.AbstractEventLoop, Service, RecordingPlane], topic: str, payload: Any) -> None:
    loop, svc, cp = plane
    svc.stop_event.clear()
    svc.stop_reason = ""
    errors, n_sent = _errors(svc), len(cp.sent)
    loop.run_until_complete(cp.handle(topic, payload))  # raises nothing, whatever the input
    sent = cp.sent[n_sent:]
    counted = _errors(svc) > errors
    verb = topic.removeprefix(f"{PREFIX}/cmd/") if topic.startswith(f"{PREFIX}/cmd/") else None
    if verb not in COMMANDS:
        assert counted and sent == [("errors", {"topic": topic, "error": "unknown command topic",
                                                "expected": [f"{PREFIX}/cmd/{v}" for v in COMMANDS]})]
    elif verb == "stop":
        assert svc.stop_event.is_set() and sent == [("stop/result", {"ok": True, "stopping": True})]
    elif verb == "status":
        assert [t for t, _ in sent] == ["status"] and sent[0][1]["name"] == "fuzz"
    else:
        (subtopic, reply), = sent
        assert subtopic == "protocol/result"
        if reply["ok"]:
            assert not counted
        else:  # refused: counted, and the answer says why
            assert counted and reply.get("errors") and all(isinstance(e, str) and e for e in reply["errors"])


TOPICS = st.one_of(
    st.sampled_from([f"{PREFIX}/cmd/{v}" for v in COMMANDS]),
    st.text(max_size=60).map(lambda s: f"{PREFIX}/cmd/{s}"),
    st.text(max_size=80),
    st.sampled_from([f"{PREFIX}/cmd/stop/", f"{PREFIX}/cmd/STOP", f"{PREFIX}/cmd", "rigd/other/cmd/stop",
                     f"{PREFIX}/cmd/stop\x00", f"{PREFIX}/cmd/protocol/x", "#", "+/+", ""]),
)
PAYLOADS = st.one_of(
    st.binary(max_size=4096),
    st.text(max_size=2000).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from(SHIPPED),
    st.sampled_from(SHIPPED).flatmap(lambda p: st.integers(0, len(p)).map(lambda k: p[:k])),  # cut short
    st.sampled_from(SHIPPED).flatmap(lambda p: st.binary(min_size=1, max_size=8).map(lambda b: p + b)),
    st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=50)),  # what an MQTT client may hand over
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(topic=TOPICS, payload=PAYLOADS)
def test_any_topic_and_payload_is_accepted_or_counted(plane: Any, topic: str, payload: Any) -> None:
    _exercise(plane, topic, payload)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=PAYLOADS)
def test_any_protocol_payload_is_checked_or_refused_with_the_reason(plane: Any, payload: Any) -> None:
    _exercise(plane, f"{PREFIX}/cmd/protocol", payload)


def test_shipped_protocols_are_accepted_and_an_oversized_payload_is_refused_unread(plane: Any) -> None:
    _, svc, cp = plane
    for text in SHIPPED:
        _exercise(plane, f"{PREFIX}/cmd/protocol", text)
        assert cp.sent[-1][1]["ok"] is True
    before = svc.counters.get("errors.mqtt.too_large")
    _exercise(plane, f"{PREFIX}/cmd/protocol", b"x" * (MAX_COMMAND_BYTES + 1))
    assert svc.counters.get("errors.mqtt.too_large") == before + 1
    assert "larger than" in cp.sent[-1][1]["errors"][0]
