"""Latency telemetry: per-loop stage stamps on the hot path, summaries everywhere else.

The hot thread writes one row per processed frame into a preallocated ring (no allocation, no
locks: a single writer advances ``written``). Readers (status, control plane, recorder, live
view) copy the rows they have not seen yet and fold them into log-binned histograms that hold
the whole session at ~1 % resolution, from which p50/p99/p99.9/max and deadline misses are read.
End-to-end latency (rig send → command received at the rig, both on the rig clock) comes from
light acknowledgements and goes into its own histogram.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

#: Columns of a loop row. Stage times are in microseconds.
FIELDS = ("seq", "t_recv_ns", "ingest_us", "decode_us", "control_us", "send_us", "internal_us",
          "commanded", "decision_us")
#: decision_us: frame received → decision taken (before anything is sent); internal_us: → sent
STAGES = ("ingest_us", "decode_us", "control_us", "send_us", "internal_us", "decision_us")
_COL = {f: i for i, f in enumerate(FIELDS)}


class Histogram:
    """Log-binned latency histogram from 0.1 µs to 100 s, 200 bins per decade."""

    def __init__(self, lo_us: float = 0.1, hi_us: float = 1e8, per_decade: int = 200) -> None:
        n = round(float(np.log10(hi_us / lo_us)) * per_decade)
        self.edges = lo_us * 10.0 ** (np.arange(n + 1) / per_decade)
        self.counts = np.zeros(n + 2, dtype=np.int64)  # [under, bins..., over]
        self.n = 0
        self.max = 0.0
        self.total = 0.0

    def add(self, values_us: npt.NDArray[np.float64]) -> None:
        """Add a batch of latencies (µs)."""
        v = values_us[np.isfinite(values_us)]
        if v.size == 0:
            return
        idx = np.searchsorted(self.edges, v, side="right")
        self.counts += np.bincount(idx, minlength=self.counts.size)
        self.n += int(v.size)
        self.max = max(self.max, float(v.max()))
        self.total += float(v.sum())

    def percentile(self, q: float) -> float:
        """Approximate q-th percentile (0–100), the geometric middle of its bin; nan if empty."""
        return self.percentiles((q,))[0]

    def percentiles(self, qs: tuple[float, ...]) -> list[float]:
        """:meth:`percentile` for several q at once (one pass over the bins)."""
        if self.n == 0:
            return [float("nan")] * len(qs)
        c = np.cumsum(self.counts)
        out = []
        for i in np.searchsorted(c, np.asarray(qs) / 100.0 * self.n, side="left").tolist():
            if i == 0:
                out.append(float(self.edges[0]))
            elif i >= self.counts.size - 1:
                out.append(self.max)
            else:
                out.append(float(min(np.sqrt(self.edges[i - 1] * self.edges[i]), self.max)))
        return out

    def count_above(self, threshold_us: float) -> int:
        """Number of values above a threshold (bin resolution)."""
        i = int(np.searchsorted(self.edges, threshold_us, side="right"))
        return int(self.counts[i + 1:].sum())

    def summary(self, deadline_us: float | None = None) -> dict[str, float]:
        """p50/p99/p99.9/max/mean (µs), count, and misses over ``deadline_us`` if given."""
        p50, p99, p99_9 = self.percentiles((50, 99, 99.9))
        out = {"n": float(self.n), "p50": p50, "p99": p99,
               "p99_9": p99_9, "max": self.max if self.n else float("nan"),
               "mean": self.total / self.n if self.n else float("nan")}
        if deadline_us is not None:
            out["deadline_misses"] = float(self.count_above(deadline_us))
        return out


class LoopTelemetry:
    """Ring of per-loop rows written by the hot thread, folded into histograms by readers."""

    def __init__(self, capacity: int = 1 << 17) -> None:
        self.capacity = capacity
        self.rows = np.zeros((capacity, len(FIELDS)), dtype=np.float64)
        self.written = 0  # only the hot thread advances this
        self._read = 0
        self.hist = {s: Histogram() for s in STAGES}
        self.hist_commanded_internal = Histogram()
        self.e2e = Histogram()
        self.lost_rows = 0
        self._summary: tuple[tuple[int, int, float], dict[str, Any]] | None = None

    def record(self, seq: int, t_recv: int, t_parsed: int, t_decoded: int, t_controlled: int,
               t_sent: int) -> None:
        """Hot path: stamp one processed frame (monotonic ns; t_sent == t_controlled if no command)."""
        r = self.rows[self.written % self.capacity]
        r[0] = seq
        r[1] = t_recv
        r[2] = (t_parsed - t_recv) * 1e-3
        r[3] = (t_decoded - t_parsed) * 1e-3
        r[4] = (t_controlled - t_decoded) * 1e-3
        r[5] = (t_sent - t_controlled) * 1e-3
        r[6] = (t_sent - t_recv) * 1e-3
        r[7] = 1.0 if t_sent != t_controlled else 0.0
        r[8] = (t_controlled - t_recv) * 1e-3
        self.written += 1

    def add_e2e(self, e2e_us: float) -> None:
        """One end-to-end loop measured from an acknowledgement (µs)."""
        self.e2e.add(np.array([e2e_us]))

    def collect(self) -> npt.NDArray[np.float64]:
        """Copy the rows written since the last call and fold them into the histograms."""
        w = self.written
        start = self._read
        if w - start > self.capacity:
            self.lost_rows += w - start - self.capacity
            start = w - self.capacity
        if w == start:
            return np.zeros((0, len(FIELDS)))
        idx = np.arange(start, w) % self.capacity
        new = self.rows[idx].copy()
        self._read = w
        for s in STAGES:
            self.hist[s].add(new[:, _COL[s]])
        cmd = new[:, _COL["commanded"]] > 0
        if cmd.any():
            self.hist_commanded_internal.add(new[cmd, _COL["internal_us"]])
        return new

    def summary(self, deadline_us: float) -> dict[str, Any]:
        """Stage and end-to-end summaries (µs) for status, control plane and session.

        Computed once per change of the histograms (status, control plane, live view and the
        session ask for it several times a second; the hot loop shares the GIL with them).
        """
        key = (self._read, self.e2e.n, deadline_us)
        if self._summary is None or self._summary[0] != key:
            hist: dict[str, Any] = {s.removesuffix("_us"): self.hist[s].summary() for s in STAGES}
            hist["internal_commanded"] = self.hist_commanded_internal.summary()
            hist["e2e"] = self.e2e.summary(deadline_us)
            self._summary = (key, hist)
        out: dict[str, Any] = {k: dict(v) for k, v in self._summary[1].items()}  # callers may edit their copy
        out["loops"] = self.written
        out["lost_rows"] = self.lost_rows
        return out
