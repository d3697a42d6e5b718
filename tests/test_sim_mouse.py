"""The in-process simulated mouse: task, light physiology, config validation, offline trial sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from rig import wire
from sim import light
from sim.config import MouseConfig
from sim.mouse import SimulatedMouse
from sim.offline import LightWindow, generate_trialset

MS = 1_000_000


def _start(command_id: int = 1, *, spots_left: int = 0b1111, spots_right: int = 0, power: float = 1.5,
           duration: float = 0.8, ramp: float = 0.1, deadline: int = 0, t_start: int = 0
           ) -> wire.LightCommandFields:
    return wire.LightCommandFields(command_id, 0, 0, 0, deadline, t_start, 0, wire.LightAction.START,
                                   wire.Waveform.SINE, spots_left, spots_right, power, duration, ramp, 40.0)


def test_dose_response_and_spatial_spread_match_the_hill_fit() -> None:
    c = MouseConfig()
    # Hill fit to Li et al. 2019: ε(1.5 mW) = 0.987; ≈ 50 % at 0.3 mW; ≈ 80 % at 0.5 mW
    assert float(light.dose_response(1.5, c.p50_mw, c.hill_n)) == pytest.approx(0.987, abs=0.002)
    assert float(light.dose_response(0.3, c.p50_mw, c.hill_n)) == pytest.approx(0.5, abs=1e-9)
    assert float(light.dose_response(0.5, c.p50_mw, c.hill_n)) == pytest.approx(0.80, abs=0.02)
    eff = light.efficacy(c, 1.5, spots_left=0b1111, spots_right=0, unit_ap_mm=np.zeros(0),
                         unit_ml_mm=np.zeros(0))
    assert eff.hemisphere[0] == pytest.approx(c.eps_max)  # latent ε capped at 0.9 (docs/simulator.md)
    assert eff.hemisphere[1] < 0.02  # little spill-over into the other ALM, 3 mm away
    weak = light.efficacy(c, 1.5, spots_left=0b0001, spots_right=0, unit_ap_mm=np.zeros(0),
                          unit_ml_mm=np.zeros(0))
    assert weak.hemisphere_uncapped[0] < eff.hemisphere_uncapped[0]  # fewer spots, less silencing


def test_light_envelope_ramps_inside_the_window() -> None:
    t = np.array([-1.71, -1.7, -1.2, -1.0, -0.95, -0.9, -0.5])
    env = light.envelope(t, -1.7, -0.9, 0.1)
    np.testing.assert_allclose(env, [0, 1, 1, 1, 0.5, 0, 0], atol=1e-9)
    sil = light.silencing_envelope(t, -1.7, -0.9, 0.1, 0.015)
    assert sil[1] == 0.0 and sil[2] == 1.0  # 15 ms onset latency


def test_apply_light_statuses_and_change_times() -> None:
    m = SimulatedMouse(MouseConfig(), 1)
    for _ in range(20):
        m.step()
    now = m.t_rig_ns
    assert m.apply_light(_start(1, deadline=now - 1), now) == (wire.AckStatus.LATE, 0)
    assert m.apply_light(_start(2, spots_left=0b10000), now)[0] == wire.AckStatus.INVALID
    assert m.apply_light(_start(3, spots_left=0, spots_right=0), now)[0] == wire.AckStatus.INVALID
    assert m.apply_light(_start(4, power=50.0), now)[0] == wire.AckStatus.INVALID
    assert m.apply_light(_start(5, duration=0.1, ramp=0.2), now)[0] == wire.AckStatus.INVALID
    assert m.apply_light(_start(6, power=float("nan")), now)[0] == wire.AckStatus.INVALID
    assert not m.light_on()
    assert m.apply_light(_start(7, deadline=now + MS), now) == (wire.AckStatus.APPLIED, now)
    assert m.light_on()
    later = now + 50 * MS
    assert m.apply_light(_start(8, t_start=later), now) == (wire.AckStatus.APPLIED, later)
    down = wire.LightCommandFields(9, 0, 0, 0, 0, 0, 0, wire.LightAction.RAMP_DOWN,
                                   wire.Waveform.SINE, 0, 0, 0.0, 0.0, 0.1, 0.0)
    assert m.apply_light(down, later + 100 * MS) == (wire.AckStatus.STOPPED, later + 100 * MS)
    assert m.light.level(later + 150 * MS) == pytest.approx(0.5)
    assert m.light.level(later + 200 * MS) == 0.0


def test_watchdog_turns_light_off_after_half_a_second_without_rigd() -> None:
    m = SimulatedMouse(MouseConfig(), 1)
    m.note_rigd_heartbeat(0)
    m.apply_light(_start(1, duration=1.3), 0)
    assert m.watchdog(400 * MS) is None
    m.note_rigd_heartbeat(400 * MS)
    assert m.watchdog(800 * MS) is None
    off = m.watchdog(901 * MS + 1)
    assert off is not None and off.command_id == 1
    assert not m.light.is_on(901 * MS + 1) and m.watchdog_trips == 1


def test_light_silences_pyramidal_units_after_15_ms_and_excites_fs_units() -> None:
    c = MouseConfig(units_per_hemisphere=400, iti_s=(20.0, 20.0))  # stay in the ITI: steady rates
    m = SimulatedMouse(c, 2)
    left = m.units.hemisphere == 0
    pyr, fs = left & ~m.units.is_fs, left & m.units.is_fs

    def rates(n_bins: int) -> np.ndarray:
        acc = np.zeros(m.n_units)
        for _ in range(n_bins):
            acc += m.step().counts
        return acc / (n_bins * c.bin_s)

    base = rates(2000)
    m.note_rigd_heartbeat(m.t_rig_ns)
    m.apply_light(_start(1, duration=1.3), m.t_rig_ns)
    early = rates(10)  # first 10 ms: light on, pyramidal silencing not yet
    on = rates(1000)
    assert early[pyr].sum() > 0.6 * base[pyr].sum()
    assert on[pyr].sum() < 0.05 * base[pyr].sum()  # ε ≈ 0.99 at the unit positions
    assert on[fs].sum() > 1.8 * base[fs].sum()  # FS × (2–4)
    right_pyr = ~left & ~m.units.is_fs
    assert on[right_pyr].sum() == pytest.approx(base[right_pyr].sum(), rel=0.1)


def test_mouse_runs_the_task_and_matches_offline_statistics() -> None:
    # 5-ms bins (= model step) keep it quick; n ≈ 250 completed trials: SE 0.025 → 3 SE + 0.02.
    c = MouseConfig(bin_s=0.005, iti_s=(0.5, 0.5), early_lick_prob=0.05, units_per_hemisphere=10)
    m = SimulatedMouse(c, 4)
    names: list[str] = []
    while len(m.trials) < 260:
        out = m.step()
        names.extend(n for n, _ in out.events)
    done = [t for t in m.trials if not t["early_lick"]]
    acc = np.mean([t["outcome"] == "hit" for t in done])
    assert acc == pytest.approx(0.81, abs=3 * math.sqrt(0.81 * 0.19 / len(done)) + 0.02)
    n_early = len(m.trials) - len(done)
    assert 1 <= n_early <= 35  # 5 % of 260 = 13
    rts = np.sort([t["reaction_time_s"] for t in done])
    terts = [float(np.mean(x)) for x in np.array_split(rts, 3)]
    # Yang et al. 2022 tertiles 85 / 111 / 172 ms; with ≈ 80 per tertile the slow one has SE ≈ 0.01 s
    assert terts == pytest.approx([0.085, 0.111, 0.172], abs=0.03)
    assert names.count("trial_start") >= 260 and names.count("go_cue") >= len(done)
    assert {"sample_on", "delay_on", "lick", "outcome", "trial_end", "early_lick"} <= set(names)


def test_config_rejects_bad_values_with_clear_errors() -> None:
    with pytest.raises(ValidationError, match="mu_left"):
        MouseConfig(mu_left=1.5)
    with pytest.raises(ValidationError, match="whole multiple"):
        MouseConfig(bin_s=0.002, model_dt_s=0.005)
    with pytest.raises(ValidationError, match="iti_s"):
        MouseConfig(iti_s=(5.0, 3.0))
    with pytest.raises(ValidationError):
        MouseConfig(units_per_hemisphere=0)


def test_generate_trialset_shapes_alignment_and_reproducibility() -> None:
    ts = generate_trialset(30, 7, units_per_hemisphere=12)
    assert ts.counts.shape == (30, 35, 24) and ts.t0_s == -3.5 and ts.bin_s == 0.1
    assert set(np.unique(ts.hemisphere)) == {0, 1} and (ts.hemisphere[:12] == 0).all()
    assert ts.provenance["seed"] == 7 and ts.provenance["day"] == 0 and "config" in ts.provenance
    np.testing.assert_array_equal(ts.correct, ts.choice == ts.instructed)
    again = generate_trialset(30, 7, units_per_hemisphere=12)
    np.testing.assert_array_equal(ts.counts, again.counts)
    lit = generate_trialset(30, 7, units_per_hemisphere=12, light=LightWindow("left"))
    t = lit.times_s()
    win = (t >= -1.6) & (t < -1.0)
    pyr_left = (lit.hemisphere == 0) & ~np.isin(np.arange(24), lit.provenance["fs_units"])
    assert lit.counts[:, win][:, :, pyr_left].mean() < 0.1 * ts.counts[:, win][:, :, pyr_left].mean()
