"""Session directories: the crash-safe recorder that writes them and the reader that opens them.

A session is a directory holding ``manifest.json`` (config, protocol text and hash, package
versions, seeds, start/stop times, counters; rewritten atomically) and ``wire.rlog``, an
append-only log of every wire message rigd received or sent (frames, events, light commands,
acks, decoder outputs, alarms, trial summaries, telemetry), each as one record::

    record header "<IIqI": header_len | flags, payload_len, t_local_ns (rigd monotonic), crc32
    then the 56-byte wire header and the payload, exactly as on the wire — except that payloads
    of 4 KiB or more are stored lz4-compressed where that makes them smaller (flag bit 31 of the
    first field; the wire header's payload_nbytes keeps the original size), which makes
    100,000-unit sessions ~30× smaller

The recorder never blocks the hot path: ``put`` copies a message into a preallocated ring,
already laid out as a record (about a microsecond; large payloads are queued uncopied), and a
writer thread seals spans of the ring (CRC-32, compiled, GIL released) and hands them to
``os.write`` at least every flush interval (so ``kill -9`` loses at most that interval), with an
``fsync`` about once a second (rig/record_ring.py). A full ring or queue drops the record and
counts it. The reader stops cleanly at a torn final record and says how many bytes it ignored.

A write that fails (disk full, I/O error) is cut back to the last whole record and retried every
0.1 s; meanwhile records wait in the ring (``recorder_lag_records``), then are dropped and counted
(``recorder_dropped``, also what is still unwritten at close); ``recorder_write_failing`` is 1 and
one alarm goes out per failing episode. The log stays readable up to the last record that fitted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lz4.block
import numba
import numpy as np
import numpy.typing as npt

from rig import wire
from rig.record_ring import CRC_TABLE, RECORD, RecordRing, RingFullError, record_at, seal

COMPRESSED = 1 << 31  #: flag in the record's header_len field: payload stored lz4-compressed
COMPRESS_MIN_BYTES = 4096
HEADER_SIZE_ON_WIRE = wire.HEADER_SIZE
HEADER_LEN_MASK = 0xFFFF
_JSON_KIND_CODES = {int(wire.Kind.TRIAL_EVENT), int(wire.Kind.HEARTBEAT), int(wire.Kind.ALARM), int(wire.Kind.LOG)}
LOG_NAME = "wire.rlog"
MANIFEST_NAME = "manifest.json"
RIGD_RIG_ID = 0  #: rig id rigd uses for the records it writes itself
RecordTap = Callable[[wire.Header, memoryview, int], None]  #: ``fn(header, payload, t_local_ns)``
SpanTap = Callable[[npt.NDArray[np.uint8], int, int], None]  #: ``fn(ring bytes, position, n records)``


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):  # np.float32, np.int64, arrays: as JSON numbers/lists
        return wire.finite(obj.tolist())
    if isinstance(obj, set | frozenset):
        return wire.finite(list(obj))
    return str(obj)  # paths, datetimes, enums


def strict_json(obj: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """RFC 8259 JSON: NaN and ±inf (also inside numpy values) become ``null``, never bare ``NaN``.

    The common case (nothing non-finite) is one pass of the C encoder; only a message that holds a
    non-finite number is walked and encoded again (a ~200-key status: tens of µs, docs/control-plane.md).
    Serialised with ``allow_nan=False``, so anything this missed raises instead of going out.
    """
    try:
        return json.dumps(obj, allow_nan=False, default=_json_default, indent=indent, sort_keys=sort_keys)
    except ValueError:  # a non-finite float (or a reference cycle): sanitise and encode again
        return json.dumps(wire.finite(obj), allow_nan=False, default=_json_default, indent=indent,
                          sort_keys=sort_keys)


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """Write strict JSON to ``path`` via a temporary file and rename (never a half-written file).

    On failure (a full disk) the previous file stays as it was, the temporary one is removed, and
    the OSError is raised for the caller to count.
    """
    tmp = path.with_suffix(path.suffix + ".tmp")
    data = strict_json(obj, indent=2, sort_keys=True).encode()
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class Recorder:
    """Append-only, crash-safe writer of one session's wire log.

    Producers (the hot loop, the supervisor) copy each message into a :class:`RecordRing` already
    laid out as a record; the writer thread seals spans of it (CRC) and writes them with the GIL
    released, so recording costs the hot loop about a microsecond per message and never holds
    the GIL it needs. Large payloads (≥ ``COMPRESS_MIN_BYTES``) are not copied: they keep their
    place in the ring and are compressed on the writer thread, as they come.

    Args:
        directory: the session directory (created).
        flush_interval_s: longest time a record waits in memory before ``os.write``.
        max_queue: records held in memory before new ones are dropped (and counted).
        ring_bytes: size of the in-memory ring (preallocated); a full ring drops and counts too.
        on_alarm: called (from the writer thread) once when writing starts failing (a full disk,
            an I/O error) and once when it works again; also settable as ``recorder.on_alarm``.
    """

    def __init__(self, directory: Path, flush_interval_s: float = 0.2, max_queue: int = 200_000,
                 ring_bytes: int = 64 << 20, on_alarm: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self._fd = os.open(self.directory / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size  # the log's length: a failed write is cut back to it
        self._ring = RecordRing(ring_bytes, COMPRESS_MIN_BYTES)
        self._wake = threading.Event()
        self._stop = False
        self.dropped = 0
        self.written_records = 0
        self.written_bytes = 0
        self.max_lag_records = 0
        self._seq = itertools.count()
        self._taps: list[RecordTap] = []
        self._span_taps: list[SpanTap] = []
        self._record_only: list[RecordTap] = []  # taps without a span form: fed record by record
        self.tap_errors = 0
        self.write_errors = 0
        self.last_error = ""
        self.on_alarm = on_alarm
        self.failing = False  # writes are failing now: one alarm per episode, not one per record
        seal(self._ring.buf, 0, 0, CRC_TABLE)  # compile (or load) before the first frame
        self._thread = threading.Thread(target=self._run, name="rigd-recorder", daemon=True)
        self._thread.start()

    # -- producer side (any thread; cheap) ----------------------------------------------------

    def put(self, header: bytes | memoryview, payload: Any, t_local_ns: int) -> bool:
        """Record one wire message (header and payload buffers; copied unless large). False if dropped."""
        if isinstance(payload, np.ndarray):
            payload = np.ascontiguousarray(payload).data.cast("B")
        ring = self._ring
        if ring.puts - self.written_records >= self.max_queue:
            self.dropped += 1
            return False
        try:
            ring.put(header, payload, t_local_ns)
        except RingFullError:
            self.dropped += 1
            return False
        return True

    def put_message(self, kind: wire.Kind, payload: npt.NDArray[Any] | bytes | None,
                    t_local_ns: int, *, stream_id: int = 0, t_rig_ns: int = 0) -> bool:
        """Record a message rigd itself produces (alarms, logs, decoder outputs, telemetry)."""
        seq = next(self._seq)
        h, p = wire.encode(kind, payload, rig_id=RIGD_RIG_ID, stream_id=stream_id, seq=seq,
                           t_rig_ns=t_rig_ns, t_send_ns=t_local_ns)
        return self.put(h, p, t_local_ns)

    def log(self, obj: dict[str, Any], t_local_ns: int) -> bool:
        """Record a JSON log entry (trial summary, decision, telemetry summary...)."""
        return self.put_message(wire.Kind.LOG, wire.json_bytes(obj), t_local_ns, stream_id=1)

    def alarm(self, obj: dict[str, Any], t_local_ns: int) -> bool:
        """Record an alarm."""
        return self.put_message(wire.Kind.ALARM, wire.json_bytes(obj), t_local_ns, stream_id=2)

    def add_tap(self, fn: RecordTap, span: SpanTap | None = None) -> None:
        """Also hand every record, as it is written, to ``fn(header, payload, t_local_ns)``.

        Taps run on the writer thread (never the hot path): the live view reads the session this
        way. A tap that raises is counted and otherwise ignored. The payload view is only valid
        during the call (the ring reuses its memory): a tap copies what it keeps.

        ``span``, if given, takes the records that lie in the ring instead, a sealed span at a time:
        ``span(ring, pos, n)`` with the ring's bytes (uint8 array, valid only during the call) and
        ``n`` whole records from ``pos`` in the log's record layout (``record_ring.record_at``
        reads one). Large records, which never enter the ring, still go to ``fn``.
        """
        self._taps.append(fn)
        if span is None:
            self._record_only.append(fn)
        else:
            self._span_taps.append(span)

    @property
    def lag_records(self) -> int:
        """Records waiting to be written."""
        return max(0, self._ring.puts - self.written_records)

    # -- writer thread ------------------------------------------------------------------------

    def _drain(self) -> None:
        ring = self._ring
        self.max_lag_records = max(self.max_lag_records, self.lag_records)
        for start, stop in ring.spans():
            pos = start
            while pos < stop:
                n, end = seal(ring.buf, pos, stop, CRC_TABLE)  # releases the GIL
                if n:
                    self._write([ring.view[pos:end]])
                    if self._taps:
                        self._tap_span(pos, n)
                    self.written_records += n
                    ring.release(end)
                    pos = end
                if end < stop:  # a placeholder: the large message it stands for is next
                    self._write_large(*ring.large[0])
                    ring.large.popleft()  # only once written: a failed write is retried in order
                    self.written_records += 1
                    pos = end + RECORD.size
                    ring.release(pos)

    def _write_large(self, t: int, h: Any, p: Any) -> None:
        hb = memoryview(h) if not isinstance(h, memoryview) else h
        pb = p if isinstance(p, bytes | memoryview) else memoryview(p).cast("B")
        raw = pb
        flags = 0
        z = lz4.block.compress(pb, store_size=False)
        if len(z) < len(pb):  # noise-like data (raw voltage) stays as it came: smaller, read faster
            pb, flags = z, COMPRESSED
        crc = zlib.crc32(pb, zlib.crc32(hb))
        self._write([RECORD.pack(len(hb) | flags, len(pb), t, crc), hb, pb])
        if self._taps:
            self._tap(hb, raw, t, self._taps)

    def _tap_span(self, pos: int, n: int) -> None:
        for span in self._span_taps:
            try:
                span(self._ring.buf, pos, n)
            except Exception:
                self.tap_errors += 1
        if self._record_only:
            v = self._ring.view
            for _ in range(n):
                hb, pb, t, pos = record_at(v, pos)
                self._tap(hb, pb, t, self._record_only)

    def _tap(self, hb: memoryview, pb: Any, t: int, taps: list[RecordTap]) -> None:
        try:
            h = wire.unpack_header(hb)
        except wire.WireError:
            return
        for fn in taps:
            try:
                fn(h, memoryview(pb), t)
            except Exception:
                self.tap_errors += 1

    def _write(self, parts: list[bytes | memoryview]) -> None:
        """Append whole records, or nothing: a write that fails part-way is cut back (retried later)."""
        total = sum(len(p) for p in parts)
        try:
            written = os.writev(self._fd, parts)
            if written != total:  # partial writev: finish with a joined buffer
                rest = memoryview(b"".join(bytes(p) for p in parts))[written:]
                while rest:
                    k = os.write(self._fd, rest)
                    rest = rest[k:]
        except OSError:
            with contextlib.suppress(OSError):  # never leave half a record: the retry appends it whole
                os.ftruncate(self._fd, self._size)
            raise
        self._size += total
        self.written_bytes += total

    def _run(self) -> None:
        last_sync = time.monotonic()
        failed_at_stop = 0
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop
            try:
                self._drain()
                now = time.monotonic()
                if stopping or now - last_sync > 1.0:
                    os.fsync(self._fd)
                    last_sync = now
            except OSError as exc:  # disk full, I/O error: keep the thread alive, count, retry
                self.write_errors += 1
                self.last_error = str(exc)
                if not self.failing:
                    self.failing = True
                    self._raise_alarm("error", f"session log {self.directory / LOG_NAME}: write failed "
                                      f"({exc}); new records are held in memory (ring of "
                                      f"{self._ring.buf.size >> 20} MiB) and retried, then dropped and "
                                      "counted as recorder_dropped; the closed loop is not affected")
                if stopping:
                    failed_at_stop += 1
                    if failed_at_stop >= 20:  # ~2 s of retries at close: what is left is lost, and counted
                        self.dropped += self.lag_records
                        return
                    self._wake.set()
                time.sleep(0.1)
                continue
            if self.failing:
                self.failing = False
                self._raise_alarm("info", f"session log {self.directory / LOG_NAME}: writing again "
                                  f"({self.dropped} records dropped so far)")
            if stopping:
                return

    def _raise_alarm(self, severity: str, message: str) -> None:
        fn = self.on_alarm
        if fn is None:
            return
        try:
            fn({"source": "recorder", "severity": severity, "message": message,
                "write_errors": self.write_errors, "dropped": self.dropped})
        except Exception:  # an alarm sink that fails must not stop the writer
            self.tap_errors += 1

    def close(self) -> None:
        """Write everything still queued, fsync and close."""
        if self._stop:
            return
        self._stop = True
        self._wake.set()
        self._thread.join()
        os.close(self._fd)

    def counters(self) -> dict[str, int]:
        """Recorder counters for status and manifest."""
        return {"recorder_dropped": self.dropped, "recorder_records": self.written_records,
                "recorder_bytes": self.written_bytes, "recorder_lag_records": self.lag_records,
                "recorder_max_lag_records": self.max_lag_records,
                "recorder_write_errors": self.write_errors, "recorder_tap_errors": self.tap_errors,
                "recorder_write_failing": int(self.failing)}


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One recorded wire message."""

    t_local_ns: int
    header: wire.Header
    payload: memoryview


