r"""The simulated rig as its own process: paces a :class:`~sim.mouse.SimulatedMouse` to wall time.

This module owns the clock of the simulated rig. It maps the mouse's clock (0 at start) onto
``time.monotonic_ns``, sleeps until each bin's end (busy-waiting the last ~200 µs), publishes one
SPIKE_COUNTS message per bin, the trial events and heartbeats (≥ 2 Hz, with the rig description and
its own timing slip), obeys light commands and acknowledges them. Its safety is the client's
:class:`rig.client.LightGuard`, the one every rig runs (the mouse admits each command through it):
deadline and light limits per command, and the watchdog on rigd's heartbeat (silent for 0.5 s →
light off, ack WATCHDOG_OFF). It talks to rigd only through :class:`rig.client.RigClient`, exactly
as a lab rig would, and imports nothing else of ``rig`` except the wire types. It stops after
``--trials``/``--duration``, on SIGTERM/SIGINT, or when rigd is lost (its heartbeat silent for
``--rigd-lost-s`` after the handshake: light off, exit code 4), sends a final heartbeat with
``"state": "stopped"``, closes its sockets and prints one JSON summary line with ``stop_reason``.

``--log FILE`` writes the rig's safety-relevant events as JSON lines, each flushed as written and
stamped ``t_ns`` with the rig process's monotonic clock (the clock of ``t_rig_ns`` on the wire when
paced): ``connected``, ``light_on`` (command applied: ``t_on_ns``, ``t_off_ns``), ``light_refused``
(LATE/INVALID and why), ``light_stop`` (RAMP_DOWN/ALL_OFF obeyed), ``light_off`` (the light went
dark: ``t_off_ns``), ``watchdog_off`` (with ``rigd_silent_s``, the age of rigd's last heartbeat),
``rigd_lost``, ``frames`` (every 100 ms and at the end: ``seq`` and ``t_rig_ns`` of the last
SPIKE_COUNTS frame sent) and ``stopped`` (with the reason).

With ``--model spiking`` the mouse is a :class:`~sim.spiking_mouse.SpikingMouse` (ALM spikes and
choice from the spiking network on ``--backend cpu|lava``). Such a world may compute slower than
real time (Lava: ~2–3 ms per 1-ms step here), so it runs on its **own rig clock**: each bin goes
out at max(its wall deadline, when its computation finished), a late bin shifts the clock back
instead of dropping steps, rig timestamps stay on the mouse's clock (1 ms per network step), and
the heartbeats and the summary say so (``model``, ``backend``, ``backend_active``,
``slowdown`` = wall time / rig time since start, ``slowdown_recent`` over the last heartbeat
period, and ``backend_alarm`` if Lava could not start or fell back to the CPU backend).

With ``--lockstep`` (``rigd start --rig sim --clock rig``) the rig runs on a **virtual clock**:
no wall pacing; after each bin's frame and events it waits for rigd's estimate of that frame
(:meth:`rig.client.RigClient.wait_estimate`), obeys the light commands that came before it, and
only then computes the next bin, so each command is obeyed at the end of the bin of the frame that
caused it. The guard's watchdog on rigd's silence and ``--rigd-lost-s`` stay on wall time, light
spans on the mouse's clock; heartbeats go out ≥ 4 Hz in wall time, also while it waits; an
estimate missing for ``--estimate-timeout-s`` stops it (exit 5). docs/simulator.md, "Clocks".

Usage::

    python -m sim.rig_process --ingest tcp://127.0.0.1:5555 --command tcp://127.0.0.1:5556 \\
        --rig-id 1 --seed 7 [--trials N] [--duration S] [--mu-left 0.6] [--mu-right 0.6] \\
        [--units-per-hemisphere 40] [--day 0] [--bin-ms 1] [--config mouse.json] [--no-pace] \\
        [--model reduced|spiking|rnn] [--backend cpu|lava] [--rigd-lost-s 3] [--log rig.jsonl] \\
        [--lockstep [--estimate-timeout-s 10]]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from types import FrameType
from typing import IO, Any

import numpy as np

from rig import wire
from rig.client import EstimateTimeoutError, Received, RigClient
from sim.config import MouseConfig
from sim.mouse import SimulatedMouse

_NS = 1_000_000_000
HEARTBEAT_PERIOD_S = 0.25  #: 4 Hz, twice the 2 Hz floor of docs/wire-protocol.md
_HIST_US = 10  #: slip histogram resolution (µs)
_HIST_BINS = 20_000  #: up to 200 ms; larger slips land in the last bin
FRAMES_LOG_PERIOD_S = 0.1  #: how often ``--log`` records the last frame sent
EXIT_RIGD_LOST = 4  #: exit code when rigd's heartbeat stopped
EXIT_NO_ESTIMATE = 5  #: exit code when, in lockstep, rigd's estimate of a frame did not come


class RigLog:
    """``--log``: the rig's safety events as JSON lines, flushed per line, on the rig's monotonic clock."""

    def __init__(self, path: str | None) -> None:
        self._f: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self.write_errors = 0  #: lines that could not be written (e.g. a full disk)

    def write(self, event: str, **fields: Any) -> None:
        """Append one event stamped ``t_ns`` (``time.monotonic_ns``) and flush it."""
        if self._f is None:
            return
        try:
            self._f.write(json.dumps({"event": event, "t_ns": time.monotonic_ns(), **fields}) + "\n")
            self._f.flush()
        except OSError:  # a full disk must not stop the rig: the log is a record, not the light's path
            self.write_errors += 1

    def close(self) -> None:
        """Close the file."""
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                self.write_errors += 1
            self._f = None


class SlipStats:
    """Timing slip of the paced loop (how late each bin went out), as a fixed histogram (O(1)/bin)."""

    def __init__(self) -> None:
        self.hist = np.zeros(_HIST_BINS, dtype=np.int64)
        self.n = 0
        self.max_ns = 0
        self.late_1ms = 0

    def add(self, slip_ns: int) -> None:
        """Record one bin's slip (negative slips count as 0)."""
        s = max(slip_ns, 0)
        self.hist[min(s // (_HIST_US * 1000), _HIST_BINS - 1)] += 1
        self.n += 1
        self.max_ns = max(self.max_ns, s)
        if s > 1_000_000:
            self.late_1ms += 1

    def percentile_ms(self, q: float) -> float:
        """Return the q-th percentile in ms (upper edge of its histogram bin); 0 before any bin."""
        if self.n == 0:
            return 0.0
        idx = int(np.searchsorted(np.cumsum(self.hist), q / 100.0 * self.n))
        return (min(idx, _HIST_BINS - 1) + 1) * _HIST_US / 1000.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line interface (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m sim.rig_process", description=__doc__.split("\n")[0])
    ap.add_argument("--ingest", required=True, help="rigd's ingest endpoint (rig PUB connects)")
    ap.add_argument("--command", required=True, help="rigd's command endpoint (rig SUB connects)")
    ap.add_argument("--rig-id", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="the mouse's identity")
    ap.add_argument("--session", type=int, default=0, help="independent session of the same mouse/day")
    ap.add_argument("--trials", type=int, default=None, help="stop after this many trials")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--mu-left", type=float, default=None)
    ap.add_argument("--mu-right", type=float, default=None)
    ap.add_argument("--units-per-hemisphere", type=int, default=None)
    ap.add_argument("--day", type=int, default=None)
    ap.add_argument("--bin-ms", type=float, default=None)
    ap.add_argument("--iti-s", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    ap.add_argument("--config", default=None, help="JSON file of MouseConfig fields")
    ap.add_argument("--model", choices=("reduced", "spiking", "rnn"), default=None,
                    help="ALM model: the reduced latent model (default), the spiking network or the authors' RNN")
    ap.add_argument("--backend", choices=("cpu", "lava"), default=None,
                    help="spiking model's backend: numba CPU (default) or the Lava sidecar")
    ap.add_argument("--no-pace", action="store_true", help="run as fast as possible (no wall pacing)")
    ap.add_argument("--lockstep", action="store_true",
                    help="virtual clock: after each bin wait for rigd's estimate of its frame (rigd must publish "
                         "estimates: rigd start --clock rig) and apply its light commands before the next bin")
    ap.add_argument("--estimate-timeout-s", type=float, default=10.0,
                    help="--lockstep: give up (exit 5) when rigd's estimate of a frame is not in after this long")
    ap.add_argument("--spin-us", type=float, default=200.0, help="busy-wait this long before a deadline")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--rigd-lost-s", type=float, default=3.0,
                    help="after the handshake, stop (exit 4, light off) when rigd's heartbeat is silent this long")
    ap.add_argument("--log", default=None, metavar="FILE",
                    help="append the rig's safety events (light on/off, watchdog, rigd lost, frames) as JSON lines")
    ap.add_argument("--realtime", action="store_true",
                    help="ask for SCHED_FIFO priority (as a rig's acquisition loop would); "
                         "falls back to normal scheduling without the privilege")
    return ap.parse_args(argv)


def build_config(a: argparse.Namespace) -> MouseConfig:
    """MouseConfig from --config plus the command-line overrides."""
    over: dict[str, Any] = {"mu_left": a.mu_left, "mu_right": a.mu_right,
                            "units_per_hemisphere": a.units_per_hemisphere, "day": a.day,
                            "bin_s": None if a.bin_ms is None else a.bin_ms / 1000.0,
                            "iti_s": None if a.iti_s is None else tuple(a.iti_s), "seed": a.seed,
                            "model": a.model, "backend": a.backend}
    if a.config:
        return MouseConfig.from_json_file(a.config, **over)
    return MouseConfig(**{k: v for k, v in over.items() if v is not None})


def _shift_fields(fields: dict[str, Any], t0: int) -> dict[str, Any]:
    """Mouse-clock times (``t_*_ns`` fields) onto the rig clock."""
    return {k: (v + t0 if k.startswith("t_") and k.endswith("_ns") and isinstance(v, int) else v)
            for k, v in fields.items()}


class RigProcess:
    """The paced loop around one mouse and one :class:`RigClient` (see the module docstring)."""

    def __init__(self, mouse: SimulatedMouse, client: RigClient, *, pace: bool = True,
                 spin_ns: int = 200_000, max_trials: int | None = None,
                 max_duration_s: float | None = None, own_clock: bool = False,
                 rigd_lost_s: float = 3.0, log: RigLog | None = None, lockstep: bool = False,
                 estimate_timeout_s: float = 10.0) -> None:
        self.mouse = mouse
        #: virtual clock: wait for rigd's estimate of each frame before the next bin (never paced)
        self.lockstep = lockstep
        self.estimate_timeout_s = estimate_timeout_s
        self.estimates = 0  #: rigd's estimates waited for and received (lockstep)
        self.wait_ns = 0  #: wall time spent waiting for them
        self._next_hb_wall = 0
        #: run on the mouse's own clock: a bin computed after its wall deadline delays the clock
        #: (``lag_ns``) instead of being dropped; heartbeats then report the slowdown
        self.own_clock = own_clock
        self.lag_ns = 0
        self._hb_wall_ns = 0
        self._hb_rig_ns = 0
        self.client = client
        self.pace = pace and not lockstep
        self.spin_ns = spin_ns
        self.max_trials = max_trials
        self.max_duration_ns = None if max_duration_s is None else round(max_duration_s * _NS)
        self.slip = SlipStats()
        self.stop_requested = False
        self.t0 = 0
        self.acks: dict[str, int] = {s.name: 0 for s in wire.AckStatus}
        self.commands = 0
        self.trials_done = 0
        self.bins = 0
        self.rigd_lost_ns = round(rigd_lost_s * _NS)
        self.log = log or RigLog(None)
        self.stop_reason = ""
        self._rigd_wall_ns = 0  #: when rigd's latest heartbeat arrived (wall clock)
        self._last_frame = (-1, 0)  #: seq and t_rig_ns of the last SPIKE_COUNTS sent
        self.error = ""  #: why the rig stopped, when it was an error (no estimate from rigd)
        self._lit = False

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Signal handler: finish the current bin and stop cleanly."""
        self.stop_requested = True

    def _now_rig(self) -> int:
        """Now on the mouse's clock: wall time when paced, the mouse's own time otherwise."""
        if not self.pace:
            return self.mouse.t_rig_ns
        return max(self.mouse.t_rig_ns, time.monotonic_ns() - self.t0 - self.lag_ns)

    def slowdown(self) -> float:
        """Wall time / rig time since the start (> 1: the simulated world runs slower than real time)."""
        rig = self.mouse.t_rig_ns
        return (time.monotonic_ns() - self.t0) / rig if rig > 0 else 1.0

    def _clock_status(self) -> dict[str, Any]:
        """The own-clock fields of a heartbeat (and the mouse's own status, e.g. its backend)."""
        if not self.own_clock:
            return {}
        now, rig = time.monotonic_ns(), self.mouse.t_rig_ns
        d_rig = rig - self._hb_rig_ns
        recent = (now - self._hb_wall_ns) / d_rig if d_rig > 0 else self.slowdown()
        self._hb_wall_ns, self._hb_rig_ns = now, rig
        st: dict[str, Any] = {"clock": "own", "slowdown": round(self.slowdown(), 4),
                              "slowdown_recent": round(recent, 4), "clock_lag_s": self.lag_ns / _NS}
        status = getattr(self.mouse, "status", None)
        if callable(status):
            st.update(status())
        return st

    def _wait_until(self, deadline_ns: int) -> int:
        """Sleep until ``deadline_ns`` (monotonic), spinning the last ``spin_ns``; return now."""
        now = time.monotonic_ns()
        remaining = deadline_ns - now - self.spin_ns
        if remaining > 0:
            time.sleep(remaining / _NS)
        now = time.monotonic_ns()
        while now < deadline_ns:
            now = time.monotonic_ns()
        return now

    def _heartbeat(self, state: str) -> None:
        m = self.mouse
        self.client.heartbeat(state=state, slip_p50_ms=self.slip.percentile_ms(50),
                              slip_p99_ms=self.slip.percentile_ms(99),
                              slip_max_ms=self.slip.max_ns / 1e6, bins=self.bins,
                              trial=m.trial, trials_done=self.trials_done, light_on=m.light_on(),
                              watchdog_trips=m.watchdog_trips, **self._clock_status())

    def _ack(self, cmd: wire.LightCommandFields, status: wire.AckStatus, t_recv: int,
             t_change: int) -> None:
        self.acks[status.name] += 1
        self.client.send_ack(cmd, status, t_recv + self.t0, t_change + self.t0 if t_change else 0)

    def _handle_commands(self, commands: list[wire.LightCommandFields]) -> None:
        m = self.mouse
        for cmd in commands:
            self.commands += 1
            t_recv = self._now_rig()
            local = dataclasses.replace(
                cmd,
                deadline_rig_ns=max(cmd.deadline_rig_ns - self.t0, 1) if cmd.deadline_rig_ns else 0,
                t_start_rig_ns=max(cmd.t_start_rig_ns - self.t0, 0) if cmd.t_start_rig_ns else 0)
            status, t_change = m.apply_light(local, t_recv)
            self._ack(cmd, status, t_recv, t_change)
            ids = {"command_id": cmd.command_id, "trial": cmd.trial, "t_received_ns": t_recv + self.t0}
            if status == wire.AckStatus.APPLIED:
                self.log.write("light_on", **ids, t_on_ns=t_change + self.t0,
                               t_off_ns=t_change + self.t0 + round(cmd.duration_s * _NS),
                               duration_s=cmd.duration_s, power_mw_per_spot=cmd.power_mw_per_spot,
                               spots_left=cmd.spots_left, spots_right=cmd.spots_right)
            elif status == wire.AckStatus.STOPPED:
                self.log.write("light_stop", **ids, action=cmd.action.name, ramp_down_s=cmd.ramp_down_s)
            else:
                verdict = m.guard.last_admission
                self.log.write("light_refused", **ids, status=status.name,
                               reason=verdict.reason if verdict is not None else "")

    def _log_frames(self) -> None:
        seq, t = self._last_frame
        self.log.write("frames", seq=seq, t_rig_ns=t, bins=self.bins)

    def _note_light(self) -> None:
        """Log the moment the light goes dark (end of its command, ramp, ALL_OFF, watchdog)."""
        m = self.mouse
        lit = m.light_on()
        if self._lit and not lit:
            self.log.write("light_off", t_off_ns=m.light.t_off_ns + self.t0,
                           command_id=m.active_command.command_id if m.active_command else 0)
        self._lit = lit

    def _watchdog(self) -> None:
        """The guard's watchdog: light off (ack WATCHDOG_OFF) when rigd has been silent too long."""
        m = self.mouse
        t_now = self._now_rig()
        off = m.watchdog(t_now)
        if off is not None:
            self._ack(off, wire.AckStatus.WATCHDOG_OFF, t_now, t_now)
            last = m.guard.last_rigd_heartbeat_ns
            if last is not None and not self.lockstep:  # lockstep: rigd's silence is on wall time already
                last += self.t0
            self.log.write("watchdog_off", command_id=off.command_id, trial=off.trial,
                           t_off_ns=t_now + self.t0, rigd_silent_s=m.guard.last_trip_silence_ns / _NS,
                           last_rigd_heartbeat_ns=last)

    def _rigd_heard(self) -> None:
        """Lockstep: when rigd's latest heartbeat came, in wall time (the guard's silence clock)."""
        last = self.mouse.guard.last_rigd_heartbeat_ns
        if last is not None:
            self._rigd_wall_ns = max(self._rigd_wall_ns, last)

    def _wait_estimate(self, seq: int) -> Received:
        """Lockstep: wait for rigd's estimate of frame ``seq``; meanwhile heartbeat, obey, guard.

        The mouse's clock stands still while it waits, so a command obeyed during the wait is obeyed
        at the same rig time as after it: the end of the bin whose frame caused it. The wait is
        abandoned (estimate None) on a stop request or when rigd has been silent ``rigd_lost_s``.
        """
        t = time.monotonic_ns()
        hb_ns = round(HEARTBEAT_PERIOD_S * _NS)

        def idle(rec: Received) -> bool:
            self._rigd_heard()
            if rec.commands:  # e.g. the loop watchdog's ALL_OFF while rigd stalls: obeyed now
                commands = list(rec.commands)
                rec.commands.clear()
                self._handle_commands(commands)
            self._watchdog()
            self._note_light()
            now = time.monotonic_ns()
            if now >= self._next_hb_wall:
                self._heartbeat("running")
                self._next_hb_wall = now + hb_ns
            return not self.stop_requested and now - self._rigd_wall_ns <= self.rigd_lost_ns

        try:
            rec = self.client.wait_estimate(seq, self.estimate_timeout_s, idle=idle)
        finally:
            self.wait_ns += time.monotonic_ns() - t
        if rec.estimate is not None:
            self.estimates += 1
        return rec

    def run(self) -> dict[str, Any]:
        """Connect, run until a stop condition, say goodbye; return the summary."""
        m, client = self.mouse, self.client
        client.connect()
        self.t0 = time.monotonic_ns()
        if self.lockstep:
            # the rig's clock is the mouse's from now on (t_send_ns too: a command's end-to-end time,
            # ack t_received - cause t_send, is then on one clock, 0 in virtual time)
            client.clock_ns = lambda: self.mouse.t_rig_ns + self.t0
        self._hb_wall_ns = self.t0
        self._rigd_wall_ns = self.t0
        m.guard.clock_ns = self._now_rig  # heartbeats polled from now on are stamped on the rig clock
        if self.lockstep:
            # light spans on the mouse's clock, rigd's silence on wall time: the mouse's clock may run
            # many seconds per wall second, and rigd's heartbeat is not needed per frame
            m.guard.silence_clock_ns = time.monotonic_ns
            m.guard.note_rigd_heartbeat(self.t0)
        else:
            m.note_rigd_heartbeat(0)
        self.log.write("connected", rig_id=client.rig_id, t0_ns=self.t0, **client.identity,
                       watchdog_s=m.guard.watchdog_ns / _NS, rigd_lost_s=self.rigd_lost_ns / _NS,
                       lockstep=self.lockstep)
        next_frames_log = self.t0
        next_hb = 0
        hb_ns = round(HEARTBEAT_PERIOD_S * _NS)
        self._next_hb_wall = self.t0 + hb_ns
        wall_start = time.monotonic()
        cpu_start = time.process_time()
        while not self.stop_requested:
            out = m.step()
            if self.pace:
                due = self.t0 + self.lag_ns + out.t_rig_ns
                now = time.monotonic_ns()
                if self.own_clock and now > due:
                    # computed after its wall deadline: the mouse's clock waits for its model
                    self.lag_ns += now - due
                else:
                    now = self._wait_until(due)
                self.slip.add(now - due)
            seq = client.send_counts(out.counts, t_rig_ns=self.t0 + out.t_rig_ns)
            self._last_frame = (seq, self.t0 + out.t_rig_ns)
            self.bins += 1
            for name, fields in out.events:
                f = _shift_fields(fields, self.t0)
                trial = int(f.pop("trial"))
                t_ev = int(f.pop("t_rig_ns"))
                client.send_event(name, trial, t_rig_ns=t_ev, **f)
                if name == "trial_end":
                    self.trials_done += 1
            if self.lockstep:
                try:
                    rec = self._wait_estimate(seq)
                except EstimateTimeoutError as exc:
                    self.stop_reason, self.error = "no_estimate", str(exc)
                    self.log.write("no_estimate", seq=seq, reason=str(exc))
                    break
            else:
                rec = client.poll(0)  # feeds the guard's watchdog with rigd's heartbeats
            wall_ns = time.monotonic_ns()
            if self.lockstep:
                self._rigd_heard()
            elif rec.heartbeats:
                self._rigd_wall_ns = wall_ns
            if rec.commands:
                self._handle_commands(rec.commands)
            self._watchdog()
            self._note_light()
            if wall_ns >= next_frames_log:
                self._log_frames()
                next_frames_log = wall_ns + round(FRAMES_LOG_PERIOD_S * _NS)
            if wall_ns - self._rigd_wall_ns > self.rigd_lost_ns:
                self.stop_reason = "rigd_lost"
                self.log.write("rigd_lost", rigd_silent_s=(wall_ns - self._rigd_wall_ns) / _NS,
                               last_rigd_heartbeat_ns=self._rigd_wall_ns)
                break
            if (out.t_rig_ns >= next_hb and not self.lockstep) or \
                    ((self.own_clock or self.lockstep) and time.monotonic_ns() >= self._next_hb_wall):
                # a slowed world still heartbeats ≥ 4 Hz in wall time (docs/wire-protocol.md's floor);
                # a lockstep one only in wall time (its clock may run far faster than real time)
                self._heartbeat("running")
                next_hb = out.t_rig_ns + hb_ns
                self._next_hb_wall = time.monotonic_ns() + hb_ns
            if self.max_trials is not None and self.trials_done >= self.max_trials:
                self.stop_reason = "trials"
                break
            if self.max_duration_ns is not None and out.t_rig_ns >= self.max_duration_ns:
                self.stop_reason = "duration"
                break
        if self.stop_requested and not self.stop_reason:
            self.stop_reason = "signal"
        if m.light_on():  # the rig stops: its light with it (through the guard, which then knows)
            m.apply_light(wire.LightCommandFields(0, 0, 0, 0, 0, 0, max(m.trial, 0), wire.LightAction.ALL_OFF,
                                                  wire.Waveform.CONSTANT, 0, 0, 0.0, 0.0, 0.0, 0.0),
                          self._now_rig())
        self._note_light()
        self._heartbeat("stopped")
        self._log_frames()
        self.log.write("stopped", reason=self.stop_reason)
        wall = time.monotonic() - wall_start
        cpu = time.process_time() - cpu_start
        extra: dict[str, Any] = {}
        if self.own_clock:
            slow = self.slowdown()
            extra = {k: v for k, v in self._clock_status().items() if k != "slowdown_recent"}
            extra["slowdown"] = slow
            pace = "slower than real time" if slow > 1.01 else "keeping real time"
            extra["clock_note"] = (
                f"{m.config.model} model on {extra.get('backend_active', m.config.backend)}: the "
                f"simulated world ran on its own rig clock at {slow:.2f}x wall time per rig second "
                f"({pace}; the clock waited {self.lag_ns / _NS:.2f} s for the model, no steps dropped)")
        if self.stop_reason == "rigd_lost":
            extra["reason"] = (f"rigd lost: no rigd heartbeat for {self.rigd_lost_ns / _NS:g} s after the "
                               f"handshake (rigd killed, hung or unreachable); light off, rig stopped")
        elif self.stop_reason == "no_estimate":
            extra["reason"] = f"{self.error}; light off, rig stopped"
        if self.lockstep:
            extra.update(clock="lockstep", estimates=self.estimates, estimate_wait_s=self.wait_ns / _NS,
                         speedup=m.t_rig_ns / _NS / wall if wall > 0 else 0.0)
        return {**extra, "stop_reason": self.stop_reason, "model": m.config.model, "rig_id": client.rig_id,
                "seed": m.seed,
                "day": m.config.day, "n_units": m.n_units,
                "bin_s": m.config.bin_s, "paced": self.pace, "bins": self.bins,
                "sim_s": m.t_rig_ns / _NS, "wall_s": wall,
                "cpu_per_wall": cpu / wall if wall > 0 else 0.0, "trials": self.trials_done,
                "slip_p50_ms": self.slip.percentile_ms(50), "slip_p99_ms": self.slip.percentile_ms(99),
                "slip_max_ms": self.slip.max_ns / 1e6, "bins_late_over_1ms": self.slip.late_1ms,
                "commands": self.commands, "acks": self.acks, "watchdog_trips": m.watchdog_trips,
                "stopped_by_signal": self.stop_requested, "lockstep": self.lockstep}


def _try_realtime(priority: int = 20) -> bool:
    """Switch this process to SCHED_FIFO; False where the OS or the privileges do not allow it."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, OSError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sim.rig_process``."""
    a = parse_args(argv)
    realtime = _try_realtime() if a.realtime else False
    try:
        config = build_config(a)
    except (ValueError, OSError) as exc:
        print(json.dumps({"error": f"bad mouse configuration: {exc}"}), flush=True)
        return 2
    spiking = config.model == "spiking"
    mouse: SimulatedMouse
    if spiking:
        from sim.spiking_mouse import SpikingMouse  # numba, and a Lava sidecar: only when asked for

        try:
            mouse = SpikingMouse(config, a.seed, session=a.session)
        except ValueError as exc:
            print(json.dumps({"error": f"bad spiking mouse configuration: {exc}"}), flush=True)
            return 2
    else:
        try:
            mouse = SimulatedMouse(config, a.seed, session=a.session)
        except ValueError as exc:
            print(json.dumps({"error": f"bad mouse configuration: {exc}"}), flush=True)
            return 2
    if not (a.estimate_timeout_s > 0.0):
        print(json.dumps({"error": f"--estimate-timeout-s {a.estimate_timeout_s}: expected a number of seconds > 0"}),
              flush=True)
        return 2
    if not (a.rigd_lost_s > 0.0):
        print(json.dumps({"error": f"--rigd-lost-s {a.rigd_lost_s}: expected a number of seconds > 0"}), flush=True)
        return 2
    # the mouse admits every command through the client's guard, which rigd's heartbeats feed
    client = RigClient(a.rig_id, a.ingest, a.command, description=mouse.description, guard=mouse.guard)
    log = RigLog(a.log)
    proc = RigProcess(mouse, client, pace=not a.no_pace, spin_ns=round(a.spin_us * 1000),
                      max_trials=a.trials, max_duration_s=a.duration, own_clock=spiking,
                      rigd_lost_s=a.rigd_lost_s, log=log, lockstep=a.lockstep,
                      estimate_timeout_s=a.estimate_timeout_s)
    signal.signal(signal.SIGTERM, proc.request_stop)
    signal.signal(signal.SIGINT, proc.request_stop)
    try:
        summary = proc.run()
    except TimeoutError as exc:
        print(json.dumps({"error": str(exc), "rig_id": a.rig_id}), flush=True)
        return 3
    finally:
        client.close()
        log.close()
        close = getattr(mouse, "close", None)
        if callable(close):
            close()
    summary["realtime"] = realtime
    print(json.dumps(summary), flush=True)
    return {"rigd_lost": EXIT_RIGD_LOST, "no_estimate": EXIT_NO_ESTIMATE}.get(summary["stop_reason"], 0)


if __name__ == "__main__":
    sys.exit(main())
