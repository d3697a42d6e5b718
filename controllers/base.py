"""Types shared by every controller: the trial state they read and the light request they emit.

A controller is pure logic. Once per frame the service hands it the current :class:`TrialState`
(from the trial tracker), the decoder's :class:`~decoders.base.Estimate` and the frame's rig time;
it answers with a :class:`LightRequest` or ``None``. It never talks to a light source: requests go
to the light interlock in ``hardware/``, which alone decides what reaches the rig.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from decoders.base import Estimate

Hemisphere = Literal["left", "right", "bilateral"]
SPOTS_PER_HEMISPHERE = 4  #: 4 spots per hemisphere cover ALM (Chen et al., Cell 184:3717, 2021)


class Epoch(enum.IntEnum):
    """Epochs of the delayed-response task (timing: docs/simulator.md "Task and timing")."""

    ITI = 0  #: between trials (or before the first)
    PRESAMPLE = 1
    SAMPLE = 2
    DELAY = 3
    RESPONSE = 4  #: from the go cue to the end of the response window
    OUTCOME = 5  #: reward / error timeout / early-lick timeout, until the trial ends


@dataclass(slots=True)
class TrialState:
    """Where the task is now, as far as rigd knows (updated in place every frame).

    ``t_s`` is the time relative to the (planned or observed) go cue, the alignment every
    protocol and analysis uses; ``nan`` when no trial is running.
    """

    trial: int = -1
    epoch: Epoch = Epoch.ITI
    t_s: float = float("nan")
    time_in_epoch_s: float = 0.0
    instructed: int = 0  #: +1 right, -1 left, 0 unknown
    early_lick: bool = False  #: trial aborted by an early lick
    t_go_rig_ns: int = 0  #: planned/observed go-cue time on the rig clock
    delay_s: float = 1.7
    outcome: str = ""  #: "hit" | "error" | "ignore" | "early_lick" once known
    choice: int = 0  #: +1 right, -1 left, 0 none
    missing_events: int = 0  #: events inferred from timing because they never arrived
    sample_s: float = 1.3  #: planned/observed sample-epoch length (sample onset to delay onset)
    late_events: int = 0  #: events that arrived after their epoch had already been inferred


@dataclass(frozen=True, slots=True)
class LightRequest:
    """What a controller asks of the light (the interlock may refuse it).

    Power is time-averaged mW per spot at the brain surface; ``duration_s`` includes the
    linear ramp-down at its end (docs/protocols.md); spot masks are bit sets over
    the hemisphere's galvo spots (0b1111 = all four).
    """

    trial: int
    hemisphere: Hemisphere
    power_mw_per_spot: float = 1.5
    duration_s: float = 0.8
    ramp_down_s: float = 0.1
    waveform: Literal["sine", "constant"] = "sine"
    freq_hz: float = 40.0
    spots_left: int = 0
    spots_right: int = 0
    condition: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    #: how long after the causing frame the command may still usefully reach the rig; the service
    #: turns it into ``deadline_rig_ns`` and drops (never executes late) a decision that misses it.
    #: 25 ms is acceptable for state-triggered scheduling: the state integrates 100–400 ms and persists
    #: for hundreds of ms (docs/architecture.md, budgets).
    deadline_budget_s: float = 0.025

    @staticmethod
    def spots_for(hemisphere: Hemisphere, n_spots: int = SPOTS_PER_HEMISPHERE) -> tuple[int, int]:
        """Spot masks (left, right) lighting the first ``n_spots`` spots of the hemisphere(s)."""
        mask = (1 << n_spots) - 1
        return (mask if hemisphere in ("left", "bilateral") else 0,
                mask if hemisphere in ("right", "bilateral") else 0)


@runtime_checkable
class Controller(Protocol):
    """A perturbation policy. ``step`` runs on every frame: no I/O, no allocation-heavy work."""

    def step(self, state: TrialState, estimate: Estimate, t_rig_ns: int) -> LightRequest | None:
        """Decide, for this frame, whether to ask for light."""
        ...

    def on_trial_end(self, state: TrialState) -> dict[str, Any]:
        """Close the trial (outcome known): return what was decided, for the per-trial log."""
        ...
