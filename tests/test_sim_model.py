"""The reduced bilateral ALM model reproduces the outcome table and behaviour readout of docs/simulator.md.

Conventions are those of docs/simulator.md (all trials labelled by instructed side, ramp inside the
light window, lapse 0.02, Euler–Maruyama at dt = 5 ms). Every condition of one mouse is run with
common random numbers (``run_conditions``), so differences between conditions are the light's
alone. Tolerances: about 3 binomial SE plus the model's known bias (≤ 0.02). The sim's
own known bias: the light spills ε ≈ 0.014 into the *other* hemisphere's ALM at 1.5 mW (Gaussian
spread across the 3-mm gap), which the table's model did not have; it lowers M by ≈ 0.015.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from analysis import neural as A
from sim.config import MouseConfig
from sim.offline import LatentRun, run_conditions


def _tol(p: float, n: int, bias: float = 0.02) -> float:
    """3 binomial SE of a proportion p measured on n trials, plus the allowed model bias."""
    return 3.0 * math.sqrt(p * (1.0 - p) / n) + bias


def _sel(run: LatentRun) -> tuple[np.ndarray, np.ndarray]:
    return A.selectivity(run.x_left, run.instructed), A.selectivity(run.x_right, run.instructed)


@pytest.mark.slow
def test_early_delay_photoinhibition_table_at_mu_06() -> None:
    # n = 20,000 per condition: binomial SE 0.003 (control) / 0.0035 (bilateral); t90 needs >= 10,000
    # trials (±0.03 at 3,000 → ≈ ±0.012 at 20,000).
    n = 20_000
    runs = run_conditions(n, 101, config=MouseConfig(mu_left=0.6, mu_right=0.6))
    acc = {k: v.accuracy for k, v in runs.items()}
    assert acc["control"] == pytest.approx(0.81, abs=_tol(0.81, n))
    assert acc["bilateral"] == pytest.approx(0.51, abs=_tol(0.51, n))
    # unilateral early-delay PI leaves behaviour at control level (table: 0.81 / 0.81)
    for side in ("left", "right"):
        assert acc[side] == pytest.approx(0.81, abs=_tol(0.81, n))
        assert abs(acc[side] - acc["control"]) <= 0.02  # paired (common random numbers)
    sel = {k: _sel(v) for k, v in runs.items()}
    t = runs["control"].t_s
    t90 = A.t90_recovery_s(sel["left"][0], sel["control"][0], t)
    # table: 0.18 s; tolerance 3 × 0.012 (noise at n = 20,000) + 0.02 (bias: spill-over, grid of 5 ms)
    assert t90 is not None and t90 == pytest.approx(0.18, abs=0.056)
    t90_r = A.t90_recovery_s(sel["right"][1], sel["control"][1], t)
    assert t90_r is not None and t90_r == pytest.approx(0.18, abs=0.056)
    # bilateral: neither hemisphere recovers (Li 2016)
    assert A.t90_recovery_s(sel["bilateral"][0], sel["control"][0], t) is None


@pytest.mark.slow
@pytest.mark.parametrize(("mu", "m_table", "acc_uni"),
                         [(0.9, 0.99, 0.81), (0.6, 0.89, 0.81), (0.3, 0.58, 0.74)])
def test_modularity_continuum(mu: float, m_table: float, acc_uni: float) -> None:
    # n = 10,000 per condition. With common random numbers M's SE is ≈ 0.003 (seed-to-seed spread
    # measured 0.002); tolerance 0.03 = 3 SE + 0.02 bias (the spill-over lowers M by ≈ 0.015).
    n = 10_000
    runs = run_conditions(n, 202, config=MouseConfig(mu_left=mu, mu_right=mu),
                          conditions=("control", "left", "right"))
    sel = {k: _sel(v) for k, v in runs.items()}
    t = runs["control"].t_s
    m_left = A.modularity(sel["right"][0], sel["control"][0], t)
    m_right = A.modularity(sel["left"][1], sel["control"][1], t)
    assert m_left == pytest.approx(m_table, abs=0.03)
    assert m_right == pytest.approx(m_table, abs=0.03)
    for side in ("left", "right"):
        assert runs[side].accuracy == pytest.approx(acc_uni, abs=_tol(acc_uni, n))
    if mu == 0.3:  # table: "no full recovery"
        assert A.t90_recovery_s(sel["left"][0], sel["control"][0], t) is None


@pytest.mark.slow
def test_asymmetric_mouse_loses_accuracy_when_modular_side_is_silenced() -> None:
    # μ = (0.7, 0.35), table row: M 0.94 / 0.60; L-PI 0.71, R-PI 0.81, bilateral 0.50; L: no recovery.
    n = 10_000
    runs = run_conditions(n, 303, config=MouseConfig(mu_left=0.7, mu_right=0.35))
    acc = {k: v.accuracy for k, v in runs.items()}
    assert acc["control"] == pytest.approx(0.81, abs=_tol(0.81, n))
    assert acc["left"] == pytest.approx(0.71, abs=_tol(0.71, n))
    assert acc["right"] == pytest.approx(0.81, abs=_tol(0.81, n))
    assert acc["bilateral"] == pytest.approx(0.50, abs=_tol(0.50, n))
    assert acc["control"] - acc["left"] > 0.07  # the driven side needs its modular partner
    sel = {k: _sel(v) for k, v in runs.items()}
    t = runs["control"].t_s
    assert A.modularity(sel["right"][0], sel["control"][0], t) == pytest.approx(0.94, abs=0.03)
    assert A.modularity(sel["left"][1], sel["control"][1], t) == pytest.approx(0.60, abs=0.03)
    assert A.t90_recovery_s(sel["left"][0], sel["control"][0], t) is None


@pytest.mark.slow
def test_callosotomy_silenced_side_does_not_recover() -> None:
    # μ = 0.6, J = 0: outcome table "accuracy ≈ 0.65–0.67 after unilateral PI (0.666–0.671 at n = 20,000)";
    # the other hemisphere keeps its selectivity (M = 1.00), the silenced one stays ≈ 0.
    n = 20_000
    runs = run_conditions(n, 404, config=MouseConfig(callosotomy=True),
                          conditions=("control", "left"))
    assert runs["control"].accuracy == pytest.approx(0.81, abs=_tol(0.81, n))
    assert runs["left"].accuracy == pytest.approx(0.668, abs=_tol(0.668, n))
    sel = {k: _sel(v) for k, v in runs.items()}
    t = runs["control"].t_s
    assert A.modularity(sel["left"][1], sel["control"][1], t) == pytest.approx(1.0, abs=0.03)
    late_silenced = A.window_mean(sel["left"][0], t, (-0.3, 0.001))
    late_control = A.window_mean(sel["control"][0], t, (-0.3, 0.001))
    assert late_silenced < 0.1 * late_control  # "selectivity ≈ 0 in the last 300 ms"
    assert A.t90_recovery_s(sel["left"][0], sel["control"][0], t) is None


@pytest.mark.slow
def test_full_delay_unilateral_photoinhibition_biases_licks_ipsilaterally() -> None:
    # behaviour readout at μ = 0.6, light −1.7…0 s: left PI → lick-right trials 0.40, lick-left 0.90; right PI
    # mirrored. n = 10,000 per condition, ≈ 5,000 per instructed side: SE ≤ 0.007.
    n = 10_000
    runs = run_conditions(n, 505, t_on_s=-1.7, t_off_s=0.0, conditions=("left", "right"))
    for side, contra, ipsi in (("left", 1, -1), ("right", -1, 1)):
        r = runs[side]
        n_c = int(np.sum(r.instructed == contra))
        n_i = int(np.sum(r.instructed == ipsi))
        p_contra = float(np.mean(r.correct[r.instructed == contra]))
        p_ipsi = float(np.mean(r.correct[r.instructed == ipsi]))
        assert p_contra == pytest.approx(0.40, abs=_tol(0.40, n_c)), side
        assert p_ipsi == pytest.approx(0.90, abs=_tol(0.90, n_i)), side


def test_twenty_thousand_trials_take_seconds() -> None:
    t = time.perf_counter()
    run_conditions(20_000, 1, conditions=("control",), keep_trajectories=False)
    assert time.perf_counter() - t < 10.0  # ≈ 1 s on one core; generous for a shared 2-core box