@numba.njit(cache=True)
def _scan(data: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.int64], Any]:  # pragma: no cover - numba
    """Offsets of whole records in a log (stops at a torn tail); returns (offsets, end)."""
    n = data.size
    out = np.empty(max(16, n // 40), dtype=np.int64)
    k = 0
    off = np.int64(0)
    while off + 20 <= n:
        hl = np.int64(data[off]) | (np.int64(data[off + 1]) << 8) | (np.int64(data[off + 2]) << 16)
        pl = (np.int64(data[off + 4]) | (np.int64(data[off + 5]) << 8) | (np.int64(data[off + 6]) << 16)
              | (np.int64(data[off + 7]) << 24))
        end = off + 20 + hl + pl
        if end > n:
            break
        if k == out.size:
            grown = np.empty(out.size * 2, dtype=np.int64)
            grown[:k] = out[:k]
            out = grown
        out[k] = off
        k += 1
        off = end
    return out[:k], off


@numba.njit(cache=True)
def _gather(data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], nbytes: int
            ) -> npt.NDArray[np.uint8]:  # pragma: no cover - numba
    out = np.empty((starts.size, nbytes), dtype=np.uint8)
    for i in range(starts.size):
        out[i, :] = data[starts[i]:starts[i] + nbytes]
    return out


_HEADER_DTYPE = np.dtype([("magic", "S4"), ("version", "<u2"), ("kind", "<u2"), ("dtype", "u1"), ("ndim", "u1"),
                          ("flags", "<u2"), ("dim0", "<u4"), ("dim1", "<u4"), ("rig_id", "<u4"),
                          ("stream_id", "<u4"), ("seq", "<u8"), ("t_rig_ns", "<i8"), ("t_send_ns", "<i8"),
                          ("payload_nbytes", "<u4")])
_RECORD_DTYPE = np.dtype([("hl", "<u4"), ("pl", "<u4"), ("t", "<i8"), ("crc", "<u4")])


@dataclass
class Session:
    """A recorded session opened for reading.

    Opening indexes the log with a compiled scan and vectorised header parsing (millions of
    frames in seconds); records are materialised only when asked for. Checksums are verified for
    every JSON record and for the final record (the one a crash can tear); ``verify()`` checks all.
    """

    directory: Path
    manifest: dict[str, Any]
    torn_bytes: int = 0
    bad_records: int = 0
    _data: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros(0, np.uint8), repr=False)
    _off: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _h: npt.NDArray[Any] = field(default_factory=lambda: np.zeros(0, _HEADER_DTYPE), repr=False)

    @classmethod
    def open(cls, directory: Path | str) -> Session:
        """Open a session directory; tolerate a missing/partial manifest and a torn log tail."""
        d = Path(directory)
        if not (d / LOG_NAME).exists():
            raise FileNotFoundError(f"{d} is not a rigd session: {LOG_NAME} missing")
        try:
            manifest = json.loads((d / MANIFEST_NAME).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            manifest = {}
        s = cls(d, manifest)
        s._load()
        return s

    def _crc_ok_at(self, o: int) -> bool:
        hl, pl, _, crc = RECORD.unpack_from(self._data.data, o)
        hl &= HEADER_LEN_MASK
        mv = memoryview(self._data.data)
        return bool(zlib.crc32(mv[o + RECORD.size + hl: o + RECORD.size + hl + pl],
                               zlib.crc32(mv[o + RECORD.size: o + RECORD.size + hl])) == crc)

    def _crc_ok(self, i: int) -> bool:
        return self._crc_ok_at(int(self._off[i]))

    def _load(self) -> None:
        data = np.fromfile(self.directory / LOG_NAME, dtype=np.uint8)
        off, end = _scan(data)
        self._data = data
        self.torn_bytes = int(data.size - end)
        if off.size and not self._crc_ok_at(int(off[-1])):  # a torn final record
            self.torn_bytes += int(data.size - off[-1]) - self.torn_bytes
            off = off[:-1]
        rec = _gather(data, off, RECORD.size).view(_RECORD_DTYPE).reshape(-1) if off.size else \
            np.zeros(0, _RECORD_DTYPE)
        compressed = (rec["hl"] & COMPRESSED) != 0
        good = (rec["hl"] & HEADER_LEN_MASK) == HEADER_SIZE_ON_WIRE
        hdr = np.zeros(off.size, _HEADER_DTYPE)
        if good.any():
            hdr[good] = _gather(data, off[good] + RECORD.size, HEADER_SIZE_ON_WIRE).view(_HEADER_DTYPE).reshape(-1)
        good &= (hdr["magic"] == wire.MAGIC) & (hdr["version"] == wire.VERSION)
        good &= compressed | (hdr["payload_nbytes"] == rec["pl"])
        self.bad_records = int((~good).sum())
        self._off, self._h = off[good], hdr[good]
        self._t = rec["t"][good]
        self._pl = rec["pl"][good].astype(np.int64)
        self._z = compressed[good]
        for i in np.flatnonzero(np.isin(self._h["kind"], list(_JSON_KIND_CODES))):
            if not self._crc_ok(int(i)):
                self.bad_records += 1

    def verify(self) -> int:
        """Check every record's CRC; returns the number that fail."""
        return sum(not self._crc_ok(i) for i in range(self._off.size))

    def __len__(self) -> int:
        return int(self._off.size)

    def _record(self, i: int) -> Record:
        o = int(self._off[i]) + RECORD.size
        mv = memoryview(self._data.data)
        h = wire.unpack_header(mv[o:o + HEADER_SIZE_ON_WIRE])
        stored = mv[o + HEADER_SIZE_ON_WIRE:o + HEADER_SIZE_ON_WIRE + int(self._pl[i])]
        if self._z[i]:
            stored = memoryview(lz4.block.decompress(stored, uncompressed_size=h.payload_nbytes))
        return Record(int(self._t[i]), h, stored)

    def _select(self, kind: wire.Kind | None = None, rig_id: int | None = None,
                exclude_rig: int | None = None) -> npt.NDArray[np.int64]:
        m = np.ones(self._off.size, dtype=bool)
        if kind is not None:
            m &= self._h["kind"] == int(kind)
        if rig_id is not None:
            m &= self._h["rig_id"] == rig_id
        if exclude_rig is not None:
            m &= self._h["rig_id"] != exclude_rig
        return np.flatnonzero(m)

    def records(self, kind: wire.Kind | None = None, rig_id: int | None = None) -> Iterator[Record]:
        """Records in log order, optionally of one kind and/or rig."""
        for i in self._select(kind, rig_id):
            yield self._record(int(i))

    def json_records(self, kind: wire.Kind, rig_id: int | None = None) -> list[tuple[Record, dict[str, Any]]]:
        """Records of a JSON kind with their decoded objects."""
        return [(r, wire.payload_json(r.header, r.payload)) for r in self.records(kind, rig_id)]

    def events(self) -> list[dict[str, Any]]:
        """Trial/behaviour events from the rig(s), each with its rig time ``t_rig_ns``."""
        return [{**o, "t_rig_ns": r.header.t_rig_ns, "rig_id": r.header.rig_id}
                for r, o in self.json_records(wire.Kind.TRIAL_EVENT)]

    def trials(self) -> list[dict[str, Any]]:
        """Per-trial summaries rigd logged when each trial ended (outcome, condition, light)."""
        return [o for _, o in self.json_records(wire.Kind.LOG) if o.get("type") == "trial"]

    def alarms(self) -> list[dict[str, Any]]:
        """Alarms raised during the session."""
        return [o for _, o in self.json_records(wire.Kind.ALARM)]

    def logs(self, type_: str) -> list[dict[str, Any]]:
        """LOG entries of one type ("trial", "decision", "telemetry", "decoder_fit", ...)."""
        return [o for _, o in self.json_records(wire.Kind.LOG) if o.get("type") == type_]

    def rig_description(self) -> dict[str, Any]:
        """The last heartbeat description a rig sent."""
        desc: dict[str, Any] = {}
        for r in self.records(wire.Kind.HEARTBEAT):
            if r.header.rig_id != RIGD_RIG_ID and r.header.payload_nbytes:
                desc = wire.payload_json(r.header, r.payload)
        return desc

    def counts(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[Any]]:
        """All binned spike-count frames: (seq, t_rig_ns, counts (n_frames, n_units))."""
        idx = self._select(wire.Kind.SPIKE_COUNTS, exclude_rig=RIGD_RIG_ID)
        if idx.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.uint8)
        h = self._h[idx]
        seq, t = h["seq"].astype(np.int64), h["t_rig_ns"].astype(np.int64)
        code = int(h["dtype"][0])
        same = (h["dtype"] == code).all() and (h["payload_nbytes"] == h["payload_nbytes"][0]).all()
        dt = wire.np_dtype(wire.DType(code))
        if same and not self._z[idx].any():
            nb = int(h["payload_nbytes"][0])
            raw = _gather(self._data, self._off[idx] + RECORD.size + HEADER_SIZE_ON_WIRE, nb)
            return seq, t, raw.view(dt).reshape(idx.size, -1)
        width = int(h["dim0"].max())
        out = np.zeros((idx.size, width), dtype=dt)
        for j, i in enumerate(idx):
            a = self._record(int(i))
            v = wire.payload_array(a.header, a.payload).reshape(-1)
            out[j, : v.size] = v
        return seq, t, out

    def decoder_outputs(self) -> npt.NDArray[np.float64]:
        """Decoder outputs, one row per frame: seq, t_rig_ns, t_s, value, confidence, left, right."""
        parts = [wire.payload_array(r.header, r.payload).reshape(-1, r.header.shape[-1])
                 for r in self.records(wire.Kind.DECODER_OUTPUT, RIGD_RIG_ID) if r.header.payload_nbytes]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 7))

    def telemetry(self) -> npt.NDArray[np.float64]:
        """Per-loop stage timings recorded by rigd (columns in manifest['telemetry_fields'])."""
        parts = [wire.payload_array(r.header, r.payload)
                 for r in self.records(wire.Kind.TELEMETRY, RIGD_RIG_ID)]
        n = len(self.manifest.get("telemetry_fields", [])) or (parts[0].shape[1] if parts else 0)
        return np.concatenate(parts) if parts else np.zeros((0, n))

    def light_commands(self) -> list[tuple[Record, wire.LightCommandFields]]:
        """Every light command rigd sent."""
        return [(r, wire.unpack_light_command(r.payload))
                for r in self.records(wire.Kind.LIGHT_COMMAND)]

    def light_acks(self) -> list[tuple[Record, wire.LightAckFields]]:
        """Every acknowledgement the rig sent."""
        return [(r, wire.unpack_light_ack(r.payload)) for r in self.records(wire.Kind.LIGHT_ACK)]
