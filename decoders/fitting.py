"""Calibration workflows behind ``rigd decoder fit`` and its report: fit from sessions, score over time.

Owns the offline side of calibration: joining recorded or simulated sessions into one trial
set, fitting a named decoder (:func:`fit_sessions`), and cross-validated accuracy for the
upcoming choice at every bin end through the trial (:func:`accuracy_over_time`,
:func:`cross_validate`). Folds are stratified by label and split by trial, so no trial is ever
scored by a decoder that saw it. The CLI wiring and file I/O of sessions live in ``rig/``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from decoders import registry
from decoders.base import Decoder, FitReport, TrialSet
from decoders.common import FloatArray, batch_values, bin_ends, concat_trials, cross_validate


def accuracy_over_time(decoder_name: str, trialset: TrialSet, folds: int = 5,
                       **opts: Any) -> tuple[FloatArray, FloatArray]:
    """Cross-validated accuracy for the upcoming choice at every bin end (times relative to go)."""
    cls = _cls(decoder_name)
    times, acc, _ = cross_validate(lambda: cls(**opts), trialset, folds=folds)
    return times, acc


def fit_sessions(trialsets: list[TrialSet], decoder: str, **opts: Any) -> tuple[Decoder, FitReport]:
    """Fit decoder ``decoder`` (a registry name) on the trials of all sessions joined.

    ``opts`` go to the decoder's constructor. The report's provenance lists every session.
    """
    if not trialsets:
        raise ValueError("fit_sessions needs at least one session")
    joined = trialsets[0]
    for ts in trialsets[1:]:
        joined = concat_trials(joined, ts)
    joined.provenance = {"sessions": [ts.provenance for ts in trialsets],
                         "trials": list(range(joined.n_trials))}
    dec = _cls(decoder)(**opts)
    report = dec.fit(joined)
    return dec, report


def score(decoder: Any, trials: TrialSet, t_range_s: tuple[float, float] = (-0.3, 0.0),
          label: str = "choice") -> float:
    """Accuracy of an already fitted decoder on ``trials``, averaged over bin ends in ``t_range_s``."""
    v = batch_values(decoder, trials)
    y = np.asarray(trials.choice if label == "choice" else trials.instructed)
    te = bin_ends(trials)
    m = (te > t_range_s[0] + 1e-9) & (te <= t_range_s[1] + 1e-9)
    keep = y != 0
    hits: npt.NDArray[Any] = np.sign(v[keep][:, m]) == y[keep][:, None]
    return float(hits.mean())


def _cls(name: str) -> Any:
    if name not in registry:
        raise ValueError(f"unknown decoder {name!r}; known: {sorted(registry)}")
    return registry[name]
