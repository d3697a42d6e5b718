"""The hot path: one frame in, at most one light command out, synchronously, on its own thread.

This module owns rigd's two data-plane sockets (ingest SUB, command PUB; both bound here), the
validation of everything a rig sends, and each rig's connection state (sequence numbers, the rig
process it follows, the header fast path, poll-ahead)::

    recv → validate header/sequence/values → rig/pipeline.py (trial tracker → decoder → controller
         → deadline check → light interlock, which alone sends the command) → telemetry stamp

Each configured rig gets its own :class:`RigConnection` and :class:`~rig.pipeline.Pipeline` when
its first heartbeat describes it; the pipeline is the same object the dry run and replayed
sessions run. Every received message is handed, unparsed and uncopied, to the recorder. Nothing
in the chain awaits, logs or does file I/O; errors are counted (rig/errors.py) and detailed off
the path. Decoders are built and refitted on worker threads and installed between trials.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import gc
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import zmq

from decoders.base import Estimate
from hardware.acquisition import ThresholdDetector
from rig import wire
from rig.errors import Counters
from rig.pipeline import AlarmFn, ClockMode, Pipeline, PipelineParts
from rig.rig_identity import Heard, RigIdentity, UnitLimitError, validate_description, who, whole
from rig.session import RIGD_RIG_ID, Recorder
from rig.streams import Seq, StreamSequences, Verdict, describe
from rig.telemetry import LoopTelemetry
from rig.watchdog import LoopBeat

HEARTBEAT_PERIOD_NS = 100_000_000  #: rigd → rig heartbeat, 10 Hz (rig watchdog trips at 0.5 s)
DECODER_CHUNK = 1000  #: decoder outputs recorded per DECODER_OUTPUT record
DECODER_FIELDS = ("seq", "t_rig_ns", "t_s", "value", "confidence", "left", "right")
KNOWN_EVENTS = frozenset({"trial_start", "sample_on", "delay_on", "go_cue", "lick", "early_lick",
                          "outcome", "trial_end"})
_EST_FIELDS = struct.Struct("<IIQqq")  #: rig_id, stream_id, seq, t_rig_ns, t_send_ns at header offset 20
_EST_ROW = struct.Struct("<8d")  #: a published estimate: seq, t_rig_ns, cause t_send_ns, t_s, value, confidence, l, r
_DEC_ROW = struct.Struct(f"<{len(DECODER_FIELDS)}d")  #: one recorded decoder-output row (DECODER_FIELDS)
#: the header split at offset 20: everything before (magic, version, kind, dtype, ndim, flags, shape) is the
#: same in every SPIKE_COUNTS frame of a rig once validated; rig_id, stream_id, seq, t_rig, t_send, nbytes vary
_SPLIT = struct.Struct("<20sIIQqqI")
#: poll-ahead: inter-arrival gaps longer than this (a paused rig) do not update the period
PERIOD_MAX_NS = 50_000_000
#: units per rig (and raw channels) above which a rig description is refused at the handshake, before
#: anything is allocated for it (ServiceConfig.max_units, ``rigd start --max-units``)
DEFAULT_MAX_UNITS = 200_000


@dataclass
class RigConnection:
    """One connected rig: its description, its wire state (sequences, identity, fast path) and its pipeline."""

    rig_id: int
    description: dict[str, Any]
    n_units: int
    last_heartbeat_ns: int
    pipeline: Pipeline
    #: per-stream sequence state (rig/streams.py); ``last_seq`` is its dict of last accepted seqs,
    #: read and advanced in place by the fast path
    streams: StreamSequences = field(default_factory=StreamSequences)
    last_seq: dict[int, int] = field(init=False)
    detector: ThresholdDetector | None = None  #: for rigs that stream raw samples
    #: fast path: the first 20 header bytes of this rig's last fully validated SPIKE_COUNTS frame
    #: (a frame with identical bytes there and the announced payload size is valid by construction)
    counts_prefix: bytes = b""
    counts_dtype: np.dtype[Any] = field(default_factory=lambda: np.dtype(np.uint16))
    counts_nbytes: int = -1
    #: the same for dtypes whose values need checking (i16/i32/u32/f32): the fast path then checks them
    #: against ``counts_limit`` (wire.count_limit); u8/u16 frames use ``counts_prefix`` and no check
    checked_prefix: bytes = b""
    counts_limit: tuple[np.dtype[Any], int] | None = None
    #: poll-ahead: when this rig's last frame arrived and its running inter-arrival period (ns)
    t_last_frame_ns: int = 0
    frame_period_ns: int = 0
    #: the rig process heard now (heartbeat "boot_id", "host", "pid"); a new boot_id is a restart
    identity: RigIdentity = field(default_factory=RigIdentity)

    def __post_init__(self) -> None:
        self.last_seq = self.streams.last


class HotLoop:
    """The per-frame closed loop for one session. ``run`` blocks until ``stop`` is called.

    Args:
        ingest_endpoint / command_endpoint: endpoints to bind (``tcp://127.0.0.1:*`` picks a port).
        rig_ids: rig ids accepted; anything else is counted as ``unknown_rig``.
        parts: builds each rig's pipeline parts (rig/pipeline.py): tracker, controller, interlock
            (around a function that puts a packed light command on the command socket: the loop
            never sees the light source) and online decoder (once the rig has described its units).
        deadline_ns: decision budget from frame receipt; a later decision is dropped, never sent.
        clock: the pipelines' time: "wall" (rigd's monotonic clock) or "rig" (each frame's rig
            time: a simulated or replayed rig in lockstep; see rig/pipeline.py).
        on_alarm / on_trial: called from this thread; must be cheap and thread-safe.
        publish_estimates: also send every frame's estimate back on the command socket
            (DECODER_OUTPUT, float64 (8,): seq, t_rig_ns, cause t_send_ns, t_s, value,
            confidence, left, right) for rigs that show or act on the decoded state; it also
            gives the benchmark an end-to-end measurement on every single loop.
        realtime_priority: if > 0, run the loop thread under SCHED_FIFO at this priority (needs
            CAP_SYS_NICE or root; without it the loop runs at normal priority and says so).
        loop_cpu: if given, the loop thread and its ZeroMQ I/O thread run on this CPU only (the
            decoder-refit worker does not); the caller keeps rigd's other threads off it.
        poll_ahead_us: if > 0, the loop predicts each rig's next frame from its inter-arrival
            period and, from this long before it until this long after, polls the ingest socket
            instead of sleeping in the kernel, at normal priority (it returns to SCHED_FIFO to
            process the frame): the frame is picked up without a thread wake-up, and the loop's
            code is still warm when it comes. A window as long as the frame period means the loop
            never sleeps: the lowest latency, for one whole CPU (meant for loop_cpu).
        beat: where the loop proves it is alive (10 Hz) to the watchdog process (rig/watchdog.py).

    Threads: the loop thread owns every pipeline, interlock and decoder. Other threads read only
    :attr:`published`, an immutable per-rig snapshot (description, decoder and interlock status)
    the loop replaces whole a few times a second; they never iterate :attr:`pipelines`.
    """

    def __init__(
        self,
        *,
        ingest_endpoint: str,
        command_endpoint: str,
        rig_ids: set[int],
        parts: PipelineParts,
        recorder: Recorder,
        telemetry: LoopTelemetry,
        counters: Counters,
        deadline_ns: int = 10_000_000,
        on_alarm: AlarmFn | None = None,
        on_trial: Callable[[dict[str, Any]], None] | None = None,
        context: zmq.Context[Any] | None = None,
        publish_estimates: bool = False,
        realtime_priority: int = 0,
        loop_cpu: int | None = None,
        poll_ahead_us: int = 0,
        beat: LoopBeat | None = None,
        clock: ClockMode = "wall",
    ) -> None:
        if context is None:
            # the hot loop's own context: its I/O thread moves the frames, so under SCHED_FIFO it is
            # real-time too (set before any socket exists; ignored without the privilege)
            context = zmq.Context(io_threads=1)
            if realtime_priority > 0 and _may_realtime():
                context.set(zmq.THREAD_SCHED_POLICY, os.SCHED_FIFO)
                context.set(zmq.THREAD_PRIORITY, realtime_priority)
            if loop_cpu is not None:
                context.set(zmq.THREAD_AFFINITY_CPU_ADD, loop_cpu)
            self._own_context = True
        else:
            self._own_context = False
        self.ctx: Any = context  # (pyzmq's stubs do not know numpy arrays are buffers)
        self.sub: Any = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 200_000)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.bind(ingest_endpoint)
        self._sub_fd = int(self.sub.getsockopt(zmq.FD))  # poll-ahead sleeps on it with µs timeouts
        self.pub: Any = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 500)
        self.pub.bind(command_endpoint)
        self.ingest_endpoint = self.sub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.command_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.rig_ids = set(rig_ids)
        self.pipelines: dict[int, RigConnection] = {}
        self.clock: ClockMode = clock
        self.parts = parts
        self.recorder = recorder
        self.telemetry = telemetry
        self.counters = counters
        self.deadline_ns = deadline_ns
        self._on_alarm = on_alarm
        self._on_trial = on_trial
        self.publish_estimates = publish_estimates
        self._cmd_seq = 0
        self._hb_seq = 0
        self._hb_payload = wire.json_bytes({"rigs": []})  #: the rigs rigd holds a description of
        self._est_seq = 0
        self._est_out = bytearray(_EST_ROW.size)
        self._est_header = bytearray(wire.pack_header(wire.Kind.DECODER_OUTPUT, wire.DType.F64, (8,), rig_id=0,
                                                      stream_id=4, seq=0, t_rig_ns=0, t_send_ns=0))
        self._dec_buf = bytearray(DECODER_CHUNK * _DEC_ROW.size)  # DECODER_FIELDS rows, packed float64
        self._dec_n = 0
        self._stop = threading.Event()
        self._all_off_requested = False
        self.loop_cpu = loop_cpu
        self.poll_ahead_ns = int(poll_ahead_us) * 1000
        self.frames_polled_ahead = 0  #: frames picked up while polling ahead (no wake-up needed)
        # the refit worker is started from the loop thread: keep it off the loop's CPU
        self._pool = FitPool(1, thread_name_prefix="rigd-fit", initializer=_use_cpus,
                             initargs=(set() if loop_cpu is None else os.sched_getaffinity(0) - {loop_cpu},))
        self.frames = 0
        self.realtime_priority = realtime_priority
        self.realtime = "off"
        self._fifo = False
        self._polling = False  #: poll-ahead: polling (at normal priority) for a predicted frame
        self.thread: threading.Thread | None = None
        self.beat = beat
        self.safety_endpoint: str | None = None  #: the watchdog's endpoint, announced in heartbeats
        #: rig id → {"description", "decoder", "interlock"}, replaced whole by the loop thread
        self.published: MappingProxyType[int, MappingProxyType[str, Any]] = MappingProxyType({})
        self._n_hb = 0
        # fault injection for tests of the watchdog (docs/safety.md): "FRAMES:SECONDS" stalls the loop
        # thread once, for SECONDS, after FRAMES frames
        stall = os.environ.get("RIGD_FAULT_LOOP_STALL", "")
        self._stall_after, self._stall_s = (int(stall.split(":")[0]), float(stall.split(":")[1])) \
            if stall else (-1, 0.0)
        # wire robustness (issue 20, helper B): the handshake's unit limit (the supervisor sets it from
        # ServiceConfig.max_units), the worker that builds decoders off this thread, and the unit counts
        # already alarmed per refused rig (one alarm per distinct value, not one per heartbeat)
        self.max_units = DEFAULT_MAX_UNITS
        self._build_pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="rigd-build", initializer=_use_cpus,
            initargs=(set() if loop_cpu is None else os.sched_getaffinity(0) - {loop_cpu},))
        self._units_refused: dict[int, int] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop on a dedicated thread."""
        self.thread = threading.Thread(target=self.run, name="rigd-hot-loop", daemon=True)
        self.thread.start()

    def request_all_off(self) -> None:
        """Ask the loop thread to turn every light off now (thread-safe; before the rigs stop)."""
        self._all_off_requested = True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop: light off, last records handed to the recorder, sockets closed.

        Waits at most ``timeout_s`` for the loop thread; a decoder fit still running is abandoned
        (its thread is a daemon), never waited for.
        """
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._build_pool.shutdown(wait=False, cancel_futures=True)

    def run(self) -> None:
        """The loop itself (blocks)."""
        self.realtime = _try_realtime(self.realtime_priority)
        self._fifo = self.realtime.startswith("SCHED_FIFO")
        if self.loop_cpu is not None:
            os.sched_setaffinity(0, {self.loop_cpu})  # this thread only (Linux affinity is per thread)
        # no cyclic-GC pause on the hot path: objects alive at start are frozen out of collection and
        # young-generation collections come rarely (the per-frame chain creates almost no cycles)
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        self._hb_payload = self.heartbeat_payload()  # with the watchdog's endpoint, set before start
        next_hb = 0
        sub = self.sub
        ahead = self.poll_ahead_ns
        try:
            while not self._stop.is_set():
                now = time.monotonic_ns()
                if self._all_off_requested:
                    self._all_off_requested = False
                    self._all_off("session ending", now)
                if now >= next_hb:
                    next_hb = now + HEARTBEAT_PERIOD_NS
                    try:
                        # the interlocks' watchdogs first: a loop that was stalled past watchdog_s
                        # trips them (ALL_OFF + alarm) before its heartbeat re-arms them
                        self._housekeeping(now)
                        self._heartbeat(now)
                        if self.beat is not None:
                            self.beat.beat(now)
                        if self.frames >= self._stall_after >= 0:
                            self._stall_after = -1
                            time.sleep(self._stall_s)
                    except Exception as exc:
                        self._internal_error(exc)
                if ahead:
                    wait = self._poll_ahead(now, ahead)
                    if wait is not None:
                        self._set_polling(wait == 0.0)
                        if wait == 0.0:
                            os.sched_yield()
                        else:
                            select.select([self._sub_fd], [], [], wait)
                        continue
                    if self._set_polling(False):  # a frame came while polling: real time for its processing
                        self.frames_polled_ahead += 1
                elif not poller.poll(10):
                    continue
                while True:
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        self._on_message(frames, time.monotonic_ns())
                    except Exception as exc:  # a bug or a resource error must never stop the loop
                        self._internal_error(exc)
                    if time.monotonic_ns() >= next_hb:
                        break
        finally:
            self._all_off("session end", time.monotonic_ns())
            self._publish_status()
            if self.beat is not None:
                self.beat.stopped()
            self._flush_decoder_outputs()
            self.sub.close()
            self.pub.close()
            if self._own_context:
                self.ctx.term()

    def _set_polling(self, polling: bool) -> bool:
        """Enter or leave polling; returns whether the loop was polling before.

        It polls at normal priority and processes under SCHED_FIFO (when the loop has it): a
        real-time thread that polls would count against the kernel's real-time throttling (95 % of
        each second) and starve kernel threads on its CPU; at normal priority it yields to both,
        and the ZeroMQ I/O thread (real-time) preempts it the moment data arrives.
        """
        was = self._polling
        if polling == was:
            return was
        self._polling = polling
        if not self._fifo:
            return was
        try:
            if polling:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            else:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.realtime_priority))
        except OSError as exc:  # cannot happen once granted; if it does, stay as we are and say so
            self._fifo = False
            self._internal_error(exc)
        return was

    def _poll_ahead(self, now: int, ahead: int) -> float | None:
        """None if a message is waiting; else how long to sleep (s), 0.0 meaning poll again now.

        Sleeps until ``ahead`` before the earliest predicted frame, polls from then until
        ``ahead`` after it, then sleeps on the socket (at most 10 ms, as the plain loop does).
        """
        if self.sub.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # also clears the socket's wake-up fd
            return None
        t_next = min((pl.t_last_frame_ns + pl.frame_period_ns for pl in self.pipelines.values()
                      if pl.frame_period_ns), default=0)
        if not t_next or now >= t_next + ahead:
            return 0.01
        if now < t_next - ahead:
            return min((t_next - ahead - now) * 1e-9, 0.01)
        return 0.0

    def _internal_error(self, exc: Exception) -> None:
        self.counters.error("loop", "internal", f"{type(exc).__name__}: {exc}")
        n = self.counters.get("errors.loop.internal")
        if n <= 5 or n % 1000 == 0:  # alarm, but do not flood
            self._alarm({"source": "rigd", "message": f"internal error #{n} while processing a message: "
                         f"{type(exc).__name__}: {exc}"})

    def _all_off(self, reason: str, now: int) -> None:
        for p in self.pipelines.values():
            p.pipeline.all_off(reason, now)

    def _housekeeping(self, now: int) -> None:
        """Every heartbeat period: the interlocks' watchdogs, the snapshot.

        The snapshot other threads read is refreshed at 2 Hz and whenever a rig joined.
        """
        for p in self.pipelines.values():
            p.pipeline.check_watchdog(now)
        self._n_hb += 1
        if self._n_hb % 5 == 1 or len(self.published) != len(self.pipelines):
            self._publish_status()

    def _publish_status(self) -> None:
        """Replace :attr:`published` with a fresh snapshot (loop thread only)."""
        self.published = MappingProxyType({r: MappingProxyType({
            "description": p.description,
            "decoder": p.pipeline.decoder_status(),
            "interlock": dict(p.pipeline.interlock.publish())}) for r, p in self.pipelines.items()})

    # -- status (any thread: read the loop's last snapshot, at most ~0.5 s old) ---------------

    def decoder_status(self) -> dict[str, Any]:
        """Per rig: the serving decoder's status."""
        return {str(r): v["decoder"] for r, v in self.published.items()}

    def interlock_status(self) -> dict[str, Any]:
        """Per rig: limits, energy used, refusals."""
        return {str(r): v["interlock"] for r, v in self.published.items()}

    def rig_descriptions(self) -> dict[str, Any]:
        """Per rig: the description its last heartbeat carried."""
        return {str(r): v["description"] for r, v in self.published.items()}

    def heartbeat_payload(self) -> bytes:
        """The payload of rigd's heartbeat: the rigs it holds a description of, the safety endpoint.

        A rig's handshake waits for its id in ``rigs`` (and its ``boot_id`` in ``boot_ids``, where it
        sends one); ``safety`` is where the loop watchdog sends
        its ALL_OFF (rig clients connect their command socket to it too).
        """
        body: dict[str, Any] = {"rigs": sorted(self.pipelines)}
        boots = {str(r): p.identity.boot_id for r, p in sorted(self.pipelines.items())
                 if p.identity.boot_id is not None}
        if boots:  # the process rigd follows for each rig: a restarted rig waits for its new boot_id
            body["boot_ids"] = boots
        if self.safety_endpoint:
            body["safety"] = self.safety_endpoint
        return wire.json_bytes(body)

    # -- outgoing -----------------------------------------------------------------------------

    def _heartbeat(self, now: int) -> None:
        """Send the heartbeat: it lists the rigs whose description it holds (a rig's handshake waits for its id)."""
        h, p = wire.encode(wire.Kind.HEARTBEAT, self._hb_payload, rig_id=RIGD_RIG_ID, stream_id=3,
                           seq=self._hb_seq, t_rig_ns=now, t_send_ns=now)
        self._hb_seq += 1
        self.pub.send_multipart([h, p])
        for pl in self.pipelines.values():
            pl.pipeline.heartbeat(now)

    def _send_light(self, rig_id: int, payload: bytes) -> None:
        """Put a packed light command (minted by a rig's interlock) on the command socket."""
        now = time.monotonic_ns()
        h, p = wire.encode(wire.Kind.LIGHT_COMMAND, payload, rig_id=rig_id, stream_id=2,
                           seq=self._cmd_seq, t_rig_ns=now, t_send_ns=now)
        self._cmd_seq += 1
        self.pub.send_multipart([h, p], copy=False)
        self.recorder.put(h, p, now)

    def _alarm(self, alarm: dict[str, Any]) -> None:
        now = time.monotonic_ns()
        alarm = {"t_local_ns": now, "severity": "error", **alarm}
        if "source" not in alarm:  # the interlock names the limit it enforced
            alarm["source"] = "interlock" if "limit" in alarm else "rigd"
        if "message" not in alarm:
            alarm["message"] = str(alarm.get("reason", alarm.get("alarm", "")))
        self.counters.inc(f"alarms.{alarm['source']}")
        self.recorder.alarm(alarm, now)
        if self._on_alarm is not None:
            self._on_alarm(alarm)

    # -- incoming -----------------------------------------------------------------------------

    def _on_message(self, frames: list[zmq.Frame], t_recv: int) -> None:
        if len(frames) != 2:
            self.counters.error("ingest", "frames", f"expected 2 frames (header, payload), got {len(frames)}")
            return
        fh: Any = frames[0]  # zmq.Frame implements the buffer protocol (its stubs do not say so)
        fp: Any = frames[1]
        if len(fh) == wire.HEADER_SIZE:
            # fast path: the next SPIKE_COUNTS frame of a rig whose frames were validated before, whose
            # header prefix (magic … shape) is byte-identical to the validated one, with the announced
            # payload size and the next sequence number. Anything else takes the full checks below.
            # (ZeroMQ frames are buffers: read in place, no memoryview objects made.)
            prefix, rig_id, stream_id, seq, t_rig, t_send, nbytes = _SPLIT.unpack(fh)
            pl = self.pipelines.get(rig_id)
            if (pl is not None and prefix == pl.counts_prefix and nbytes == pl.counts_nbytes
                    and len(fp) == nbytes and pl.last_seq.get(stream_id, -2) == seq - 1):
                pl.last_seq[stream_id] = seq
                self.recorder.put(fh, fp, t_recv)
                self._on_counts(pl, seq, t_rig, t_send, np.frombuffer(fp, dtype=pl.counts_dtype), t_recv)
                return
            # the same for a dtype whose values may break the rules (i16/i32/u32/f32): one check more
            if (pl is not None and prefix == pl.checked_prefix and nbytes == pl.counts_nbytes
                    and len(fp) == nbytes and pl.last_seq.get(stream_id, -2) == seq - 1):
                pl.last_seq[stream_id] = seq
                counts = np.frombuffer(fp, dtype=pl.counts_dtype)
                if self._counts_ok(pl, seq, counts):
                    self.recorder.put(fh, fp, t_recv)
                    self._on_counts(pl, seq, t_rig, t_send, counts, t_recv)
                return
        hbuf = fh.buffer
        pbuf = fp.buffer
        try:
            h = wire.unpack_header(hbuf)
            if len(pbuf) != h.payload_nbytes:
                wire.check_payload(h, pbuf)  # raises with the details
        except wire.WireError as exc:
            self.counters.error("ingest", exc.reason, str(exc))
            return
        if h.rig_id not in self.rig_ids:
            self.counters.error("ingest", "unknown_rig", f"rig id {h.rig_id} is not configured; "
                                f"expected one of {sorted(self.rig_ids)}", rig_id=h.rig_id)
            return
        pl = self.pipelines.get(h.rig_id)
        kind = h.kind
        desc: dict[str, Any] | None = None
        if kind == wire.Kind.HEARTBEAT and pl is not None:
            # a heartbeat names the rig process (boot_id): a restart resets the rig's sequence state, so
            # it is judged before its own seq (a restarted rig counts from 0 again)
            try:
                desc = wire.payload_json(h, pbuf)
            except wire.WireError:
                desc = None  # counted below, by _on_heartbeat
            if desc is not None and not self._check_boot(pl, desc, t_recv):
                return
        # sequence numbers per (rig, stream), rig/streams.py: gaps counted; duplicates, older seqs and far
        # jumps dropped; a run of off-sequence messages resynchronises the stream, with an alarm
        if pl is not None:
            v = pl.streams.check(h.stream_id, h.seq)
            if v.seq is not Seq.ACCEPT:
                if v.seq is not Seq.RESYNC:
                    self.counters.error("ingest", v.seq.value, describe(h.rig_id, h.stream_id, h.seq, v),
                                        rig_id=h.rig_id)
                    return
                self._resynchronised(pl, h.stream_id, v, t_recv)
            elif v.missing:
                self.counters.inc("ingest.missing_seq", v.missing)
        if kind == wire.Kind.SPIKE_COUNTS:
            if pl is None:
                self.counters.error("ingest", "undescribed_rig", f"rig {h.rig_id} sent counts before any "
                                    "heartbeat describing its units")
                return
            if len(h.shape) != 1 or h.shape[0] != pl.n_units:
                self.counters.error("ingest", "shape", f"SPIKE_COUNTS from rig {h.rig_id}: expected shape "
                                    f"({pl.n_units},), got {h.shape}")
                return
            counts = wire.payload_array(h, pbuf)
            limit = wire.count_limit(h.dtype)
            pl.counts_dtype, pl.counts_nbytes, pl.counts_limit = counts.dtype, h.payload_nbytes, limit
            if limit is None:
                pl.counts_prefix, pl.checked_prefix = bytes(hbuf[:20]), b""
            else:
                pl.counts_prefix, pl.checked_prefix = b"", bytes(hbuf[:20])
                if not self._counts_ok(pl, h.seq, counts):
                    return
            self.recorder.put(hbuf, pbuf, t_recv)
            self._on_counts(pl, h.seq, h.t_rig_ns, h.t_send_ns, counts, t_recv)
        elif kind == wire.Kind.TRIAL_EVENT:
            try:
                ev = wire.payload_json(h, pbuf)
                name, trial = ev.get("event"), ev.get("trial")
                if not isinstance(name, str) or not isinstance(trial, int) or trial < 0:
                    raise wire.WireError("event", f"TRIAL_EVENT needs 'event' (str) and 'trial' (int ≥ 0), "
                                         f"got event={name!r} trial={trial!r}")
                if name not in KNOWN_EVENTS:
                    raise wire.WireError("event", f"unknown event {name!r}; expected one of {sorted(KNOWN_EVENTS)}")
            except wire.WireError as exc:
                self.counters.error("events", exc.reason, str(exc))
                return
            self.recorder.put(hbuf, pbuf, t_recv)
            if pl is None:
                self.counters.inc("events.undescribed_rig")
                return
            pl.pipeline.event(ev, h.t_rig_ns)
        elif kind == wire.Kind.LIGHT_ACK:
            try:
                ack = wire.unpack_light_ack(pbuf)
            except wire.WireError as exc:
                self.counters.error("acks", exc.reason, str(exc))
                return
            self.recorder.put(hbuf, pbuf, t_recv)
            if ack.status in (wire.AckStatus.APPLIED, wire.AckStatus.LATE) and ack.cause_t_send_ns:
                self.telemetry.add_e2e((ack.t_received_rig_ns - ack.cause_t_send_ns) * 1e-3)
            if pl is not None:
                pl.pipeline.ack(ack)
        elif kind == wire.Kind.HEARTBEAT:
            self._on_heartbeat(pl, h, hbuf, pbuf, t_recv, desc)
        elif kind == wire.Kind.RAW_SAMPLES and pl is not None and pl.detector is not None:
            if len(h.shape) != 2 or h.shape[1] != pl.detector.n_channels:
                self.counters.error("ingest", "shape", f"RAW_SAMPLES from rig {h.rig_id}: expected shape "
                                    f"(n_samples, {pl.detector.n_channels}), got {h.shape}")
                return
            self.recorder.put(hbuf, pbuf, t_recv)
            self._on_counts(pl, h.seq, h.t_rig_ns, h.t_send_ns, pl.detector.step(wire.payload_array(h, pbuf)), t_recv)
        elif kind in (wire.Kind.SPIKE_EVENTS, wire.Kind.RAW_SAMPLES):
            self.recorder.put(hbuf, pbuf, t_recv)
            self.counters.inc(f"ingest.{kind.name.lower()}")
        else:
            self.counters.error("ingest", "kind", f"rigs may not send {kind.name}; expected SPIKE_COUNTS, "
                                "SPIKE_EVENTS, RAW_SAMPLES, TRIAL_EVENT, LIGHT_ACK or HEARTBEAT")

    def _on_heartbeat(self, pl: RigConnection | None, h: wire.Header, hbuf: memoryview, pbuf: memoryview,
                      t_recv: int, desc: dict[str, Any] | None = None) -> None:
        """A rig's heartbeat: its description, validated before anything is built or resized for it."""
        try:
            if desc is None:
                desc = wire.payload_json(h, pbuf)
            n_units = self._validate_description(h.rig_id, desc, known=pl is not None)
        except wire.WireError as exc:
            self.counters.error("heartbeat", exc.reason, str(exc), rig_id=h.rig_id)
            return
        if pl is None or pl.description != desc:
            self.recorder.put(hbuf, pbuf, t_recv)
        rig_alarm = desc.get("alarm") or desc.get("backend_alarm")
        if rig_alarm and (pl is None or rig_alarm != (pl.description.get("alarm")
                                                     or pl.description.get("backend_alarm"))):
            self._alarm({"source": "rig", "rig_id": h.rig_id, "message": f"rig {h.rig_id}: {rig_alarm}"})
        if pl is None:
            pl = self._new_pipeline(h.rig_id, desc, n_units, t_recv)
            pl.streams.check(h.stream_id, h.seq)
        elif pl.n_units != n_units:
            pl.n_units = n_units
            pl.counts_prefix = pl.checked_prefix = b""  # frames are validated afresh against the new description
            pl.pipeline.describe(desc)  # never the old decoder on new units: none until the new one is in
        pl.description, pl.last_heartbeat_ns = desc, t_recv

    def _validate_description(self, rig_id: int, desc: dict[str, Any], *, known: bool) -> int:
        """The description's ``n_units`` once valid (rig/rig_identity.py); WireError if not.

        ``n_units`` (and ``raw_channels``) above :attr:`max_units` are refused with an alarm (once per
        distinct value): nothing is allocated, and a rig refused at its first description is not listed
        in rigd's heartbeat, so its handshake fails.
        """
        try:
            return validate_description(rig_id, desc, self.max_units)
        except UnitLimitError as exc:
            msg = f"{exc.detail}; " + ("rigd keeps its earlier description" if known
                                else "the rig is not listed in rigd's heartbeat")
            if self._units_refused.get(rig_id) != exc.n:
                self._units_refused[rig_id] = exc.n
                self._alarm({"source": "ingest", "rig_id": rig_id, "message": msg})
            raise wire.WireError("n_units", msg) from None

    def _check_boot(self, pl: RigConnection, desc: dict[str, Any], t_recv: int) -> bool:
        """Whether a known rig's heartbeat is kept: False drops it (a second sender claiming the id).

        Same boot_id as the process rigd follows: kept. A new one: the rig restarted. An earlier one
        heard again while the current one is alive: two senders (alarm once per pair).
        """
        ident = pl.identity
        heard = ident.hear(desc, t_recv)
        if heard is Heard.KEEP:
            return True
        if heard is Heard.FIRST:
            self._announce_rigs(t_recv)
            return True
        if heard is Heard.DROP:
            self.counters.error("ingest", "duplicate_rig", f"rig {pl.rig_id}: heartbeat from {who(ident.previous)} "
                                f"while {who(ident.sender)} holds this rig id: dropped", rig_id=pl.rig_id)
            return False
        if heard is Heard.DUPLICATE:
            pl.streams.reset()  # the newcomer's sequence numbers are not the holder's
            self.counters.inc("rigs.duplicate_ids")
            senders = [ident.sender, ident.previous]
            self._alarm({"source": "rig", "rig_id": pl.rig_id, "senders": senders,
                         "message": f"rig {pl.rig_id} is claimed by two senders: {who(ident.sender)} and "
                                    f"{who(ident.previous)}; rigd follows the first, boot_id {ident.boot_id}, and "
                                    "drops the other's heartbeats (its frames cannot be told apart): give each "
                                    "rig its own id"})
            self.recorder.log({"type": "rig", "event": "duplicate_id", "rig_id": pl.rig_id, "senders": senders},
                              t_recv)
            self._announce_rigs(t_recv)
            return True
        self._restarted(pl, t_recv)
        return True

    def _restarted(self, pl: RigConnection, t_recv: int) -> None:
        """The rig's process changed (a new boot_id): its streams and trials start afresh.

        Its interlock (energy, perturbed fraction), controller and decoder carry on.
        """
        old, new = pl.identity.previous.get("boot_id"), pl.identity.boot_id
        pl.streams.reset()  # the new process counts every stream from its own start
        pl.pipeline.restarted()
        self.counters.inc("rigs.restarts")
        self._alarm({"source": "rig", "severity": "warning", "rig_id": pl.rig_id,
                     "message": f"rig {pl.rig_id} restarted (boot_id {old} → {new})"})
        self.recorder.log({"type": "rig", "event": "restarted", "rig_id": pl.rig_id, "boot_id_before": old,
                           "boot_id": new, "sender": pl.identity.sender}, t_recv)
        self._announce_rigs(t_recv)  # the new process's handshake ends when it sees its boot_id listed

    def _resynchronised(self, pl: RigConnection, stream: int, v: Verdict, t_recv: int) -> None:
        """A run of off-sequence messages took over a stream (rig/streams.py): say so."""
        self.counters.inc("ingest.resyncs")
        n = self.counters.get("ingest.resyncs")
        msg = (f"rig {pl.rig_id} stream {stream} resynchronised at seq {v.run_start} after {v.off} "
               "off-sequence messages: restarted or a stray sender?")
        if n <= 10 or n % 100 == 0:  # alarm, but do not flood (a second sender without boot ids)
            self._alarm({"source": "ingest", "severity": "warning", "rig_id": pl.rig_id, "message": msg})
        self.recorder.log({"type": "rig", "event": "resync", "rig_id": pl.rig_id, "stream_id": stream,
                           "seq": v.run_start, "last_seq_before": v.last, "off_sequence": v.off}, t_recv)

    def _counts_ok(self, pl: RigConnection, seq: int, counts: np.ndarray[Any, Any]) -> bool:
        """Whether a frame's counts obey the value rules (finite, 0 … wire.MAX_COUNT); if not, counted.

        u8/u16 frames never come here; for the other dtypes it is one integer reduction (wire.counts_valid).
        """
        limit = pl.counts_limit
        if limit is None or wire.counts_valid(counts, limit):
            return True
        bad = wire.bad_count(counts)
        if bad is None:  # only a -0.0 tripped the one-reduction check
            return True
        self.counters.error("ingest", "counts_value", f"rig {pl.rig_id} frame seq {seq}: unit {bad[0]} is "
                            f"{bad[1]}; expected finite counts in [0, {wire.MAX_COUNT}]", rig_id=pl.rig_id)
        return False

    def _new_pipeline(self, rig_id: int, desc: dict[str, Any], n_units: int, now: int) -> RigConnection:
        """A configured rig described itself (validated): build its closed loop (the decoder off this thread)."""
        pipeline = Pipeline(rig_id, self.parts, send_light=lambda payload: self._send_light(rig_id, payload),
                            counters=self.counters, record=self.recorder.log, on_alarm=self._alarm,
                            on_trial=self._on_trial, builds=self._build_pool, fits=self._pool,
                            deadline_ns=self.deadline_ns, clock=self.clock)
        pl = RigConnection(rig_id, desc, n_units, now, pipeline)
        raw = whole(desc.get("raw_channels"))
        if raw:  # validated: ≤ max_units, negative threshold, sane sample rate
            pl.detector = ThresholdDetector(raw, float(desc.get("threshold_sd", -4.5)),
                                            int(float(desc.get("sample_rate_hz", 30_000))))
        pl.identity.hear(desc, now)  # the process that described the rig is the one followed
        pipeline.heartbeat(now)
        pipeline.describe(desc)  # its decoder is built on the build worker, never on this thread
        self.pipelines[rig_id] = pl
        self.recorder.log({"type": "rig", "event": "connected", "rig_id": rig_id, "description": desc}, now)
        self._announce_rigs(now)
        return pl

    def _announce_rigs(self, now: int) -> None:
        """Send rigd's heartbeat now, with the rigs it holds and the process it follows for each.

        Rigs that name their process get its ``boot_id`` listed (``"boot_ids": {"1": …}``): a rig's
        handshake, first or after a restart, ends on this heartbeat, not up to 100 ms later.
        """
        self._hb_payload = self.heartbeat_payload()
        self._heartbeat(now)

    def _on_counts(self, pl: RigConnection, seq: int, t_rig_ns: int, t_send_ns: int,
                   counts: np.ndarray[Any, Any], t_recv: int) -> None:
        """The per-frame chain: the rig's pipeline, then the estimate out and the telemetry stamp."""
        if self.poll_ahead_ns:  # running inter-arrival period (1/16 per frame) for the next prediction
            d = t_recv - pl.t_last_frame_ns
            if d < PERIOD_MAX_NS:
                pl.frame_period_ns += (d - pl.frame_period_ns) >> 4 if pl.frame_period_ns else d
            pl.t_last_frame_ns = t_recv
        t_parsed = time.monotonic_ns()
        cmd_seq = self._cmd_seq
        pipeline = pl.pipeline
        est = pipeline.frame(seq, t_rig_ns, t_send_ns, counts, t_recv)
        t_sent = pipeline.t_controlled
        if self.publish_estimates:
            # one packed row, then the preallocated header (only rig, seq and times change per frame)
            _EST_ROW.pack_into(self._est_out, 0, seq, t_rig_ns, t_send_ns, est.t_s, est.value, est.confidence,
                               est.left, est.right)
            _EST_FIELDS.pack_into(self._est_header, 20, pl.rig_id, 4, self._est_seq, t_rig_ns, time.monotonic_ns())
            self._est_seq += 1
            self.pub.send(self._est_header, zmq.SNDMORE)
            self.pub.send(self._est_out)
        if self._cmd_seq != cmd_seq or self.publish_estimates:
            t_sent = time.monotonic_ns()
        self._record_estimate(seq, t_rig_ns, est)
        self.telemetry.record(seq, t_recv, t_parsed, pipeline.t_decoded, pipeline.t_controlled, t_sent)
        self.frames += 1

    def _record_estimate(self, seq: int, t_rig_ns: int, est: Estimate) -> None:
        """Append the frame's estimate to the recording buffer (flushed every DECODER_CHUNK rows)."""
        _DEC_ROW.pack_into(self._dec_buf, self._dec_n * _DEC_ROW.size, seq, t_rig_ns, est.t_s, est.value,
                           est.confidence, est.left, est.right)
        self._dec_n += 1
        if self._dec_n == DECODER_CHUNK:
            self._flush_decoder_outputs()

    def _flush_decoder_outputs(self) -> None:
        if self._dec_n:
            now = time.monotonic_ns()
            rows = np.frombuffer(self._dec_buf, dtype="<f8", count=self._dec_n * len(DECODER_FIELDS))
            self.recorder.put_message(wire.Kind.DECODER_OUTPUT, rows.reshape(self._dec_n, -1).copy(), now)
            self._dec_n = 0


