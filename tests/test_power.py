"""Protocol power analysis (analysis/power.py, ``rigd protocol power``; docs/power.md).

* Planted effects are recovered: a forced-error rate q on left-lit trials gives an effect of q × p (p the
  condition's fraction correct without it), found by the oracle and covered by ≈ 95 % of the
  experiments' CIs; a state-dependent light efficacy (light only in weak-state trials) removes the
  strong-state effects and keeps the weak-state ones.
* No planted effect, no effect: a sham condition (no light) is declared significant in ≈ α of 200
  simulated experiments (within the binomial 99 % band around 0.05).
* Dask: a 2-worker LocalCluster of processes gives exactly the numbers of a serial run.
* The command line: the simulator options of ``rigd start`` reach the mouse of the dry run and of the
  power analysis; the dry run prints the state-triggered experiment's neural line; bad input is a
  one-line error.

Everything uses small designs on the vectorised model (sim.offline.run_batch); each test takes
≈ 5–40 s on a busy 2-core machine.
"""

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from analysis import power as pw
from controllers.protocol import load_protocol
from sim.config import MouseConfig, PlantedEffects
from sim.offline import light_for, run_batch, run_latent

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "protocols" / "state_triggered.toml"
SHAM = """
[protocol]
name = "sham and left ALM"
kind = "block"

[session]
n_trials = 240

[[conditions]]
name = "control"
fraction = 0.5

[[conditions]]
name = "sham"             # no light: its true effect is exactly 0
fraction = 0.25

[[conditions]]
name = "left_alm"
hemisphere = "left"
fraction = 0.25
"""


def _band(n: int, p: float) -> tuple[float, float]:
    """Binomial 99 % band of a rate over n repeats."""
    lo, hi = stats.binom.interval(0.99, n, p)
    return lo / n, hi / n


def _by_name(result: pw.PowerResult) -> dict[str, pw.Quantity]:
    return {q.name: q for q in result.quantities}


def test_nothing_planted_changes_nothing_and_a_noop_plant_neither() -> None:
    light = light_for("left")
    a = run_latent(300, 4, config=MouseConfig(mu_left=0.7, mu_right=0.35), light=light)
    b = run_latent(300, 4, config=MouseConfig(mu_left=0.7, mu_right=0.35, planted=PlantedEffects()), light=light)
    assert np.array_equal(a.x_left, b.x_left) and np.array_equal(a.choice, b.choice)


def test_batch_of_mixed_trials_has_the_statistics_of_run_latent() -> None:
    cfg = MouseConfig(mu_left=0.7, mu_right=0.35)
    n = 8_000
    # half the trials a μ = 0.6 mouse with no light, half the asymmetric mouse with left light, in one batch
    idx = np.repeat(np.array([-1, 0]), n)
    mu_l = np.repeat([0.6, 0.7], n)
    mu_r = np.repeat([0.6, 0.35], n)
    r = run_batch(cfg, idx, [light_for("left")], np.random.default_rng(3), mu_left=mu_l, mu_right=mu_r)
    ref_ctl = run_latent(n, 5, config=MouseConfig(), keep_trajectories=False).accuracy
    ref_lit = run_latent(n, 5, config=cfg, light=light_for("left"), keep_trajectories=False).accuracy
    for got, want in ((r.correct[:n].mean(), ref_ctl), (r.correct[n:].mean(), ref_lit)):
        assert abs(got - want) <= 4 * math.sqrt(2 * want * (1 - want) / n)
    assert ref_ctl - ref_lit > 0.05  # the docs' table: 0.81 vs 0.71


def test_planted_behavioural_effect_is_recovered_and_a_sham_has_alpha_false_positives() -> None:
    q_plant = 0.15
    proto = load_protocol(SHAM)
    cfg = MouseConfig(planted=PlantedEffects(error_left=q_plant))
    spec = pw.PowerSpec(proto, pw.Population(mice=2, sessions=1, trials=240), cfg, experiments=200, seed=11,
                        chunk_size=25)
    res = pw.run_power(spec, serial=True, truth_trials=40_000)
    q = _by_name(res)
    print(res.report())
    # no effect planted on the sham: rejections at ≈ α over 200 experiments
    lo, hi = _band(200, 0.05)
    assert lo <= q["sham"].power <= hi, q["sham"].power
    assert q["sham"].truth is not None and abs(q["sham"].truth) < 0.02
    # the planted effect: its ground truth is q × p (μ = 0.6: left light alone changes nothing, p ≈ 0.81)
    left = q["left_alm"]
    assert left.truth == pytest.approx(q_plant * 0.81, abs=0.02)
    lo, hi = _band(200, 0.95)
    assert left.coverage is not None and lo <= left.coverage <= hi
    assert abs(left.effect - left.truth) <= 3 * (left.effect_ci[1] - left.effect) / 1.96 + 0.005
    # power and the design for 80 %: the simulated power agrees with the SE model's at the design
    assert left.power > 0.3
    model = pw.analytic_power(left.effect, pw.design_variance(left, spec.population), spec.alpha)
    assert abs(model - left.power) < 0.1
    need = left.needed["trials_per_session"]
    assert need is not None
    at_need = pw.analytic_power(left.effect, pw.design_variance(left, spec.population, trials=need), spec.alpha)
    assert at_need >= 0.8 > pw.analytic_power(left.effect, pw.design_variance(left, spec.population, trials=need - 1),
                                              spec.alpha)
    assert q["sham"].needed == {"trials_per_session": None, "sessions_per_mouse": None, "mice": None}


