"""The in-process numba backend: runs a :class:`~hardware.spiking.network.Network` step by step.

This module owns the CPU arithmetic. In fixed mode it reproduces Lava 0.10's bit-accurate models
operation by operation (``PyLifModelBitAcc``: 12-bit decays with sign-magnitude truncation, 6-bit
MSB alignment of input and threshold, 24-bit wrap of ``u``, clip of ``v``; ``PyDenseModelBitAcc``
/ ``PySparseModelBitAcc`` / their Delay variants: 8-bit clipped and truncated weights, per-target
sums shifted by ``weight_exp``, 32-bit channels), so spikes and voltages are bit-identical with
Lava's CPU simulator. In float mode it follows the ``floating_pt`` models (summation order may
differ in the last bits).

Layout: all populations are concatenated into one neuron index space and all input ports are
appended after it (the *source* space). Each connection is a CSR matrix by presynaptic index with
a ring buffer of ``max_delay + 1`` slots per target; a step propagates only the rows of sources
that spiked, so cost scales with spikes × fan-out, not with synapses. It must not do I/O.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from hardware.spiking.backend import Record, check_input_names, input_matrix
from hardware.spiking.network import Mode, Network, effective_weights

_M = 1 << 23  # 24-bit state range of u and v on Loihi


@numba.njit(cache=True, inline="always")
def _wrap32(x: int) -> int:  # pragma: no cover - numba
    """Two's-complement wrap to int32, as numpy int32 arithmetic does."""
    return ((x + 2147483648) & 0xFFFFFFFF) - 2147483648


@numba.njit(cache=True, inline="always")
def _decay(x: int, keep: int) -> int:  # pragma: no cover - numba
    """sign(x·keep) · (|x·keep| >> 12): Loihi's truncating 12-bit decay."""
    p = x * keep
    return (p >> 12) if p >= 0 else -((-p) >> 12)


@numba.njit(cache=True)
def _gather_fixed(a_in: Any, ring: Any, head: Any, c_post_off: Any, c_n_post: Any, c_d1: Any,
                  c_ring_off: Any) -> None:  # pragma: no cover - numba
    a_in[:] = 0
    for c in range(c_post_off.shape[0]):
        n_post = c_n_post[c]
        base = c_ring_off[c] + head[c] * n_post
        po = c_post_off[c]
        for p in range(n_post):
            a_in[po + p] = _wrap32(a_in[po + p] + ring[base + p])
            ring[base + p] = 0
        head[c] = (head[c] + 1) % c_d1[c]


@numba.njit(cache=True)
def _propagate(src: Any, ring: Any, scratch: Any, head: Any, c_src_off: Any, c_n_pre: Any,
               c_n_post: Any, c_d1: Any, c_ring_off: Any, c_ptr_off: Any, c_shift: Any, indptr: Any,
               syn_post: Any, syn_w: Any, syn_d: Any, fixed: bool) -> None:  # pragma: no cover - numba
    for c in range(c_src_off.shape[0]):
        n_post = c_n_post[c]
        d1 = c_d1[c]
        sc = c_ring_off[c]
        so = c_src_off[c]
        po = c_ptr_off[c]
        hit = False
        for i in range(c_n_pre[c]):
            s = src[so + i]
            if s != 0:
                hit = True
                for j in range(indptr[po + i], indptr[po + i + 1]):
                    scratch[sc + syn_d[j] * n_post + syn_post[j]] += syn_w[j] * s
        if not hit:
            continue
        sh = c_shift[c]
        h = head[c]
        for dd in range(d1):
            rb = c_ring_off[c] + ((h + dd) % d1) * n_post
            sb = sc + dd * n_post
            for p in range(n_post):
                x = scratch[sb + p]
                if x != 0:
                    scratch[sb + p] = 0
                    if fixed:
                        xi = np.int64(x)
                        xi = (xi << sh) if sh > 0 else (xi >> -sh)
                        ring[rb + p] = _wrap32(np.int64(ring[rb + p]) + xi)
                    else:
                        ring[rb + p] += x


