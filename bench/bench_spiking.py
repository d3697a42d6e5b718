"""Spiking backends: per-step streaming latency and throughput, CPU (numba) vs Lava (sidecar).

For 100, 1,000 and 10,000 LIF neurons (fixed point, 80 % excitatory / 20 % inhibitory, ~100
synapses per neuron: 1 M at 10,000; a 100-channel spike input port; every neuron's spikes come
back), measures

* latency: input sent → output spikes back in rigd, per step (p50 / p99 over many steps);
  for Lava also with k steps per round trip (the batching that fits a decision budget);
* throughput: steps per second in that mode;
* Lava's floor: a ZeroMQ ping to the sidecar, and a 1-neuron network streamed at k = 1.

Run: ``.venv/bin/python bench/bench_spiking.py`` (``--quick`` for a short run). Prints a markdown
table (and writes it to ``--out`` if given). Note the machine's load: Lava runs one OS process per
Lava process and is sensitive to busy cores.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from hardware.spiking.cpu import CpuBackend
from hardware.spiking.lava import LavaBackend, lava_available
from hardware.spiking.network import Connection, InputPort, Network, OutputPort, Population


def bench_network(n: int, fan_in: int = 100, seed: int = 0) -> Network:
    """A random E/I LIF network of n neurons with ~fan_in synapses each, firing ~50–90 Hz (busy)."""
    rng = np.random.default_rng(seed)
    n_in = 100
    k = min(fan_in, n)
    post = np.repeat(np.arange(n), k)
    pre = np.concatenate([rng.choice(n, k, replace=False) for _ in range(n)])
    exc = pre < int(0.8 * n)
    w = np.where(exc, rng.integers(1, 12, len(pre)), -rng.integers(40, 160, len(pre)))
    pop = Population(name="p", size=n, du=400, dv=200, vth=120,
                     bias_mant=rng.integers(0, 32, n).tolist(), bias_exp=3)
    rec = Connection(name="rec", source="p", target="p", pre=pre, post=post, weight=w, weight_exp=-2)
    inp = Connection(name="in", source="x", target="p", pre=rng.integers(0, n_in, n), post=np.arange(n),
                     weight=np.full(n, 200))
    return Network(name=f"bench-{n}", populations=[pop], inputs=[InputPort(name="x", size=n_in)],
                   outputs=[OutputPort(name="spikes", population="p")], connections=[rec, inp])


def tiny_network() -> Network:
    """One neuron: Lava's per-step floor (Injector → Dense → LIF → Extractor)."""
    pop = Population(name="p", size=1, du=400, dv=200, vth=100)
    c = Connection(name="in", source="x", target="p", pre=[0], post=[0], weight=[100])
    return Network(name="tiny", populations=[pop], inputs=[InputPort(name="x", size=1)],
                   outputs=[OutputPort(name="spikes", population="p")], connections=[c])


def pct(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a) * 1e3, q))


def bench_cpu(net: Network, steps: int) -> dict[str, Any]:
    b = CpuBackend(net)
    rng = np.random.default_rng(1)
    xs = rng.random((steps + 50, 100)) < 0.05
    for i in range(50):  # warm-up (numba compile, caches)
        b.step({"x": xs[i]})
    lat, spikes = [], 0
    t_all = time.perf_counter()
    for i in range(50, steps + 50):
        t0 = time.perf_counter()
        out = b.step({"x": xs[i]})
        lat.append(time.perf_counter() - t0)
        spikes += int(out["spikes"].sum())
    wall = time.perf_counter() - t_all
    return {"p50": pct(lat, 50), "p99": pct(lat, 99), "steps_per_s": steps / wall,
            "rate_hz": spikes / steps / net.n_neurons * 1e3}


def bench_lava(net: Network, steps: int, k: int, fused: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    with LavaBackend(net, stream=True, start_timeout_s=600, buffer_steps=max(64, k), fused=fused) as lb:
        start_s = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        n_rt = max(1, steps // k)
        xs = rng.random((n_rt + 5, k, net.input_port("x").size)) < 0.05
        for i in range(5):
            lb.step_many({"x": xs[i]}, k)
        lat, spikes = [], 0
        t_all = time.perf_counter()
        for i in range(5, n_rt + 5):
            t1 = time.perf_counter()
            out = lb.step_many({"x": xs[i]}, k)
            lat.append(time.perf_counter() - t1)
            spikes += int(out["spikes"].sum())
        wall = time.perf_counter() - t_all
        ping = [lb.ping() for _ in range(50)]
    return {"p50": pct(lat, 50), "p99": pct(lat, 99), "steps_per_s": n_rt * k / wall,
            "per_step_ms": wall / (n_rt * k) * 1e3, "start_s": start_s, "ping_p50": pct(ping, 50),
            "rate_hz": spikes / (n_rt * k) / net.n_neurons * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--cpu-steps", type=int, default=3000)
    ap.add_argument("--lava-steps", type=int, default=400)
    ap.add_argument("--k", default="1,10", help="Lava steps per round trip to measure")
    ap.add_argument("--no-lava", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    ks = [int(k) for k in a.k.split(",")]
    if a.quick:
        a.cpu_steps, a.lava_steps = 500, 100
    load = os.getloadavg()
    rows = ["| backend | neurons | synapses | steps/round trip | latency p50 (ms) | latency p99 (ms) "
            "| per-step (ms) | throughput (steps/s) | mean rate (Hz) |",
            "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for n in sizes:
        net = bench_network(n)
        r = bench_cpu(net, a.cpu_steps)
        rows.append(f"| cpu (numba) | {n:,} | {net.n_synapses:,} | 1 | {r['p50']:.3f} | {r['p99']:.3f} "
                    f"| {1e3 / r['steps_per_s']:.3f} | {r['steps_per_s']:,.0f} | {r['rate_hz']:.0f} |")
        print(rows[-1], flush=True)
    if not a.no_lava and lava_available():
        for fused in (False, True):
            kind = "lava fused (1 process)" if fused else "lava stock (Loihi2SimCfg fixed_pt)"
            r = bench_lava(tiny_network(), a.lava_steps, 1, fused)
            rows.append(f"| {kind}: floor, 1 neuron | 1 | 1 | 1 | {r['p50']:.3f} | {r['p99']:.3f} "
                        f"| {r['per_step_ms']:.3f} | {r['steps_per_s']:,.0f} | – |")
            if not fused:
                notes.append(f"ZeroMQ ping to the sidecar (no Lava step): p50 {r['ping_p50']:.3f} ms")
            print(rows[-1], flush=True)
            for n in sizes:
                net = bench_network(n)
                for k in ks:
                    steps = a.lava_steps if n < 10000 else max(k, a.lava_steps // 4)
                    r = bench_lava(net, steps, k, fused)
                    rows.append(f"| {kind} | {n:,} | {net.n_synapses:,} | {k} "
                                f"| {r['p50']:.3f} | {r['p99']:.3f} | {r['per_step_ms']:.3f} "
                                f"| {r['steps_per_s']:,.0f} | {r['rate_hz']:.0f} |")
                    notes.append(f"{kind} {n:,} neurons k={k}: sidecar start-up {r['start_s']:.1f} s")
                    print(rows[-1], flush=True)
    table = "\n".join(rows)
    footer = (f"\nload average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
              + "; ".join(notes))
    print("\n" + table + "\n" + footer)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n" + footer + "\n")


if __name__ == "__main__":
    main()
