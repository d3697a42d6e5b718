"""The authors' two-hemisphere RNN (sim/rnn.py) and the simulator running it (model="rnn").

What is checked: the shipped weights are what their metadata says (the authors' recipe, the
validation accuracy recorded, re-measured with the NumPy forward pass on fresh noise); the NumPy
forward pass is the training (torch) forward pass; the Chen 2021 robustness result the modular
network is meant to reproduce (unilateral early-delay perturbation ≈ control, bilateral → chance);
the recipe is deterministic from its seed and "modular" training leaves the callosal blocks at
their initial values; the simulator's behaviour readout and light on the RNN (sim.offline) and
the live SimulatedMouse stepping the network every 25 ms. Tolerances follow docs/simulator.md
(3 binomial SE plus a stated bias) and say their n.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from analysis.dry_run import default_config, offline_state_prediction
from controllers.protocol import load_protocol
from rig import wire
from rig.session import Session
from sim import rnn
from sim.config import MouseConfig
from sim.mouse import SimulatedMouse
from sim.offline import LightWindow, run_conditions, run_latent

REPO = Path(__file__).resolve().parents[1]

MS = 1_000_000


def _se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def _ideal_accuracy(recipe: rnn.Recipe) -> float:
    """Accuracy of the ideal observer of the stimulus (sum of the sample steps), ignoring the noise."""
    k = int(rnn.SAMPLE_STEPS.sum())
    d = recipe.input_mean * math.sqrt(k) / recipe.input_sd
    return 0.5 * (1 + math.erf(d / math.sqrt(2)))


def test_time_grid_is_the_authors() -> None:
    # trial −3.1…0 s in 25-ms steps: 125 states; sample from step 4, delay from 56, perturbation 56–88
    assert rnn.N_STEPS == 125 and rnn.STEP_T_S[0] == -3.1 and rnn.STEP_T_S[-1] == 0.0
    assert np.flatnonzero(rnn.SAMPLE_STEPS)[[0, -1]].tolist() == [4, 55]
    assert np.flatnonzero(rnn.DELAY_STEPS)[0] == 56
    assert np.flatnonzero(rnn.PERT_STEPS)[[0, -1]].tolist() == [56, 88]
    assert rnn.A == 0.5


def test_shipped_weights_follow_the_recipe_and_reach_the_recorded_validation_accuracy() -> None:
    w = rnn.load_weights()
    meta = w.meta
    recipe = rnn.Recipe(**meta["recipe"])
    # the authors' numbers, not a tuned variant
    assert {k: v for k, v in asdict(recipe).items() if k != "threads"} == {
        k: v for k, v in asdict(rnn.Recipe()).items() if k != "threads"}
    assert meta["updates"] == recipe.epochs * (recipe.n_train // recipe.batch)
    # modular initialisation: cross blocks ~ N(0, 0.2²/N), within ~ N(0, 1/N) (training moves the latter)
    assert np.std(w.w_lr) == pytest.approx(0.2 / 16, rel=0.05)
    assert np.std(w.w_rl) == pytest.approx(0.2 / 16, rel=0.05)
    assert np.std(w.w_ll) > 3 * np.std(w.w_lr)
    # re-measure the validation score (mean over hemispheres of the last-step accuracy) on the
    # regenerated validation set with fresh noise: n = 1,000, 3 SE
    x, y = rnn.make_split(recipe, "val")
    z_l, z_r = rnn.run(w, x, np.random.default_rng(123))
    acc = rnn.last_step_accuracy(z_l, z_r, y)
    recorded = float(meta["val_accuracy"])
    print(f"validation accuracy: recorded {recorded:.4f}, re-measured {acc:.4f} (n = {len(y)})")
    assert acc == pytest.approx(recorded, abs=3 * _se(recorded, len(y)))
    # useful, and not better than the ideal observer of the stimulus (≈ 0.86)
    assert recorded >= 0.80
    assert acc <= _ideal_accuracy(recipe) + 3 * _se(0.86, len(y))


def test_numpy_forward_is_the_training_forward() -> None:
    import torch  # a declared dependency: always there

    w = rnn.load_weights()
    recipe = rnn.Recipe()
    x, _ = rnn.make_split(recipe, "test")
    x = x[:64]
    rng = np.random.default_rng(5)
    nin = rng.standard_normal((rnn.N_STEPS, 2, 64))
    nrec = rng.standard_normal((rnn.N_STEPS, 64, rnn.N_NEURONS))
    it = iter(range(rnn.N_STEPS))

    def noise(n: int) -> tuple[object, object]:
        k = next(it)
        return torch.from_numpy(nin[k]), torch.from_numpy(nrec[k])

    p = {k: torch.from_numpy(np.asarray(getattr(w, k))) for k in
         ("w_ll", "w_rr", "w_lr", "w_rl", "b_l", "b_r", "wx_l", "wx_r", "ro_l", "ro_r")}
    with torch.no_grad():
        zt_l, zt_r = rnn.torch_forward(p, torch.from_numpy(x), noise, sigma_in=0.1, sigma_rec=0.1)
    h = np.zeros((64, rnn.N_NEURONS))
    z = np.zeros((2, 64, rnn.N_STEPS))
    for k in range(rnn.N_STEPS):
        rnn.step(w, h, x=x[:, k], in_noise_left=nin[k, 0], in_noise_right=nin[k, 1], rec_noise=nrec[k])
        z[0, :, k], z[1, :, k] = rnn.readout(w, h)
    np.testing.assert_allclose(z[0], zt_l.numpy(), atol=1e-9)
    np.testing.assert_allclose(z[1], zt_r.numpy(), atol=1e-9)


def test_modular_network_is_robust_to_unilateral_but_not_bilateral_perturbation() -> None:
    # Chen 2021 (authors' code): the hemisphere's state set to 0 every step −1.7…−0.9 s.
    # Test set, n = 1,000 per condition, common random numbers.
    w = rnn.load_weights()
    recipe = rnn.Recipe(**w.meta["recipe"])
    acc = rnn.evaluate(w, recipe, "test", seed=99)
    print({c: round(a["mean"], 3) for c, a in acc.items()})
    ctl = acc["control"]["mean"]
    assert 0.80 <= ctl <= _ideal_accuracy(recipe) + 3 * _se(0.86, 1000)
    for side in ("left", "right"):
        # both readouts — the silenced hemisphere's included — recover: within 0.03 of control
        assert acc[side]["left"] >= ctl - 0.03 and acc[side]["right"] >= ctl - 0.03, (side, acc[side])
    # bilateral: chance (3 SE at n = 1,000)
    assert abs(acc["bilateral"]["mean"] - 0.5) <= 3 * _se(0.5, 1000)


def test_recipe_is_deterministic_from_the_seed_and_modular_training_freezes_the_callosum() -> None:
    r = rnn.Recipe(seed=3, n_train=128, batch=64, n_val=64, n_test=32, epochs=1, max_batches=2, lr=1e-3)
    a, b = rnn.train(r), rnn.train(r)
    c = rnn.train(rnn.Recipe(**{**asdict(r), "seed": 4}))
    for k in ("w_ll", "w_rr", "w_lr", "w_rl", "b_l", "b_r"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert a.meta["val_accuracy"] == b.meta["val_accuracy"] and a.meta["updates"] == 2
    assert not np.array_equal(a.w_ll, c.w_ll)
    # modular: within blocks (and biases) trained, callosal blocks exactly at their initial values
    w0 = rnn.init_weights(3, r.cross_init)

    def f32(v: np.ndarray) -> np.ndarray:  # torch trains in float32
        return v.astype(np.float32).astype(np.float64)

    np.testing.assert_array_equal(a.w_lr, f32(w0.w_lr))
    np.testing.assert_array_equal(a.w_rl, f32(w0.w_rl))
    assert not np.array_equal(a.w_ll, f32(w0.w_ll)) and np.any(a.b_l != 0)
    full = rnn.train(rnn.Recipe(**{**asdict(r), "training": "full"}))
    assert not np.array_equal(full.w_lr, f32(w0.w_lr))


def test_saved_weights_round_trip(tmp_path: Path) -> None:
    w = rnn.load_weights()
    p = tmp_path / "w.npz"
    w.save(p)
    v = rnn.RNNWeights.load(p)
    np.testing.assert_allclose(v.w_hh, w.w_hh, atol=1e-7)
    assert v.meta == w.meta


def test_config_runs_the_rnn_on_its_own_clock() -> None:
    c = MouseConfig(model="rnn")
    assert c.model_dt_s == 0.025 and c.bins_per_step == 25
    assert MouseConfig().model_dt_s == 0.005  # the reduced default is untouched
    with pytest.raises(ValidationError, match="25 ms"):
        MouseConfig(model="rnn", model_dt_s=0.005)
    with pytest.raises(ValidationError, match=r"1\.7-s delay"):
        MouseConfig(model="rnn", delay_s=1.3)
    with pytest.raises(ValidationError, match="rnn_weights"):
        MouseConfig(rnn_weights="x.npz")


def test_behaviour_and_light_on_the_rnn_mouse() -> None:
    # behaviour readout on the logits; light = (1 − ε) h with the dose-response (1.5 mW × 4 spots: ε ≈ 0.999).
    # n = 3,000 per condition, common random numbers: control in the task's range (0.75–0.85, below
    # the ideal observer); unilateral early-delay ≈ control (the network is robust); bilateral chance.
    c = MouseConfig(model="rnn")
    runs = run_conditions(3000, 21, config=c)
    acc = {k: r.accuracy for k, r in runs.items()}
    print(acc)
    n = 3000
    assert 0.75 <= acc["control"] <= 0.86
    for side in ("left", "right"):
        assert acc[side] >= acc["control"] - 0.03, side
    assert abs(acc["bilateral"] - 0.5) <= 3 * _se(0.5, n) + 0.02
    # the silenced hemisphere's logit is ≈ 0 in the light (after the 15-ms onset) and recovers
    t = runs["left"].t_s
    lit = (t > -1.65) & (t < -1.0)
    assert np.abs(runs["left"].x_left[:, lit]).max() < 0.02
    assert np.abs(runs["control"].x_left[:, lit]).mean() > 1.0
    # full-delay unilateral light (−1.7…0 s): the readout's non-selective term biases licks ipsilaterally
    full = run_latent(n, 21, config=c, light=LightWindow("left", -1.7, 0.0, 0.1))
    y = full.instructed
    assert full.correct[y < 0].mean() > full.correct[y > 0].mean() + 0.2


def test_live_rnn_mouse_runs_the_task_and_matches_offline_accuracy() -> None:
    # 5-ms bins, the network stepped every 5 bins; n ≈ 200 completed trials: 3 SE + 0.02 around the
    # offline control accuracy (3,000 trials)
    c = MouseConfig(model="rnn", bin_s=0.005, iti_s=(0.5, 0.5), early_lick_prob=0.05, units_per_hemisphere=10)
    m = SimulatedMouse(c, 4)
    assert m.description["model"] == "rnn"
    names: list[str] = []
    n_frames = 0
    while len(m.trials) < 210:
        out = m.step()
        n_frames += 1
        assert out.counts.shape == (m.n_units,)
        names.extend(n for n, _ in out.events)
    for ev in ("trial_start", "sample_on", "delay_on", "go_cue", "lick", "outcome", "trial_end"):
        assert ev in names, ev
    done = [t for t in m.trials if not t["early_lick"]]
    assert 0 < len(m.trials) - len(done) < 30  # 5 % early licks
    ref = run_latent(3000, 8, config=c, keep_trajectories=False).accuracy
    acc = float(np.mean([t["outcome"] == "hit" for t in done]))
    print(f"live {acc:.3f} (n = {len(done)}), offline {ref:.3f}")
    assert acc == pytest.approx(ref, abs=3 * _se(ref, len(done)) + 0.02)
    # the choice follows the network's logits: sign of x̄_L + x̄_R where they agree and are large
    clear = [t for t in done if abs(t["xbar_left"] + t["xbar_right"]) > 3]
    agree = np.mean([(t["choice"] == "right") == (t["xbar_left"] + t["xbar_right"] > 0) for t in clear])
    assert len(clear) > 50 and agree > 0.95


def test_live_light_silences_the_lit_hemisphere_of_the_rnn() -> None:
    c = MouseConfig(model="rnn", bin_s=0.005, iti_s=(0.5, 0.5), early_lick_prob=0.0, units_per_hemisphere=10)
    m = SimulatedMouse(c, 6)
    while not (m.trial_time_s >= -1.7):  # NaN between trials
        m.step()
    x_before = m.latent
    cmd = wire.LightCommandFields(1, 0, 0, 0, 0, 0, 0, wire.LightAction.START, wire.Waveform.SINE,
                                  0b1111, 0, 1.5, 0.8, 0.1, 40.0)
    m.note_rigd_heartbeat(m.t_rig_ns)
    assert m.apply_light(cmd, m.t_rig_ns)[0] == wire.AckStatus.APPLIED
    lat = []
    for _ in range(round(0.5 / c.bin_s)):  # 0.5 s of light
        m.note_rigd_heartbeat(m.t_rig_ns)
        m.step()
        lat.append(m.latent)
    arr = np.array(lat[20:])  # after 100 ms
    assert np.abs(arr[:, 0]).max() < 0.02  # left readout ≈ 0 (h_L ≈ 0)
    assert abs(x_before[1]) > 0.05 and np.abs(arr[:, 1]).min() > 0.05  # right keeps its state


STATE = Path(__file__).resolve().parents[1] / "protocols" / "state_triggered.toml"


@pytest.mark.slow
def test_state_triggered_prediction_on_the_rnn_weak_effect_larger_but_tiny() -> None:
    """State-triggered experiment on the authors' RNN: the shipped protocol (left ALM lit −1.7…−0.9 s, right
    hemisphere read in −2.1…−1.7 s, signed state), 20,000 paired trials (sim.offline, common random
    numbers).

    What the network does (docs/simulator-rnn.md): the effect of light on behaviour is larger in the
    weak state than in the strong state — a larger weak-state effect, ≈ 3 SE at this n (0.0070 ± 0.0021 with
    seed 5, 0.0074 ± 0.0021 with seed 6) — but tiny: the modular network is robust to unilateral
    photoinhibition in both states (< 1 percentage point), far below what a session could resolve.
    It is a property of the shipped network instance: a network trained with seed 1 shows it with
    the right hemisphere lit instead. Asserted: weak − strong > 2 SE (one-sided), both effects below
    0.02, the signed state predicts performance without light, and the read hemisphere keeps most of
    its selectivity in both states.
    """
    proto = load_protocol(STATE)
    cfg = default_config(proto, model="rnn")
    assert cfg.model == "rnn" and cfg.model_dt_s == 0.025
    p = offline_state_prediction(proto, cfg, n_trials=20_000, seed=7)
    print(", ".join(f"{k} = {v:.4f}" for k, v in p.items()))
    assert p["difference"] > 2 * p["se_difference"]
    assert abs(p["effect_weak"]) < 0.02 and abs(p["effect_strong"]) < 0.02
    assert p["correct_weak_no_light"] + 0.2 < p["correct_strong_no_light"]
    assert p["read_m_weak"] > 0.6 and p["read_m_strong"] > 0.6


def test_protocol_check_dry_runs_on_the_rnn_from_the_command_line() -> None:
    from typer.testing import CliRunner

    from rig.cli import app

    r = CliRunner().invoke(app, ["protocol", "check", str(STATE), "--dry-run", "24", "--model", "rnn"])
    assert r.exit_code == 0, r.output
    assert "dry run of" in r.output and "24 trials" in r.output
    bad = CliRunner().invoke(app, ["protocol", "check", str(STATE), "--dry-run", "4", "--model", "lif"])
    assert bad.exit_code != 0


def test_rigd_start_sim_with_the_rnn_mouse_end_to_end(tmp_path: Path) -> None:
    """``rigd start --rig sim --model rnn``: the live rig runs the authors' network; the session completes."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    env = {**os.environ, "RIGD_RUNTIME_DIR": str(runtime)}
    cmd = [str(Path(sys.executable).parent / "rigd"), "start", "--rig", "sim", "--model", "rnn", "--trials", "3",
           "--iti-s", "0.5", "--no-live", "--no-ui", "--session-dir", str(tmp_path / "sessions"), "--seed", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    (session,) = list((tmp_path / "sessions").iterdir())
    s = Session.open(session)
    assert s.manifest["state"] == "stopped" and s.manifest["trials_done"] == 3, s.manifest
    assert s.rig_description()["model"] == "rnn"
    trials = s.trials()
    assert len(trials) == 3 and all(t["outcome"] in ("hit", "error", "ignore", "early_lick") for t in trials)
