"""Online calibration for the live loop: the object the service steps on every frame.

Owns the life of a decoder inside a session: collecting each trial's counts aligned to the go
cue into preallocated buffers, pooling labelled control trials, fitting after ``n_fit_trials``,
then either freezing (``mode="freeze"``) or refitting every ``refit_every_trials`` on the last
``window_trials`` (``mode="adaptive"``), and reporting what it serves (:meth:`OnlineDecoder.status`).

Threading contract (for ``rig/``): ``step``, ``on_trial_start``, ``on_trial_end`` and ``swap``
run on the hot-path thread. A fit takes tens of ms (CD) to seconds (GRU), so with
``inline_fit=False`` ``on_trial_end`` only returns True when a fit is due; the service then
calls :meth:`OnlineDecoder.prepare_fit` (cheap: snapshots the pool) and runs the returned
callable in a worker thread or process; the callable builds a new decoder from the snapshot and
returns a :class:`FitOutcome`, which the service hands back with :meth:`OnlineDecoder.swap`
between two frames (rigd does it at the next trial start, so one decoder serves a whole trial).
Until then the old decoder keeps serving. With ``inline_fit=True``
(default; tests, offline replays) the fit runs inside ``on_trial_end``.

Drift alignment across days: pass a factory whose decoder carries yesterday's fit as a prior
(:func:`aligned_factory`; the CD is shrunk toward the old axis, see docs/decoders.md) and fit on
the first trials of the new day, then keep adapting. Pure computation: no clocks, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from decoders import kernels
from decoders.base import Decoder, Estimate, FitReport, TrialSet
from decoders.coding_direction import CodingDirection

MIN_BINS_FILLED = 0.9  #: a trial with fewer of its window's bins received is not used for fitting
ONLINE_SCORE_TRIALS = 50  #: online accuracy in status is over the last this-many scored trials


@dataclass
class FitOutcome:
    """What a background fit returns: the new decoder, its report, or why it failed."""

    decoder: Decoder | None
    report: FitReport | None
    error: str = ""
    n_trials: int = 0


def aligned_factory(previous: Decoder, prior_trials: float = 40.0, *, days_apart: float | None = None,
                    tau_drift_days: float | None = None, **opts: Any) -> Callable[[], Decoder]:
    """Return a factory for a new day's CD decoder shrunk toward ``previous`` (same units, same order).

    ``previous`` must be a fitted :class:`~decoders.coding_direction.CodingDirection` (or
    ``ChoiceMode``); ``opts`` override its parameters. With ``days_apart`` and
    ``tau_drift_days`` the prior's weight decays as the tuning correlation of the simulator's drift (docs/simulator.md),
    ``prior_trials · exp(−Δ/τ_D)``: an old axis from weeks ago barely counts.
    """
    if days_apart is not None and tau_drift_days is not None:
        prior_trials *= math.exp(-days_apart / tau_drift_days)
    if not isinstance(previous, CodingDirection):
        raise TypeError(f"alignment needs a coding-direction decoder, got {type(previous).__name__}")
    params = {**previous.params(), **opts}
    cls = type(previous)

    def make() -> Decoder:
        dec: Decoder = cls(**params, prior=previous, prior_trials=prior_trials)
        return dec

    return make


class OnlineDecoder:
    """Calibrates a decoder on the session's own control trials and steps it every frame.

    Args:
        factory: builds a fresh, unfitted decoder (e.g. ``CodingDirection`` or
            ``lambda: CodingDirection(window_s=0.4)``).
        n_units: units per frame.
        hemisphere: (n_units,) LEFT/RIGHT per unit.
        bin_s: width of one live frame (s).
        fit_bin_s: bin width of the collected trials the decoder is fitted on (default
            ``bin_s``; a whole multiple of it). With 1-ms frames use e.g. 0.1 s: frames are summed
            into fit bins, the pool stays small, and the decoder is then stepped per frame.
        n_fit_trials: labelled trials in the pool before the first fit (a failed fit, e.g. too
            few trials of one side, is retried after every further pooled trial).
        mode: ``"freeze"`` (fit once, then stop pooling) or ``"adaptive"`` (refit on the recent
            window).
        refit_every_trials: adaptive mode: new pool trials between refits.
        window_trials: adaptive mode: the refit uses the last this-many pool trials.
        t_window_s: trial time span collected per trial, relative to the go cue.
        inline_fit: fit inside ``on_trial_end`` (True) or leave it to the service (False).
        provenance: session information copied into every fit's provenance (session id, day…).
        exclude_units: units whose counts are zeroed before pooling and decoding (e.g. the
            light-excited fast-spiking units of the heartbeat's ``fs_units``; docs/decoders.md).

    """

    def __init__(self, factory: Callable[[], Decoder], *, n_units: int,
                 hemisphere: npt.NDArray[Any], bin_s: float, n_fit_trials: int = 40,
                 mode: Literal["freeze", "adaptive"] = "adaptive",
                 refit_every_trials: int = 20, window_trials: int = 120,
                 t_window_s: tuple[float, float] = (-3.5, 0.0), inline_fit: bool = True,
                 provenance: dict[str, Any] | None = None, fit_bin_s: float | None = None,
                 exclude_units: Sequence[int] = ()) -> None:
        if mode not in ("freeze", "adaptive"):
            raise ValueError(f"mode must be 'freeze' or 'adaptive', got {mode!r}")
        if n_fit_trials < 10:
            raise ValueError(f"n_fit_trials={n_fit_trials}: need at least 10 trials to fit and "
                             "cross-validate")
        if not bin_s > 0:
            raise ValueError(f"bin_s must be positive, got {bin_s}")
        hem = np.asarray(hemisphere, dtype=np.int8)
        if hem.shape != (n_units,):
            raise ValueError(f"hemisphere has shape {hem.shape}, expected ({n_units},)")
        self.factory = factory
        self.n_units = int(n_units)
        self.hemisphere = hem
        self.bin_s = float(bin_s)
        self.fit_bin_s = self.bin_s if fit_bin_s is None else float(fit_bin_s)
        k = round(self.fit_bin_s / self.bin_s)
        if k < 1 or abs(k * self.bin_s - self.fit_bin_s) > 1e-6 * self.fit_bin_s:
            raise ValueError(f"fit_bin_s={self.fit_bin_s} s must be a whole multiple of bin_s={self.bin_s} s")
        self._frames_per_bin = k
        bad = [u for u in exclude_units if not 0 <= int(u) < n_units]
        if bad:
            raise ValueError(f"exclude_units {bad} out of range 0..{n_units - 1}")
        self.exclude_units = sorted({int(u) for u in exclude_units})
        self._keep = np.ones(n_units, dtype=np.uint8)
        self._keep[self.exclude_units] = 0
        self._masked = np.zeros(n_units, dtype=np.uint16)
        self.n_fit_trials = int(n_fit_trials)
        self.mode = mode
        self.refit_every_trials = int(refit_every_trials)
        self.window_trials = int(window_trials)
        self.t_window_s = (float(t_window_s[0]), float(t_window_s[1]))
        self.inline_fit = inline_fit
        self.session_provenance = dict(provenance or {})
        self.n_bins = round((self.t_window_s[1] - self.t_window_s[0]) / self.fit_bin_s)
        cap = max(self.window_trials, self.n_fit_trials)
        self._cap = cap
        self._buf = np.zeros((self.n_bins, self.n_units), dtype=np.uint16)
        self._got = np.zeros(self.n_bins, dtype=np.int64)  # frames received per fit bin
        # the calibration pool, committed now: written through once so its pages are resident from the
        # start (np.zeros maps them lazily: RSS would otherwise creep up for window_trials trials, and a
        # machine short of memory would fail mid-session instead of here, at the rig's description)
        self._pool = np.empty((cap, self.n_bins, self.n_units), dtype=np.uint16)
        self._pool.fill(0)
        self._pool_choice = np.zeros(cap, dtype=np.int8)
        self._pool_instructed = np.zeros(cap, dtype=np.int8)
        self._pool_correct = np.zeros(cap, dtype=np.bool_)
        self._pool_trial = np.zeros(cap, dtype=np.int64)
        self._pool_next = 0  # ring write position
        self._pool_n = 0
        self._own = Estimate()
        self._dec: Decoder | None = None
        self._trial = -1
        self._in_trial = False
        self._last_value = math.nan  # decoder value at the last frame inside the window this trial
        self.n_fits = 0
        self.last_report: FitReport | None = None
        self.last_error = ""
        self._fit_pending = False
        self._fit_in_flight = False
        self._new_since_fit = 0
        self._trials_since_fit = 0
        self._frames_since_fit = 0
        self._hits = np.zeros(ONLINE_SCORE_TRIALS, dtype=np.bool_)
        self._online_scored = 0
        self.counters = {"trials_incomplete": 0, "trials_unlabelled": 0, "frames_outside_window": 0,
                         "fits_failed": 0}

    # ----- properties ---------------------------------------------------------------------
    @property
    def decoder(self) -> Decoder | None:
        """The decoder currently serving (None before the first fit)."""
        return self._dec

    @property
    def ready(self) -> bool:
        """True once a fitted decoder serves."""
        return self._dec is not None

    @property
    def fit_due(self) -> bool:
        """A fit is due and none is in flight."""
        return self._fit_pending and not self._fit_in_flight

    # ----- per trial ----------------------------------------------------------------------
    def on_trial_start(self, trial: int) -> None:
        """Clear the trial buffer and the decoder's window."""
        self._trial = int(trial)
        self._in_trial = True
        self._buf[:] = 0
        self._got[:] = 0
        self._last_value = math.nan
        if self._dec is not None:
            self._dec.reset()

    def step(self, counts: npt.NDArray[Any], seq: int, t_s: float) -> Estimate:
        """One frame: store it in the trial buffer (if inside ``t_window_s``) and step the decoder."""
        self._frames_since_fit += 1
        if self.exclude_units:
            counts = np.multiply(counts, self._keep, out=self._masked, casting="unsafe")
        if self._in_trial and not math.isnan(t_s):
            b = math.floor((t_s - 0.5 * self.bin_s - self.t_window_s[0]) / self.fit_bin_s)
            if 0 <= b < self.n_bins:
                kernels.accumulate_frame(self._buf, self._got, b, counts)
            else:
                self.counters["frames_outside_window"] += 1
        dec = self._dec
        if dec is None:
            e = self._own
            e.seq, e.t_s = seq, t_s
            return e
        e = dec.step(counts, seq, t_s)
        if self._in_trial and t_s <= self.t_window_s[1] + 1e-9:
            self._last_value = e.value
        return e

    def on_trial_end(self, trial: int, choice: int, instructed: int, correct: bool,
                     use_for_fit: bool) -> bool:
        """Pool the trial if it is a complete, labelled control trial; maybe fit.

        Returns True when a fit is due and left to the service (``inline_fit=False``): call
        :meth:`prepare_fit`, run its callable off the hot path, then :meth:`swap`.
        """
        self._in_trial = False
        self._trials_since_fit += 1
        if self._dec is not None and choice != 0 and not math.isnan(self._last_value):
            hit = np.sign(self._last_value) == np.sign(choice)
            self._hits[self._online_scored % ONLINE_SCORE_TRIALS] = hit
            self._online_scored += 1
        if not use_for_fit:
            return False
        if choice == 0:
            self.counters["trials_unlabelled"] += 1
            return False
        if self._got.sum() < MIN_BINS_FILLED * self.n_bins * self._frames_per_bin:
            self.counters["trials_incomplete"] += 1
            return False
        if self.mode == "freeze" and self._dec is not None:
            return False  # frozen: the pool is no longer needed
        i = self._pool_next
        self._pool[i] = self._buf
        self._pool_choice[i] = np.sign(choice)
        self._pool_instructed[i] = np.sign(instructed)
        self._pool_correct[i] = bool(correct)
        self._pool_trial[i] = int(trial)
        self._pool_next = (i + 1) % self._cap
        self._pool_n = min(self._pool_n + 1, self._cap)
        self._new_since_fit += 1
        if self._dec is None:
            self._fit_pending = self._pool_n >= self.n_fit_trials
        elif self.mode == "adaptive":
            self._fit_pending = self._new_since_fit >= self.refit_every_trials
        if not self._fit_pending or self._fit_in_flight:
            return False
        if self.inline_fit:
            self.swap(self.prepare_fit()())
            return False
        return True

    # ----- fitting off the hot path -------------------------------------------------------
    def snapshot(self) -> TrialSet:
        """Copy the pool's last ``window_trials`` trials, oldest first."""
        n = self._pool_n
        order = (np.arange(self._pool_next - n, self._pool_next) % self._cap) if n == self._cap \
            else np.arange(n)
        order = order[-self.window_trials:]
        prov = {**self.session_provenance, "trials": self._pool_trial[order].tolist(),
                "online": True, "mode": self.mode, "excluded_units": list(self.exclude_units)}
        return TrialSet(self._pool[order].copy(), self.fit_bin_s, self.t_window_s[0],
                        self._pool_choice[order].copy(), self._pool_instructed[order].copy(),
                        self._pool_correct[order].copy(), self.hemisphere.copy(), prov)

    def prepare_fit(self) -> Callable[[], FitOutcome]:
        """Snapshot the pool now; the returned callable fits a new decoder (run it off the hot path)."""
        trials = self.snapshot()
        self._fit_in_flight = True
        self._fit_pending = False
        self._new_since_fit = 0
        factory = self.factory

        def fit() -> FitOutcome:
            dec = factory()
            try:
                report = dec.fit(trials)
            except Exception as exc:  # too few trials of a side, degenerate data or a bug in a
                # plug-in decoder: report it and keep serving the old decoder
                return FitOutcome(None, None, f"{type(exc).__name__}: {exc}", trials.n_trials)
            return FitOutcome(dec, report, "", trials.n_trials)

        return fit

    def swap(self, outcome: FitOutcome | Decoder) -> None:
        """Install a fitted decoder (between frames). A failed outcome keeps the current one."""
        self._fit_in_flight = False
        if isinstance(outcome, FitOutcome):
            if outcome.decoder is None:
                self.last_error = outcome.error
                self.counters["fits_failed"] += 1
                return
            dec, report = outcome.decoder, outcome.report
        else:  # a decoder fitted elsewhere (e.g. decoders.load of yesterday's file)
            dec, report = outcome, getattr(outcome, "last_report", None)
        set_frame = getattr(dec, "set_frame_s", None)
        if set_frame is not None:
            set_frame(self.bin_s)
        dec.reset()
        self._dec = dec
        self.n_fits += 1
        self.last_report = report
        self.last_error = ""
        self._trials_since_fit = 0
        self._frames_since_fit = 0

    # ----- status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Report what rigd shows and records: decoder, readiness, fits, quality, age, provenance."""
        rep = self.last_report
        prov: dict[str, Any] = rep.provenance if rep is not None else dict(getattr(self._dec, "provenance", {}))
        saved = prov.get("fit_report") or {}  # a loaded decoder carries its fit's report here
        return {
            "decoder": getattr(self._dec, "name", None) or getattr(self.factory, "name", None),
            "ready": self.ready,
            "mode": self.mode,
            "n_fits": self.n_fits,
            "fit_accuracy": rep.accuracy if rep is not None else saved.get("accuracy"),
            "fit_n_trials": rep.n_trials if rep is not None else saved.get("n_trials"),
            # sign of the value at the last frame of the window (the go cue) vs the choice, over the
            # last ONLINE_SCORE_TRIALS trials the decoder served (across refits)
            "online_accuracy": float(self._hits[:min(self._online_scored, ONLINE_SCORE_TRIALS)].mean())
            if self._online_scored else None,
            "online_n_scored": min(self._online_scored, ONLINE_SCORE_TRIALS),
            "age_trials": self._trials_since_fit if self.ready else None,
            "age_s": self._frames_since_fit * self.bin_s if self.ready else None,
            "pool_trials": self._pool_n,
            "n_fit_trials": self.n_fit_trials,  #: usable control trials the first fit waits for
            "fit_pending": self._fit_pending,
            "fit_in_flight": self._fit_in_flight,
            "last_error": self.last_error,
            "provenance": _compact(prov),
            "counters": dict(self.counters),
        }


def _compact(prov: dict[str, Any]) -> dict[str, Any]:
    """Keep session, day and seed plus the span of trials a fit used (status stays small)."""
    out: dict[str, Any] = {k: prov[k] for k in ("session", "day", "seed") if k in prov}
    trials = prov.get("trials") or []
    if trials:
        out.update({"first_trial": int(min(trials)), "last_trial": int(max(trials)),
                    "n_trials": len(trials)})
    return out
