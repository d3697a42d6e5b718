"""The one interface every online decoder implements, and the labelled-trial data it fits on.

A decoder is pure computation: it is fitted on labelled trials, then stepped once per frame with
that frame's spike counts, its sequence number and its trial time (seconds from the go cue,
passed in: decoders never read a clock). It owns one :class:`Estimate` that it overwrites on
every step, so the hot path allocates nothing. It must not import sockets, brokers or ``rig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

LEFT = 0  #: hemisphere index of the left ALM
RIGHT = 1  #: hemisphere index of the right ALM


@dataclass(slots=True)
class Estimate:
    """A decoder's output for one frame (overwritten in place on every step).

    ``value`` is signed so that positive means "lick right" (for a coding direction: the
    projection minus the decision boundary); ``confidence`` is P(lick right) in [0, 1];
    ``label`` is +1 (right), -1 (left) or 0 (not ready / undecided); ``left`` and ``right``
    are the per-hemisphere values where the decoder has them (nan otherwise).
    """

    seq: int = -1
    t_s: float = float("nan")
    value: float = float("nan")
    confidence: float = 0.5
    label: int = 0
    left: float = float("nan")
    right: float = float("nan")
    ready: bool = False


@dataclass
class TrialSet:
    """Labelled trials for fitting: spike counts aligned to the go cue.

    Attributes:
        counts: (n_trials, n_bins, n_units) spike counts per bin.
        bin_s: bin width in seconds.
        t0_s: start time of bin 0 relative to the go cue (e.g. -3.5).
        choice: (n_trials,) +1 lick right / -1 lick left: the label a decoder learns.
        instructed: (n_trials,) +1 / -1 instructed side.
        correct: (n_trials,) bool, the mouse licked the instructed side.
        hemisphere: (n_units,) LEFT or RIGHT for each unit.
        provenance: where the trials come from (session ids, trial numbers, day, seed…).

    """

    counts: npt.NDArray[Any]
    bin_s: float
    t0_s: float
    choice: npt.NDArray[np.int8]
    instructed: npt.NDArray[np.int8]
    correct: npt.NDArray[np.bool_]
    hemisphere: npt.NDArray[np.int8]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n_trials(self) -> int:
        """Number of trials."""
        return int(self.counts.shape[0])

    @property
    def n_units(self) -> int:
        """Number of units."""
        return int(self.counts.shape[2])

    def times_s(self) -> npt.NDArray[np.float64]:
        """Bin start times relative to the go cue."""
        return np.asarray(self.t0_s + self.bin_s * np.arange(self.counts.shape[1]), dtype=np.float64)

    def subset(self, idx: npt.NDArray[Any]) -> TrialSet:
        """Select trials by an index or mask (provenance notes the selection)."""
        sel = np.asarray(idx)
        trials = np.flatnonzero(sel) if sel.dtype == bool else sel
        prov = dict(self.provenance)
        prov["trials"] = [int(t) for t in np.asarray(self.provenance.get("trials",
                                                     np.arange(self.n_trials)))[trials]]
        return TrialSet(self.counts[trials], self.bin_s, self.t0_s, self.choice[trials],
                        self.instructed[trials], self.correct[trials], self.hemisphere, prov)


@dataclass
class FitReport:
    """What a fit produced: quality (cross-validated where the decoder supports it) and provenance."""

    decoder: str
    n_trials: int
    accuracy: float
    details: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Decoder(Protocol):
    """What the service calls. ``step`` runs on every frame and must not allocate."""

    name: str
    version: int

    @property
    def ready(self) -> bool:
        """True once fitted."""
        ...

    def fit(self, trials: TrialSet) -> FitReport:
        """Fit from labelled trials (batch)."""
        ...

    def update(self, trials: TrialSet) -> FitReport | None:
        """Online update with newly labelled trials (may refit; None if nothing changed)."""
        ...

    def reset(self) -> None:
        """Start of a trial: clear running windows."""
        ...

    def step(self, counts: npt.NDArray[Any], seq: int, t_s: float) -> Estimate:
        """Consume one frame of counts (n_units,) at trial time ``t_s``; return the shared Estimate."""
        ...

    def save(self, path: Path) -> None:
        """Write the fitted decoder with its version and provenance."""
        ...
