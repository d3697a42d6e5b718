"""What the Open Ephys stream means to rigd: units, TTL lines, bins and raw chunks (the adapter's map).

This module owns the lab's map (a TOML file, ``rigd start --openephys-map FILE``; format in
docs/openephys.md and ``hardware/openephys/map_example.toml``) and the pure bookkeeping the adapter
(``rig/openephys_rig.py``) does with it, on Open Ephys sample numbers, without sockets or clocks:

* :class:`UnitMap`: which spikes (electrode name, optionally one sorted id) are which unit, left
  hemisphere first (docs/wire-protocol.md: units are ordered left then right).
* :class:`SpikeBinner`: spike counts per bin on the stream's sample grid; a bin is closed once the
  continuous data has passed its end by ``spike_lag_ms`` (Open Ephys sends a block's spikes before
  its data, and a spike near a block's end may come with the next block).
* :class:`RawChunker`: the mapped continuous channels, assembled across the plugin's one-channel
  messages and cut into bin-long (n_samples, n_channels) chunks for rigd's threshold detector.
* :class:`TrialTTL`: rising TTL edges → rigd trial events (``trial_start`` with the instructed side
  read from a level line, epochs, licks) and the outcome derived from the first lick after the go
  cue within the response window.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

NS = 1_000_000_000
TTL_EVENTS = ("trial_start", "sample_on", "delay_on", "go_cue", "trial_end", "lick_left", "lick_right")
TTL_LEVELS = ("instructed_right",)
MAX_UNITS = 200_000
MAX_BINS_PER_STEP = 10_000  #: a longer data gap is skipped (counted), not filled with empty frames


class MapError(ValueError):
    """A map file that is not what docs/openephys.md describes (the text says which key and why)."""


def _num(table: dict[str, Any], key: str, default: float, low: float, high: float, where: str) -> float:
    v = table.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and low <= v <= high):
        raise MapError(f"{where}: {key} = {v!r}; expected a number in [{low:g}, {high:g}]")
    return float(v)


def _channels(items: Any, where: str) -> list[int]:
    """``[0, 1, "4-7"]`` → ``[0, 1, 4, 5, 6, 7]``."""
    if not isinstance(items, list):
        raise MapError(f"{where}: expected a list of channel numbers or 'a-b' ranges, got {items!r}")
    out: list[int] = []
    for it in items:
        if isinstance(it, int) and not isinstance(it, bool) and 0 <= it < MAX_UNITS:
            out.append(it)
        elif isinstance(it, str) and it.count("-") == 1 and all(p.strip().isdigit() for p in it.split("-")):
            a, b = (int(p) for p in it.split("-"))
            if not (a <= b < MAX_UNITS):
                raise MapError(f"{where}: range {it!r}; expected a-b with a ≤ b < {MAX_UNITS}")
            out.extend(range(a, b + 1))
        else:
            raise MapError(f"{where}: entry {it!r}; expected a channel number ≥ 0 or an 'a-b' range")
    return out


@dataclass(frozen=True)
class TaskTiming:
    """Planned epochs announced in ``trial_start`` (optional ``[task]``), and the response window."""

    presample_s: float | None = None
    sample_s: float | None = None
    delay_s: float | None = None
    response_s: float = 1.5


@dataclass(frozen=True)
class OpenEphysMap:
    """A validated map file (see the module docstring and docs/openephys.md)."""

    mode: str = "spikes"
    stream: str = ""  #: only this stream's continuous data and spikes ("" = the one the ZMQ Interface sends)
    spike_lag_ms: float = 1.5
    units_left: tuple[str, ...] = ()
    units_right: tuple[str, ...] = ()
    raw_left: tuple[int, ...] = ()
    raw_right: tuple[int, ...] = ()
    sample_rate_hz: float = 30_000.0
    threshold_sd: float = -4.5
    ttl_stream: str = ""
    ttl: dict[str, int] = field(default_factory=dict)
    task: TaskTiming = TaskTiming()
    source: str = ""

    @property
    def n_units(self) -> int:
        """Units (spike mode) or channels (raw mode) rigd decodes."""
        if self.mode == "raw":
            return len(self.raw_left) + len(self.raw_right)
        return len(self.units_left) + len(self.units_right)

    @property
    def n_left(self) -> int:
        """How many of them are in the left hemisphere (the first ones)."""
        return len(self.raw_left) if self.mode == "raw" else len(self.units_left)

    @classmethod
    def load(cls, path: Path) -> OpenEphysMap:
        """Read and validate a map file; :class:`MapError` (or OSError) says what is wrong."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise MapError(f"Open Ephys map {path}: not TOML ({exc})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "map") -> OpenEphysMap:
        """Validate a parsed map."""
        known = {"mode", "stream", "spike_lag_ms", "units", "raw", "ttl", "task"}
        if unknown := sorted(set(data) - known):
            raise MapError(f"{source}: unknown keys {unknown}; expected some of {sorted(known)}")
        mode = data.get("mode", "spikes")
        if mode not in ("spikes", "raw"):
            raise MapError(f"{source}: mode = {mode!r}; expected 'spikes' (bin sorted/detected spikes) or 'raw' "
                           "(continuous data for rigd's threshold detector)")
        lag = _num(data, "spike_lag_ms", 1.5, 0.0, 1000.0, source)
        kw: dict[str, Any] = {"mode": mode, "stream": str(data.get("stream", "")), "spike_lag_ms": lag,
                              "source": source}
        if mode == "spikes":
            units = data.get("units")
            if not isinstance(units, dict):
                raise MapError(f"{source}: mode 'spikes' needs a [units] table with left = [...] and right = [...] "
                               "electrode names (e.g. \"Electrode 1\", or \"Electrode 1#2\" for sorted unit 2)")
            for side in ("left", "right"):
                names = units.get(side, [])
                if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
                    raise MapError(f"{source}: [units] {side} = {names!r}; expected a list of electrode names")
                kw[f"units_{side}"] = tuple(n.strip() for n in names)
            allnames = kw["units_left"] + kw["units_right"]
            if not allnames:
                raise MapError(f"{source}: [units] lists no electrode: rigd needs at least one unit")
            if len(set(allnames)) != len(allnames):
                dup = sorted({n for n in allnames if allnames.count(n) > 1})
                raise MapError(f"{source}: [units] names {dup} more than once; each unit once")
            for n in allnames:
                _parse_unit(n, source)
        else:
            raw = data.get("raw")
            if not isinstance(raw, dict):
                raise MapError(f"{source}: mode 'raw' needs a [raw] table with left = [...] and right = [...] "
                               "channel numbers (the ZMQ Interface's channel_num)")
            kw["raw_left"] = tuple(_channels(raw.get("left", []), f"{source}: [raw] left"))
            kw["raw_right"] = tuple(_channels(raw.get("right", []), f"{source}: [raw] right"))
            chans = kw["raw_left"] + kw["raw_right"]
            if not chans or len(set(chans)) != len(chans):
                raise MapError(f"{source}: [raw] channels {list(chans)}; expected at least one, each once")
            kw["sample_rate_hz"] = _num(raw, "sample_rate_hz", 30_000.0, 1.0, 1e7, f"{source}: [raw]")
            kw["threshold_sd"] = _num(raw, "threshold_sd", -4.5, -100.0, -0.1, f"{source}: [raw]")
        ttl = data.get("ttl", {})
        if not isinstance(ttl, dict):
            raise MapError(f"{source}: [ttl] must be a table of event = line")
        lines: dict[str, int] = {}
        for key, v in ttl.items():
            if key == "stream":
                kw["ttl_stream"] = str(v)
                continue
            if key not in TTL_EVENTS + TTL_LEVELS:
                raise MapError(f"{source}: [ttl] {key}; expected some of {list(TTL_EVENTS + TTL_LEVELS)} or stream")
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 256:
                raise MapError(f"{source}: [ttl] {key} = {v!r}; expected a TTL line number 0…255")
            lines[key] = v
        used = [v for k, v in lines.items() if k in TTL_EVENTS]
        if len(set(used)) != len(used):
            raise MapError(f"{source}: [ttl] the same line names two events ({lines}); each event its own line")
        kw["ttl"] = lines
        task = data.get("task", {})
        if not isinstance(task, dict):
            raise MapError(f"{source}: [task] must be a table")
        opt = {k: _num(task, k, 0.0, 0.0, 60.0, f"{source}: [task]") if k in task else None
               for k in ("presample_s", "sample_s", "delay_s")}
        kw["task"] = TaskTiming(**opt, response_s=_num(task, "response_s", 1.5, 0.01, 60.0, f"{source}: [task]"))
        return cls(**kw)


