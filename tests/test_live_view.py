"""The live view, end to end: recorder tap → LiveState → aiohttp SSE → a real headless Chromium.

Chromium is Debian's ``chromium`` package (installed by ``scripts/setup --dev``), driven through
its own DevTools protocol over a websocket (aiohttp's client): the test launches it headless with
``--remote-debugging-port=0``, reads the port from ``DevToolsActivePort``, navigates to the page
and evaluates DOM reads with ``Runtime.evaluate``. No browser is downloaded, nothing is mocked:
real sockets, a real Recorder writing a real session directory, a real browser process.

Two sources feed the page:
* ``test_page_*``: a real Recorder written by a small publisher thread in the real wire format
  (frames, events, decoder chunks, light commands/acks, an interlock refusal). It runs in a few
  seconds and does not depend on the rest of the service.
* ``test_rigd_start_sim_*``: a real ``rigd start --rig sim`` subprocess, whose calibration file
  allows no early perturbations beyond 30 % (no small-N allowance), so that the interlock refuses
  at run time and raises real alarms (a protocol the check rejects would not start at all).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from hardware.calibration import DEFAULT_CALIBRATION
from rig import wire
from rig.live_state import Cursor, LiveState
from rig.live_view import LiveView
from rig.session import Recorder, Session
from rig.telemetry import LoopTelemetry

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (scripts/setup --dev installs it)",
)
ARTIFACTS = Path(os.environ.get("RIGD_TEST_ARTIFACTS", tempfile.gettempdir())) / "rigd-live-view"
NS = 1_000_000_000


# -- a small real publisher writing the wire format into a real Recorder ------------------------


class BenchService:
    """The parts of rig.supervisor.Service the live view reads, around a real Recorder."""

    def __init__(self, directory: Path) -> None:
        self.recorder = Recorder(directory, flush_interval_s=0.05)
        self.telemetry = LoopTelemetry()
        self.state = "running"
        self.trials = 0
        self.frames = 0

    def telemetry_summary(self) -> dict[str, Any]:
        self.telemetry.collect()
        return self.telemetry.summary(deadline_us=10_000.0)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "name": "bench",
            "trials_done": self.trials,
            "frames": self.frames,
            "counters": {"recorder_dropped": self.recorder.dropped, "late_decisions": 0},
            "protocol": {"name": "bench", "sha256": "0" * 64},
            "interlock": {},
            "decoder": {},
        }


class Publisher(threading.Thread):
    """Short delay-task trials at 200 Hz frames: counts, events, decoder chunks, light, alarms."""

    N_LEFT, N_RIGHT, BIN_NS = 40, 40, 5_000_000

    def __init__(self, svc: BenchService, refuse_from_trial: int = 3) -> None:
        super().__init__(daemon=True)
        self.svc = svc
        self.refuse_from_trial = refuse_from_trial
        self.stop_flag = threading.Event()
        self.rng = np.random.default_rng(1)
        self.seq = 0

    def _put(self, kind: wire.Kind, payload: Any, t: int, rig_id: int = 1, stream: int = 0) -> None:
        h, p = wire.encode(
            kind, payload, rig_id=rig_id, stream_id=stream, seq=self.seq, t_rig_ns=t, t_send_ns=t
        )
        self.seq += 1
        self.svc.recorder.put(h, p, time.monotonic_ns())

    def _event(self, t: int, **ev: Any) -> None:
        self._put(wire.Kind.TRIAL_EVENT, wire.json_bytes(ev), t, stream=1)

    def run(self) -> None:
        rec, n = self.svc.recorder, self.N_LEFT + self.N_RIGHT
        desc = {
            "rig": "bench",
            "n_units": n,
            "units_left": self.N_LEFT,
            "units_right": self.N_RIGHT,
            "bin_s": 0.005,
        }
        self._put(wire.Kind.HEARTBEAT, wire.json_bytes(desc), time.monotonic_ns(), stream=3)
        trial, cmd_id = 0, 0
        while not self.stop_flag.is_set():
            t_start = time.monotonic_ns()
            # compressed trial: presample 0.1, sample 0.3, delay 0.4, response 0.3 s
            t_sample, t_delay, t_go = t_start + NS // 10, t_start + 4 * NS // 10, t_start + 8 * NS // 10
            side = "right" if trial % 2 else "left"
            self._event(
                t_start,
                event="trial_start",
                trial=trial,
                instructed=side,
                delay_s=0.4,
                t_sample_ns=t_sample,
                t_delay_ns=t_delay,
                t_go_ns=t_go,
            )
            condition = ("control", "left", "right", "bilateral")[trial % 4]
            light_done = condition == "control"
            light_info: dict[str, str] | None = None  # what rigd's trial summary says of the light
            dec_rows: list[list[float]] = []
            t_end = t_go + 3 * NS // 10
            while (now := time.monotonic_ns()) < t_end and not self.stop_flag.is_set():
                rate = 0.05 + 0.1 * (t_sample < now < t_go)
                counts = self.rng.poisson(rate, n).astype(np.uint8)
                self._put(wire.Kind.SPIKE_COUNTS, counts, now)
                self.svc.frames += 1
                t_s = (now - t_go) / NS
                sign = 1.0 if side == "right" else -1.0
                dec_rows.append(
                    [
                        self.seq,
                        now,
                        t_s,
                        sign * max(0.0, t_s + 0.7),
                        0.5,
                        sign * max(0.0, t_s + 0.7) + 0.1,
                        sign * max(0.0, t_s + 0.7) - 0.1,
                    ]
                )
                t0 = time.monotonic_ns()
                self.svc.telemetry.record(self.seq, t0, t0 + 20_000, t0 + 60_000, t0 + 80_000, t0 + 90_000)
                if not light_done and now >= t_delay:
                    light_done = True
                    if trial >= self.refuse_from_trial:
                        rec.alarm(
                            {
                                "alarm": "light_refused",
                                "limit": "max_power_mw_per_spot",
                                "reason": "power 12 mW per spot exceeds the cap 10 mW",
                                "value": 12.0,
                                "allowed": 10.0,
                                "trial": trial,
                                "condition": condition,
                                "t_local_ns": now,
                            },
                            now,
                        )
                    else:
                        spots_l = 0b1111 if condition in ("left", "bilateral") else 0
                        spots_r = 0b1111 if condition in ("right", "bilateral") else 0
                        cmd = wire.LightCommandFields(
                            cmd_id,
                            self.seq,
                            now,
                            now,
                            now + 10_000_000,
                            0,
                            trial,
                            wire.LightAction.START,
                            wire.Waveform.SINE,
                            spots_l,
                            spots_r,
                            1.5,
                            0.3,
                            0.1,
                            40.0,
                        )
                        self._put(wire.Kind.LIGHT_COMMAND, cmd.pack(), now, stream=2)
                        ack = wire.LightAckFields(
                            cmd_id, self.seq, now, now + 300_000, now + 400_000, wire.AckStatus.APPLIED
                        )
                        self._put(wire.Kind.LIGHT_ACK, ack.pack(), now + 400_000, stream=2)
                        self.svc.telemetry.add_e2e(400.0)
                        light_info = {"hemisphere": condition, "status": "applied"}
                        cmd_id += 1
                if len(dec_rows) >= 40:
                    rec.put_message(wire.Kind.DECODER_OUTPUT, np.array(dec_rows), now)
                    dec_rows = []
                time.sleep(self.BIN_NS / NS)
            self._event(t_go, event="go_cue", trial=trial)
            choice = side if trial % 3 else ("left" if side == "right" else "right")
            outcome = "hit" if choice == side else "error"
            self._event(
                t_end, event="outcome", trial=trial, outcome=outcome, choice=choice, reaction_time_s=0.1
            )
            self._event(t_end, event="trial_end", trial=trial)
            rec.log(
                {
                    "type": "trial",
                    "trial": trial,
                    "instructed": side,
                    "outcome": outcome,
                    "choice": choice,
                    "condition": condition,
                    "light": light_info,
                    "refused": ["max_power_mw_per_spot"]
                    if trial >= self.refuse_from_trial and condition != "control"
                    else [],
                },
                time.monotonic_ns(),
            )
            self.svc.trials += 1
            trial += 1


# -- Chromium over the DevTools protocol --------------------------------------------------------


class Browser:
    """One headless Chromium page driven over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my = self._id
        await self.ws.send_json({"id": my, "method": method, "params": params})
        async with asyncio.timeout(30):
            while True:
                msg = await self.ws.receive_json()
                if msg.get("id") == my:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    result: dict[str, Any] = msg.get("result", {})
                    return result

    async def eval(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                v = await self.eval(expression)
            except RuntimeError:  # the page is still loading
                v = None
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {expression}")
            await asyncio.sleep(0.2)

    async def screenshot(self, path: Path) -> Path:
        r = await self.call("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(r["data"]))
        return path


@contextlib.asynccontextmanager
async def chromium(url: str) -> AsyncIterator[Browser]:
    """Launch Debian's chromium headless on ``url`` and attach to its page."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run scripts/setup --dev (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="rigd-chromium-")
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,1000",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not open its DevTools port (exit {proc.poll()})")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            page: dict[str, Any] | None = None
            while page is None:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [p for p in await r.json() if p.get("type") == "page"]
                page = pages[0] if pages else None
                if page is None:
                    await asyncio.sleep(0.1)
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024) as ws:
                b = Browser(ws)
                await b.call("Page.enable")
                await b.call("Runtime.enable")
                yield b
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def _int(b: Browser, element_id: str) -> int:
    return int(await b.eval(f"parseInt(document.getElementById('{element_id}').textContent) || 0"))


# -- tests --------------------------------------------------------------------------------------


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[tuple[BenchService, Publisher]]:
    svc = BenchService(tmp_path / "session")
    pub = Publisher(svc)
    yield svc, pub
    pub.stop_flag.set()
    if pub.is_alive():
        pub.join(5)
    svc.recorder.close()


async def test_live_state_follows_the_recorded_session(bench: tuple[BenchService, Publisher]) -> None:
    svc, pub = bench
    state = LiveState(window_s=5.0, column_s=0.02, max_rows_per_hemisphere=16)
    svc.recorder.add_tap(state.on_record, span=state.on_span)  # as the live view registers it
    pub.start()
    deadline = time.monotonic() + 15
    while state.n_refusals == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    pub.stop_flag.set()
    pub.join(5)
    svc.recorder.close()
    cur = Cursor()
    snap = state.snapshot(cur)
    # 80 units downsampled to 16 rows per hemisphere; every column sums its frames' spikes
    assert (snap["raster"]["rows_left"], snap["raster"]["rows_right"]) == (16, 16)
    cols = np.array(snap["raster"]["cols"])
    assert cols.shape[1] == 32 and cols.shape[0] > 10
    session = Session.open(svc.recorder.directory)
    _, t, counts = session.counts()
    assert state.frames == counts.shape[0]
    # every raster column holds the spikes of exactly the recorded frames that end in it
    assert state.t0_ns is not None
    t_end = np.array(snap["raster"]["t"]) * NS + state.t0_ns
    ring_ids = np.round(t_end / state.column_ns).astype(np.int64) - 1
    in_ring = np.isin(t // state.column_ns, ring_ids)
    c64 = counts.astype(np.int64)
    assert cols[:, :16].sum() == c64[in_ring, :40].sum()  # left hemisphere rows ← units 0…39
    assert cols[:, 16:].sum() == c64[in_ring, 40:].sum()
    last = t // state.column_ns == ring_ids[-1]
    assert cols[-1, 0] == c64[last, :3].sum()  # row 0 groups units 0, 1, 2 (40 units → 16 rows)
    # a second snapshot with the same cursor sends nothing new
    again = state.snapshot(cur)
    assert again["raster"]["cols"] == [] and not again["raster"]["reset"]
    # trials, outcomes, light bars, alarms
    assert state.trials_done == len(session.trials()) >= 3
    table = snap["outcomes"]
    assert sum(int(r["n"]) for r in table.values()) == state.trials_done
    # trials count under the light delivered: a refused perturbation is "not_delivered", not its plan
    want = collections.Counter("not_delivered" if t["refused"] else t["condition"] for t in session.trials())
    assert {c: int(r["n"]) for c, r in table.items()} == dict(want)
    assert want["not_delivered"] >= 1 and sum(want[c] for c in ("left", "right", "bilateral")) >= 1
    assert state.light_commands == len(session.light_commands()) >= 1
    assert state.n_refusals == len([a for a in session.alarms() if a.get("alarm") == "light_refused"]) >= 1
    assert all(a["refusal"] for a in snap["alarms"])
    assert snap["decoder"]["t"] and all(v is None or abs(v) < 10 for v in snap["decoder"]["left"])
    assert state.errors == 0 and svc.recorder.tap_errors == 0


async def test_refresh_rate_is_bounded() -> None:
    class Dummy(BenchService):
        pass

    with tempfile.TemporaryDirectory() as d:
        svc = Dummy(Path(d))
        with pytest.raises(ValueError, match="refresh_hz"):
            LiveView(svc, refresh_hz=30.0)
        # a page gets at most refresh_hz updates per second
        async with LiveView(svc, refresh_hz=10.0) as view, aiohttp.ClientSession() as http:
            t0 = time.monotonic()
            n = 0
            async with http.get(view.url + "events") as r:
                async for line in r.content:
                    if line.startswith(b"data: "):
                        n += 1
                        json.loads(line[6:])
                    if time.monotonic() - t0 > 1.5:
                        break
            elapsed = time.monotonic() - t0
            assert 1 <= n <= 10 * elapsed + 2, (n, elapsed)
        svc.recorder.close()


@needs_chromium
async def test_page_loads_updates_and_shows_refusal_in_red(bench: tuple[BenchService, Publisher]) -> None:
    svc, pub = bench
    pub.refuse_from_trial = 3
    async with LiveView(svc, refresh_hz=5.0) as view:
        assert view.url.startswith("http://127.0.0.1:")
        pub.start()
        async with chromium(view.url) as b:
            await b.wait_for("document.getElementById('conn').textContent === 'live'", 20)
            await b.wait_for("parseInt(document.getElementById('frames').textContent) > 0", 20)
            frames1, updates1 = await _int(b, "frames"), await _int(b, "updates")
            await asyncio.sleep(1.5)
            frames2, updates2 = await _int(b, "frames"), await _int(b, "updates")
            assert frames2 > frames1 and updates2 > updates1
            # the refusal arrives as an alarm, drawn in red
            await b.wait_for("document.querySelectorAll('#alarms li.refusal').length > 0", 20)
            colour = await b.eval("getComputedStyle(document.querySelector('#alarms li.refusal')).color")
            assert colour == "rgb(179, 38, 30)"
            assert await _int(b, "alarm-count") >= 1
            assert await _int(b, "trials-done") >= 3
            rows = await b.eval("document.querySelectorAll('#outcomes tbody tr').length")
            assert rows >= 3  # control, left, right (, bilateral)
            # the raster canvas has ink (spikes were drawn)
            ink = await b.eval("""(() => { const c = document.getElementById('raster');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })()""")
            assert ink > 1000
            shot = await b.screenshot(ARTIFACTS / "bench.png")
            assert shot.stat().st_size > 10_000


@needs_chromium
async def test_rigd_start_sim_live_view_updates_and_shows_interlock_refusal(tmp_path: Path) -> None:
    """A real ``rigd start --rig sim``: the page updates while the session runs, and turns red when the
    interlock refuses light. The calibration has no small-N allowance: a photoinhibition trial that
    would make more than 30 % of the trials so far perturbed is refused by the real interlock (real
    alarm path) at run time; the protocol itself passes the check (a rejected one would not start)."""
    cal = tmp_path / "no_allowance_calibration.toml"
    text = DEFAULT_CALIBRATION.read_text()
    assert "small_n_allowance = 3" in text
    cal.write_text(re.sub(r"small_n_allowance = \d+", "small_n_allowance = 0", text))
    runtime = tmp_path / "runtime"
    env = {**os.environ, "RIGD_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "rigd.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rig.cli",
            "start",
            "--rig",
            "sim",
            "--trials",
            "8",
            "--name",
            "liveviewtest",
            "--session-dir",
            str(tmp_path / "sessions"),
            "--calibration",
            str(cal),
            "--no-live",
            "--seed",
            "0",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        info_file = runtime / "liveviewtest.json"
        deadline = time.monotonic() + 60
        url = ""
        while not url:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"rigd did not publish its live view URL:\n{(tmp_path / 'rigd.log').read_text()}"
                )
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                url = json.loads(info_file.read_text()).get("ui", "")
            await asyncio.sleep(0.2)
        assert url.startswith("http://127.0.0.1:")
        async with chromium(url) as b:
            await b.wait_for("document.getElementById('state').textContent === 'running'", 30)
            await b.wait_for("parseInt(document.getElementById('frames').textContent) > 0", 30)
            frames1 = await _int(b, "frames")
            await asyncio.sleep(2.0)
            frames2 = await _int(b, "frames")
            assert frames2 > frames1  # the simulated mouse streams 1 kHz frames
            await b.wait_for("document.querySelectorAll('#alarms li.refusal').length > 0", 90)
            assert "would make" in await b.eval(
                "document.querySelector('#alarms li.refusal').textContent"
            )
            await b.wait_for("parseInt(document.getElementById('trials-done').textContent) >= 1", 40)
            await b.wait_for("document.querySelectorAll('#outcomes tbody tr').length >= 1", 5)
            await b.screenshot(ARTIFACTS / "rigd-sim.png")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # rigd stops the session cleanly on SIGINT
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp_path / "rigd.log").read_text()
    (session_dir,) = (tmp_path / "sessions").iterdir()
    alarms = Session.open(session_dir).alarms()
    assert any(a.get("alarm") == "light_refused" for a in alarms)


# -- legibility (issue 21 point 4): checked from the page's own layout record, not from pixels ------


def _lab(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """CIE L*a*b* (D65) of an sRGB colour (0…255)."""
    def lin(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def _delta_e(c1: tuple[float, float, float], c2: tuple[float, float, float]) -> float:
    """CIE76 colour difference (ΔE ≈ 2.3 is just noticeable; > 30 reads as another colour)."""
    return float(sum((a - b) ** 2 for a, b in zip(_lab(c1), _lab(c2), strict=True)) ** 0.5)


def _on_white(rgba: list[float]) -> tuple[float, float, float]:
    r, g, b, a = rgba
    return (a * r + (1 - a) * 255, a * g + (1 - a) * 255, a * b + (1 - a) * 255)


def _overlap(a: dict[str, float], b: dict[str, float], tol: float = 0.5) -> bool:
    return (a["x"] + tol < b["x"] + b["w"] and b["x"] + tol < a["x"] + a["w"]
            and a["y"] + tol < b["y"] + b["h"] and b["y"] + tol < a["y"] + a["h"])


MIN_DELTA_E = 30.0


def tmp_path_of(svc: BenchService) -> Path:
    """The test's tmp dir (the bench session lives in it)."""
    return Path(svc.recorder.directory).parent


async def assert_legible(b: Browser) -> dict[str, Any]:
    """The legibility properties of the page as drawn now (issue 21 point 4); returns the layout."""
    palette = await b.eval("window.rigdPalette")
    layout = await b.eval("JSON.parse(JSON.stringify(window.rigdLayout))")
    # light is drawn opaque, in a colour far from every epoch's shading as it appears on white
    for light in ("light", "lightNotApplied"):
        lc = _on_white(palette[light])
        for epoch in ("sample", "delay", "response"):
            assert _delta_e(lc, _on_white(palette[epoch])) >= MIN_DELTA_E, (light, epoch, palette)
            assert _delta_e(lc, tuple(palette[epoch][:3])) >= MIN_DELTA_E, (light, epoch, palette)
    assert palette["light"][3] == 1  # never a translucent fill that blends with an epoch's colour
    # the legend's swatches are the colours drawn
    swatch = await b.eval("getComputedStyle(document.querySelector('.sw.light')).backgroundColor")
    assert swatch == "rgb({}, {}, {})".format(*palette["light"][:3])
    for cid in ("raster", "cd", "latency"):
        rec = layout[cid]
        W, H = rec["width"], rec["height"]
        plots, labels = rec["plots"], [lab for lab in rec["labels"] if lab["role"] != "note"]
        assert plots, cid
        for lab in labels:  # inside the canvas, never over the data, never over another label
            inside = lab["x"] >= -1 and lab["x"] + lab["w"] <= W + 1 and lab["y"] >= -1 and lab["y"] + lab["h"] <= H + 1
            assert inside, (cid, lab)
            for p in plots:
                assert not _overlap(lab, p), (cid, lab, p)
        for i, a in enumerate(labels):
            for c in labels[i + 1:]:
                assert not _overlap(a, c), (cid, a, c)
        xt = [lab["text"] for lab in labels if lab["role"] == "xtick"]
        titles = " ".join(lab["text"] for lab in labels if lab["role"] == "title")
        if cid in ("raster", "cd"):
            assert len(xt) >= 2 and all(t.lstrip("-").isdigit() for t in xt), (cid, xt)
            assert "time on the rig clock (s" in titles and "left ALM" in titles and "right ALM" in titles
        if cid == "cd":
            yt = [lab["text"] for lab in labels if lab["role"] == "ytick"]
            assert len(yt) == 6 and yt.count("0") == 2, yt  # −m, 0, +m per hemisphere
            assert titles.count("spikes/s") == 2 and rec["scale"] > 0
        if cid == "latency":
            yt = [lab["text"] for lab in labels if lab["role"] == "ytick"]
            legend = " ".join(lab["text"] for lab in labels if lab["role"] == "legend")
            assert len(yt) >= 2 and len(xt) >= 3 and any(t.endswith("ms") for t in xt), (yt, xt)
            assert all(w in legend for w in ("internal", "end to end", "p50", "p99")), legend
            assert re.search(r"deadline \d+(\.\d+)? ms", legend), legend
            (p,) = plots
            assert p["x"] <= rec["deadline_x"] <= p["x"] + p["w"]  # the deadline is marked on the axis
            assert "loops" in titles and "latency" in titles
    text = await b.eval("document.getElementById('latency-text').textContent")
    assert re.search(r"over the \d+(\.\d+)? ms deadline \d+", text), text
    return dict(layout)


@needs_chromium
async def test_page_is_legible_with_light_bars(bench: tuple[BenchService, Publisher]) -> None:
    """Light bars (trials 0–2 get light) in their own lane, in a colour apart from every epoch."""
    svc, pub = bench
    pub.refuse_from_trial = 3
    async with LiveView(svc, refresh_hz=5.0) as view:
        pub.start()
        async with chromium(view.url) as b:
            await b.wait_for("(window.rigdLayout.raster || {}).plots && "
                             "document.querySelectorAll('#recent tbody tr').length >= 2", 30)
            await b.wait_for("(window.rigdLayout.raster.light_bars || 0) >= 1", 20)
            layout = await assert_legible(b)
            assert layout["cd"]["light_bars"] >= 1
            await b.screenshot(tmp_path_of(svc) / "bench-legible.png")


@needs_chromium
async def test_lockstep_session_page_is_legible_at_start_middle_and_end(tmp_path: Path) -> None:
    """A real ``rigd start --rig sim --clock rig`` (lockstep): screenshots at start, mid-session and end
    under tmp_path, each checked for legibility from the page's layout record; the decoder reads
    "calibrating k/N trials" while it pools trials; the page ends on "session finished"; the
    outcome table's condition names are the terminal's (rig/conditions.py)."""
    n_trials = 6
    runtime = tmp_path / "runtime"
    env = {**os.environ, "RIGD_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "rigd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rig.cli", "start", "--rig", "sim", "--clock", "rig", "--trials", str(n_trials),
             "--name", "legible", "--session-dir", str(tmp_path / "sessions"), "--no-live", "--seed", "3"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            url = ""
            while not url:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"rigd did not publish its live view URL:\n{log_path.read_text()}")
                with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                    url = json.loads((runtime / "legible.json").read_text()).get("ui", "")
                await asyncio.sleep(0.1)
            async with chromium(url) as b:
                # start: running, frames flowing, the decoder pooling trials for its first fit
                await b.wait_for("document.getElementById('state').textContent === 'running' && "
                                 "parseInt(document.getElementById('frames').textContent) > 0 && "
                                 "document.getElementById('decoder').textContent.startsWith('calibrating')", 60)
                decoder = await b.eval("document.getElementById('decoder').textContent")
                assert re.fullmatch(r"calibrating \d+/20 trials", decoder), decoder
                await b.screenshot(tmp_path / "live-start.png")
                await assert_legible(b)
                # mid-session
                await b.wait_for(f"parseInt(document.getElementById('trials-done').textContent) >= {n_trials // 2}",
                                 120)
                await b.screenshot(tmp_path / "live-mid.png")
                layout = await assert_legible(b)
                assert layout["raster"]["labels"] and await b.eval(
                    "document.getElementById('trials-target').textContent") == f" / {n_trials}"
                names = await b.eval("[...document.querySelectorAll('#outcomes tbody tr td:first-child')]"
                                     ".map((td) => td.textContent)")
                assert names and set(names) <= {"control", "left", "right", "bilateral", "not_delivered"}, names
                # end: the last update says the session finished; the page does not retry
                await b.wait_for("document.getElementById('state').textContent === 'session finished'", 180)
                await b.screenshot(tmp_path / "live-end.png")
                await assert_legible(b)
                assert "session finished" in await b.eval("document.getElementById('conn').textContent")
                assert await _int(b, "trials-done") == n_trials
                await asyncio.sleep(1.5)  # EventSource would retry after 1 s: it must not
                assert "retrying" not in await b.eval("document.getElementById('conn').textContent")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log_path.read_text()
    for shot in ("live-start.png", "live-mid.png", "live-end.png"):
        assert (tmp_path / shot).stat().st_size > 10_000
    # the terminal's end-of-session table uses the same names as the page
    out = log_path.read_text()
    terminal = set(re.findall(r"│ (control|left|right|bilateral|not_delivered|\w+_alm)\s+│", out))
    assert terminal and terminal <= {"control", "left", "right", "bilateral", "not_delivered"}, terminal
    assert set(names) <= terminal | {"not_delivered"}
