"""The recorder's in-memory ring: records laid out as on disk, sealed and written without the GIL.

The hot loop hands every message to the recorder. Holding the message objects in a queue and
turning them into records on the writer thread costs several microseconds of Python per record
under the GIL, which the hot loop then waits for (at 1 kHz that was a ~1–3 ms GIL hold five times a
second: the closed loop's p99 tail). This module owns the alternative:

* :class:`RecordRing` is one preallocated byte ring. ``put`` copies a message into it already in
  the log's record layout (record header, 56-byte wire header, payload): a lock, one
  ``struct.pack_into`` and two buffer copies, about a microsecond. Payloads of
  ``large_min_bytes`` or more (100,000-unit frames, raw chunks) are not copied: a 20-byte
  placeholder keeps their place in the ring and the message objects wait, in order, in a side
  queue, as before.
* :func:`seal` is a compiled, GIL-free kernel that fills in each record's CRC-32 (zlib's, so
  readers check it with ``zlib.crc32``) over a span of the ring and stops at the first
  placeholder. The writer thread then hands the sealed span to ``os.write``, which also runs
  without the GIL. Only placeholders (at most one per large frame) and recorder taps cost Python.

Memory ordering between the producer threads and the writer is given by the lock: producers
publish ``head`` under it, the writer reads it under it and advances ``tail`` under it only once the
bytes before it are on their way to disk, so a producer never overwrites an unwritten record.
"""

from __future__ import annotations

import collections
import struct
import threading
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

RECORD = struct.Struct("<IIqI")  #: header_len | flags, payload_len, t_local_ns, crc32
RECORD_SIZE = RECORD.size
PLACEHOLDER = 1 << 30  #: flag in a ring record's first field: the message waits in the side queue


