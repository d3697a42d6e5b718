"""Fixed-point equivalence: the numba CPU backend and Lava's CPU simulator give identical spikes, v, u.

Runs the real Lava sidecar (.venv-lava); without it the tests fail with instructions unless
RIGD_NO_LAVA=1. One batch-only sidecar serves the whole module (Lava start-up is slow); each
hypothesis example is the disjoint union of several random networks run in one Lava build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hardware.spiking.cpu import CpuBackend
from hardware.spiking.lava import LavaBackend, lava_available
from hardware.spiking.network import Connection, InputPort, Mode, Network, OutputPort, Population


def _need_lava() -> None:
    if lava_available():
        return
    if os.environ.get("RIGD_NO_LAVA") == "1":
        pytest.skip("RIGD_NO_LAVA=1: Lava venv absent, Lava equivalence not checked")
    pytest.fail("the Lava venv .venv-lava is missing: run scripts/setup (needs Python 3.10, "
                "e.g. pyenv 3.10.13) or set RIGD_NO_LAVA=1 to skip the Lava tests")


def random_network(seed: int, mode: Mode = Mode.FIXED) -> Network:
    """A small random network exercising every fixed-point path (clipping, truncation, delays, wraps)."""
    rng = np.random.default_rng(seed)
    fixed = mode is Mode.FIXED
    pops = []
    for k in range(int(rng.integers(1, 4))):
        n = int(rng.integers(1, 13))
        if fixed:
            bias_exp = int(rng.integers(0, 8))
            big = rng.random() < 0.2  # sometimes biases that drive u/v to the 24-bit limits
            lim = 4095 if big else 200 >> min(bias_exp, 6)
            bias = rng.integers(-lim, lim + 1, n)
            pops.append(Population(name=f"p{k}", size=n, du=int(rng.choice([0, 1, 4095, rng.integers(0, 4096)])),
                                   dv=int(rng.choice([0, 4095, rng.integers(0, 4096)])),
                                   vth=int(rng.integers(0, 400)), bias_mant=bias.tolist(), bias_exp=bias_exp))
        else:
            pops.append(Population(name=f"p{k}", size=n, du=float(rng.random()), dv=float(rng.random() * 0.3),
                                   vth=float(rng.uniform(1, 50)), bias_mant=rng.uniform(-2, 6, n).tolist(),
                                   refractory_period=int(rng.integers(0, 4))))
    ins = [InputPort(name=f"in{k}", size=int(rng.integers(1, 7)), graded=bool(rng.random() < 0.3))
           for k in range(int(rng.integers(0, 3)))]
    sizes = {p.name: p.size for p in pops} | {i.name: i.size for i in ins}
    conns = []
    for k in range(int(rng.integers(1, 5))):
        src = str(rng.choice(list(sizes)))
        tgt = str(rng.choice([p.name for p in pops]))
        n_pre, n_post = sizes[src], sizes[tgt]
        mask = rng.random((n_post, n_pre)) < rng.uniform(0.2, 1.0)
        post, pre = np.nonzero(mask)
        sign = rng.choice(["exc", "inh", "mixed"])
        lo, hi = {"exc": (0, 300), "inh": (-300, 0), "mixed": (-300, 300)}[sign]
        w = rng.integers(lo, hi + 1, len(pre))
        if not fixed:
            w = w / 20.0
        delay = rng.integers(0, 5, len(pre)) if rng.random() < 0.5 else None
        conns.append(Connection(name=f"c{k}", source=src, target=tgt, kind=str(rng.choice(["dense", "sparse"])),
                                pre=pre, post=post, weight=w, delay=delay,
                                weight_exp=int(rng.integers(-4, 5)) if fixed else 0,
                                num_weight_bits=int(rng.integers(1, 9)) if fixed else 8))
    outs = [OutputPort(name="out", population=pops[-1].name)]
    return Network(name=f"random-{seed}", mode=mode, populations=pops, inputs=ins, outputs=outs,
                   connections=conns)


def random_inputs(net: Network, n_steps: int, seed: int) -> dict[str, np.ndarray]:
    # binary spikes, or for graded ports integer payloads 0…20 (Lava's num_message_bits > 0)
    rng = np.random.default_rng(seed + 1)
    return {i.name: (rng.integers(0, 21, (n_steps, i.size)) * (rng.random((n_steps, i.size)) < 0.5)
                     if i.graded else (rng.random((n_steps, i.size)) < rng.uniform(0.05, 0.6)).astype(np.int64))
            for i in net.inputs}


@pytest.fixture(scope="module")
def lava_batch() -> Iterator[LavaBackend]:
    _need_lava()
    with LavaBackend(random_network(0), stream=False) as lb:
        yield lb


def assert_identical(net: Network, a: object, b: object) -> None:
    for p in net.populations:
        for what in ("spikes", "v", "u"):
            x, y = getattr(a, what)[p.name], getattr(b, what)[p.name]
            if not np.array_equal(x, y):
                t, i = np.argwhere(x != y)[0]
                raise AssertionError(f"{net.name}: {what} of {p.name} differ first at step {t} neuron {i}: "
                                     f"cpu {x[t, i]} lava {y[t, i]}")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1))
def test_random_fixed_point_networks_are_bit_identical_on_cpu_and_lava(lava_batch: LavaBackend, seed: int) -> None:
    # four random networks per Lava build: 24 networks in all, each 40 steps
    parts = [(f"n{k}", random_network(seed + k)) for k in range(4)]
    net = Network.union(parts)
    n_steps = 40
    inputs = random_inputs(net, n_steps, seed)
    cpu = CpuBackend(net).run(n_steps, inputs)
    lava_batch.load(net)
    lava = lava_batch.run(n_steps, inputs)
    assert_identical(net, cpu, lava)
    # an example counts only if some neuron spikes somewhere (an all-silent draw proves little and is
    # discarded; if most draws were silent, hypothesis would fail the test as filtering too much)
    assume(sum(int(s.sum()) for s in cpu.spikes.values()) > 0)


def test_saturation_and_wrap_paths_are_bit_identical(lava_batch: LavaBackend) -> None:
    # u's 24-bit wrap-around and v's clip: huge excitatory input (3 × 255 << 7 << 6 per step)
    pop = Population(name="p", size=4, du=0, dv=0, vth=131071, bias_mant=[4095, -4096, 0, 100], bias_exp=7)
    inp = InputPort(name="x", size=3)
    c = Connection.from_dense("c", "x", "p", np.full((4, 3), 255), weight_exp=7)
    ci = Connection.from_dense("ci", "x", "p", np.full((4, 3), -255), kind="sparse", weight_exp=0,
                               delays=np.full((4, 3), 2))
    net = Network(name="saturate", populations=[pop], inputs=[inp], connections=[c, ci],
                  outputs=[OutputPort(name="o", population="p")])
    inputs = {"x": np.ones((30, 3), np.int64)}
    cpu = CpuBackend(net).run(30, inputs)
    lava_batch.load(net)
    assert_identical(net, cpu, lava_batch.run(30, inputs))
    assert np.abs(cpu.u["p"]).max() >= 2**22  # the run really reached the 24-bit range


def test_float_mode_matches_lava_floating_pt(lava_batch: LavaBackend) -> None:
    # float mode (incl. LIFRefractory): same spikes; v equal to 1e-9 relative (summation order differs)
    net = Network.union([(f"f{k}", random_network(100 + k, Mode.FLOAT)) for k in range(3)])
    inputs = random_inputs(net, 30, 7)
    cpu = CpuBackend(net).run(30, inputs)
    lava_batch.load(net)
    lava = lava_batch.run(30, inputs)
    for p in net.populations:
        assert np.array_equal(cpu.spikes[p.name], lava.spikes[p.name]), p.name
        np.testing.assert_allclose(cpu.v[p.name], lava.v[p.name], rtol=1e-9, atol=1e-9)
