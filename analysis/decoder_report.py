"""Accuracy-over-time report for ``rigd decoder report`` and docs/decoders.md.

Owns the table of cross-validated accuracy for the upcoming choice at chosen times through the
trial, one row per decoder (:func:`accuracy_table`), and a small entry point that runs it on a
simulated session: ``python -m analysis.decoder_report --trials 400 --seed 1``. The session loading
for recorded sessions lives in ``rig/``; this module only takes a :class:`TrialSet`.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from decoders.base import TrialSet
from decoders.common import cross_validate
from decoders.fitting import _cls

DEFAULT_TIMES_S = (-3.0, -2.4, -1.7, -1.2, -0.6, -0.3, 0.0)  #: bin ends reported (s from go)
DEFAULT_DECODERS: dict[str, dict[str, Any]] = {
    "cd": {}, "cd (400 ms)": {"window_s": 0.4}, "cd_li": {}, "logistic": {}, "lda": {},
    "kalman": {}, "gru": {"cv_folds": 0},
}


def accuracy_table(trials: TrialSet, decoders: dict[str, dict[str, Any]] | None = None,
                   times_s: Sequence[float] = DEFAULT_TIMES_S, folds: int = 5) -> str:
    """Markdown table: rows = decoders (name → constructor options), columns = bin-end times."""
    decoders = DEFAULT_DECODERS if decoders is None else decoders
    lines = ["| decoder | " + " | ".join(f"{t:+.1f} s" for t in times_s) + " | last 300 ms |",
             "|---|" + "---|" * (len(times_s) + 1)]
    for label, opts in decoders.items():
        cls = _cls(label.split(" ")[0])
        te, acc, _ = cross_validate(functools.partial(cls, **opts), trials, folds=folds)
        cells = [f"{acc[int(np.argmin(np.abs(te - t)))]:.2f}" for t in times_s]
        late = acc[(te > -0.3 + 1e-9) & (te <= 1e-9)].mean()
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {late:.2f} |")
    return "\n".join(lines)


def main() -> None:
    """Run the report on one simulated session (sim.offline)."""
    ap = argparse.ArgumentParser(description="cross-validated accuracy over time on a simulated session")
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--units", type=int, default=40, help="units per hemisphere")
    ap.add_argument("--day", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    from sim.offline import generate_trialset

    ts = generate_trialset(args.trials, args.seed, units_per_hemisphere=args.units, day=args.day)
    print(f"sim.offline.generate_trialset({args.trials}, seed={args.seed}, "
          f"units_per_hemisphere={args.units}, day={args.day}); {args.folds}-fold CV, choice labels\n")
    print(accuracy_table(ts, folds=args.folds))


if __name__ == "__main__":
    main()