def _crc_tables() -> npt.NDArray[np.uint32]:
    """Slicing-by-8 tables of the reflected CRC-32, polynomial 0xEDB88320 (zlib, PNG, Ethernet)."""
    t = np.zeros((8, 256), dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        t[0, i] = c
    for k in range(1, 8):
        t[k] = (t[k - 1] >> 8) ^ t[0][t[k - 1] & 0xFF]
    return t


CRC_TABLE = _crc_tables()


@numba.njit(nogil=True, cache=True)
def crc32(buf: Any, start: int, stop: int, t: Any) -> int:  # pragma: no cover - compiled
    """CRC-32 (zlib's) of ``buf[start:stop]`` (a uint8 array), without the GIL; 8 bytes a step."""
    c = np.uint32(0xFFFFFFFF)
    i = start
    m = np.uint32(0xFF)
    while i + 8 <= stop:
        one = (np.uint32(buf[i]) | (np.uint32(buf[i + 1]) << 8) | (np.uint32(buf[i + 2]) << 16)
               | (np.uint32(buf[i + 3]) << 24)) ^ c
        c = (t[7, one & m] ^ t[6, (one >> 8) & m] ^ t[5, (one >> 16) & m] ^ t[4, one >> 24]
             ^ t[3, buf[i + 4]] ^ t[2, buf[i + 5]] ^ t[1, buf[i + 6]] ^ t[0, buf[i + 7]])
        i += 8
    while i < stop:
        c = t[0, (c ^ buf[i]) & m] ^ (c >> np.uint32(8))
        i += 1
    return int(c ^ np.uint32(0xFFFFFFFF))


@numba.njit(inline="always")
def _u32(buf: Any, o: int) -> int:  # pragma: no cover - compiled
    return (int(buf[o]) | (int(buf[o + 1]) << 8) | (int(buf[o + 2]) << 16)
            | (int(buf[o + 3]) << 24))


@numba.njit(nogil=True, cache=True)
def seal(buf: Any, start: int, stop: int, table: Any) -> tuple[int, int]:  # pragma: no cover
    """Write the CRC of each whole record in ``buf[start:stop]``; stop at the first placeholder.

    Returns ``(n, end)``: ``n`` records were sealed and lie in ``buf[start:end]``; ``end < stop``
    means a placeholder is at ``end``.
    """
    pos = start
    n = 0
    while pos < stop:
        first = _u32(buf, pos)
        if first & PLACEHOLDER:
            break
        body = pos + RECORD_SIZE
        end = body + (first & 0xFFFF) + _u32(buf, pos + 4)
        c = crc32(buf, body, end, table)
        buf[pos + 16] = c & 0xFF
        buf[pos + 17] = (c >> 8) & 0xFF
        buf[pos + 18] = (c >> 16) & 0xFF
        buf[pos + 19] = (c >> 24) & 0xFF
        n += 1
        pos = end
    return n, pos


def record_at(view: memoryview, pos: int) -> tuple[memoryview, memoryview, int, int]:
    """The sealed record at ``view[pos:]``: ``(wire header, payload, t_local_ns, next position)``."""
    hl, pl, t, _crc = RECORD.unpack_from(view, pos)
    b = pos + RECORD_SIZE
    e = b + (hl & 0xFFFF)
    return view[b:e], view[e:e + pl], t, e + pl


class RingFullError(Exception):
    """Raised internally when a record does not fit; ``put`` turns it into a counted drop."""


class RecordRing:
    """Byte ring of records in log layout, many producer threads, one writer thread.

    Args:
        capacity: bytes of the ring (preallocated and touched up front: no page faults on the
            hot path).
        large_min_bytes: payloads this large or larger wait in the side queue instead (no copy).
    """

    def __init__(self, capacity: int, large_min_bytes: int) -> None:
        self.capacity = int(capacity)
        self.large_min_bytes = large_min_bytes
        self.buf = np.ones(self.capacity, dtype=np.uint8)  # ones, not zeros: every page touched now
        self.view = self.buf.data
        self.lock = threading.Lock()
        self.head = 0  #: next byte a producer writes (under the lock)
        self.tail = 0  #: first byte not yet written to disk (writer; under the lock)
        self.wrap = -1  #: where the data of the previous lap ends, once head has wrapped (else -1)
        self.large: collections.deque[tuple[int, Any, Any]] = collections.deque()
        self.puts = 0  #: records accepted (ring and side queue)

    def put(self, header: Any, payload: Any, t_local_ns: int) -> None:
        """Copy one message in (or queue it, if large); raises :class:`RingFullError` if no room."""
        hn = len(header)
        pn = len(payload)
        large = pn >= self.large_min_bytes
        n = RECORD_SIZE if large else RECORD_SIZE + hn + pn
        with self.lock:
            pos = self.head
            tail = self.tail
            if self.wrap < 0:
                if pos + n > self.capacity:  # no room before the end: wrap, if the start is free
                    if n >= tail:
                        raise RingFullError
                    self.wrap = pos
                    pos = 0
            elif pos + n >= tail:
                raise RingFullError
            if large:
                RECORD.pack_into(self.view, pos, PLACEHOLDER, 0, t_local_ns, 0)
                self.large.append((t_local_ns, header, payload))
            else:
                RECORD.pack_into(self.view, pos, hn, pn, t_local_ns, 0)
                b = pos + RECORD_SIZE
                v = self.view
                # through memoryview(): assigning a zmq.Frame to a memoryview slice directly
                # segfaults (pyzmq 27.3); a memoryview of it is safe and costs ~0.1 µs
                v[b:b + hn] = memoryview(header)
                v[b + hn:b + hn + pn] = memoryview(payload)
            self.head = pos + n
            self.puts += 1

    def spans(self) -> Iterator[tuple[int, int]]:
        """Writer: the filled spans ``(start, stop)`` as of now, in order (at most two)."""
        with self.lock:
            head, wrap, tail = self.head, self.wrap, self.tail
        if wrap >= 0:
            if tail < wrap:
                yield tail, wrap
            with self.lock:
                self.tail = 0
                self.wrap = -1
            tail = 0
        if tail < head:
            yield tail, head

    def release(self, upto: int) -> None:
        """Writer: everything before ``upto`` (in the current lap) is written; producers may reuse it."""
        with self.lock:
            self.tail = upto