@numba.njit(cache=True)
def _lif_fixed(a_in: Any, u: Any, v: Any, keep_u: Any, keep_v: Any, vth6: Any, bias: Any,
               src: Any) -> None:  # pragma: no cover - numba
    lim = _M - 1
    for i in range(u.shape[0]):
        d = _wrap32(_decay(u[i], keep_u[i]))
        act = _wrap32(a_in[i] << 6)
        d = _wrap32(d + act)
        w = d
        if d > _M:
            w = d - 2 * _M
        if w <= -_M:
            w = _wrap32(d + 2 * _M)
        u[i] = w
        nv = _wrap32(_wrap32(_decay(v[i], keep_v[i])) + u[i] + bias[i])
        if nv > lim:
            nv = lim
        elif nv < -lim:
            nv = -lim
        if nv > vth6[i]:
            src[i] = 1
            v[i] = 0
        else:
            src[i] = 0
            v[i] = nv


@numba.njit(cache=True)
def _lif_float(a_in: Any, u: Any, v: Any, du: Any, dv: Any, vth: Any, bias: Any, refr: Any,
               ref_end: Any, t: int, src: Any) -> None:  # pragma: no cover - numba
    for i in range(u.shape[0]):
        u[i] = u[i] * (1.0 - du[i])
        u[i] += a_in[i]
        if ref_end[i] < t:
            v[i] = v[i] * (1.0 - dv[i]) + (u[i] + bias[i])
        if v[i] > vth[i]:
            src[i] = 1.0
            v[i] = 0.0
            ref_end[i] = t + refr[i]
        else:
            src[i] = 0.0


@numba.njit(cache=True)
def _gather_float(a_in: Any, ring: Any, head: Any, c_post_off: Any, c_n_post: Any, c_d1: Any,
                  c_ring_off: Any) -> None:  # pragma: no cover - numba
    a_in[:] = 0.0
    for c in range(c_post_off.shape[0]):
        n_post = c_n_post[c]
        base = c_ring_off[c] + head[c] * n_post
        po = c_post_off[c]
        for p in range(n_post):
            a_in[po + p] += ring[base + p]
            ring[base + p] = 0.0
        head[c] = (head[c] + 1) % c_d1[c]