def _parse_unit(name: str, where: str) -> tuple[str, int | None]:
    """``"Electrode 1"`` → (name, None: every sorted id); ``"Electrode 1#2"`` → (name, 2)."""
    if "#" in name:
        base, _, sid = name.rpartition("#")
        if not sid.strip().isdigit() or not base.strip():
            raise MapError(f"{where}: unit {name!r}; expected 'ELECTRODE' or 'ELECTRODE#SORTED_ID'")
        return base.strip(), int(sid)
    return name, None


class UnitMap:
    """(electrode, sorted id) → unit index, from the map's unit names (left first)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.n_units = len(names)
        self._whole: dict[str, int] = {}
        self._sorted: dict[tuple[str, int], int] = {}
        for i, n in enumerate(names):
            base, sid = _parse_unit(n, "units")
            if sid is None:
                self._whole[base] = i
            else:
                self._sorted[(base, sid)] = i

    def unit(self, electrode: str, sorted_id: int) -> int | None:
        """The unit a spike belongs to, or None (not in the map)."""
        u = self._sorted.get((electrode, sorted_id))
        return self._whole.get(electrode) if u is None else u


def samples_to_ns(sample: int, rate: float) -> int:
    """A sample number at ``rate`` Hz → ns since acquisition start (exact for integral rates)."""
    if rate == int(rate):
        return int(sample) * NS // int(rate)
    return round(int(sample) * (NS / rate))


class SpikeBinner:
    """Spike counts per bin on the stream's sample grid (origin: the first continuous block).

    Args:
        n_units: units per frame.
        bin_samples: samples per bin (≥ 1).
        lag_samples: a bin closes once the data has passed its end by this many samples.
    """

    def __init__(self, n_units: int, bin_samples: int, lag_samples: int) -> None:
        if bin_samples < 1 or n_units < 1 or lag_samples < 0:
            raise ValueError(f"SpikeBinner({n_units}, {bin_samples}, {lag_samples}): expected positive sizes")
        self.n_units = n_units
        self.bin_samples = bin_samples
        self.lag_samples = lag_samples
        self.origin: int | None = None
        self.next_bin = 0  #: the first bin not closed yet
        self._open: dict[int, npt.NDArray[np.uint16]] = {}
        self.late_spikes = 0
        self.skipped_bins = 0

    def start(self, sample: int) -> None:
        """Put the grid's origin at ``sample`` (the first continuous block's first sample)."""
        if self.origin is None:
            self.origin = sample

    def add(self, sample: int, unit: int) -> bool:
        """Count one spike of ``unit`` at ``sample``; False (counted late) if its bin is closed already."""
        if self.origin is None:
            return False
        b = (sample - self.origin) // self.bin_samples
        if b < self.next_bin:
            self.late_spikes += 1
            return False
        counts = self._open.get(b)
        if counts is None:
            counts = self._open[b] = np.zeros(self.n_units, dtype=np.uint16)
        if counts[unit] < 65535:
            counts[unit] += 1
        return True

    def advance(self, progress: int) -> Iterator[tuple[int, npt.NDArray[np.uint16]]]:
        """Close every bin whose end + lag ≤ ``progress`` (samples received): (end sample, counts) each."""
        if self.origin is None:
            return
        last = (progress - self.lag_samples - self.origin) // self.bin_samples  # bins [next_bin, last) close
        if last - self.next_bin > MAX_BINS_PER_STEP:
            skip_to = last - MAX_BINS_PER_STEP
            self.skipped_bins += skip_to - self.next_bin
            for b in [b for b in self._open if b < skip_to]:
                del self._open[b]
            self.next_bin = skip_to
        while self.next_bin < last:
            b = self.next_bin
            self.next_bin += 1
            counts = self._open.pop(b, None)
            yield (self.origin + (b + 1) * self.bin_samples,
                   counts if counts is not None else np.zeros(self.n_units, dtype=np.uint16))


class RawChunker:
    """The mapped channels' samples, assembled per block and cut into bin-long chunks.

    The ZMQ Interface sends one message per channel per block; a block is complete when every
    mapped channel has arrived. A newer block before an older one completes drops the older one
    (``incomplete_blocks``); a block that does not follow the previous one restarts the chunk grid
    there (``gaps``).
    """

    def __init__(self, channels: tuple[int, ...], bin_samples: int) -> None:
        self.col = {c: i for i, c in enumerate(channels)}
        self.n = len(channels)
        self.bin_samples = bin_samples
        self._block: tuple[int, npt.NDArray[np.float32], set[int]] | None = None
        self._buf = np.zeros((0, self.n), dtype=np.float32)
        self._buf_start = 0  #: sample number of _buf[0]
        self.expected: int | None = None
        self.incomplete_blocks = 0
        self.gaps = 0
        self.mismatched = 0

    def add(self, sample_num: int, channel: int, samples: npt.NDArray[np.float32]
            ) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
        """One channel's block; yields (end sample, chunk (bin_samples, n_channels)) for each full chunk."""
        col = self.col.get(channel)
        if col is None:
            return
        if self._block is not None and self._block[0] != sample_num:
            if sample_num < self._block[0]:
                self.incomplete_blocks += 1  # a straggler of an older block
                return
            self.incomplete_blocks += 1
            self._block = None
        if self._block is None:
            self._block = (sample_num, np.zeros((samples.size, self.n), dtype=np.float32), set())
        start, mat, seen = self._block
        if samples.size != mat.shape[0]:
            self.mismatched += 1
            return
        mat[:, col] = samples
        seen.add(col)
        if len(seen) < self.n:
            return
        self._block = None
        if self.expected is not None and start != self.expected:
            self.gaps += 1
            self._buf = self._buf[:0]
        if self._buf.shape[0] == 0:
            self._buf_start = start
        self._buf = np.concatenate([self._buf, mat]) if self._buf.shape[0] else mat
        self.expected = start + mat.shape[0]
        k = self._buf.shape[0] // self.bin_samples
        for i in range(k):
            chunk = self._buf[i * self.bin_samples:(i + 1) * self.bin_samples]
            yield self._buf_start + (i + 1) * self.bin_samples, np.ascontiguousarray(chunk)
        used = k * self.bin_samples
        self._buf = self._buf[used:]
        self._buf_start += used


