"""A spiking bilateral ALM for the simulated mouse: two hemispheres of LIF pools, stepped per 1 ms.

Mimics the reduced model (docs/simulator.md) qualitatively with spikes instead of a latent ODE: each hemisphere has two
excitatory choice-selective pools (lick-left ``EL``, lick-right ``ER``) with strong recurrent
excitation and a shared inhibitory pool (winner-take-all, so one pool holds a persistent "choice"
state through the delay), and the hemispheres are coupled by weaker callosal excitation between
same-choice pools (modularity: within ≫ across). Sensory drive during the sample
epoch pushes the pool of the instructed side; photoinhibition silences a hemisphere's excitatory
cells; after light offset the silenced hemisphere recovers the choice from callosal input
(and does not without it: ``callosal_scale=0``).

This module owns the model's network description (fixed-point, so the CPU and Lava backends give
identical spikes for identical inputs), the stochastic inputs it draws per step (background,
sensory and light spikes, from its own seeded generator: the network itself is deterministic)
and the latent readout ``x_L, x_R`` (signed choice coordinates from the pools' filtered rates).
It must not read a clock: one ``step`` is 1 ms of model time, whatever wall time it takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from hardware.spiking.backend import Backend
from hardware.spiking.network import Connection, InputPort, Mode, Network, OutputPort, Population
from hardware.spiking.select import Alarm, make_backend

DT_S = 0.001  #: one step is 1 ms of model time
HEMIS = ("L", "R")


@dataclass(frozen=True)
class SpikingALMParams:
    """Parameters of the spiking ALM.

    Couplings ``J_*`` are in *drive* units: the steady drive onto one neuron when
    the whole presynaptic population fires one spike per step; threshold is reached at a drive of
    0.5 (with τ_syn = 20 and τ_m = 10 steps: v_ss = drive · 64 · 20 · 10 = 0.5 · 12,800 = vth · 64).
    Integer weights and ``weight_exp`` are derived per connection from J and the fan-in.
    """

    du: int = 204  #: current decay: τ_syn ≈ 20 ms (4096 / (du + 1)), slow (NMDA-like) for persistence
    dv: int = 410  #: voltage decay: τ_m ≈ 10 ms
    vth: int = 100  #: threshold (×64 internally)
    inhib_size_frac: float = 0.5  #: inhibitory pool size relative to one excitatory pool
    p_conn: float = 1.0  #: connection probability within and between pools (1: homogeneous pools)
    J_ee: float = 30.0  #: recurrent excitation within a choice pool
    J_ei: float = 10.0  #: excitatory cells (both pools) → inhibitory pool
    J_ie: float = -20.0  #: inhibitory pool → excitatory cells (shared: winner-take-all)
    J_self: float = 0.0  #: optional autapse on every E cell (post-spike suppression); 0 = none
    J_cc: float = 7.0  #: callosal, same-choice pool in the other hemisphere (≈ J_ee / 4: modular)
    callosal_scale: float = 1.0  #: 0 = callosotomy
    drive_bg: float = 0.4  #: mean background drive onto E cells (just below threshold 0.5)
    drive_bg_i: float = 0.0  #: background onto inhibitory cells (0: driven by E only)
    bias_sd: float = 0.05  #: per-neuron bias spread (drive units): smooths the population gain
    vth_i: int = 100  #: inhibitory threshold
    du_i: int = 4095  #: inhibitory cells keep no synaptic current (u = this step's input): fast
    dv_i: int = 1365  #: inhibitory membrane τ ≈ 3 ms: inhibition tracks excitation without lag
    p_bg: float = 0.05  #: background spike probability per neuron per step
    drive_sensory: float = 1.5  #: extra drive onto the favoured pool per unit of |sensory input|
    p_drive: float = 0.1  #: sensory spike probability per unit of |sensory input|
    w_light: int = -255  #: light-driven inhibition per spike (one-to-one onto E cells, weight_exp 0)
    p_light: float = 0.8  #: light spike probability per unit of ε
    rate_tau_s: float = 0.05  #: latent readout filter
    rate_ref_hz: float = 40.0  #: x = (rate_R − rate_L) / rate_ref_hz


def _weight(w_eff: float) -> tuple[int, int]:
    """(integer weight, weight_exp) representing an effective per-spike weight as finely as 8 bits allow."""
    if w_eff == 0:
        return 0, 0
    e = -min(16, int(np.floor(np.log2(255.0 / abs(w_eff)))))
    return round(w_eff * 2.0**-e), e


def _gain(du: int, dv: int) -> float:
    """Steady-state gain (steps²) from a constant input to v: 1 / ((du + 1)/4096 · dv/4096)."""
    return 1.0 / ((du + 1) / 4096 * dv / 4096)


def _block(rng: np.random.Generator, n_pre: int, n_post: int, p: float,
           pre_off: int = 0, post_off: int = 0) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    mask = rng.random((n_post, n_pre)) < p
    post, pre = np.nonzero(mask)
    return pre + pre_off, post + post_off


def _conn(name: str, source: str, target: str,
          blocks: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]],
          J: float, fan_in: float) -> Connection:
    w, e = _weight(J / max(fan_in, 1e-9))
    pre = np.concatenate([b[0] for b in blocks])
    post = np.concatenate([b[1] for b in blocks])
    return Connection(name=name, source=source, target=target, pre=pre, post=post,
                      weight=np.full(len(pre), w), weight_exp=e)


def build_network(units_per_hemisphere: int, seed: int, params: SpikingALMParams | None = None) -> Network:
    """The bilateral network description (fixed point).

    Populations ``E_L``, ``E_R`` (each ``units_per_hemisphere`` cells: first half the lick-left
    pool, second half the lick-right pool) and ``I_L``, ``I_R``; input ports ``bg`` (all cells),
    ``drive`` and ``light`` (E cells); outputs ``E_L``, ``E_R``.
    """
    prm = params or SpikingALMParams()
    if units_per_hemisphere < 4 or units_per_hemisphere % 2:
        raise ValueError(f"units_per_hemisphere must be even and ≥ 4, got {units_per_hemisphere}")
    rng = np.random.default_rng(seed)
    n_e = units_per_hemisphere
    n_pool = n_e // 2
    n_i = max(2, round(prm.inhib_size_frac * n_pool))
    p = prm.p_conn
    pops, conns = [], []
    # drive onto I is scaled by the ratio of steady-state gains (E integrates ≈ τ_s·τ_m, I ≈ τ_m)
    g_i = _gain(prm.du, prm.dv) / _gain(min(prm.du_i, 4095), prm.dv_i) * prm.vth_i / prm.vth
    for h in HEMIS:
        # bias in drive units: v_ss = bias · 4096 / dv, threshold vth · 64 ↔ drive 0.5
        scale = prm.vth * 64 / 0.5 * prm.dv / 4096
        b_e = np.clip(np.round(rng.normal(0.0, prm.bias_sd, n_e) * scale), -4096, 4095)
        b_i = np.clip(np.round(rng.normal(0.0, prm.bias_sd, n_i) * prm.vth_i * 64 / 0.5 * prm.dv_i / 4096),
                      -4096, 4095)
        pops.append(Population(name=f"E_{h}", size=n_e, du=prm.du, dv=prm.dv, vth=prm.vth,
                               bias_mant=b_e.tolist()))
        pops.append(Population(name=f"I_{h}", size=n_i, du=prm.du_i, dv=prm.dv_i, vth=prm.vth_i,
                               bias_mant=b_i.tolist()))
    for h in HEMIS:
        # recurrent excitation within each pool (block diagonal), none across pools
        ee = [_block(rng, n_pool, n_pool, p, k * n_pool, k * n_pool) for k in (0, 1)]
        conns.append(_conn(f"EE_{h}", f"E_{h}", f"E_{h}", ee, prm.J_ee, p * n_pool))
        if prm.J_self:
            idx = np.arange(n_e)
            conns.append(_conn(f"self_{h}", f"E_{h}", f"E_{h}", [(idx, idx)], prm.J_self, 1.0))
        conns.append(_conn(f"EI_{h}", f"E_{h}", f"I_{h}", [_block(rng, n_e, n_i, p)], prm.J_ei * g_i, p * n_e))
        conns.append(_conn(f"IE_{h}", f"I_{h}", f"E_{h}", [_block(rng, n_i, n_e, p)], prm.J_ie, p * n_i))
    if prm.J_cc * prm.callosal_scale > 0:
        for h, o in (("L", "R"), ("R", "L")):
            cc = [_block(rng, n_pool, n_pool, p, k * n_pool, k * n_pool) for k in (0, 1)]
            conns.append(_conn(f"CC_{h}{o}", f"E_{h}", f"E_{o}", cc, prm.J_cc * prm.callosal_scale, p * n_pool))
    n_all = 2 * (n_e + n_i)
    inputs = [InputPort(name="bg", size=n_all), InputPort(name="drive", size=2 * n_e),
              InputPort(name="light", size=2 * n_e)]
    off = 0
    for h in HEMIS:
        for pop, n in ((f"E_{h}", n_e), (f"I_{h}", n_i)):
            idx = np.arange(n)
            d_bg = prm.drive_bg if pop.startswith("E") else prm.drive_bg_i * g_i
            conns.append(_conn(f"bg_{pop}", "bg", pop, [(idx + off, idx)], d_bg, prm.p_bg))
            off += n
    for k, h in enumerate(HEMIS):
        idx = np.arange(n_e)
        conns.append(_conn(f"drive_{h}", "drive", f"E_{h}", [(idx + k * n_e, idx)], prm.drive_sensory,
                           prm.p_drive))
        conns.append(Connection(name=f"light_{h}", source="light", target=f"E_{h}", pre=idx + k * n_e,
                                post=idx, weight=np.full(n_e, prm.w_light)))
    return Network(name=f"spiking-alm-{units_per_hemisphere}-{seed}", mode=Mode.FIXED, populations=pops,
                   inputs=inputs, outputs=[OutputPort(name=f"E_{h}", population=f"E_{h}") for h in HEMIS],
                   connections=conns,
                   metadata={"model": "spiking bilateral ALM", "seed": seed, "params": prm.__dict__})


class SpikingALM:
    """The spiking ALM stepped per 1-ms bin by the simulated mouse.

    Units are the excitatory cells: ``n_units = 2 × units_per_hemisphere``, left hemisphere first;
    ``hemisphere`` gives each unit's side (0 left, 1 right) and ``pool`` its choice pool
    (−1 lick-left, +1 lick-right).
    """

    def __init__(self, backend_kind: Literal["cpu", "lava"] = "cpu", seed: int = 0,
                 units_per_hemisphere: int = 100, params: SpikingALMParams | None = None, *,
                 deadline_s: float = 0.010, alarm: Alarm | None = None,
                 backend: Backend | None = None, fused: bool = True) -> None:
        self.params = params or SpikingALMParams()
        self.net = build_network(units_per_hemisphere, seed, self.params)
        self.backend: Backend = backend or make_backend(self.net, backend_kind, deadline_s=deadline_s,
                                                        alarm=alarm, fused=fused)
        self.rng = np.random.default_rng(seed + 1_000_003)
        self.n_per_hemi = units_per_hemisphere
        self.n_units = 2 * units_per_hemisphere
        n_pool = units_per_hemisphere // 2
        self.hemisphere = np.repeat(np.array([0, 1], np.int8), units_per_hemisphere)
        self.pool = np.tile(np.repeat(np.array([-1, 1], np.int8), n_pool), 2)
        self._n_bg = self.net.input_port("bg").size
        self._counts = np.zeros(self.n_units, np.int64)
        self._rates = np.zeros(4)  # EL_L, ER_L, EL_R, ER_R in Hz, filtered
        self._alpha = DT_S / self.params.rate_tau_s
        self.t_steps = 0

    @property
    def x(self) -> tuple[float, float]:
        """Latent choice coordinates (x_L, x_R): (rate of lick-right pool − lick-left pool) / rate_ref."""
        r = self._rates / self.params.rate_ref_hz
        return float(r[1] - r[0]), float(r[3] - r[2])

    @property
    def pool_rates_hz(self) -> npt.NDArray[np.float64]:
        """Filtered rates of (EL_L, ER_L, EL_R, ER_R) in Hz."""
        return self._rates.copy()

    def step(self, sensory_input_left: float = 0.0, sensory_input_right: float = 0.0,
             light_eps_left: float = 0.0, light_eps_right: float = 0.0) -> npt.NDArray[np.int64]:
        """Advance 1 ms; return the spike counts of this bin (n_units,), overwritten next step.

        Sensory inputs are signed (> 0 favours lick right, as u(t) of the reduced model);
        light ε ∈ [0, 1] silences a hemisphere's excitatory cells.
        """
        prm = self.params
        n = self.n_per_hemi
        half = n // 2
        bg = self.rng.random(self._n_bg) < prm.p_bg
        drive = np.zeros(2 * n, np.bool_)
        for k, s in enumerate((sensory_input_left, sensory_input_right)):
            if s != 0.0:
                lo = k * n + (half if s > 0 else 0)
                drive[lo:lo + half] = self.rng.random(half) < min(1.0, prm.p_drive * abs(s))
        light = np.zeros(2 * n, np.bool_)
        for k, eps in enumerate((light_eps_left, light_eps_right)):
            if eps > 0.0:
                light[k * n:(k + 1) * n] = self.rng.random(n) < min(1.0, prm.p_light * eps)
        out = self.backend.step({"bg": bg, "drive": drive, "light": light})
        self._counts[:n] = out["E_L"]
        self._counts[n:] = out["E_R"]
        self._update_rates()
        return self._counts

    def step_block(self, k: int, sensory_input_left: float = 0.0, sensory_input_right: float = 0.0,
                   light_eps_left: float = 0.0, light_eps_right: float = 0.0) -> npt.NDArray[np.int64]:
        """Advance k ms with inputs held constant (e.g. one frame); spike counts per ms (k, n_units).

        One backend round trip for the k steps (``step_many``): the batching that lets Lava keep a
        10-ms decision budget. Same random draws and the same spikes as k calls of :meth:`step`.
        """
        prm = self.params
        n = self.n_per_hemi
        half = n // 2
        bg = np.zeros((k, self._n_bg), np.bool_)
        drive = np.zeros((k, 2 * n), np.bool_)
        light = np.zeros((k, 2 * n), np.bool_)
        for t in range(k):  # draw in the order step() draws, so both paths see the same inputs
            bg[t] = self.rng.random(self._n_bg) < prm.p_bg
            for j, s in enumerate((sensory_input_left, sensory_input_right)):
                if s != 0.0:
                    lo = j * n + (half if s > 0 else 0)
                    drive[t, lo:lo + half] = self.rng.random(half) < min(1.0, prm.p_drive * abs(s))
            for j, eps in enumerate((light_eps_left, light_eps_right)):
                if eps > 0.0:
                    light[t, j * n:(j + 1) * n] = self.rng.random(n) < min(1.0, prm.p_light * eps)
        out = self.backend.step_many({"bg": bg, "drive": drive, "light": light}, k)
        counts = np.concatenate([out["E_L"], out["E_R"]], axis=1).astype(np.int64)
        for t in range(k):
            self._counts[:] = counts[t]
            self._update_rates()
        return counts

    def _update_rates(self) -> None:
        n, half, c = self.n_per_hemi, self.n_per_hemi // 2, self._counts
        inst = np.array([c[:half].mean(), c[half:n].mean(), c[n:n + half].mean(), c[n + half:].mean()]) / DT_S
        self._rates += self._alpha * (inst - self._rates)
        self.t_steps += 1

    def reset_readout(self) -> None:
        """Clear the latent readout's filter (not the network state)."""
        self._rates[:] = 0.0

    def close(self) -> None:
        """Stop the backend (the Lava sidecar, if any)."""
        self.backend.close()

    def __enter__(self) -> SpikingALM:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
