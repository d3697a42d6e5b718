"""The supervisor: runs one session from start to clean stop.

It owns the lifetimes of everything a session needs and tears them down in reverse order:
the session directory and recorder, the MQTT broker (embedded unless a lab broker is given) and
the control plane, the hot loop thread with its sockets, the simulated rig process, the live
view, the runtime file that ``rigd status``/``rigd stop`` find, the terminal progress, the light
ledgers of the rigs' subjects (hardware/ledger.py) and the loop watchdog process (rig/watchdog.py).
It decides when the session ends (trials reached, duration, stop command, signal, rig gone) and
writes the final manifest. It wires pure parts together; it computes nothing per frame.

Shutdown is bounded: once a stop is requested, :class:`ShutdownGuard` gives it
``SHUTDOWN_LIMIT_S``; whatever hangs past that (a thread, a socket, a disk), the guard closes the
session from its own thread — manifest ``stopped`` with the reason, recorder closed as far as it
goes in 2 s — and exits the process. A second SIGINT/SIGTERM does the same at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import protocols
from controllers.base import Controller
from controllers.protocol import Protocol, build_controller, check_protocol, load_protocol
from controllers.trial_state import TrialTracker
from decoders.online import OnlineDecoder
from hardware.calibration import load_calibration
from hardware.interlock import LightInterlock
from hardware.ledger import LedgerHistory, LightLedger, ledger_path, state_dir
from hardware.light_source import WireLightSource
from rig import placement, wire
from rig.broker import embedded_broker
from rig.config import ServiceConfig, is_placeholder_calibration, runtime_dir
from rig.control_plane import ControlPlane
from rig.errors import Counters
from rig.loop import DECODER_FIELDS, HotLoop
from rig.pipeline import PipelineParts, online_decoder
from rig.progress import Progress, TrialStats, count
from rig.session import MANIFEST_NAME, Recorder, write_json_atomic
from rig.telemetry import FIELDS as TELEMETRY_FIELDS
from rig.telemetry import LoopTelemetry
from rig.watchdog import LoopBeat, safety_endpoint_for

#: the protocol `rigd start` runs when none is given (Chen et al. 2021's default block, docs/protocols.md)
DEFAULT_PROTOCOL = protocols.shipped()[protocols.DEFAULT]
CONTROL_READY_TIMEOUT_S = 5.0  #: longest wait for the control plane to subscribe before reporting ready
SHUTDOWN_LIMIT_S = 10.0  #: longest a requested stop may take before the session is closed by force
FORCED_EXIT_CODE = 3  #: exit status of a shutdown that had to be forced
WATCHDOG_READY_TIMEOUT_S = 20.0  #: longest wait for the loop watchdog process to bind its socket
PACKAGES = ("rigd", "numpy", "numba", "pyzmq", "aiomqtt", "amqtt", "pydantic", "pynwb", "torch")


@functools.cache
def _versions() -> dict[str, str]:
    """Package versions (looked up once: the manifest is rewritten every 5 s)."""
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def session_name(cfg: ServiceConfig) -> str:
    """``YYYYmmdd-HHMMSS-<name>-<rig>-seed<seed>``, unique per start."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{cfg.name}-{cfg.rig}-seed{cfg.seed}"