@dataclass
class TrialEvent:
    """A rigd trial event to send: name, rig time, extra fields (docs/wire-protocol.md, "Trial events")."""

    event: str
    trial: int
    t_ns: int
    fields: dict[str, Any] = field(default_factory=dict)


class TrialTTL:
    """Rising TTL edges on the map's lines → rigd trial events, with the outcome derived from licks.

    * ``trial_start`` opens trial 0, 1, 2…; ``instructed`` is "right" when the ``instructed_right``
      line is high at that moment, else "left" (omitted when that line is not mapped); the planned
      epoch times come from ``[task]`` when given.
    * ``sample_on``, ``delay_on``, ``go_cue`` pass through; ``lick_left``/``lick_right`` become
      ``lick`` with its ``side`` (licks outside a trial are counted, not sent).
    * The first lick within ``response_s`` after the go cue is the choice: an ``outcome`` follows it
      (hit when it matches the instructed side, else error; none without an instructed side); a
      trial that ends with a go cue and no such lick gets ``outcome`` ignore before ``trial_end``.
    """

    def __init__(self, lines: dict[str, int], task: TaskTiming) -> None:
        self.by_line = {v: k for k, v in lines.items() if k in TTL_EVENTS}
        self.level_line = lines.get("instructed_right")
        self.task = task
        self.level = 0
        self.trial = -1
        self.open = False
        self.instructed: str | None = None
        self.t_go: int | None = None
        self.choice: tuple[str, int] | None = None
        self.licks_outside = 0

    def edge(self, line: int, state: int, t_ns: int) -> list[TrialEvent]:
        """One TTL edge at ``t_ns``; the trial events it means (possibly none)."""
        if line == self.level_line:
            self.level = state
        name = self.by_line.get(line)
        if name is None or not state:
            return []
        out: list[TrialEvent] = []
        if name == "trial_start":
            if self.open:
                out += self._end(t_ns)
            self.trial += 1
            self.open, self.t_go, self.choice = True, None, None
            fields: dict[str, Any] = {}
            if self.level_line is not None:
                self.instructed = "right" if self.level else "left"
                fields["instructed"] = self.instructed
            else:
                self.instructed = None
            tk = self.task
            if tk.sample_s is not None and tk.delay_s is not None:
                t_sample = t_ns + round((tk.presample_s or 0.0) * NS)
                t_delay = t_sample + round(tk.sample_s * NS)
                fields.update(delay_s=tk.delay_s, t_sample_ns=t_sample, t_delay_ns=t_delay,
                              t_go_ns=t_delay + round(tk.delay_s * NS))
            out.append(TrialEvent("trial_start", self.trial, t_ns, fields))
            return out
        if not self.open:
            if name in ("lick_left", "lick_right"):
                self.licks_outside += 1
            return out
        if name in ("lick_left", "lick_right"):
            side = "left" if name == "lick_left" else "right"
            out.append(TrialEvent("lick", self.trial, t_ns, {"side": side}))
            if self.t_go is not None and self.choice is None and t_ns - self.t_go <= round(self.task.response_s * NS):
                self.choice = (side, t_ns)  # the first lick of the response window is the choice
                if self.instructed is not None:
                    out.append(TrialEvent("outcome", self.trial, t_ns, {
                        "outcome": "hit" if side == self.instructed else "error", "choice": side,
                        "reaction_time_s": (t_ns - self.t_go) / NS}))
        elif name == "trial_end":
            out += self._end(t_ns)
        else:
            if name == "go_cue":
                self.t_go = t_ns
            out.append(TrialEvent(name, self.trial, t_ns))
        return out

    def _end(self, t_ns: int) -> list[TrialEvent]:
        out = []
        if self.t_go is not None and self.choice is None:  # no lick in the response window
            out.append(TrialEvent("outcome", self.trial, t_ns, {"outcome": "ignore", "choice": None,
                                                                "reaction_time_s": None}))
        out.append(TrialEvent("trial_end", self.trial, t_ns))
        self.open = False
        return out
