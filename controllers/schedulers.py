"""Open-loop perturbation schedulers: which trials get light, where, when — decided per trial, logged.

This module owns the per-trial draw of a photoinhibition condition (balanced, constrained
randomisation from a seed) and the epoch-locked light window of each condition. A scheduler is a
:class:`~controllers.base.Controller`: once per frame ``step`` compares the trial time with the
drawn window and, at the first frame at/after the onset, returns one :class:`LightRequest`
("start now", duration running to the planned window end, the 100-ms ramp-down inside the window
as in docs/protocols.md). On frames where nothing happens it allocates nothing. ``on_trial_end``
returns the per-trial log (condition, window, request, re-draws, seed, draw index).

Randomisation (docs/protocols.md, "Scheduling rules"): permuted blocks whose composition follows the conditions'
fractions (Chen 2021: 9 control, 1 left, 1 right, 1 bilateral per 12 trials); the next condition is
drawn from what is left of the block, subject to the constraints: no two consecutive perturbation
trials at the same site, no run of more than ``max_run_perturbed`` perturbation trials, and the
session's perturbed fraction never above ``max_fraction_perturbed`` (with the small-N allowance
the interlock uses). A trial aborted by an early lick before its light onset puts its condition
back into the block to be drawn again (re-draw) and does not count towards the constraints, so the
balance holds over completed trials. It talks to no light source, rig, socket or clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from controllers.base import SPOTS_PER_HEMISPHERE, Epoch, Hemisphere, LightRequest, TrialState
from decoders.base import Estimate

Anchor = Literal["go_cue", "delay_onset", "sample_onset"]
SMALL_N_ALLOWANCE = 3  #: perturbed trials allowed above the fraction at small N (same as the interlock)


@dataclass(frozen=True, slots=True)
class LightWindow:
    """When the light is on, locked to an epoch: ``onset_s`` after the anchor, for ``duration_s``.

    ``duration_s`` includes the linear ramp-down at its end (docs/protocols.md): Chen 2021's early
    delay is ``LightWindow(onset_s=-1.7, duration_s=0.8)`` aligned to the go cue (−1.7…−0.9 s),
    equivalently ``LightWindow(0.0, 0.8, "delay_onset")`` with a 1.7-s delay.
    """

    onset_s: float
    duration_s: float
    aligned_to: Anchor = "go_cue"

    def onset_from_go_s(self, state: TrialState) -> float:
        """Return the onset relative to the go cue for this trial's (planned) epoch lengths."""
        if self.aligned_to == "go_cue":
            return self.onset_s
        if self.aligned_to == "delay_onset":
            return self.onset_s - state.delay_s
        return self.onset_s - state.delay_s - state.sample_s


@dataclass(frozen=True, slots=True)
class Condition:
    """One experimental condition: control (``hemisphere=None``) or photoinhibition of a site."""

    name: str
    fraction: float
    hemisphere: Hemisphere | None = None
    window: LightWindow | None = None
    power_mw_per_spot: float = 1.5
    ramp_down_s: float = 0.1
    waveform: Literal["sine", "constant"] = "sine"
    freq_hz: float = 40.0
    n_spots: int = SPOTS_PER_HEMISPHERE

    @property
    def perturbed(self) -> bool:
        """True if this condition asks for light."""
        return self.hemisphere is not None

    @property
    def site(self) -> str:
        """What 'the same site' means for the no-repeat rule: hemisphere + window."""
        w = self.window
        return f"{self.hemisphere}@{w.onset_s:+.3f}/{w.aligned_to}" if w is not None else "control"


@dataclass(frozen=True, slots=True)
class Constraints:
    """Randomisation constraints (docs/protocols.md, "Scheduling rules")."""

    block_size: int = 12
    max_fraction_perturbed: float = 0.25
    max_run_perturbed: int = 2  #: no more than this many perturbation trials in a row
    no_repeat_site: bool = True  #: never two consecutive perturbation trials at the same site
    redraw_after_early_lick: bool = True
    max_late_onset_s: float = 0.05  #: skip (log) the light if the first frame past onset is later


