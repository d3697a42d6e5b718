"""Sequence numbers of one rig's streams: in order, lost, stray, or restarted (see docs/wire-protocol.md).

This module owns the per-stream sequence rule of the ingest; it is pure (no clock, socket or
counter) so the rule can be tested alone. Per (rig, stream) rigd keeps the last accepted ``seq``:

* ``last < seq ≤ last + MAX_GAP``: accepted; ``seq - last - 1`` messages were lost on the way.
* anything else (a duplicate, an older seq, or a jump of more than ``MAX_GAP``) is off-sequence
  and dropped, but it is remembered: ``RESYNC_RUN`` consecutive off-sequence messages that form a
  run (each the previous + 1) resynchronise the stream at that run. A rig that restarted (back to
  seq 0) or jumped far therefore costs ``RESYNC_RUN - 1`` messages and an alarm, never the rest
  of the session; one stray message (e.g. at seq + 10⁶) costs nothing but its own drop.

The hot loop's fast path reads and advances :attr:`StreamSequences.last` directly (one dict
look-up per frame); the run bookkeeping is consulted only for off-sequence messages, and a run is
valid only while ``last`` has not moved since its latest message, so an accepted message between
two off-sequence ones breaks the run without any per-frame work.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

#: the largest forward jump still read as loss (100 s of 1 kHz frames); beyond it a message is off-sequence
MAX_GAP = 100_000
#: consecutive off-sequence messages forming a run (each = previous + 1) that resynchronise a stream
RESYNC_RUN = 3


class Seq(enum.Enum):
    """What the ingest does with a message, by its sequence number."""

    ACCEPT = "accept"  #: in sequence (possibly after a gap: ``missing`` > 0), or a stream's first message
    RESYNC = "resync"  #: the end of a run of off-sequence messages: accepted, the stream now follows it
    DUPLICATE = "duplicate_seq"  #: seq == last: dropped
    OLD = "out_of_order_seq"  #: seq < last: dropped
    JUMP = "seq_jump"  #: seq > last + MAX_GAP: dropped


class Verdict(NamedTuple):
    """The answer for one message."""

    seq: Seq
    missing: int = 0  #: ACCEPT: messages lost before this one
    last: int = -1  #: the stream's last accepted seq before this message (-1: none)
    off: int = 0  #: RESYNC: consecutive off-sequence messages, this one included
    run_start: int = 0  #: RESYNC: the seq the run started at


@dataclass(slots=True)
class _Run:
    at_last: int  #: the stream's ``last`` when the run's latest message came (a change breaks the run)
    start: int
    end: int
    off: int  #: consecutive off-sequence messages since the last accepted one


class StreamSequences:
    """The sequence state of one rig's streams."""

    def __init__(self, max_gap: int = MAX_GAP, resync_run: int = RESYNC_RUN) -> None:
        if max_gap < 1 or resync_run < 2:
            raise ValueError(f"need max_gap ≥ 1 and resync_run ≥ 2, got {max_gap}, {resync_run}")
        self.max_gap = max_gap
        self.resync_run = resync_run
        #: stream id → last accepted seq (the hot loop's fast path reads and advances this dict)
        self.last: dict[int, int] = {}
        self._runs: dict[int, _Run] = {}

    def check(self, stream: int, seq: int) -> Verdict:
        """Judge one message's ``seq`` on ``stream`` and advance the stream if it is accepted."""
        last = self.last.get(stream)
        if last is None:
            self.last[stream] = seq
            return Verdict(Seq.ACCEPT)
        if last < seq <= last + self.max_gap:
            self.last[stream] = seq
            return Verdict(Seq.ACCEPT, seq - last - 1, last)
        run = self._runs.get(stream)
        if run is not None and run.at_last == last:
            run.off += 1
            if seq == run.end + 1:
                run.end = seq
            else:
                run.start = run.end = seq
        else:
            run = self._runs[stream] = _Run(last, seq, seq, 1)
        if run.end - run.start + 1 >= self.resync_run:
            del self._runs[stream]
            self.last[stream] = seq
            return Verdict(Seq.RESYNC, 0, last, run.off, run.start)
        kind = Seq.DUPLICATE if seq == last else Seq.OLD if seq < last else Seq.JUMP
        return Verdict(kind, 0, last)

    def reset(self) -> None:
        """Forget every stream (the rig restarted): each stream's next message is accepted as its first."""
        self.last.clear()  # in place: the hot loop holds this dict
        self._runs.clear()


def describe(rig_id: int, stream: int, seq: int, v: Verdict) -> str:
    """The error detail of a dropped off-sequence message."""
    where = f"rig {rig_id} stream {stream}"
    if v.seq is Seq.DUPLICATE:
        return f"{where}: seq {seq} received twice"
    then = f"dropped ({RESYNC_RUN} consecutive in a run resynchronise the stream)"
    if v.seq is Seq.OLD:
        return f"{where}: seq {seq} after {v.last}: {then}"
    return f"{where}: seq {seq} jumps more than {MAX_GAP} past {v.last}: {then}"
