"""Open Ephys in and out: `rigd start --rig openephys` against publishers written from Open Ephys's docs.

The publishers here follow the Open Ephys GUI's documented formats (gui-docs, "ZMQ Interface" and
"Event Broadcaster"), built with hardware.openephys.formats' builders and checked against the
documented layout byte by byte in test_formats_are_the_documented_ones; the listener of rigd's
broadcast is open-ephys-python-tools' EventListener, unmodified; the HTTP remote control is tested
against a small aiohttp server implementing the documented /api/status and /api/recording.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from aiohttp import web

from hardware.openephys import formats
from hardware.openephys.mapping import MapError, OpenEphysMap, RawChunker, SpikeBinner, TaskTiming, TrialTTL
from hardware.openephys.remote import OpenEphysRemote, RemoteControlError
from rig import wire
from rig.session import Session
from tests.rigd_process import free_port, measured_calibration, rigd

FS = 10_000.0  #: the synthetic stream's sample rate
BLOCK = 100  #: samples per block (10 ms, as a small GUI buffer)
FIRST_SAMPLE = 123_456  #: acquisition started a while ago: sample numbers do not start at 0
TRIAL_S = 0.5
LINES = {"trial_start": 0, "sample_on": 1, "delay_on": 2, "go_cue": 3, "trial_end": 4, "lick_left": 5,
         "lick_right": 6, "instructed_right": 7}
#: per trial: (event line, offset in s); the lick is the instructed side except in every 4th trial
SCHEDULE = (("trial_start", 0.0), ("sample_on", 0.05), ("delay_on", 0.15), ("go_cue", 0.30), ("lick", 0.36),
            ("trial_end", 0.45))


def write_map(tmp: Path, mode: str = "spikes") -> Path:
    units = "[units]\nleft = [\"Electrode 1\", \"Electrode 2\", \"Electrode 3\", \"Electrode 4#1\"]\n" \
            "right = [\"Electrode 5\", \"Electrode 6\", \"Electrode 7\", \"Electrode 8\"]\n"
    raw = f"[raw]\nleft = [0]\nright = [\"1-1\"]\nsample_rate_hz = {FS}\nthreshold_sd = -3.0\n"
    ttl = "[ttl]\n" + "".join(f"{k} = {v}\n" for k, v in LINES.items())
    task = "[task]\npresample_s = 0.05\nsample_s = 0.1\ndelay_s = 0.15\nresponse_s = 0.3\n"
    path = tmp / f"map-{mode}.toml"
    path.write_text(f'mode = "{mode}"\nspike_lag_ms = 2\n' + (units if mode == "spikes" else raw) + ttl + task)
    return path


class OpenEphysGUI:
    """What the GUI's plugins put on the network, from their documented formats, in real time.

    ZMQ Interface: an XPUB data socket (a PUB to its subscribers; the XPUB only lets the test see
    the adapter's subscription arrive) and a REP listening socket on data port + 1 that answers the
    documented heartbeats. Event Broadcaster (optional): a PUB sending the TTLs in its JSON format.
    """

    def __init__(self, n_trials: int, *, ttl_via: str, seed: int = 1) -> None:
        self.ctx = zmq.Context()
        self.data_port = free_port()
        while True:  # the listening port is the data port + 1: both must be free
            try:
                self.data = self.ctx.socket(zmq.XPUB)
                self.data.bind(f"tcp://127.0.0.1:{self.data_port}")
                self.listen = self.ctx.socket(zmq.REP)
                self.listen.bind(f"tcp://127.0.0.1:{self.data_port + 1}")
                break
            except zmq.ZMQError:
                self.data.close(0)
                self.data_port = free_port()
        self.eb_port = free_port()
        self.eb = self.ctx.socket(zmq.XPUB)
        self.eb.bind(f"tcp://127.0.0.1:{self.eb_port}")
        self.ttl_via = ttl_via
        self.n_trials = n_trials
        self.rng = np.random.default_rng(seed)
        self.heartbeats: list[dict[str, Any]] = []
        self.message_num = 0
        self.stop = threading.Event()
        self.done = threading.Event()
        self.sent: dict[str, int] = {"blocks": 0, "spikes": 0, "ttl": 0}
        self.licks: list[str] = []
        self.instructed: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _answer_heartbeats(self) -> None:
        while self.listen.poll(0):
            msg = json.loads(self.listen.recv().decode())
            self.heartbeats.append(msg)
            self.listen.send(b"heartbeat received" if msg.get("type") == "heartbeat" else b"message correctly parsed")

    def _wait_subscribed(self, sock: zmq.Socket[bytes], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            self._answer_heartbeats()
            if sock.poll(20) and sock.recv()[:1] == b"\x01":
                return
        raise TimeoutError("the adapter never subscribed")

    def _ttls(self) -> list[tuple[int, int, int]]:
        """(sample, line, state) of every trial, in order."""
        out = []
        t0 = FIRST_SAMPLE + int(0.3 * FS)
        for k in range(self.n_trials):
            side = "right" if self.rng.random() < 0.5 else "left"
            self.instructed.append(side)
            lick = side if k % 4 != 3 else ("left" if side == "right" else "right")
            self.licks.append(lick)
            start = t0 + int(k * TRIAL_S * FS)
            out.append((start - 5, LINES["instructed_right"], int(side == "right")))
            for name, off in SCHEDULE:
                line = LINES[f"lick_{lick}"] if name == "lick" else LINES[name]
                s = start + int(off * FS)
                out += [(s, line, 1), (s + 10, line, 0)]
        return sorted(out)

    def _run(self) -> None:
        try:
            self._wait_subscribed(self.data)
            if self.ttl_via == "events":
                self._wait_subscribed(self.eb)
            ttls = self._ttls()
            end = ttls[-1][0] + int(0.3 * FS)
            sample = FIRST_SAMPLE
            t_wall = time.monotonic()
            while sample < end and not self.stop.is_set():
                self._answer_heartbeats()
                self._block(sample, ttls)
                sample += BLOCK
                t_wall += BLOCK / FS
                time.sleep(max(0.0, t_wall - time.monotonic()))  # real-time pacing, as the GUI streams
            while not self.stop.is_set():  # the GUI keeps acquiring after the trials: keep its clock going
                self._answer_heartbeats()
                self._block(sample, [])
                sample += BLOCK
                t_wall += BLOCK / FS
                time.sleep(max(0.0, t_wall - time.monotonic()))
        finally:
            self.done.set()

    def _send(self, sock: zmq.Socket[bytes], parts: list[bytes]) -> None:
        sock.send_multipart(parts)

    def _block(self, s0: int, ttls: list[tuple[int, int, int]]) -> None:
        """One block: its TTLs and spikes first (the plugin's checkForEvents), then each channel's data."""
        for s, line, state in [t for t in ttls if s0 <= t[0] < s0 + BLOCK]:
            ev = formats.TTLEvent("example_data", line, state, s, None)
            if self.ttl_via == "events":
                fields = {"stream": "example_data", "source_node": 101, "sample_rate": FS,
                          "channel_name": "TTL Event Channel", "sample_number": s, "line": line, "state": state}
                self._send(self.eb, [struct.pack("<H", 0), json.dumps({"event_type": "ttl", **fields}).encode()])
            else:
                self.message_num += 1
                self._send(self.data, formats.zmq_interface_ttl(self.message_num, ev))
            self.sent["ttl"] += 1
        for e in range(1, 9):
            for _ in range(self.rng.poisson(20.0 * BLOCK / FS)):
                self.message_num += 1
                sp = formats.SpikeEvent("example_data", f"Electrode {e}", 1, s0 + int(self.rng.integers(BLOCK)), None)
                self._send(self.data, formats.zmq_interface_spike(self.message_num, sp, np.zeros(40, np.float32)))
                self.sent["spikes"] += 1
        noise = self.rng.normal(0.0, 10.0, (2, BLOCK)).astype(np.float32)
        noise[:, ::37] -= 80.0  # threshold crossings for raw mode
        for ch in range(2):
            self.message_num += 1
            block = formats.ContinuousBlock("example_data", ch, s0, FS, noise[ch])
            self._send(self.data, formats.zmq_interface_data(self.message_num, block))
        self.sent["blocks"] += 1

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(10)
        for s in (self.data, self.listen, self.eb):
            s.close(0)
        self.ctx.term()


class RemoteControlServer:
    """The GUI's HTTP server as its docs describe /api/status and /api/recording (aiohttp, own thread)."""

    def __init__(self) -> None:
        self.mode = "ACQUIRE"
        self.recording: dict[str, Any] = {"parent_directory": "/data", "base_text": "AUTO", "prepend_text": "NONE",
                                          "append_text": "AUTO", "record_nodes": [{"node_id": 102}]}
        self.requests: list[tuple[str, str, Any]] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _status(self, request: web.Request) -> web.Response:
        if request.method == "PUT":
            body = json.loads(await request.text())
            self.requests.append(("PUT", "/api/status", body))
            if body.get("mode") in ("IDLE", "ACQUIRE", "RECORD"):
                self.mode = body["mode"]
        else:
            self.requests.append(("GET", "/api/status", None))
        return web.json_response({"mode": self.mode})

    async def _recording(self, request: web.Request) -> web.Response:
        if request.method == "PUT":
            body = json.loads(await request.text())
            self.requests.append(("PUT", "/api/recording", body))
            self.recording.update({k: v for k, v in body.items() if k in self.recording})
        else:
            self.requests.append(("GET", "/api/recording", None))
        return web.json_response(self.recording)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/api/status", self._status)
        app.router.add_route("*", "/api/recording", self._recording)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# -- the formats, the map and the bookkeeping -----------------------------------------------------


def test_formats_are_the_documented_ones() -> None:
    """The builders' bytes are the documented layouts, and the parsers read them back (and refuse junk)."""
    block = formats.ContinuousBlock("s", 3, 1000, 30000.0, np.arange(4, dtype=np.float32))
    env, head, data = formats.zmq_interface_data(7, block)
    assert env == b"DATA\x00"
    h = json.loads(head)
    assert h["message_num"] == 7 and h["type"] == "data" and h["data_size"] == 16
    assert h["content"] == {"stream": "s", "channel_num": 3, "num_samples": 4, "sample_num": 1000,
                            "sample_rate": 30000.0}
    got = formats.parse_zmq_interface([env, head, data])
    assert isinstance(got, formats.ContinuousBlock) and got.samples.tolist() == [0, 1, 2, 3]
    env, head, payload = formats.zmq_interface_ttl(8, formats.TTLEvent("s", 2, 1, 555, None))
    assert env == b"EVENT\x00" and json.loads(head)["content"]["type"] == 3
    assert payload[:2] == bytes([2, 1]) and len(payload) == 10  # line u8, state u8, word u64
    ev = formats.parse_zmq_interface([env, head, payload])
    assert isinstance(ev, formats.TTLEvent) and (ev.line, ev.state, ev.sample_num) == (2, 1, 555)
    eb = formats.event_broadcaster_ttl({"stream": "s", "source_node": 1, "sample_rate": 1000.0, "channel_name": "c",
                                        "sample_number": 9, "line": 4, "state": 0, "extra": "kept"})
    assert eb[0] == b"\x00\x00" and json.loads(eb[1])["event_type"] == "ttl"
    back = formats.parse_event_broadcaster(eb)
    assert isinstance(back, formats.TTLEvent) and back.sample_rate == 1000.0 and back.line == 4
    for bad, needle in (([b"DATA\x00"], "parts"), ([b"XYZ", b"{}"], "envelope"),
                        ([b"DATA\x00", b"not json"], "JSON"),
                        ([env, json.dumps({**json.loads(head), "data_size": 3}).encode(), payload], "data_size"),
                        ([b"DATA\x00", json.dumps({"type": "data", "content": {"num_samples": 2, "channel_num": 0,
                                                   "sample_num": 0, "sample_rate": 1e3}, "data_size": 4}).encode(),
                          b"\x00" * 4], "num_samples")):
        with pytest.raises(formats.FormatError, match=needle):
            formats.parse_zmq_interface(bad)
    with pytest.raises(formats.FormatError, match="event_type"):
        formats.parse_event_broadcaster([b"\x00\x00", b'{"event_type": "bogus"}'])


def test_map_refuses_what_it_cannot_mean(tmp_path: Path) -> None:
    ok = OpenEphysMap.load(write_map(tmp_path))
    assert ok.n_units == 8 and ok.n_left == 4 and ok.ttl["go_cue"] == 3
    for data, needle in (({"mode": "lfp"}, "mode"), ({"units": {"left": []}}, "no electrode"),
                         ({"units": {"left": ["A", "A"]}}, "more than once"),
                         ({"units": {"left": ["A#x"]}}, "SORTED_ID"),
                         ({"units": {"left": ["A"]}, "ttl": {"go_cue": 1, "trial_end": 1}}, "same line"),
                         ({"units": {"left": ["A"]}, "ttl": {"reward": 1}}, "reward"),
                         ({"mode": "raw", "raw": {"left": ["3-1"]}}, "range"),
                         ({"units": {"left": ["A"]}, "bogus": 1}, "unknown keys")):
        with pytest.raises(MapError, match=needle):
            OpenEphysMap.from_dict(data)


def test_binner_chunker_and_trial_ttl() -> None:
    b = SpikeBinner(2, bin_samples=10, lag_samples=3)
    b.start(100)
    assert b.add(105, 0) and b.add(112, 1) and b.add(113, 1)
    assert list(b.advance(112)) == []  # bin [100, 110) closes once the data passed 113
    closed = list(b.advance(125))
    assert [(e, c.tolist()) for e, c in closed] == [(110, [1, 0]), (120, [0, 2])]
    assert not b.add(101, 0) and b.late_spikes == 1
    c = RawChunker((5, 9), bin_samples=4)
    assert list(c.add(0, 5, np.arange(6, dtype=np.float32))) == []
    chunks = list(c.add(0, 9, -np.arange(6, dtype=np.float32)))
    assert [e for e, _ in chunks] == [4] and chunks[0][1][:, 1].tolist() == [0, -1, -2, -3]
    t = TrialTTL({"trial_start": 0, "go_cue": 1, "lick_left": 2, "trial_end": 3, "instructed_right": 4},
                 TaskTiming(response_s=0.5))
    ns = 1_000_000_000
    t.edge(4, 1, 0)
    names = [(e.event, e.fields.get("instructed") or e.fields.get("outcome")) for tt, ln in
             ((0, 0), (ns, 1), (ns + ns // 10, 2), (2 * ns, 3)) for e in t.edge(ln, 1, tt)]
    assert names == [("trial_start", "right"), ("go_cue", None), ("lick", None), ("outcome", "error"),
                     ("trial_end", None)]
    assert [e.fields["outcome"] for e in t.edge(0, 1, 3 * ns) + t.edge(1, 1, 4 * ns) + t.edge(3, 1, 5 * ns)
            if e.event == "outcome"] == ["ignore"]


def test_remote_control_against_the_documented_api() -> None:
    server = RemoteControlServer()
    try:
        gui = OpenEphysRemote(server.url)
        assert gui.mode() == "ACQUIRE"
        assert gui.start_recording("session-42") == "ACQUIRE"
        assert server.mode == "RECORD" and server.recording["base_text"] == "session-42"
        assert ("PUT", "/api/status", {"mode": "RECORD"}) in server.requests
        gui.stop_recording()
        assert server.mode == "ACQUIRE"
        with pytest.raises(ValueError, match="mode"):
            gui.set_mode("PAUSE")
    finally:
        server.close()
    closed = OpenEphysRemote(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    with pytest.raises(RemoteControlError, match=r"unreachable .*HTTP server enabled"):
        closed.mode()


# -- end to end: real processes --------------------------------------------------------------------


def _start_args(tmp: Path, gui: OpenEphysGUI, *extra: str) -> list[str]:
    return ["--rig", "openephys", "--openephys-zmq", f"tcp://127.0.0.1:{gui.data_port}",
            "--calibration", str(measured_calibration(tmp)), "--ledger-dir", str(tmp / "ledger"), "--no-ui",
            "--bin-ms", "5", *extra]


def test_rigd_decodes_an_open_ephys_stream_and_python_tools_hears_it(tmp_path: Path) -> None:
    """Spikes (ZMQ Interface) + trial TTLs (Event Broadcaster) → rigd; rigd's broadcast → EventListener."""
    from open_ephys.streaming import EventListener

    n_trials = 8
    gui = OpenEphysGUI(n_trials + 2, ttl_via="events")
    server = RemoteControlServer()
    bport = free_port()
    heard: list[dict[str, Any]] = []
    listener = EventListener(ip_address="127.0.0.1", port=bport)
    lt = threading.Thread(target=listener.start, kwargs={"ttl_callback": heard.append}, daemon=True)
    lt.start()
    gui.thread.start()
    try:
        with rigd(tmp_path, *_start_args(tmp_path, gui, "--openephys-map", str(write_map(tmp_path)),
                                         "--openephys-events", f"tcp://127.0.0.1:{gui.eb_port}",
                                         "--openephys-broadcast", f"tcp://127.0.0.1:{bport}",
                                         "--openephys-record", server.url, "--trials", str(n_trials)),
                  name="oe") as r:
            r.wait_ready()
            assert r.wait(120) == 0, r.output()
            session = r.session_dir()
    finally:
        listener.stop()
        lt.join(5)
        gui.close()
        server.close()
    # the plugin saw its documented heartbeat from the adapter
    assert gui.heartbeats and all(h["type"] == "heartbeat" and h["application"] == "rigd" and h["uuid"]
                                  for h in gui.heartbeats)
    s = Session.open(session)
    desc = s.rig_description()
    assert desc["n_units"] == 8 and desc["units_left"] == 4 and desc["electrodes"][3] == "Electrode 4#1"
    _, times, counts = s.counts()
    assert len(times) > 200 and counts.shape[1] == 8 and int(counts.sum()) > 100  # frames decoded, spikes binned
    assert np.all(np.diff(times) == 5_000_000)  # one frame per 5-ms bin, on the stream's clock
    assert times[0] > FIRST_SAMPLE / FS * 1e9  # the rig clock is Open Ephys's sample clock
    trials = s.trials()
    assert len(trials) >= n_trials
    for tr in trials[:n_trials]:
        k = tr["trial"]
        assert tr["instructed"] == gui.instructed[k] and not tr["start_inferred"]
        assert tr["outcome"] == ("hit" if gui.licks[k] == gui.instructed[k] else "error")
        assert tr["choice"] == gui.licks[k]
    assert len(s.decoder_outputs()) > 0
    assert s.manifest["counters"]["frames"] == len(times)  # every frame reached rigd's loop
    # the recording ran for the session, named after it, and stopped at its end
    puts = [(p, b) for m, p, b in server.requests if m == "PUT"]
    assert puts[0] == ("/api/recording", {"base_text": session.name})
    assert puts[1] == ("/api/status", {"mode": "RECORD"}) and puts[-1] == ("/api/status", {"mode": "ACQUIRE"})
    # open-ephys-python-tools heard rigd's events and decoder output in the Event Broadcaster format
    starts = [h for h in heard if h.get("rigd") == "trial_event" and h["event"] == "trial_start"]
    assert len(starts) >= n_trials - 1 and all(h["line"] == 0 and h["state"] == 1 for h in starts)
    assert {h["trial"] for h in starts} >= set(range(1, n_trials))
    decoded = [h for h in heard if h.get("rigd") == "decoder"]
    assert decoded and all(h["event_type"] == "ttl" and h["line"] == 7 for h in decoded)
    assert all(h["sample_number"] == h["t_rig_ns"] * FS // 1e9 for h in decoded)
    summary = json.loads((session / "sim.log").read_text().strip().splitlines()[-1])
    assert summary["malformed"] == 0 and summary["unmapped_spikes"] == 0 and summary["oe_replies"] >= 1


def test_raw_mode_with_ttls_from_the_zmq_interface(tmp_path: Path) -> None:
    """Continuous data → RAW_SAMPLES → rigd's threshold detector; TTLs from the ZMQ Interface itself."""
    n_trials = 4
    gui = OpenEphysGUI(n_trials + 1, ttl_via="zmq", seed=2)
    gui.thread.start()
    try:
        with rigd(tmp_path, *_start_args(tmp_path, gui, "--openephys-map", str(write_map(tmp_path, "raw")),
                                         "--trials", str(n_trials)), name="oeraw") as r:
            r.wait_ready()
            assert r.wait(120) == 0, r.output()
            session = r.session_dir()
    finally:
        gui.close()
    s = Session.open(session)
    assert s.rig_description()["raw_channels"] == 2
    raw = list(s.records(wire.Kind.RAW_SAMPLES))
    assert len(raw) > 100 and raw[0].header.shape == (50, 2)
    assert s.manifest["counters"]["frames"] == len(raw)  # each chunk went through rigd's threshold detector
    outcomes = [t["outcome"] for t in s.trials()[:n_trials]]
    assert outcomes == ["hit" if gui.licks[k] == gui.instructed[k] else "error" for k in range(n_trials)]


def test_rigd_refuses_openephys_without_a_map_and_a_dead_gui_ends_the_session(tmp_path: Path) -> None:
    import subprocess

    from tests.rigd_process import REPO, RIGD

    r = subprocess.run([*RIGD, "start", "--rig", "openephys", "--no-ui", "--no-live"], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode != 0 and "openephys_map" in r.stderr and "map_example.toml" in r.stderr
    gui = OpenEphysGUI(1, ttl_via="zmq")
    try:
        with rigd(tmp_path, *_start_args(tmp_path, gui, "--openephys-map", str(write_map(tmp_path)),
                                         "--openephys-record", f"http://127.0.0.1:{free_port()}"),
                  name="oedead") as rr:
            rr.wait_ready()
            rr.wait(60)
            out = rr.output()
    finally:
        gui.close()
    # the session ends at once, with the adapter's one-line reason as an alarm
    assert "Open Ephys rig exited (code 6)" in out and "Open Ephys rig exited with code 6" in out
    assert "cannot start the Open Ephys recording" in out and "unreachable" in out
