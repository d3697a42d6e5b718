"""Labelled trials from a recorded session: the bridge from ``wire.rlog`` to decoder fitting.

It owns one conversion: the spike-count frames of a session, cut per trial around the go cue and
re-binned, with each trial's labels (choice, instructed side, correct) from the rig's events and
rigd's trial summaries, as a :class:`decoders.base.TrialSet`. Used by ``rigd decoder fit`` and by
analyses of recorded sessions. It reads; it never writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from decoders.base import LEFT, RIGHT, TrialSet
from rig import wire
from rig.session import Session


def session_trialset(session_dir: Path | str, *, bin_s: float = 0.1, t_window_s: tuple[float, float] = (-3.5, 0.0),
                     control_only: bool = True) -> TrialSet:
    """Trials of a session with a lick after the go cue, binned at ``bin_s`` on the go-cue clock.

    Args:
        session_dir: a rigd session directory.
        bin_s: bin width of the returned counts.
        t_window_s: span around the go cue.
        control_only: keep only trials without light (decoders are calibrated on control trials).
    """
    s = Session.open(session_dir)
    _, t_rig, counts = s.counts()
    if counts.shape[0] == 0:
        raise ValueError("the session has no spike-count frames")
    order = np.argsort(t_rig, kind="stable")
    t_rig, counts = t_rig[order], counts[order]
    desc = s.rig_description()
    n_units = counts.shape[1]
    n_left = int(desc.get("units_left", n_units // 2))
    frame_s = float(desc.get("bin_s", np.median(np.diff(t_rig)) * 1e-9 if len(t_rig) > 1 else 1e-3))
    hemisphere = np.where(np.arange(n_units) < n_left, LEFT, RIGHT).astype(np.int8)

    starts: dict[int, dict[str, Any]] = {}
    outcome: dict[int, dict[str, Any]] = {}
    for e in s.events():
        if e["event"] == "trial_start":
            starts[int(e["trial"])] = e
        elif e["event"] == "outcome":
            outcome[int(e["trial"])] = e
    lit = {int(t["trial"]) for t in s.trials() if t.get("light")}

    n_bins = round((t_window_s[1] - t_window_s[0]) / bin_s)
    rows, choice, instructed, correct, trial_ids = [], [], [], [], []
    for k in sorted(starts):
        o = outcome.get(k)
        if o is None or o.get("outcome") not in ("hit", "error") or (control_only and k in lit):
            continue
        t_go = int(starts[k].get("t_go_ns", 0))
        if not t_go:
            continue
        lo = t_go + int(t_window_s[0] * 1e9)
        hi = t_go + int(t_window_s[1] * 1e9)
        i0, i1 = np.searchsorted(t_rig, [lo, hi], side="right")
        if i1 - i0 < 0.9 * (hi - lo) * 1e-9 / frame_s:
            continue  # incomplete trial (dropped frames or session edge)
        centre = (t_rig[i0:i1] - lo) * 1e-9 - 0.5 * frame_s
        b = np.clip((centre // bin_s).astype(np.int64), 0, n_bins - 1)
        binned = np.zeros((n_bins, n_units), dtype=np.uint16)
        np.add.at(binned, b, counts[i0:i1].astype(np.uint16))
        rows.append(binned)
        choice.append(wire.side_sign(o.get("choice")))
        instructed.append(wire.side_sign(starts[k].get("instructed")))
        correct.append(o.get("outcome") == "hit")
        trial_ids.append(k)
    if not rows:
        raise ValueError("no complete trials with a lick after the go cue in the session")
    return TrialSet(np.stack(rows), bin_s, t_window_s[0], np.asarray(choice, np.int8),
                    np.asarray(instructed, np.int8), np.asarray(correct, np.bool_), hemisphere,
                    {"sessions": [s.directory.name], "trials": trial_ids, "control_only": control_only,
                     "day": s.manifest.get("config", {}).get("day"),
                     "seed": s.manifest.get("config", {}).get("seed")})
