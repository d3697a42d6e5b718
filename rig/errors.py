"""Counters for everything rigd refuses or loses: bad input, drops, late decisions.

Every rejected message or dropped item increments a named counter (visible in ``rigd status``,
on the control plane and in the session manifest) and, for the first few of each reason, keeps a
detailed record (what, where, expected vs got) that the service logs to the session. Counting is
a dict increment under a lock (the hot thread and the asyncio thread both count; readers on any
thread get a consistent copy); nothing here does I/O.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

MAX_DETAILS_PER_REASON = 20


class Counters:
    """Named monotonically increasing counters plus a bounded queue of error details."""

    def __init__(self) -> None:
        self.values: dict[str, int] = collections.defaultdict(int)
        self.details: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self._detail_counts: dict[str, int] = collections.defaultdict(int)
        self._lock = threading.Lock()  # uncontended on the hot path: ~0.1 µs, and only on errors

    def inc(self, name: str, n: int = 1) -> None:
        """Increment a counter (any thread)."""
        with self._lock:
            self.values[name] += n

    def get(self, name: str) -> int:
        """One counter's value (0 if never counted)."""
        with self._lock:
            return self.values.get(name, 0)

    def error(self, where: str, reason: str, message: str, **extra: Any) -> None:
        """Count a rejected input (``errors.<where>.<reason>``) and keep its first details."""
        key = f"errors.{where}.{reason}"
        with self._lock:
            self.values[key] += 1
            if self._detail_counts[key] < MAX_DETAILS_PER_REASON:
                self._detail_counts[key] += 1
                self.details.append({"type": "input_error", "where": where, "reason": reason,
                                     "message": message, **extra})

    def pop_details(self) -> list[dict[str, Any]]:
        """Take the error details gathered since the last call."""
        with self._lock:
            out = list(self.details)
            self.details.clear()
        return out

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of all counters (no side effects)."""
        with self._lock:
            return dict(self.values)

    def total_errors(self) -> int:
        """Sum of all input-error counters."""
        return sum(v for k, v in self.snapshot().items() if k.startswith("errors."))
