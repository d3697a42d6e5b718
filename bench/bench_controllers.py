"""Per-frame decision cost of the controllers (targets: ≤ 10 µs schedulers, ≤ 30 µs closed-loop policy).

Drives 1-ms frames of synthetic trials (presample 0.5 s, sample 1.3 s, delay 1.7 s, response 1 s)
through TrialTracker.on_frame and each controller's step, timing every call with perf_counter_ns;
prints a markdown table with the median, p99 and mean per frame and the ratio to a floor (an empty
method call measured in the same run). Usage: .venv/bin/python bench/bench_controllers.py [n_trials]
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from controllers.base import Controller, LightRequest, TrialState
from controllers.policies import ModularityProbe, StateTriggered, ThresholdTrigger
from controllers.schedulers import chen2021_scheduler
from controllers.trial_state import TrialTracker
from decoders.base import Estimate

MS = 1_000_000


class _Floor:
    def step(self, state: TrialState, estimate: Estimate, t_rig_ns: int) -> LightRequest | None:
        return None

    def on_trial_end(self, state: TrialState) -> dict[str, Any]:
        return {}


def bench(ctrl: Controller | None, n_trials: int, tracker_only: bool = False) -> np.ndarray:
    tr, est = TrialTracker(), Estimate(ready=True, confidence=0.5)
    rng = np.random.default_rng(0)
    times = []
    t = 0
    pc = time.perf_counter_ns
    for k in range(n_trials):
        t_go = t + 3500 * MS
        tr.on_event({"event": "trial_start", "trial": k, "instructed": "right" if k % 2 else "left",
                     "delay_s": 1.7, "t_sample_ns": t + 500 * MS, "t_delay_ns": t + 1800 * MS,
                     "t_go_ns": t_go}, t)
        cd = float(rng.lognormal())
        for tf in range(t, t_go + 1000 * MS, MS):
            est.left = est.right = cd
            est.confidence = 0.9 if tf > t_go - 800 * MS else 0.5
            if tracker_only:
                a = pc()
                st = tr.on_frame(tf)
                times.append(pc() - a)
            else:
                st = tr.on_frame(tf)
                assert ctrl is not None
                a = pc()
                ctrl.step(st, est, tf)
                times.append(pc() - a)
        tr.on_event({"event": "outcome", "trial": k, "outcome": "hit", "choice": "right"}, t_go + 1000 * MS)
        if ctrl is not None:
            ctrl.on_trial_end(tr.state)
        tr.on_event({"event": "trial_end", "trial": k}, t_go + 1000 * MS)
        t = t_go + 2000 * MS
    return np.array(times) / 1e3  # µs


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    rows = [("floor (empty step)", _Floor(), False, None),
            ("TrialTracker.on_frame", None, True, 10.0),
            ("Chen 2021 block scheduler", chen2021_scheduler(seed=1), False, 10.0),
            ("state-triggered policy", StateTriggered(onset_s=-1.2, min_history=5, seed=1), False,
             30.0),
            ("threshold trigger", ThresholdTrigger(armed_fraction=0.25, seed=1), False, 30.0),
            ("modularity probe", ModularityProbe(seed=1), False, 30.0)]
    floor = None
    print(f"Per-frame decision cost, 1-ms frames, {n} trials × 4,500 frames; Python "
          f"{sys.version.split()[0]}\n")
    print("| stage | median µs | p99 µs | mean µs | max µs | mean / floor | target |")
    print("|---|---|---|---|---|---|---|")
    for name, ctrl, tracker_only, target in rows:
        us = bench(ctrl, n, tracker_only)
        if floor is None:
            floor = float(np.mean(us))
        tgt = f"≤ {target:g} µs ({'met' if np.percentile(us, 99) <= target else 'MISSED'} at p99)" \
            if target else "—"
        print(f"| {name} | {np.median(us):.2f} | {np.percentile(us, 99):.2f} | {np.mean(us):.2f} | "
              f"{np.max(us):.1f} | {np.mean(us) / floor:.1f} | {tgt} |")


if __name__ == "__main__":
    main()
