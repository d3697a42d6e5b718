"""The Lava sidecar as rigd uses it: streaming the spiking ALM, fallback, deadlines, clear failures.

Real subprocesses and sockets throughout (no mocks). Needs .venv-lava (scripts/setup); without it
these tests fail with instructions unless RIGD_NO_LAVA=1.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from hardware.spiking.backend import BackendUnavailable
from hardware.spiking.cpu import CpuBackend
from hardware.spiking.lava import LavaBackend, lava_available
from hardware.spiking.select import FallbackBackend, make_backend
from sim.spiking_alm import SpikingALM, build_network


@pytest.fixture
def need_lava() -> None:
    if lava_available():
        return
    if os.environ.get("RIGD_NO_LAVA") == "1":
        pytest.skip("RIGD_NO_LAVA=1: Lava venv absent")
    pytest.fail("the Lava venv .venv-lava is missing: run scripts/setup (needs Python 3.10, e.g. pyenv "
                "3.10.13) or set RIGD_NO_LAVA=1 to skip the Lava tests")


def alm_protocol(t: int) -> tuple[float, float, float, float]:
    s = 1.0 if 20 <= t < 120 else 0.0
    light = 1.0 if 200 <= t < 260 else 0.0
    return s, s, light, 0.0


@pytest.mark.parametrize("fused", [False, True], ids=["stock", "fused"])
def test_spiking_alm_streams_bit_identically_on_lava_and_cpu(need_lava: None, fused: bool) -> None:
    # 300 one-ms steps of the fixed-point ALM (20 units per hemisphere), same seeded inputs:
    # the Lava stream (Injector/Extractor, RunContinuous) gives exactly the CPU spike counts.
    # The FallbackBackend also compares against its CPU shadow every step (divergences == 0).
    alarms: list[str] = []
    lava = SpikingALM("lava", seed=1, units_per_hemisphere=20, deadline_s=5.0, alarm=alarms.append,
                      fused=fused)
    cpu = SpikingALM("cpu", seed=1, units_per_hemisphere=20)
    try:
        assert isinstance(lava.backend, FallbackBackend)
        total = 0
        for t in range(300):
            a = lava.step(*alm_protocol(t)).copy()
            b = cpu.step(*alm_protocol(t))
            assert np.array_equal(a, b), f"step {t}: lava {np.flatnonzero(a)} cpu {np.flatnonzero(b)}"
            total += int(a.sum())
        assert total > 100  # the network is active, the comparison is not vacuous
        assert lava.backend.kind == "lava" and lava.backend.divergences == 0, alarms
        assert alarms == []
    finally:
        lava.close()
        cpu.close()


def test_spiking_alm_voltages_are_bit_identical_in_a_lava_batch_run(need_lava: None) -> None:
    net = build_network(10, seed=2)
    rng = np.random.default_rng(5)
    n = 80
    inputs = {"bg": rng.random((n, net.input_port("bg").size)) < 0.05,
              "drive": rng.random((n, net.input_port("drive").size)) < 0.1,
              "light": rng.random((n, net.input_port("light").size)) < 0.02}
    cpu = CpuBackend(net).run(n, inputs)
    with LavaBackend(net, stream=False) as lb:
        lava = lb.run(n, inputs)
    for p in net.populations:
        assert np.array_equal(cpu.v[p.name], lava.v[p.name]), p.name
        assert np.array_equal(cpu.u[p.name], lava.u[p.name]), p.name
        assert np.array_equal(cpu.spikes[p.name], lava.spikes[p.name]), p.name
    assert sum(int(s.sum()) for s in cpu.spikes.values()) > 0


def test_a_missed_deadline_hands_over_to_the_cpu_shadow_without_a_gap(need_lava: None) -> None:
    # A 1-µs deadline cannot be met by any sidecar: the first step falls back, raises one alarm,
    # and the outputs continue exactly as a CPU-only run of the same network would produce.
    net = build_network(10, seed=4)
    alarms: list[str] = []
    fb = make_backend(net, "lava", deadline_s=1e-6, alarm=alarms.append)
    ref = CpuBackend(net)
    rng = np.random.default_rng(0)
    try:
        assert isinstance(fb, FallbackBackend)
        for _ in range(50):
            x = {"bg": rng.random(net.input_port("bg").size) < 0.05}
            got = {k: v.copy() for k, v in fb.step(x).items()}
            want = ref.step(x)
            assert all(np.array_equal(got[k], want[k]) for k in want)
        assert fb.kind == "cpu" and fb.misses == 1
        assert len(alarms) == 1 and "deadline" in alarms[0]
    finally:
        fb.close()


def test_missing_lava_venv_is_reported_clearly_and_make_backend_falls_back() -> None:
    net = build_network(4, seed=0)
    with pytest.raises(BackendUnavailable, match="scripts/setup"):
        LavaBackend(net, python="/nonexistent/venv/bin/python")
    alarms: list[str] = []
    b = make_backend(net, "lava", python="/nonexistent/venv/bin/python", alarm=alarms.append)
    assert isinstance(b, CpuBackend)
    assert len(alarms) == 1 and "CPU backend serves" in alarms[0]


def test_loihi_hardware_config_fails_clearly_without_a_loihi(need_lava: None) -> None:
    with pytest.raises(BackendUnavailable, match="Loihi"):
        LavaBackend(build_network(4, seed=0), hw=True)


def test_fused_process_model_gives_the_stock_models_spikes(need_lava: None) -> None:
    # The low-latency path (one Lava process model for the whole network) must give the same
    # spikes as the stock LIF/Dense/Sparse models. The CPU backend is bit-identical to the stock
    # models (test_spiking_equivalence.py), so compare against it on 2 × 4 random networks
    # (delays, sparse/dense, mixed/inhibitory weights, weight_exp) with every population an output.
    from test_spiking_equivalence import random_inputs, random_network

    from hardware.spiking.network import Mode, Network, OutputPort

    for seed, mode in ((11, Mode.FIXED), (12, Mode.FIXED), (13, Mode.FLOAT)):
        # float: summation order may differ in the last bit; spikes still agree on these networks
        net = Network.union([(f"n{k}", random_network(seed * 10 + k, mode)) for k in range(4)])
        net = net.model_copy(update={"outputs": [OutputPort(name=p.name, population=p.name)
                                                 for p in net.populations]})
        n_steps = 40
        x = random_inputs(net, n_steps, seed)
        cpu = CpuBackend(net).run(n_steps, x)
        with LavaBackend(net, fused=True) as lb:
            assert lb.info["fused"]
            got = lb.step_many(x, n_steps)
        for p in net.populations:
            assert np.array_equal(got[p.name], cpu.spikes[p.name]), (seed, p.name)
        assert sum(int(s.sum()) for s in cpu.spikes.values()) > 0


def test_frame_blocks_on_lava_equal_per_ms_steps_on_cpu(need_lava: None) -> None:
    # The simulated mouse can advance one frame (k = 10 ms) per Lava round trip: same spikes as
    # ten 1-ms CPU steps with the same seed.
    alarms: list[str] = []
    lava = SpikingALM("lava", seed=3, units_per_hemisphere=20, deadline_s=5.0, alarm=alarms.append)
    cpu = SpikingALM("cpu", seed=3, units_per_hemisphere=20)
    try:
        for frame in range(30):
            s = 1.0 if 2 <= frame < 12 else 0.0
            block = lava.step_block(10, s, s, 0.0, 0.0)
            for t in range(10):
                assert np.array_equal(block[t], cpu.step(s, s, 0.0, 0.0)), (frame, t)
        assert lava.backend.kind == "lava" and alarms == []
        assert lava.x == pytest.approx(cpu.x)
    finally:
        lava.close()
        cpu.close()