class FitPool(concurrent.futures.ThreadPoolExecutor):
    """The decoder-refit worker: after each fit it hands the fit's freed memory back to the OS.

    A refit at 1,000 units builds a few hundred MB of float arrays and frees them; glibc keeps
    freed heap in the worker's arena, so without ``malloc_trim`` the process's RSS would stay at
    its peak between fits (and step up with every larger fit).
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the worker, then trim the heap (whatever ``fn`` raised)."""
        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                _malloc_trim()
        return super().submit(run)


def _malloc_trim() -> None:
    """Call ``malloc_trim(0)`` (glibc: returns freed heap to the OS); a no-op elsewhere."""
    trim = _LIBC_TRIM
    if trim is not None:
        trim(0)


def _libc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_LIBC_TRIM = _libc_trim()


def _may_realtime() -> bool:
    """Whether this process may use SCHED_FIFO (probed on a short-lived thread, restored after)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            result.append(True)
        except (AttributeError, PermissionError, OSError):
            result.append(False)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return result[0]


def _use_cpus(cpus: set[int]) -> None:
    """Run the calling thread on ``cpus`` (a no-op when empty: nowhere else to go)."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def _try_realtime(priority: int) -> str:
    """Put the calling thread under SCHED_FIFO (Linux); returns what happened, for the status."""
    if priority <= 0:
        return "off"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, PermissionError, OSError) as exc:
        return f"not available ({type(exc).__name__}: {exc})"
    return f"SCHED_FIFO {priority}"
