"""Dry runs of the shipped protocols on the simulated mouse (science.md §5.A, §7.3).

The short test always runs (~10 s). The done-when statistics need 400–600 trials each (≈ 1 min per
run on this machine) and run when RIGD_FULL_DRY_RUN=1.
"""

import os
from pathlib import Path

import pytest

from rig.dry_run import dry_run, wilson
from sim.config import MouseConfig

ROOT = Path(__file__).resolve().parents[1]
CHEN = ROOT / "protocols" / "chen2021_early_delay.toml"
STATE = ROOT / "protocols" / "state_triggered.toml"
FULL = pytest.mark.skipif(os.environ.get("RIGD_FULL_DRY_RUN") != "1",
                          reason="long statistical dry run: set RIGD_FULL_DRY_RUN=1")


def _cfg(**kw: float) -> MouseConfig:
    return MouseConfig(bin_s=0.005, model_dt_s=0.005, iti_s=(0.5, 1.0), **kw)


def test_wilson_interval_brackets_the_proportion() -> None:
    lo, hi = wilson(81, 100)
    assert lo < 0.81 < hi and hi - lo == pytest.approx(0.155, abs=0.01)


def test_short_chen_dry_run_lights_the_mouse_through_the_interlock() -> None:
    r = dry_run(CHEN, 48, seed=4)
    assert r.n_trials == 48 and sum(r.counts.values()) == 48
    assert not r.refusals and r.alarms == 0
    lit = [t for t in r.trials if t["condition"] != "control" and t["outcome"] != "early_lick"]
    # every perturbed (non-aborted) trial reached the mouse as the right light condition
    assert lit and all(t["light"] == t["condition"].removesuffix("_alm") for t in lit)
    assert all(t["light"] == "none" for t in r.trials if t["condition"] == "control")
    # dose: 1.5 mW × 4 spots × 0.8 s = 4.8 mJ per lit hemisphere per trial (±1 frame of 5 ms)
    n_left = sum(t["light"] in ("left", "bilateral") for t in r.trials)
    assert r.dose_j["left"] == pytest.approx(n_left * 0.0048, rel=0.01)
    assert "| control |" in r.report()


@FULL
def test_chen2021_bilateral_near_chance_unilateral_near_control() -> None:
    r = dry_run(CHEN, 400, seed=1, config=_cfg())
    p = r.performance
    print(r.report())
    # ≈ 33 trials per perturbed condition: binomial SE ≈ 0.07–0.09; control n ≈ 290, SE 0.023
    assert p["control"]["correct"] == pytest.approx(0.81, abs=0.07)
    assert p["bilateral_alm"]["correct"] < 0.70  # science.md §5.A: 0.51 (3 SE above at n ≈ 33)
    for side in ("left_alm", "right_alm"):  # §5.A: 0.81 at μ = 0.6 (3 SE below at n ≈ 33)
        assert p[side]["correct"] > 0.60


@FULL
def test_chen2021_asymmetric_mouse_shows_deficit_when_modular_side_is_silenced() -> None:
    # μ = (0.7, 0.35): silencing the left hemisphere leaves the driven right one (μ_R = 0.35)
    # without selectivity → 0.71 vs 0.81 for right PI (§5.A table)
    r = dry_run(CHEN, 400, seed=2, config=_cfg(mu_left=0.7, mu_right=0.35))
    p = r.performance
    print(r.report())
    assert p["left_alm"]["correct"] < p["right_alm"]["correct"]
    assert p["bilateral_alm"]["correct"] < 0.70


@FULL
def test_state_triggered_effect_is_larger_in_weak_state() -> None:
    r = dry_run(STATE, 600, seed=3, estimator="latent")
    print(r.report())
    se = r.state_effect
    assert se and se["effect_weak"] > se["effect_strong"]