def test_state_dependent_light_efficacy_is_recovered_per_state() -> None:
    proto = load_protocol(STATE)
    mouse = MouseConfig(mu_left=0.7, mu_right=0.35)
    pop = pw.Population(mice=2, sessions=1, trials=600, mu_left=0.7, mu_right=0.35)
    plain = pw.PowerSpec(proto, pop, mouse, experiments=24, seed=2, chunk_size=8)
    threshold = pw.median_state(plain, trials=8_000)
    # light silences only in weak-state trials (efficacy 0 in strong ones)
    plant = PlantedEffects(efficacy_weak=1.0, efficacy_strong=0.0, state_read="right", state_threshold=threshold)
    spec = pw.PowerSpec(proto, pop, pw.with_plant(mouse, plant), experiments=24, seed=2, chunk_size=8)
    res = pw.run_power(spec, serial=True, truth_trials=24_000)
    q = _by_name(res)
    print(res.report())
    model = pw.oracle_truth(plain, 24_000)
    # the model alone: light removes selectivity in both states (docs/protocols.md), behaviour suffers in both
    assert model["neural_loss_strong"] > 0.3 and model["behaviour_strong"] > 0.08
    # planted: (almost) no light effect in the strong state — only trials labelled strong by their
    # session's median but below the plant's threshold get light
    assert q["neural_loss_strong"].truth is not None and q["behaviour_strong"].truth is not None
    assert abs(q["neural_loss_strong"].truth) < 0.1 * model["neural_loss_strong"]
    assert abs(q["behaviour_strong"].truth) < 0.03
    # the weak state keeps the model's effect
    assert q["neural_loss_weak"].truth == pytest.approx(model["neural_loss_weak"], abs=0.05)
    assert q["behaviour_weak"].truth == pytest.approx(model["behaviour_weak"], abs=0.03)
    # the experiments' CIs cover the truth (binomial 99 % band around 0.95 over 24 experiments)
    lo, _ = _band(24, 0.95)
    for name in ("behaviour_weak", "behaviour_strong", "behaviour_weak_minus_strong", "neural_loss_weak",
                 "neural_loss_weak_minus_strong", "neural_relative_loss_weak"):
        assert q[name].coverage is not None and q[name].coverage >= lo, (name, q[name].coverage)
    # the plant reverses the neural difference: weak − strong loss now positive
    assert q["neural_loss_weak_minus_strong"].effect > 0 > model["neural_loss_weak_minus_strong"]
    for name in ("neural_loss_weak_minus_strong", "behaviour_weak_minus_strong"):
        assert q[name].needed["mice"] is not None


def test_two_worker_local_cluster_gives_the_serial_numbers() -> None:
    proto = load_protocol(STATE)
    spec = pw.PowerSpec(proto, pw.Population(mice=2, sessions=1, trials=120, mu_left=0.7, mu_right=0.35, mu_sd=0.05),
                        MouseConfig(), experiments=8, seed=5, chunk_size=2)
    serial = pw.run_power(spec, serial=True, truth=False)
    dask = pw.run_power(spec, workers=2, truth=False)
    assert dask.runner.startswith("dask LocalCluster") and dask.workers == 2
    assert serial.to_json()["quantities"] == dask.to_json()["quantities"]
    assert serial.mice == dask.mice and len(serial.mice) == 16
    # another seed gives other numbers (the equality above is not vacuous)
    other = pw.run_power(pw.PowerSpec(proto, spec.population, spec.config, experiments=8, seed=6, chunk_size=2),
                         serial=True, truth=False)
    assert other.to_json()["quantities"] != serial.to_json()["quantities"]


# --- command line ------------------------------------------------------------------------------


def _cli(*args: str) -> Any:
    from rig.cli import app

    return CliRunner().invoke(app, list(args))