class Service:
    """One running rigd session (built by :func:`run`)."""

    def __init__(self, cfg: ServiceConfig, protocol: Protocol, directory: Path) -> None:
        self.cfg = cfg
        self.protocol = protocol
        self.directory = directory
        self.counters = Counters()
        self.telemetry = LoopTelemetry()
        self.recorder = Recorder(directory)
        self.stats = TrialStats()
        self.alarms: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.n_alarms = 0
        self.stop_reason = ""
        self.stop_event = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.recorder.on_alarm = self._alarm_from_thread  # a full disk: one alarm, not one per record
        self._manifest_failing = False
        self.runtime_info: dict[str, Any] = {}
        #: where the loop runs and how it waits (rig/placement.py; set by :func:`run`)
        self.placement = placement.Placement(cfg.loop_cpu, cfg.poll_ahead_us, "flags", "as configured")
        self.started_wall = dt.datetime.now(dt.UTC).isoformat()
        self.started_mono = time.monotonic()
        self.mqtt_url = ""
        self.ui_url = ""
        self.sim_proc: asyncio.subprocess.Process | None = None
        self.control: ControlPlane | None = None
        self.state = "starting"
        self.calibration = load_calibration(cfg.calibration)
        self.ledgers: dict[int, LightLedger] = {}
        self.ledger_history: dict[int, LedgerHistory] = {}
        self._open_ledgers()
        self.beat = LoopBeat(runtime_dir() / f"{cfg.name}-{os.getpid()}.beat")
        self.watchdog_proc: asyncio.subprocess.Process | None = None
        self.guard = ShutdownGuard(self)
        parts = PipelineParts(tracker=TrialTracker, controller=self._make_controller,
                                interlock=self._make_interlock, decoder=self._make_decoder)
        self.hot = HotLoop(
            ingest_endpoint=cfg.ingest_endpoint, command_endpoint=cfg.command_endpoint,
            rig_ids=set(cfg.rig_ids), parts=parts, recorder=self.recorder,
            telemetry=self.telemetry, counters=self.counters, deadline_ns=int(cfg.deadline_ms * 1e6),
            on_alarm=self._alarm_from_thread, on_trial=self._trial_from_thread,
            publish_estimates=cfg.publish_estimates, realtime_priority=cfg.realtime_priority,
            loop_cpu=cfg.loop_cpu, poll_ahead_us=cfg.poll_ahead_us, beat=self.beat, clock=cfg.clock)
        self.hot.max_units = cfg.max_units

    def _open_ledgers(self) -> None:
        """Each rig's light ledger for its subject, and what it holds within the energy window.

        A simulated mouse without ``--subject`` has no tissue to protect across sessions: its
        ledger lives in the session directory (the limits still hold within the session).
        """
        cfg = self.cfg
        if cfg.rig == "sim" and cfg.subject is None:
            directory, subject = self.directory, f"sim-seed{cfg.seed}"
        else:
            directory, subject = cfg.ledger_dir or state_dir() / "ledger", cfg.subject or "unknown-subject"
        window = self.calibration.safety_limits().energy_window_s
        for r in cfg.rig_ids:
            led = LightLedger(ledger_path(directory, subject, r), subject, r)
            self.ledgers[r] = led
            self.ledger_history[r] = led.load(window)
    def _make_decoder(self, desc: dict[str, Any]) -> OnlineDecoder:
        """The online decoder for a rig's units (rig/pipeline.py ``online_decoder``, this session's settings)."""
        c = self.cfg
        return online_decoder(desc, decoder=c.decoder, n_fit_trials=c.n_fit_trials, mode=c.decoder_mode,
                              default_bin_s=c.bin_ms * 1e-3, decoder_file=c.decoder_file,
                              provenance={"session": self.directory.name, "day": c.day, "seed": c.seed})

    def _make_controller(self, rig_id: int) -> Controller:
        """Each rig runs the session's protocol with its own seeded controller."""
        return build_controller(self.protocol, seed=self.cfg.seed + rig_id - self.cfg.rig_ids[0])

    def decoder_status(self) -> dict[str, Any]:
        """The first rig's serving decoder (or why there is none yet); all rigs under ``by_rig``."""
        by_rig = self.hot.decoder_status()
        first = by_rig.get(str(self.cfg.rig_ids[0]), {"decoder": self.cfg.decoder, "ready": False,
                                                      "state": "waiting for the rig to describe its units"})
        return {**first, "by_rig": by_rig} if len(by_rig) > 1 else first

    def interlock_status(self) -> dict[str, Any]:
        """The first rig's interlock status; all rigs under ``by_rig``."""
        by_rig = self.hot.interlock_status()
        first = by_rig.get(str(self.cfg.rig_ids[0]), {"limits": self.calibration.safety_limits().model_dump()})
        return {**first, "by_rig": by_rig} if len(by_rig) > 1 else first

    def _make_interlock(self, rig_id: int, send: Callable[[bytes], None],
                        on_alarm: Callable[[dict[str, Any]], None]) -> LightInterlock:
        limits = self.calibration.safety_limits()
        ledger = self.ledgers[rig_id]
        # the history read at start; a second interlock for the same rig (it re-connected) reads the
        # ledger again, so the light of this session counts too
        history = self.ledger_history.pop(rig_id, None) or ledger.load(limits.energy_window_s)
        return LightInterlock(limits, WireLightSource(send), on_alarm, ledger=ledger, history=history)

    def ledger_alarms(self) -> None:
        """Say at start what each rig's ledger carries over from earlier sessions (if anything)."""
        for r, hist in self.ledger_history.items():
            if hist.trials or hist.perturbed or hist.energy or hist.bad_lines:
                self._alarm({"source": "ledger", "severity": "warning" if hist.bad_lines else "info",
                             "rig_id": r, "message": f"rig {r}: light ledger {hist.describe()}; this "
                             "counts against this session's energy and perturbed-fraction limits"})

    # -- callbacks from the hot thread: hand over to the event loop ---------------------------

    def _alarm_from_thread(self, alarm: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self._alarm, alarm)

    def _alarm(self, alarm: dict[str, Any]) -> None:
        self.alarms.append(alarm)
        self.n_alarms += 1
        if self.control is not None:
            self.control.alarm(alarm)

    def _trial_from_thread(self, summary: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self._trial, summary)

    def _trial(self, summary: dict[str, Any]) -> None:
        self.stats.add(summary)
        if self.cfg.trials is not None and self.stats.n >= self.cfg.trials:
            self.request_stop(f"{count(self.cfg.trials, 'trial')} done")

    def request_stop(self, reason: str) -> None:
        """Ask the session to end (idempotent; the first reason wins); the shutdown clock starts."""
        if not self.stop_reason:
            self.stop_reason = reason
        self.stop_event.set()
        self.guard.arm()

    # -- status -------------------------------------------------------------------------------

    def telemetry_summary(self) -> dict[str, Any]:
        """Latency summary (µs) — stages, internal, end to end — with deadline misses."""
        return self.telemetry.summary(deadline_us=self.cfg.deadline_ms * 1e3)

    def counter_snapshot(self) -> dict[str, int]:
        """Every counter, including recorder and interlock ones."""
        c = self.counters.snapshot()
        c.update(self.recorder.counters())
        c["frames"] = self.hot.frames
        c["frames_polled_ahead"] = self.hot.frames_polled_ahead
        c["ledger_write_errors"] = sum(led.write_errors for led in self.ledgers.values())
        return c

    def status(self) -> dict[str, Any]:
        """The status published on MQTT, shown by ``rigd status`` and stored in the manifest."""
        lat = self.telemetry_summary()
        return {
            "state": self.state, "name": self.cfg.name, "pid": os.getpid(), "rig": self.cfg.rig,
            "realtime": self.hot.realtime,
            "loop_cpu": self.cfg.loop_cpu, "poll_ahead_us": self.cfg.poll_ahead_us,
            "placement": self.placement.as_dict(),
            "loop_tid": self.hot.thread.native_id if self.hot.thread is not None else None,
            "session_dir": str(self.directory), "started": self.started_wall,
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "trials_done": self.stats.n, "trials_target": self.cfg.trials,
            "outcomes": self.stats.table(), "frames": self.hot.frames,
            "latency_us": {"e2e": lat["e2e"], "internal": lat["internal"],
                           "internal_commanded": lat["internal_commanded"]},
            "counters": self.counter_snapshot(), "errors": self.counters.total_errors(),
            "alarms": self.n_alarms, "last_alarms": list(self.alarms)[-5:],
            "decoder": self.decoder_status(), "interlock": self.interlock_status(),
            "protocol": {"name": self.protocol.name, "sha256": self.protocol.sha256},
            "mqtt": self.mqtt_url, "ui": self.ui_url,
            "endpoints": {"ingest": self.hot.ingest_endpoint, "command": self.hot.command_endpoint},
            "rigs": self.hot.rig_descriptions(), "safety_endpoint": self.hot.safety_endpoint,
        }

    @functools.cached_property
    def _manifest_fixed(self) -> dict[str, Any]:
        """The parts of the manifest a session never changes (built once: it is rewritten every 5 s)."""
        return {
            "format": "rigd-session", "format_version": 1, "wire_version": wire.VERSION,
            "config": json.loads(self.cfg.model_dump_json()),
            "protocol": {"name": self.protocol.name, "text": self.protocol.text,
                         "sha256": self.protocol.sha256, "path": self.protocol.path},
            "seeds": {"service": self.cfg.seed, "sim": self.cfg.seed},
            "versions": dict(_versions()), "host": platform.node(),
            "calibration": self.calibration.model_dump(mode="json"),
            "telemetry_fields": list(TELEMETRY_FIELDS), "decoder_fields": list(DECODER_FIELDS),
        }

    def manifest(self) -> dict[str, Any]:
        """The session manifest (rewritten atomically at start, every few seconds and at stop)."""
        return {
            **self._manifest_fixed, "started": self.started_wall,
            "stopped": None if self.state != "stopped" else dt.datetime.now(dt.UTC).isoformat(),
            "stop_reason": self.stop_reason, "state": self.state,
            "counters": self.counter_snapshot(), "latency_us": self.telemetry_summary(),
            "trials_done": self.stats.n, "outcomes": self.stats.table(),
            "decoder": self.decoder_status(), "interlock": self.interlock_status(),
            "rigs": self.hot.rig_descriptions(), "placement": self.placement.as_dict(),
            "ledgers": {str(r): str(led.path) for r, led in self.ledgers.items()},
        }

    def write_manifest(self) -> None:
        """Atomically rewrite manifest.json; a failure (full disk) is counted and alarmed once, never fatal."""
        try:
            write_json_atomic(self.directory / MANIFEST_NAME, self.manifest())
        except OSError as exc:
            self.counters.inc("manifest_write_errors")
            if not self._manifest_failing:
                self._manifest_failing = True
                self._alarm_from_thread({"source": "session", "severity": "error",
                                         "message": f"manifest.json not rewritten ({exc}); the last "
                                                    "complete one stays; retried every 5 s"})
            return
        self._manifest_failing = False

    def broker_restarted(self, alarm: dict[str, Any]) -> None:
        """The embedded broker died and was restarted: alarm; follow it if it moved to another port."""
        self._alarm(alarm)
        url = str(alarm["url"])
        if url != self.mqtt_url:
            self.mqtt_url = url
            if self.control is not None:
                self.control.set_url(url)
            if self.runtime_info:
                self.runtime_info["mqtt"] = url
                with contextlib.suppress(OSError):
                    write_json_atomic(runtime_dir() / f"{self.cfg.name}.json", self.runtime_info)

    # -- command handling (control plane) -----------------------------------------------------

    async def on_command(self, verb: str, payload: bytes) -> dict[str, Any] | None:
        """Handle ``cmd/<verb>`` from MQTT."""
        if verb == "stop":
            self.request_stop("stop command (MQTT)")
            return {"ok": True, "stopping": True}
        if verb == "status":
            if self.control is not None:
                await self.control.publish_now("status", self.status(), retain=True)
            return None
        if verb == "protocol":
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                self.counters.error("mqtt", "encoding", "protocol payload is not UTF-8")
                return {"ok": False, "errors": ["protocol payload is not UTF-8 text"]}
            result = check_protocol(text, self.calibration.safety_limits())
            errors = [str(i) for i in result.errors]
            if not result.ok:
                self.counters.error("mqtt", "protocol_invalid", "; ".join(errors))
            return {"ok": result.ok, "errors": errors, "report": result.report(),
                    "note": "checked only: a running session keeps its protocol; start a new session "
                            "with --protocol to run it"}
        return None

    # -- periodic work ------------------------------------------------------------------------

    async def housekeeping(self) -> None:
        """1 Hz: fold telemetry, record it and error details, refresh the manifest."""
        n = 0
        while True:
            await asyncio.sleep(1.0)
            self.flush_telemetry()
            if self.state == "running" and self.hot.thread is not None and not self.hot.thread.is_alive():
                self._alarm({"source": "rigd", "severity": "error", "message": "the hot loop stopped unexpectedly"})
                self.request_stop("hot loop stopped unexpectedly")
            n += 1
            if n % 5 == 0:
                await asyncio.to_thread(self.write_manifest)

    def flush_telemetry(self) -> None:
        """Move new telemetry rows and error details into the session."""
        rows = self.telemetry.collect()
        now = time.monotonic_ns()
        if rows.size:
            self.recorder.put_message(wire.Kind.TELEMETRY, rows, now)
        for d in self.counters.pop_details():
            self.recorder.log(d, now)
        if rows.size:
            self.recorder.log({"type": "telemetry", "latency_us": self.telemetry_summary(),
                               "counters": self.counter_snapshot()}, now)

    async def watch_sim(self) -> None:
        """End the session if the simulated (or replayed) rig exits on its own."""
        assert self.sim_proc is not None
        rc = await self.sim_proc.wait()
        await asyncio.sleep(0.5)  # let its last messages arrive
        what = ("replayed" if self.cfg.replay is not None else
                "Open Ephys" if self.cfg.rig == "openephys" else "simulated")
        if rc != 0:
            why = await asyncio.to_thread(self._sim_reason)
            self._alarm({"source": "sim", "severity": "error",
                         "message": f"{what} rig exited with code {rc}" + (f": {why}" if why else "")})
        self.request_stop(f"{what} rig exited (code {rc})")

    def _sim_reason(self) -> str:
        """Why the rig process stopped, from the JSON summary line it printed last (sim.log)."""
        try:
            with open(self.directory / "sim.log", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 65536))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return str(obj.get("error") or obj.get("reason") or "")
        return ""

    async def start_sim(self) -> None:
        """Start the simulated rig as its own process, speaking the public wire protocol.

        With ``clock = "rig"`` it runs in lockstep (``--lockstep``): it waits for rigd's estimate of
        each frame, so rigd publishes them. With ``replay`` set, the rig is the replay of that
        recorded session (:meth:`start_replay`).
        """
        c = self.cfg
        if c.replay is not None:
            await self.start_replay()
            return
        mouse: dict[str, Any] = {"mu_left": c.mu_left, "mu_right": c.mu_right, "callosotomy": c.callosotomy,
                                 "units_per_hemisphere": c.units_per_hemisphere, "day": c.day,
                                 "bin_s": c.bin_ms * 1e-3}
        if c.iti_s is not None:
            mouse["iti_s"] = [c.iti_s, c.iti_s]
        write_json_atomic(self.directory / "sim_config.json", mouse)
        args = [sys.executable, "-m", "sim.rig_process", "--ingest", self.hot.ingest_endpoint,
                "--command", self.hot.command_endpoint, "--rig-id", str(c.rig_ids[0]),
                "--seed", str(c.seed), "--config", str(self.directory / "sim_config.json"),
                "--log", str(self.directory / "rig.jsonl")]  # the rig's own record of its light, its clock
        if c.trials is not None:
            args += ["--trials", str(c.trials)]
        if c.realtime_priority > 0:
            args += ["--realtime"]
        if c.model == "spiking":
            args += ["--model", "spiking", "--backend", c.backend]
        elif c.model == "rnn":
            args += ["--model", "rnn"]
        if c.clock == "rig":
            args += ["--lockstep"]
            self.hot.publish_estimates = True  # the lockstep rig waits for them (no frame is in flight yet)
        log_file = open(self.directory / "sim.log", "wb")  # noqa: SIM115 - closed in stop()
        self._sim_log = log_file
        self.sim_proc = await asyncio.create_subprocess_exec(*args, stdout=log_file, stderr=log_file)

    async def start_replay(self) -> None:
        """Start the replay of a recorded session (rig/replay_rig.py) in the simulated rig's place.

        Watched and stopped like the simulated rig (the session ends when the replay ends); with
        ``replay_speed = "max"`` it runs in lockstep, so rigd publishes estimates. ``replay.json``
        in the session says what is replayed.
        """
        c = self.cfg
        assert c.replay is not None
        write_json_atomic(self.directory / "replay.json",
                          {"source": str(c.replay), "speed": c.replay_speed, "rig_id": c.rig_ids[0],
                           "clock": c.clock, "seed": c.seed, "protocol_sha256": self.protocol.sha256})
        args = [sys.executable, "-m", "rig.replay_rig", "--session", str(c.replay),
                "--ingest", self.hot.ingest_endpoint, "--command", self.hot.command_endpoint,
                "--rig-id", str(c.rig_ids[0]), "--speed", str(c.replay_speed),
                "--log", str(self.directory / "replay.jsonl")]
        if c.replay_speed == "max":
            self.hot.publish_estimates = True  # the lockstep replay waits for them (no frame is in flight yet)
        log_file = open(self.directory / "sim.log", "wb")  # noqa: SIM115 - closed in stop_sim()
        self._sim_log = log_file
        self.sim_proc = await asyncio.create_subprocess_exec(*args, stdout=log_file, stderr=log_file)

    async def start_openephys(self) -> None:
        """Start the Open Ephys adapter (rig/openephys_rig.py), the rig of ``--rig openephys``.

        Watched and stopped like the simulated rig (the session ends if it exits; its last JSON line
        says why). With ``openephys_broadcast`` rigd publishes its estimates, which the adapter
        rebroadcasts in the Event Broadcaster format (docs/openephys.md).
        """
        c = self.cfg
        assert c.openephys_map is not None
        args = [sys.executable, "-m", "rig.openephys_rig", "--ingest", self.hot.ingest_endpoint,
                "--command", self.hot.command_endpoint, "--rig-id", str(c.rig_ids[0]),
                "--map", str(c.openephys_map), "--zmq", c.openephys_zmq, "--bin-ms", str(c.bin_ms),
                "--record-name", self.directory.name, "--log", str(self.directory / "openephys.jsonl")]
        for flag, value in (("--events", c.openephys_events), ("--broadcast", c.openephys_broadcast),
                            ("--record", c.openephys_record)):
            if value is not None:
                args += [flag, value]
        if c.openephys_broadcast is not None:
            self.hot.publish_estimates = True  # the adapter rebroadcasts rigd's decoder output
        log_file = open(self.directory / "sim.log", "wb")  # noqa: SIM115 - closed in stop_sim()
        self._sim_log = log_file
        self.sim_proc = await asyncio.create_subprocess_exec(*args, stdout=log_file, stderr=log_file)

    async def stop_sim(self) -> None:
        """SIGTERM the simulated rig, then SIGKILL after 5 s."""
        p = self.sim_proc
        if p is None:
            return
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
            try:
                await asyncio.wait_for(p.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
        self._sim_log.close()

    async def start_watchdog(self) -> None:
        """Start the loop watchdog process (rig/watchdog.py) and wait until it has bound its socket."""
        c = self.cfg
        limits = self.calibration.safety_limits()
        args = [sys.executable, "-m", "rig.watchdog", "--beat", str(self.beat.path),
                "--bind", safety_endpoint_for(self.hot.command_endpoint),
                "--rig-ids", ",".join(str(r) for r in c.rig_ids), "--watchdog-s", str(limits.watchdog_s),
                "--parent-pid", str(os.getpid()), "--log", str(self.directory / "watchdog.jsonl")]
        if self.mqtt_url:
            args += ["--mqtt", self.mqtt_url, "--topic", f"rigd/{c.name}/alarms"]
        # its own session: a Ctrl-C on rigd's terminal goes to rigd, not to its watchdog
        p = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                 stderr=open(self.directory / "watchdog.log", "wb"),  # noqa: SIM115
                                                 start_new_session=True)
        self.watchdog_proc = p
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), WATCHDOG_READY_TIMEOUT_S)
        try:
            self.hot.safety_endpoint = str(json.loads(line)["safety_endpoint"])
        except (ValueError, KeyError) as exc:
            raise RuntimeError(f"the loop watchdog did not start: {line!r}") from exc
        # what it does later goes to the session directory's watchdog.jsonl (and MQTT), not to the pipe

    async def stop_watchdog(self) -> None:
        """The loop marked itself stopped: the watchdog exits on its own; make sure of it (≤ 2 s)."""
        p = self.watchdog_proc
        if p is None or p.returncode is not None:
            return
        try:
            await asyncio.wait_for(p.wait(), 2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()

    def close_ledgers(self) -> None:
        """Write what the ledgers still hold queued (bounded) and stop their writers."""
        for led in self.ledgers.values():
            led.close(timeout_s=1.0)


class ShutdownGuard:
    """Bounds a session's shutdown (see the module docstring); its timer runs on its own thread."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self.done = threading.Event()

    def arm(self) -> None:
        """Start the shutdown clock (idempotent)."""
        with self._lock:
            if self._timer is None and not self.done.is_set():
                self._timer = threading.Timer(SHUTDOWN_LIMIT_S, self.force,
                                              args=(f"shutdown did not finish within {SHUTDOWN_LIMIT_S:.0f} s",))
                self._timer.daemon = True
                self._timer.start()

    def finished(self) -> None:
        """The shutdown completed normally: stand down."""
        self.done.set()
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def force(self, why: str) -> None:
        """Close the session from this thread, whatever else hangs, and exit the process."""
        if self.done.is_set():
            return
        svc = self.svc
        threads = sorted(t.name for t in threading.enumerate() if t is not threading.current_thread())
        svc.hot.request_all_off()
        svc.stop_reason = (svc.stop_reason + "; " if svc.stop_reason else "") + \
            f"forced exit: {why} (threads still alive: {', '.join(threads)})"
        closer = threading.Thread(target=svc.recorder.close, daemon=True)
        closer.start()
        closer.join(2.0)
        svc.state = "stopped"
        with contextlib.suppress(Exception):
            svc.close_ledgers()
        with contextlib.suppress(Exception):
            svc.write_manifest()
        with contextlib.suppress(FileNotFoundError):
            (runtime_dir() / f"{svc.cfg.name}.json").unlink()
        sys.stderr.write(f"rigd: {svc.stop_reason}\n")
        sys.stderr.flush()
        # no ALL_OFF can be promised from here: the watchdog process sees rigd gone and sends it,
        # and every rig's own watchdog turns its light off within 0.5 s of rigd's silence
        os._exit(FORCED_EXIT_CODE)


@contextlib.contextmanager
def runtime_file(name: str, info: dict[str, Any]) -> Any:
    """Leave ``<runtime_dir>/<name>.json`` for ``rigd status``/``rigd stop`` while running.

    At exit it is removed only if it is still this process's (its pid): another instance's file
    (``rigd start`` refuses a second one of the same name; this guards anything that slips past)
    stays for ``rigd status``/``rigd stop`` to find.
    """
    d = runtime_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.json"
    write_json_atomic(path, info)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


@contextlib.asynccontextmanager
async def _broker(cfg: ServiceConfig, on_restart: Callable[[dict[str, Any]], None]
                  ) -> AsyncIterator[tuple[str, bool]]:
    if cfg.mqtt:
        yield cfg.mqtt, False
    else:
        async with embedded_broker(port=cfg.mqtt_port, on_restart=on_restart) as url:
            yield url, True


async def run(cfg: ServiceConfig, *, console: Any = None) -> dict[str, Any]:
    """Run one session to its end; returns the final status (the summary printed at exit)."""
    protocol = load_protocol(cfg.protocol or DEFAULT_PROTOCOL)
    given = cfg.model_fields_set
    place = placement.choose(loop_cpu=cfg.loop_cpu if "loop_cpu" in given else None,
                             poll_ahead_us=cfg.poll_ahead_us if "poll_ahead_us" in given else None,
                             mode=cfg.placement, clock=cfg.clock)
    cfg.loop_cpu, cfg.poll_ahead_us = place.loop_cpu, place.poll_ahead_us
    # the hot thread shares the GIL with the event loop and the recorder: hand it back quickly
    sys.setswitchinterval(0.0005)
    if cfg.loop_cpu is not None:
        # threads and processes started from here on inherit this: everything but the loop thread
        # (which pins itself) stays off the loop's CPU
        others = os.sched_getaffinity(0) - {cfg.loop_cpu}
        if others:
            os.sched_setaffinity(0, others)
    directory = (cfg.session_dir / session_name(cfg)).resolve()
    directory.mkdir(parents=True, exist_ok=False)
    svc = Service(cfg, protocol, directory)
    svc.placement = place
    progress = Progress(svc, console=console, live=cfg.live)
    loop = asyncio.get_running_loop()

    signals = [0]

    def on_signal(signum: int, frame: object) -> None:
        # a plain handler, not the event loop's: it runs even while the event loop is stuck in a
        # call. A signal while the session is already stopping (a second Ctrl-C, or one after
        # `rigd stop`) ends it at once.
        name = signal.Signals(signum).name
        signals[0] += 1
        if signals[0] > 1 or svc.stop_event.is_set():
            svc.guard.force(f"{name} during shutdown")
        loop.call_soon_threadsafe(svc.request_stop, f"signal {name}")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        async with _broker(cfg, svc.broker_restarted) as (mqtt_url, embedded):
            svc.mqtt_url = mqtt_url
            svc.control = ControlPlane(mqtt_url, cfg.name, svc.status, svc.telemetry_summary,
                                       svc.on_command, svc.counters, on_alarm=svc._alarm)
            svc.control.set_session({"session_dir": str(directory), "started": svc.started_wall,
                                     "protocol": protocol.name, "protocol_sha256": protocol.sha256})
            await svc.start_watchdog()
            svc.hot.start()
            if cfg.rig in ("external", "openephys") and cfg.bench_test_calibration \
                    and is_placeholder_calibration(svc.calibration.measured_on):
                now = time.monotonic_ns()
                bench = {"source": "calibration", "severity": "warning", "t_local_ns": now,
                         "message": f"BENCH TEST: --rig {cfg.rig} on the placeholder calibration ("
                                    f"{cfg.calibration or 'hardware/calibration_default.toml'}), not "
                                    "measured on this rig: not for an animal"}
                svc.recorder.alarm(bench, now)
                svc._alarm(bench)
            svc.write_manifest()
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(svc.control.run()), tg.create_task(svc.housekeeping())]
                ui = None
                if cfg.ui:
                    from rig.live_view import LiveView

                    ui = LiveView(svc, port=cfg.ui_port)
                    svc.ui_url = await ui.start()
                # "ready" includes listening for commands: a client that acts on the runtime file
                # must not publish into a broker rigd has not subscribed to yet (a lab broker that
                # is away does not hold the session up: the control plane keeps reconnecting)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(svc.control.connected.wait(), CONTROL_READY_TIMEOUT_S)
                info = {"pid": os.getpid(), "name": cfg.name, "mqtt": mqtt_url, "embedded_broker": embedded,
                        "session_dir": str(directory), "started": svc.started_wall, "ui": svc.ui_url,
                        "ingest": svc.hot.ingest_endpoint, "command": svc.hot.command_endpoint,
                        "placement": place.describe()}
                svc.runtime_info = info
                with runtime_file(cfg.name, info):
                    progress.banner(info)
                    svc.ledger_alarms()
                    if cfg.rig in ("sim", "openephys"):
                        await (svc.start_sim() if cfg.rig == "sim" else svc.start_openephys())
                        tasks.append(tg.create_task(svc.watch_sim()))
                    svc.state = "running"
                    await asyncio.to_thread(svc.write_manifest)
                    tasks.append(tg.create_task(progress.run()))
                    try:
                        if cfg.duration_s is not None:
                            await asyncio.wait_for(svc.stop_event.wait(), cfg.duration_s)
                        else:
                            await svc.stop_event.wait()
                    except TimeoutError:
                        svc.request_stop(f"duration {cfg.duration_s} s reached")
                    svc.state = "stopping"
                    svc.hot.request_all_off()  # light off while the rig is still listening
                    await asyncio.sleep(0.2)
                    if hang := os.environ.get("RIGD_FAULT_SHUTDOWN_HANG_S"):  # fault injection (tests)
                        await asyncio.to_thread(time.sleep, float(hang))
                    await svc.stop_sim()
                    await asyncio.to_thread(svc.hot.stop)
                    await svc.stop_watchdog()
                    svc.flush_telemetry()
                    svc.state = "stopped"
                    final = svc.status()
                    await svc.control.close(final)
                    if ui is not None:
                        await ui.stop()
                    for t in tasks:
                        t.cancel()
    finally:
        svc.state = "stopped"
        if svc.hot.thread is not None and svc.hot.thread.is_alive():
            svc.hot.stop()
        if svc.watchdog_proc is not None and svc.watchdog_proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                svc.watchdog_proc.kill()
        svc.recorder.close()
        svc.close_ledgers()
        svc.beat.close()
        svc.write_manifest()
        progress.close()
        svc.guard.finished()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    final = svc.status()
    final["stop_reason"] = svc.stop_reason
    return final