class CpuBackend:
    """Runs a network in-process with numba kernels.

    ``step`` returns a dict of output spike arrays that are *overwritten on the next step*
    (the hot path allocates nothing); copy them to keep them. ``u(pop)`` / ``v(pop)`` are views
    of the live state.
    """

    kind = "cpu"

    def __init__(self, net: Network) -> None:
        self.net = net
        self.fixed = net.mode is Mode.FIXED
        dt = np.int64 if self.fixed else np.float64
        self.n_neurons = net.n_neurons
        self.pop_off: dict[str, int] = {}
        off = 0
        for p in net.populations:
            self.pop_off[p.name] = off
            off += p.size
        self.src_off: dict[str, int] = dict(self.pop_off)
        for ip in net.inputs:
            self.src_off[ip.name] = off
            off += ip.size
        n_src = off
        N = self.n_neurons
        self.src = np.zeros(n_src, dtype=dt)
        self.a_in = np.zeros(N, dtype=dt)
        self._u = np.zeros(N, dtype=dt)
        self._v = np.zeros(N, dtype=dt)
        self.bias = np.concatenate([p.bias_array() for p in net.populations])
        if self.fixed:
            self.keep_u = np.concatenate([np.full(p.size, 4096 - (int(p.du) + 1)) for p in net.populations])
            self.keep_v = np.concatenate([np.full(p.size, 4096 - int(p.dv)) for p in net.populations])
            self.vth6 = np.concatenate([np.full(p.size, int(p.vth) << 6) for p in net.populations])
            self.bias = np.concatenate([np.left_shift(p.bias_array().astype(np.int64), p.bias_exp)
                                        for p in net.populations])
            self.keep_u = self.keep_u.astype(np.int64)
            self.keep_v = self.keep_v.astype(np.int64)
            self.vth6 = self.vth6.astype(np.int64)
        else:
            self.du = np.concatenate([np.full(p.size, p.du) for p in net.populations])
            self.dv = np.concatenate([np.full(p.size, p.dv) for p in net.populations])
            self.vth = np.concatenate([np.full(p.size, p.vth) for p in net.populations])
            self.refr = np.concatenate([np.full(p.size, p.refractory_period, dtype=np.int64)
                                        for p in net.populations])
            self.ref_end = np.zeros(N, dtype=np.int64)
        # connections -> flat CSR by presynaptic index
        C = len(net.connections)
        self.c_src_off = np.zeros(C, np.int64)
        self.c_n_pre = np.zeros(C, np.int64)
        self.c_post_off = np.zeros(C, np.int64)
        self.c_n_post = np.zeros(C, np.int64)
        self.c_d1 = np.ones(C, np.int64)
        self.c_ring_off = np.zeros(C, np.int64)
        self.c_ptr_off = np.zeros(C, np.int64)
        self.c_shift = np.zeros(C, np.int64)
        indptrs: list[npt.NDArray[np.int64]] = []
        posts: list[npt.NDArray[np.int64]] = []
        ws: list[npt.NDArray[Any]] = []
        ds: list[npt.NDArray[np.int64]] = []
        ring_size = ptr_size = 0
        for k, c in enumerate(net.connections):
            n_pre, n_post = net.source_size(c.source), net.population(c.target).size
            w = effective_weights(c, n_post, n_pre) if self.fixed else c.weight
            d = np.zeros(c.n_synapses, np.int64) if c.delay is None else c.delay
            order = np.lexsort((c.post, c.pre))
            indptr = np.zeros(n_pre + 1, np.int64)
            np.add.at(indptr, c.pre + 1, 1)
            indptrs.append(np.cumsum(indptr) + int(sum(len(x) for x in posts)))
            posts.append(c.post[order])
            ws.append(w[order])
            ds.append(d[order])
            self.c_src_off[k] = self.src_off[c.source]
            self.c_n_pre[k] = n_pre
            self.c_post_off[k] = self.pop_off[c.target]
            self.c_n_post[k] = n_post
            self.c_d1[k] = c.max_delay + 1
            self.c_ring_off[k] = ring_size
            self.c_ptr_off[k] = ptr_size
            self.c_shift[k] = c.weight_exp
            ring_size += n_post * (c.max_delay + 1)
            ptr_size += n_pre + 1
        self.indptr = np.concatenate(indptrs) if indptrs else np.zeros(1, np.int64)
        self.syn_post = np.concatenate(posts).astype(np.int64) if posts else np.zeros(0, np.int64)
        self.syn_w = np.concatenate(ws).astype(dt) if ws else np.zeros(0, dt)
        self.syn_d = np.concatenate(ds).astype(np.int64) if ds else np.zeros(0, np.int64)
        self.ring = np.zeros(ring_size, dtype=dt)
        self.scratch = np.zeros(ring_size, dtype=dt)
        self.head = np.zeros(C, np.int64)
        self.t = 0
        self._bin = np.zeros(max([i.size for i in net.inputs], default=0), np.bool_)
        self._out = {o.name: np.zeros(net.population(o.population).size, dtype=np.bool_) for o in net.outputs}
        self._out_src = [(o.name, self.pop_off[o.population], net.population(o.population).size)
                         for o in net.outputs]

    # ----- state ---------------------------------------------------------------------------
    def _slice(self, pop: str) -> slice:
        o = self.pop_off[pop]
        return slice(o, o + self.net.population(pop).size)

    def u(self, pop: str) -> npt.NDArray[Any]:
        """Live current ``u`` of a population (int64 holding int32 values in fixed mode)."""
        return self._u[self._slice(pop)]

    def v(self, pop: str) -> npt.NDArray[Any]:
        """Live voltage ``v`` of a population."""
        return self._v[self._slice(pop)]

    def spikes(self, pop: str) -> npt.NDArray[Any]:
        """Spikes of a population at the last step (0/1)."""
        return self.src[self._slice(pop)]

    def reset(self) -> None:
        """Zero all state (u, v, in-flight synaptic input, step counter)."""
        for a in (self.src, self.a_in, self._u, self._v, self.ring, self.scratch, self.head):
            a[:] = 0
        if not self.fixed:
            self.ref_end[:] = 0
        self.t = 0

    # ----- stepping ------------------------------------------------------------------------
    def _advance(self) -> None:
        self.t += 1
        if self.fixed:
            _gather_fixed(self.a_in, self.ring, self.head, self.c_post_off, self.c_n_post, self.c_d1,
                          self.c_ring_off)
            _lif_fixed(self.a_in, self._u, self._v, self.keep_u, self.keep_v, self.vth6, self.bias, self.src)
        else:
            _gather_float(self.a_in, self.ring, self.head, self.c_post_off, self.c_n_post, self.c_d1,
                          self.c_ring_off)
            _lif_float(self.a_in, self._u, self._v, self.du, self.dv, self.vth, self.bias, self.refr,
                       self.ref_end, self.t, self.src)
        # the gather advanced the heads; propagation writes relative to the new head
        _propagate(self.src, self.ring, self.scratch, self.head, self.c_src_off, self.c_n_pre,
                   self.c_n_post, self.c_d1, self.c_ring_off, self.c_ptr_off, self.c_shift, self.indptr,
                   self.syn_post, self.syn_w, self.syn_d, self.fixed)

    def _set_inputs(self, inputs: dict[str, npt.NDArray[Any]] | None) -> None:
        # hot path: write straight into the source vector (no temporaries for the common dtypes)
        for ip in self.net.inputs:
            o = self.src_off[ip.name]
            dst = self.src[o:o + ip.size]
            a = None if inputs is None else inputs.get(ip.name)
            if a is None:
                dst[:] = 0
                continue
            if np.shape(a) != (ip.size,):
                raise ValueError(f"input {ip.name!r}: expected shape {(ip.size,)}, got {np.shape(a)}")
            if ip.graded:
                dst[:] = a  # fixed mode: integer payloads (floats are truncated toward zero)
            else:
                np.not_equal(a, 0, out=self._bin[:ip.size])
                dst[:] = self._bin[:ip.size]

    def step(self, inputs: dict[str, npt.NDArray[Any]] | None = None) -> dict[str, npt.NDArray[np.bool_]]:
        """One time step; returns output spikes per port (arrays overwritten next step)."""
        if inputs:
            check_input_names(self.net, inputs)
        self._set_inputs(inputs)
        self._advance()
        for name, o, n in self._out_src:
            np.not_equal(self.src[o:o + n], 0, out=self._out[name])
        return self._out

    def step_many(self, inputs: dict[str, npt.NDArray[Any]] | None, k: int) -> dict[str, npt.NDArray[np.bool_]]:
        """Advance k steps: inputs (k, size) per port → output spikes (k, size) per port (new arrays)."""
        out = {name: np.zeros((k, len(a)), np.bool_) for name, a in self._out.items()}
        for t in range(k):
            got = self.step({n: a[t] for n, a in (inputs or {}).items()})
            for name, a in got.items():
                out[name][t] = a
        return out

    def run(self, n_steps: int, inputs: dict[str, npt.NDArray[Any]] | None = None) -> Record:
        """``n_steps`` steps with inputs (port → (n_steps, size)); records spikes, v, u per population."""
        inputs = inputs or {}
        check_input_names(self.net, inputs)
        mats = {k: input_matrix(self.net, k, a, n_steps) for k, a in inputs.items()}
        N = self.n_neurons
        S = np.zeros((n_steps, N), np.bool_)
        V = np.zeros((n_steps, N), self._v.dtype)
        U = np.zeros((n_steps, N), self._u.dtype)
        for t in range(n_steps):
            for ip in self.net.inputs:
                o = self.src_off[ip.name]
                if ip.name in mats:
                    self.src[o:o + ip.size] = mats[ip.name][t]
                else:
                    self.src[o:o + ip.size] = 0
            self._advance()
            S[t] = self.src[:N] != 0
            V[t] = self._v
            U[t] = self._u
        rec = Record(n_steps=n_steps)
        for p in self.net.populations:
            s = self._slice(p.name)
            rec.spikes[p.name], rec.v[p.name], rec.u[p.name] = S[:, s], V[:, s], U[:, s]
        return rec

    def close(self) -> None:
        """Nothing to release (in-process)."""