def block_counts(conditions: list[Condition], block_size: int) -> list[int]:
    """Trials per block for each condition; raises ValueError if the fractions don't fit the block."""
    counts = [round(c.fraction * block_size) for c in conditions]
    for c, n in zip(conditions, counts, strict=True):
        if abs(n - c.fraction * block_size) > 0.05 * block_size and c.fraction > 0:
            raise ValueError(f"condition {c.name!r}: fraction {c.fraction} does not fit a block of "
                             f"{block_size} trials (nearest {n}/{block_size}); choose another block_size")
    if sum(counts) != block_size:
        raise ValueError(f"fractions {[c.fraction for c in conditions]} give {sum(counts)} trials per "
                         f"block of {block_size}; they must add up to 1")
    return counts


@dataclass
class _Trial:
    """Per-trial bookkeeping (allocated once per trial, never per frame)."""

    trial: int
    cond: int
    onset_go_s: float
    end_go_s: float
    draw_index: int
    redrawn_from: list[int] = field(default_factory=list)
    emitted_t_s: float = math.nan
    request: LightRequest | None = None
    skipped: str = ""


class BlockScheduler:
    """Balanced, constrained, seeded randomisation over conditions with epoch-locked windows.

    Args:
        conditions: the conditions; their fractions must add up to 1.
        seed: random seed (the whole schedule is reproducible from it).
        constraints: randomisation constraints.
        name: shown in logs.

    """

    def __init__(self, conditions: list[Condition], seed: int, constraints: Constraints | None = None,
                 name: str = "block") -> None:
        self.conditions = list(conditions)
        self.constraints = constraints or Constraints()
        self.seed = seed
        self.name = name
        self._counts = block_counts(self.conditions, self.constraints.block_size)
        self._rng = np.random.default_rng(seed)
        self._pool: list[int] = []
        self._trial: _Trial | None = None
        self._trial_no = -1
        self._n_trials = 0  # trials that counted (not re-drawn)
        self._n_perturbed = 0
        self._run = 0
        self._last_site = ""
        self._draws = 0
        self._pending: LightRequest | None = None
        self._onset = math.inf
        self._end = math.inf

    # --- drawing -----------------------------------------------------------------------------

    def _refill(self) -> None:
        for i, n in enumerate(self._counts):
            self._pool.extend([i] * n)

    def _allowed(self, i: int) -> bool:
        c = self.conditions[i]
        if not c.perturbed:
            return True
        k = self.constraints
        if self._run >= k.max_run_perturbed:
            return False
        if k.no_repeat_site and self._run > 0 and c.site == self._last_site:
            return False
        return self._n_perturbed + 1 <= k.max_fraction_perturbed * (self._n_trials + 1) + SMALL_N_ALLOWANCE

    def _draw(self) -> int:
        for _ in range(3):
            if not self._pool:
                self._refill()
            cand = [j for j, i in enumerate(self._pool) if self._allowed(i)]
            if cand:
                j = cand[int(self._rng.integers(len(cand)))]
                return self._pool.pop(j)
            self._refill()  # nothing allowed left in this block: open the next one
        # only reachable if no condition is allowed at all: fall back to a control condition
        return next(i for i, c in enumerate(self.conditions) if not c.perturbed)

    def _new_trial(self, state: TrialState) -> None:
        self._trial_no = state.trial
        i = self._draw()
        self._draws += 1
        c = self.conditions[i]
        if c.window is not None:
            onset = c.window.onset_from_go_s(state)
            end = onset + c.window.duration_s
        else:
            onset = end = math.inf
        self._trial = _Trial(state.trial, i, onset, end, self._draws)
        self._onset, self._end = onset, end

    # --- Controller --------------------------------------------------------------------------

    def step(self, state: TrialState, estimate: Estimate, t_rig_ns: int) -> LightRequest | None:
        """Return the light request at the first frame at/after this trial's window onset."""
        if state.trial != self._trial_no:
            if state.trial < 0:
                return None
            self._new_trial(state)
        t = state.t_s
        if not t >= self._onset:  # also false for nan
            return None
        tr = self._trial
        self._onset = math.inf  # once per trial
        if tr is None:
            return None
        return self._emit(tr, state, t)

    def _emit(self, tr: _Trial, state: TrialState, t: float) -> LightRequest | None:
        c = self.conditions[tr.cond]
        if state.early_lick or state.epoch >= Epoch.OUTCOME:
            tr.skipped = "trial aborted before onset"
            return None
        late = t - tr.onset_go_s
        if late > self.constraints.max_late_onset_s:
            tr.skipped = f"first frame {late * 1e3:.1f} ms after onset"
            return None
        assert c.hemisphere is not None
        left, right = LightRequest.spots_for(c.hemisphere, c.n_spots)
        dur = tr.end_go_s - t
        req = LightRequest(
            trial=state.trial, hemisphere=c.hemisphere, power_mw_per_spot=c.power_mw_per_spot,
            duration_s=dur, ramp_down_s=min(c.ramp_down_s, dur), waveform=c.waveform, freq_hz=c.freq_hz,
            spots_left=left, spots_right=right, condition=c.name,
            meta={"scheduler": self.name, "planned_onset_s": tr.onset_go_s, "planned_end_s": tr.end_go_s},
        )
        tr.emitted_t_s = t
        tr.request = req
        return req

    def on_trial_end(self, state: TrialState) -> dict[str, Any]:
        """Close the trial: update the constraints' history; return the per-trial log."""
        tr = self._trial
        if tr is None or tr.trial != state.trial:
            return {"scheduler": self.name, "trial": state.trial, "condition": None,
                    "note": "no condition drawn for this trial"}
        c = self.conditions[tr.cond]
        aborted_before_light = state.early_lick and tr.request is None
        redraw = aborted_before_light and self.constraints.redraw_after_early_lick
        log: dict[str, Any] = {
            "scheduler": self.name, "seed": self.seed, "trial": tr.trial, "draw_index": tr.draw_index,
            "condition": c.name, "hemisphere": c.hemisphere, "perturbed": c.perturbed,
            "planned_onset_s": None if math.isinf(tr.onset_go_s) else tr.onset_go_s,
            "planned_end_s": None if math.isinf(tr.end_go_s) else tr.end_go_s,
            "requested": tr.request is not None, "request_t_s": None if math.isnan(tr.emitted_t_s)
            else tr.emitted_t_s, "power_mw_per_spot": c.power_mw_per_spot if c.perturbed else 0.0,
            "n_spots": c.n_spots if c.perturbed else 0, "early_lick": state.early_lick,
            "outcome": state.outcome, "skipped": tr.skipped, "redrawn": redraw,
        }
        if redraw:
            # the condition was never delivered: back into the block, drawn again at random later
            self._pool.append(tr.cond)
        else:
            # the trial counts towards the fraction / run constraints
            self._n_trials += 1
            if tr.request is not None:
                self._n_perturbed += 1
                self._run += 1
                self._last_site = c.site
            else:
                self._run = 0
        self._trial = None
        self._onset = math.inf
        return log

    def stats(self) -> dict[str, Any]:
        """Return the counts so far (for status and tests)."""
        return {"trials": self._n_trials, "perturbed": self._n_perturbed, "draws": self._draws}


def chen2021_conditions(power_mw_per_spot: float = 1.5, onset_s: float = -1.7,
                        duration_s: float = 0.8) -> list[Condition]:
    """Chen 2021 default block (Chen et al., Cell 184:3717, 2021): 75 % control, 25 % split over left/right/bilateral.

    Early delay −1.7…−0.9 s from the go cue (0.8 s incl. the 0.1-s ramp-down), 40-Hz sinusoid,
    1.5 mW per spot, 4 spots per hemisphere.
    """
    w = LightWindow(onset_s, duration_s, "go_cue")
    per = 0.25 / 3
    return [Condition("control", 0.75)] + [
        Condition(f"{h}_alm", per, h, w, power_mw_per_spot=power_mw_per_spot)
        for h in ("left", "right", "bilateral")
    ]


def chen2021_scheduler(seed: int, **kwargs: Any) -> BlockScheduler:
    """Build the default Chen 2021 early-delay block (see :func:`chen2021_conditions`)."""
    return BlockScheduler(chen2021_conditions(**kwargs), seed, Constraints(block_size=12), name="chen2021")
