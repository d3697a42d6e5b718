"""The light ledger: what one animal received on one rig, kept on disk across rigd restarts.

The interlock's rolling energy budget (≤ 1 J per hemisphere per 10 min) and its perturbed-fraction
limit protect the tissue of an animal, not a process: a rigd restart on the same animal must not
reset them. This module owns that memory. Every approved light command and every trial start is
appended, one JSON line each, to ``<ledger dir>/<subject>-rig<id>.jsonl``; when a rig's interlock is
built, the entries younger than the energy window are read back and handed to it.

Records carry wall-clock time (``t_wall_ns``, which survives a reboot); the interlock works on the
monotonic clock, so loaded entries are mapped onto it with the offset between the two clocks at
load time. Appending never blocks the caller: lines go through a queue to a writer thread that
writes and fsyncs them (the hot loop does no file I/O). A process killed between an approval and
its write loses at most that line — milliseconds; the rig's own watchdog and the per-trial limits
bound what such a line can hide.

A ledger file that cannot be read (corrupt line, wrong fields) is not trusted silently: bad lines
are counted and reported, the good ones still count.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NS = 1_000_000_000


def state_dir() -> Path:
    """Where rigd keeps state that outlives a session (``RIGD_STATE_DIR`` overrides)."""
    env = os.environ.get("RIGD_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "rigd"


def ledger_path(directory: Path, subject: str, rig_id: int) -> Path:
    """The ledger file of one subject on one rig (the subject id made safe for a file name)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", subject)[:80] or "unknown-subject"
    return directory / f"{safe}-rig{rig_id}.jsonl"


@dataclass
class LedgerHistory:
    """What a ledger holds within the energy window, on the monotonic clock of this process."""

    energy: list[tuple[int, int, float]] = field(default_factory=list)  #: (t_ns, hemisphere 0/1, joules)
    trials: int = 0  #: trial starts within the window
    perturbed: int = 0  #: approved light commands within the window
    bad_lines: int = 0  #: lines that could not be read (counted, not trusted)
    path: str = ""

    def describe(self) -> str:
        """One line for the log and the alarm at start."""
        j = [sum(e[2] for e in self.energy if e[1] == h) for h in (0, 1)]
        return (f"{self.path}: within the window {self.trials} trials, {self.perturbed} perturbed, "
                f"{j[0]:.4f} J left / {j[1]:.4f} J right" + (f", {self.bad_lines} unreadable lines"
                                                            if self.bad_lines else ""))


class LightLedger:
    """Append-only ledger of one subject on one rig (see the module docstring).

    Args:
        path: the JSON-lines file (created with its directory).
        subject: the animal's id, written into each line.
        rig_id: the rig, written into each line.
    """

    def __init__(self, path: Path, subject: str, rig_id: int) -> None:
        self.path = path
        self.subject = subject
        self.rig_id = rig_id
        path.parent.mkdir(parents=True, exist_ok=True)
        self._offset_ns = time.time_ns() - time.monotonic_ns()  # wall = monotonic + offset
        self._q: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.write_errors = 0
        self.written = 0
        self._thread = threading.Thread(target=self._writer, name=f"rigd-ledger-{rig_id}", daemon=True)
        self._thread.start()

    def load(self, window_s: float, now_ns: int | None = None) -> LedgerHistory:
        """Entries younger than ``window_s``, mapped onto this process's monotonic clock."""
        now_mono = time.monotonic_ns() if now_ns is None else now_ns
        now_wall = now_mono + self._offset_ns
        horizon = now_wall - int(window_s * NS)
        hist = LedgerHistory(path=str(self.path))
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return hist
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                t_wall = int(rec["t_wall_ns"])
                kind = rec["kind"]
                if t_wall <= horizon or t_wall > now_wall + 60 * NS:
                    continue  # outside the window (or from a clock far in the future: ignored, counted)
                if kind == "trial":
                    hist.trials += 1
                elif kind == "light":
                    joules = [float(rec.get(key, 0.0)) for key in ("joules_left", "joules_right")]
                    if not all(0.0 <= j < 1e6 for j in joules):  # NaN fails too
                        raise ValueError(f"joules = {joules}")
                    hist.perturbed += 1
                    hist.energy.extend((t_wall - self._offset_ns, h, j) for h, j in enumerate(joules) if j > 0)
                else:
                    raise ValueError(f"unknown kind {kind!r}")
            except (ValueError, KeyError, TypeError):
                hist.bad_lines += 1
        hist.energy.sort()
        return hist

    def record_trial(self, now_ns: int, trial: int) -> None:
        """A trial started (monotonic ``now_ns``); never blocks."""
        self._q.put({"kind": "trial", "t_wall_ns": now_ns + self._offset_ns, "trial": trial})

    def record_light(self, now_ns: int, trial: int, command_id: int, joules: tuple[float, float]) -> None:
        """An approved START: its conservative energy per hemisphere; never blocks."""
        self._q.put({"kind": "light", "t_wall_ns": now_ns + self._offset_ns, "trial": trial,
                     "command_id": command_id, "joules_left": joules[0], "joules_right": joules[1]})

    def close(self, timeout_s: float = 2.0) -> None:
        """Write what is queued and stop the writer (waits at most ``timeout_s``)."""
        self._q.put(None)
        self._thread.join(timeout_s)

    def _writer(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while True:
                rec = self._q.get()
                if rec is None:
                    return
                batch = [rec]
                while True:  # take whatever else is waiting: one write and one fsync for all of it
                    try:
                        more = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._q.put(None)
                        break
                    batch.append(more)
                data = "".join(json.dumps({**r, "subject": self.subject, "rig_id": self.rig_id},
                                          separators=(",", ":")) + "\n" for r in batch).encode()
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                    self.written += len(batch)
                except OSError:
                    self.write_errors += len(batch)
        finally:
            os.close(fd)