def test_dry_run_takes_every_simulator_option_of_rigd_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis.dry_run as dr

    seen: dict[str, Any] = {}
    real = dr.dry_run

    def spy(protocol: Any, n: int, **kw: Any) -> Any:
        seen.update(kw)
        return real(protocol, n, **kw)

    monkeypatch.setattr(dr, "dry_run", spy)
    r = _cli("protocol", "check", "chen2021_early_delay", "--dry-run", "6", "--mu-left", "0.7", "--mu-right", "0.4",
             "--callosotomy", "--day", "3", "--units-per-hemisphere", "24", "--bin-ms", "5", "--iti-s", "0.4")
    assert r.exit_code == 0, r.output
    c = seen["config"]
    assert (c.mu_left, c.mu_right, c.callosotomy, c.day, c.units_per_hemisphere, c.bin_s, c.iti_s) == (
        0.7, 0.4, True, 3, 24, 0.005, (0.4, 0.4))
    assert "dry run of" in r.output
    bad = _cli("protocol", "check", "chen2021_early_delay", "--dry-run", "4", "--bin-ms", "3")
    assert bad.exit_code == 1 and "whole multiple" in bad.output and len(bad.output.strip().splitlines()) == 1
    assert _cli("protocol", "check", "chen2021_early_delay", "--dry-run", "4", "--backend", "lava").exit_code == 1


def test_dry_run_of_the_state_triggered_protocol_prints_the_neural_line() -> None:
    from analysis.dry_run import default_config, dry_run

    proto = load_protocol(STATE)
    r = dry_run(proto, 90, seed=3, config=default_config(proto, mu_left=0.7, mu_right=0.35), estimator="latent")
    text = r.report()
    print(text)
    assert "state-triggered, behaviour" in text and "state-triggered, neural (right hemisphere" in text
    se = r.state_effect
    for s in ("weak", "strong"):
        assert math.isfinite(se[f"read_loss_{s}"]) and se[f"se_read_loss_{s}"] > 0
        assert se[f"read_loss_{s}"] == pytest.approx(
            se[f"read_selectivity_{s}_no_light"] - se[f"read_selectivity_{s}_light"])
    assert se["read_loss_difference"] == pytest.approx(se["read_loss_weak"] - se["read_loss_strong"])


def test_power_command_json_figure_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "power"
    r = _cli("protocol", "power", str(STATE), "--experiments", "4", "--mice", "1", "--sessions", "1", "--trials", "80",
             "--mu-left", "0.7", "--mu-right", "0.35", "--serial", "--chunk-size", "2", "--plant-efficacy-strong", "0",
             "--plant-error", "left=0.1", "--json", "-o", str(out))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout[r.stdout.index("{"):])
    names = {q["name"] for q in doc["quantities"]}
    assert {"behaviour_weak", "neural_loss_strong", "neural_relative_loss_weak_minus_strong"} <= names
    assert doc["planted"]["efficacy_strong"] == 0.0 and doc["planted"]["error_left"] == 0.1
    assert doc["population"]["mu_left"] == 0.7 and doc["experiments"] == 4
    assert all(q["truth"] is not None for q in doc["quantities"] if q["name"] == "behaviour_weak")
    assert (out / "power.png").stat().st_size > 10_000 and json.loads((out / "power.json").read_text())
    # the simulator options of `rigd start` reach the power analysis's mouse
    seen: dict[str, Any] = {}

    def stop(spec: pw.PowerSpec, **kw: Any) -> None:
        seen["spec"] = spec
        raise ValueError("stop here")

    monkeypatch.setattr(pw, "run_power", stop)
    r = _cli("protocol", "power", "chen2021_early_delay", "--callosotomy", "--day", "5", "--units-per-hemisphere",
             "30", "--bin-ms", "5", "--iti-s", "0.5", "--mu-left", "0.5", "--serial")
    assert r.exit_code == 1 and "stop here" in r.output
    c = seen["spec"].config
    assert (c.callosotomy, c.day, c.units_per_hemisphere, c.bin_s, c.iti_s, c.mu_left) == (
        True, 5, 30, 0.005, (0.5, 0.5), 0.5)
    assert seen["spec"].population.day == 5


@pytest.mark.parametrize(("args", "needle"), [
    (["chen2021_early_delay", "--plant-error", "left=2"], "--plant-error"),
    (["chen2021_early_delay", "--plant-efficacy-weak", "0.5"], "state-triggered protocol"),
    (["chen2021_early_delay", "--model", "spiking"], "vectorised offline model"),
    (["chen2021_early_delay", "--mice", "0"], "mice"),
    (["chen2021_early_delay", "--scheduler", "localhost"], "tcp://HOST:8786"),
    (["no_such_protocol"], "no such file"),
])
def test_power_command_refuses_bad_input_in_one_line(args: list[str], needle: str) -> None:
    r = _cli("protocol", "power", *args, "--experiments", "2", "--serial")
    assert r.exit_code == 1 and needle in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) <= 3
