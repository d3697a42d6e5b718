"""Lava sidecar: runs a rigd spiking network on Lava and streams it to rigd over ZeroMQ.

Runs under the Lava venv's Python 3.10 (``.venv-lava/bin/python``), never inside rigd: lava-nc
0.10 supports Python < 3.11 only. It owns building a network file (written by
``hardware.spiking.network.Network.save``; read here without pydantic) from stock lava.proc
processes (LIF / LIFRefractory, Dense / DelayDense, Sparse / DelaySparse), running it with
Loihi2SimCfg (``fixed_pt`` or ``floating_pt`` models) or Loihi2HwCfg (``--hw``), and the wire
protocol with ``hardware/spiking/lava.py``. It must not import rigd modules.

Two ways in and out, both stock Lava:

* streaming (``step`` requests): one ``lava.proc.io.injector.Injector`` per input port and one
  ``lava.proc.io.extractor.Extractor`` per output port, the network run with ``RunContinuous``.
  The injectors block on an empty buffer, so the network advances exactly one step per injected
  input vector: rigd sends k input vectors and receives k output vectors per round trip.
* batch (``run`` requests): a fresh copy of the network fed by ``lava.proc.io.source.RingBuffer``
  sources, spikes out through one Extractor per population, ``RunSteps(1)`` per step with
  ``v``/``u`` read by ``Var.get()`` after each (slow, for equivalence tests, not for speed).

Wire: a ``zmq.PAIR`` socket connected to ``--endpoint``; every message is multipart
``[json header, array frames...]`` with each array's dtype and shape in ``header["arrays"]``.
The sidecar first sends ``{"event": "ready", ...}`` (or ``{"event": "error", "error": ...}``).
Requests: ``{"cmd": "step", "k": k}`` + one (k, size) frame per input port (network order) →
one (k, size) uint8 frame per output port; ``{"cmd": "run", "n_steps": n}`` + one frame per input
port → frames ``spikes/<pop>``, ``v/<pop>``, ``u/<pop>``; ``{"cmd": "load", "path": p}`` (batch-only
sidecars: replace the network); ``{"cmd": "ping"}``; ``{"cmd": "stop"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
import typing as ty

# This file sits beside rigd's lava.py: drop its own folder from the path so that "import lava"
# finds lava-nc, not hardware/spiking/lava.py.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _here]

import numpy as np  # noqa: E402
import zmq  # noqa: E402


# ----------------------------------------------------------------------------- wire
def send_msg(sock: zmq.Socket, header: dict, arrays: ty.Sequence[tuple[str, np.ndarray]] = ()) -> None:
    """Send a header and named arrays as one multipart message."""
    header = dict(header)
    header["arrays"] = [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays]
    sock.send_multipart([json.dumps(header).encode()] + [np.ascontiguousarray(a).data for _, a in arrays],
                        copy=False)


def recv_msg(sock: zmq.Socket) -> tuple[dict, dict[str, np.ndarray]]:
    """Receive a header and its named arrays."""
    frames = sock.recv_multipart(copy=False)
    header = json.loads(bytes(frames[0].buffer).decode())
    arrays = {}
    for spec, fr in zip(header.get("arrays", []), frames[1:], strict=False):
        arrays[spec["name"]] = np.frombuffer(fr.buffer, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"])
    return header, arrays


# ----------------------------------------------------------------------------- network file
def load_network(path: str) -> tuple[dict, list[dict]]:
    """The JSON description and, per connection, its pre/post/weight/delay arrays."""
    with np.load(path) as z:
        doc = json.loads(bytes(z["network.json"]).decode())
        conns = []
        for i, _ in enumerate(doc["connections"]):
            conns.append({
                "pre": z[f"c{i}.pre"].astype(np.int64),
                "post": z[f"c{i}.post"].astype(np.int64),
                "weight": z[f"c{i}.weight"].astype(np.float64),
                "delay": z[f"c{i}.delay"].astype(np.int64) if f"c{i}.delay" in z.files else None,
            })
    return doc, conns


def components(doc: dict) -> list[set[str]]:
    """Connected components of populations and input ports (by connections), in population order."""
    parent = {p["name"]: p["name"] for p in doc["populations"]}
    parent.update({i["name"]: i["name"] for i in doc["inputs"]})

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for c in doc["connections"]:
        parent[find(c["source"])] = find(c["target"])
    comps: dict[str, set[str]] = {}
    for p in doc["populations"]:
        comps.setdefault(find(p["name"]), set()).add(p["name"])
    for i in doc["inputs"]:
        comps.setdefault(find(i["name"]), set()).add(i["name"])
    return [c for c in comps.values() if any(p["name"] in c for p in doc["populations"])]


class Built:
    """The Lava processes of one instance of the network."""

    def __init__(self) -> None:
        self.lifs: dict[str, ty.Any] = {}
        self.conns: list[ty.Any] = []
        self.injectors: dict[str, ty.Any] = {}
        self.extractors: dict[str, ty.Any] = {}
        self.sources: dict[str, ty.Any] = {}


def build(doc: dict, arrays: list[dict], io: str, buffer_size: int = 64,
          n_steps: int = 0, inputs: dict[str, np.ndarray] | None = None) -> Built:
    """Instantiate the network from lava.proc processes; ``io`` is "stream" or "batch"."""
    from lava.proc.dense.process import DelayDense, Dense
    from lava.proc.io.extractor import Extractor
    from lava.proc.io.injector import Injector
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIF, LIFRefractory
    from lava.proc.sparse.process import DelaySparse, Sparse
    from scipy.sparse import csr_matrix

    fixed = doc["mode"] == "fixed"
    b = Built()
    num = int if fixed else float
    for p in doc["populations"]:
        n = p["size"]
        bias = np.broadcast_to(np.asarray(p["bias_mant"], dtype=np.float64), (n,)).copy()
        kw = dict(shape=(n,), du=num(p["du"]), dv=num(p["dv"]), vth=num(p["vth"]),
                  bias_mant=bias.astype(np.int32) if fixed else bias,
                  bias_exp=np.full(n, p["bias_exp"], dtype=np.int32) if fixed else 0,
                  name=p["name"])
        if p.get("refractory_period", 0):
            b.lifs[p["name"]] = LIFRefractory(refractory_period=int(p["refractory_period"]), **kw)
        else:
            b.lifs[p["name"]] = LIF(**kw)
    sizes = {p["name"]: p["size"] for p in doc["populations"]}
    graded = {}
    for ip in doc["inputs"]:
        sizes[ip["name"]] = ip["size"]
        graded[ip["name"]] = ip["graded"]
        if io == "stream":
            if fixed and ip["graded"]:
                raise RuntimeError(f"graded input {ip['name']!r} in fixed point: Lava 0.10's Injector "
                                   "emits floats, which the bit-accurate Dense cannot shift; stream "
                                   "with --fused, or run batches (RingBuffer sources are int32)")
            inj = Injector(shape=(ip["size"],), buffer_size=buffer_size)
            b.injectors[ip["name"]] = inj
            b.sources[ip["name"]] = inj.out_port
        else:
            data = np.zeros((ip["size"], max(n_steps, 1)))
            if inputs is not None and ip["name"] in inputs:
                data = np.asarray(inputs[ip["name"]]).T
            rb = RingBuffer(data=data.astype(np.int32) if fixed else data.astype(np.float64))
            b.injectors[ip["name"]] = rb
            b.sources[ip["name"]] = rb.s_out
    for name, lif in b.lifs.items():
        b.sources[name] = lif.s_out
    # Lava compiles only the processes connected to the one ``run`` is called on, and a
    # component without an injector would free-run ahead of rigd: link every component to one
    # clock source through an all-zero Dense (adds nothing to any a_in).
    comps = components(doc)
    if len(comps) > 1 or (io == "stream" and not any(i["name"] in comps[0] for i in doc["inputs"])):
        if io == "stream":
            clock = Injector(shape=(1,), buffer_size=buffer_size)
            b.injectors["__clock__"] = clock
            clock_port = clock.out_port
        else:
            clock = RingBuffer(data=np.zeros((1, max(n_steps, 1)), dtype=np.int32 if fixed else np.float64))
            clock_port = clock.s_out
        for comp in comps:
            first = next(p for p in doc["populations"] if p["name"] in comp)
            link = Dense(weights=np.zeros((first["size"], 1), dtype=np.int32 if fixed else np.float64))
            clock_port.connect(link.s_in)
            link.a_out.connect(b.lifs[first["name"]].a_in)
            b.conns.append(link)
    for c, a in zip(doc["connections"], arrays, strict=True):
        n_pre, n_post = sizes[c["source"]], sizes[c["target"]]
        w = a["weight"].astype(np.int32) if fixed else a["weight"]
        d = a["delay"]
        max_delay = 0 if d is None or d.size == 0 else int(d.max())
        kw = dict(num_message_bits=8 if graded.get(c["source"], False) else 0, name=c["name"])
        if fixed:
            kw.update(weight_exp=int(c["weight_exp"]), num_weight_bits=int(c["num_weight_bits"]))
        if c["kind"] == "dense":
            W = np.zeros((n_post, n_pre), dtype=w.dtype)
            W[a["post"], a["pre"]] = w
            if max_delay > 0:
                D = np.zeros((n_post, n_pre), dtype=np.int64)
                D[a["post"], a["pre"]] = d
                proc = DelayDense(weights=W, delays=D, max_delay=max_delay, **kw)
            else:
                proc = Dense(weights=W, **kw)
        else:
            W = csr_matrix((w, (a["post"], a["pre"])), shape=(n_post, n_pre))
            if max_delay > 0:
                D = csr_matrix((d.astype(np.int64), (a["post"], a["pre"])), shape=(n_post, n_pre))
                proc = DelaySparse(weights=W, delays=D, max_delay=max_delay, **kw)
            else:
                proc = Sparse(weights=W, **kw)
        b.sources[c["source"]].connect(proc.s_in)
        proc.a_out.connect(b.lifs[c["target"]].a_in)
        b.conns.append(proc)
    if io == "stream":
        for o in doc["outputs"]:
            ex = Extractor(shape=(sizes[o["population"]],), buffer_size=buffer_size)
            b.lifs[o["population"]].s_out.connect(ex.in_port)
            b.extractors[o["name"]] = ex
    else:
        # lava.proc.monitor.Monitor cannot hold several probes of one process in 0.10 (its
        # get_data keeps one Var per process, and a Var probe leaves an unmodelled InPort), so
        # spikes come out through one Extractor per population and v, u through Var.get().
        for name, lif in b.lifs.items():
            ex = Extractor(shape=(sizes[name],), buffer_size=max(n_steps, 1) + 1)
            lif.s_out.connect(ex.in_port)
            b.extractors[name] = ex
    return b


def run_config(fixed: bool, hw: bool) -> ty.Any:
    """Loihi2SimCfg with the right tag, or Loihi2HwCfg (failing clearly without Loihi)."""
    if hw:
        from lava.utils import loihi
        if not loihi.is_installed("lava.magma.compiler.subcompilers.nc") and \
                not loihi.is_installed("nxcore"):
            raise RuntimeError("--hw: no Loihi 2 here: lava-loihi (the Loihi 2 extension of Lava, "
                               "available to Intel's INRC members) is not installed and no Loihi "
                               "host is configured; run without --hw to use Loihi2SimCfg")
        from lava.magma.core.run_configs import Loihi2HwCfg
        return Loihi2HwCfg()
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
    from lava.proc.io.injector import Injector, PyLoihiInjectorModel
    # The injector/extractor models are untagged and come in two protocols, so select_tag alone
    # finds none: name the LoihiProtocol ones explicitly.
    return Loihi2SimCfg(select_tag="fixed_pt" if fixed else "floating_pt",
                        exception_proc_model_map={Injector: PyLoihiInjectorModel,
                                                  Extractor: PyLoihiExtractorModel})


def any_process(b: Built) -> ty.Any:
    """A process of the network (``run`` on one runs the whole connected graph)."""
    return next(iter(b.lifs.values()))


def batch_run(doc: dict, arrays: list[dict], n_steps: int, inputs: dict[str, np.ndarray],
              hw: bool) -> list[tuple[str, np.ndarray]]:
    """A fresh instance run for ``n_steps``; spikes, v and u per population."""
    from lava.magma.core.run_conditions import RunSteps
    fixed = doc["mode"] == "fixed"
    b = build(doc, arrays, "batch", n_steps=n_steps, inputs=inputs)
    proc = any_process(b)
    cfg = run_config(fixed, hw)
    dt = np.int64 if fixed else np.float64
    v = {n: np.zeros((n_steps, lif.v.shape[0]), dt) for n, lif in b.lifs.items()}
    u = {n: np.zeros((n_steps, lif.u.shape[0]), dt) for n, lif in b.lifs.items()}
    for t in range(n_steps):  # one step per run call so that v and u can be read every step
        proc.run(condition=RunSteps(num_steps=1), run_cfg=cfg)
        for n, lif in b.lifs.items():
            v[n][t] = lif.v.get()
            u[n][t] = lif.u.get()
    spikes = {n: np.stack([ex.receive() for _ in range(n_steps)]) if n_steps else
              np.zeros((0, b.lifs[n].v.shape[0])) for n, ex in b.extractors.items()}
    proc.stop()
    out = []
    for name in b.lifs:
        out.append((f"spikes/{name}", (spikes[name] != 0).astype(np.uint8)))
        out.append((f"v/{name}", v[name]))
        out.append((f"u/{name}", u[name]))
    return out


# ----------------------------------------------------------------------------- fused network
_FUSED: dict = {}


def fused_classes() -> tuple:
    """A Lava Process + PyLoihiProcessModel running the *whole* network in one OS process.

    Stock Lava runs every LIF/Dense/Sparse/Injector/Extractor as its own OS process that the
    runtime synchronises through pipes every step; this model runs the same arithmetic (the
    stock models' numpy code, operation for operation: same weight clipping/truncation, same
    32-bit channels, same LIF update) in one process whose InPort and OutPort are external
    pipes (the mechanism Lava's Injector/Extractor use), so one step costs one process's phase
    handshake. Equivalence with the stock models is tested (test_spiking_lava.py).
    """
    if _FUSED:
        return _FUSED["proc"], _FUSED["model"]
    from lava.magma.core.decorator import implements, requires
    from lava.magma.core.model.py.model import PyLoihiProcessModel
    from lava.magma.core.model.py.ports import PyInPort, PyOutPort
    from lava.magma.core.model.py.type import LavaPyType
    from lava.magma.core.process.ports.ports import InPort, OutPort
    from lava.magma.core.process.process import AbstractProcess
    from lava.magma.core.resources import CPU
    from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights
    from scipy.sparse import csr_matrix

    class FusedNetwork(AbstractProcess):
        """One process for the whole network; input and output through external pipes."""

        def __init__(self, doc: dict, arrays: list, buffer_size: int) -> None:
            n_in = max(1, sum(i["size"] for i in doc["inputs"]))
            sizes = {p["name"]: p["size"] for p in doc["populations"]}
            n_out = max(1, sum(sizes[o["population"]] for o in doc["outputs"]))
            super().__init__(doc=doc, arrays=arrays)
            self.in_port = InPort(shape=(n_in,))
            self.in_port.flag_external_pipe(buffer_size=buffer_size)
            self.out_port = OutPort(shape=(n_out,))
            self.out_port.flag_external_pipe(buffer_size=buffer_size)

    @implements(proc=FusedNetwork, protocol=LoihiProtocol)
    @requires(CPU)
    class PyFusedModel(PyLoihiProcessModel):
        """The stock models' arithmetic for every population and connection, in one process."""

        in_port: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
        out_port: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

        def __init__(self, proc_params: dict) -> None:
            super().__init__(proc_params)
            doc, arrays = proc_params["doc"], proc_params["arrays"]
            self.fixed = doc["mode"] == "fixed"
            self.pops = []
            for p in doc["populations"]:
                n = p["size"]
                bias = np.broadcast_to(np.asarray(p["bias_mant"], dtype=np.float64), (n,))
                if self.fixed:
                    bm = bias.astype(np.int16).astype(np.int32)
                    eb = np.left_shift(bm, int(p["bias_exp"]))
                    st = {"u": np.zeros(n, np.int32), "v": np.zeros(n, np.int32), "bias": eb,
                          "du": int(p["du"]), "dv": int(p["dv"]), "vth6": int(p["vth"]) << 6}
                else:
                    st = {"u": np.zeros(n), "v": np.zeros(n), "bias": bias.copy(), "du": float(p["du"]),
                          "dv": float(p["dv"]), "vth": float(p["vth"]),
                          "refr": int(p.get("refractory_period", 0)), "ref_end": np.zeros(n, np.int64)}
                st["name"], st["n"] = p["name"], n
                self.pops.append(st)
            self.pop_index = {st["name"]: i for i, st in enumerate(self.pops)}
            self.in_off, off = {}, 0
            for ip in doc["inputs"]:
                self.in_off[ip["name"]] = (off, ip["size"], ip["graded"])
                off += ip["size"]
            self.conns = []
            sizes = {p["name"]: p["size"] for p in doc["populations"]}
            sizes.update({i["name"]: i["size"] for i in doc["inputs"]})
            for c, a in zip(doc["connections"], arrays, strict=True):
                n_pre, n_post = sizes[c["source"]], sizes[c["target"]]
                d = a["delay"]
                max_delay = 0 if d is None or d.size == 0 else int(d.max())
                if self.fixed:
                    W = csr_matrix((a["weight"].astype(np.int32), (a["post"], a["pre"])), shape=(n_post, n_pre))
                    if c["kind"] == "dense":
                        W = W.toarray()
                    mode = determine_sign_mode(W)
                    W = clip_weights(W, mode, num_bits=8)
                    W = truncate_weights(W, mode, int(c["num_weight_bits"]))
                    W = csr_matrix(W)
                else:
                    W = csr_matrix((a["weight"], (a["post"], a["pre"])), shape=(n_post, n_pre))
                Wd = []
                if max_delay > 0:
                    D = csr_matrix((d.astype(np.int64) + 1, (a["post"], a["pre"])), shape=(n_post, n_pre))
                    for k in range(max_delay + 1):
                        Wd.append(csr_matrix(W.multiply(k + 1 == D)))
                dt = np.int32 if self.fixed else np.float64
                self.conns.append({"W": W, "Wd": Wd, "D": max_delay, "shift": int(c["weight_exp"]),
                                   "src": c["source"], "tgt": self.pop_index[c["target"]],
                                   "buff": np.zeros((n_post, max_delay + 1), dt) if max_delay else
                                   np.zeros(n_post, np.int64 if self.fixed else np.float64)})
            self.out_sl = []
            for o in doc["outputs"]:
                self.out_sl.append(self.pop_index[o["population"]])
            self.spk = [np.zeros(st["n"], bool) for st in self.pops]

        def _shift(self, x: np.ndarray, sh: int) -> np.ndarray:
            return np.left_shift(x, sh) if sh > 0 else np.right_shift(x, -sh)

        def run_spk(self) -> None:
            x = self.in_port.recv()
            fixed = self.fixed
            # 1. every connection sends what it accumulated last step (through a 32-bit channel)
            a_in = [np.zeros(st["n"], np.int16 if fixed else np.float64) for st in self.pops]
            for c in self.conns:
                out = c["buff"][:, 0] if c["D"] else c["buff"]
                a_in[c["tgt"]] = a_in[c["tgt"]] + (out.astype(np.int32) if fixed else out)
            # 2. every LIF population updates (PyLifModelBitAcc / PyLifModelFloat)
            for st, act in zip(self.pops, a_in, strict=True):
                if fixed:
                    decayed = np.int64(st["u"]) * (4096 - (st["du"] + 1))
                    decayed = np.int32(np.sign(decayed) * np.right_shift(np.abs(decayed), 12))
                    decayed += np.left_shift(act.astype(np.int32), 6)
                    m = 2 ** 23
                    wrapped = np.where(decayed > m, decayed - 2 * m, decayed)
                    wrapped = np.where(wrapped <= -m, decayed + 2 * m, wrapped)
                    st["u"][:] = wrapped
                    dv = np.int64(st["v"]) * (4096 - st["dv"])
                    dv = np.int32(np.sign(dv) * np.right_shift(np.abs(dv), 12))
                    st["v"][:] = np.clip(dv + st["u"] + st["bias"], -m + 1, m - 1)
                    s = st["v"] > st["vth6"]
                    st["v"][s] = 0
                else:
                    st["u"][:] = st["u"] * (1 - st["du"])
                    st["u"][:] += act
                    ok = st["ref_end"] < self.time_step
                    st["v"][ok] = st["v"][ok] * (1 - st["dv"]) + (st["u"][ok] + st["bias"][ok])
                    s = st["v"] > st["vth"]
                    st["ref_end"][s] = self.time_step + st["refr"]
                    st["v"][s] = 0
                self.spk[self.pop_index[st["name"]]] = s
            # 3. every connection accumulates this step's spikes (Dense/Sparse and Delay variants)
            for c in self.conns:
                if c["src"] in self.in_off:
                    o, n, graded = self.in_off[c["src"]]
                    sv = x[o:o + n]
                    sv = (sv.astype(np.int64) if fixed else sv) if graded else sv.astype(bool).astype(np.int64)
                else:
                    sv = self.spk[self.pop_index[c["src"]]].astype(np.int64)
                if c["D"]:
                    acts = [Wk.dot(sv) for Wk in c["Wd"]]
                    c["buff"][:, 0] = 0
                    c["buff"] = np.roll(c["buff"], -1)
                    for k, act in enumerate(acts):
                        c["buff"][:, k] += self._shift(act, c["shift"]) if fixed else act
                else:
                    acc = c["W"].dot(sv)
                    c["buff"] = self._shift(acc, c["shift"]) if fixed else acc
            out = np.concatenate([self.spk[i] for i in self.out_sl]) if self.out_sl else np.zeros(1)
            self.out_port.send(out.astype(np.float64))

    _FUSED["proc"], _FUSED["model"] = FusedNetwork, PyFusedModel
    return FusedNetwork, PyFusedModel


class Stream:
    """The streaming instance: injectors in, extractors out, RunContinuous."""

    def __init__(self, doc: dict, arrays: list[dict], hw: bool, buffer_size: int, fused: bool = False) -> None:
        from lava.magma.core.run_conditions import RunContinuous
        self.doc = doc
        self.fixed = doc["mode"] == "fixed"
        self.buffer_size = buffer_size
        self.fused = fused
        if fused:
            if hw:
                raise RuntimeError("--fused is a CPU (Loihi2SimCfg) process model; drop it for --hw")
            from lava.magma.core.run_configs import Loihi2SimCfg
            proc_cls, model_cls = fused_classes()
            self.proc = proc_cls(doc, arrays, buffer_size)
            # keyed by the instance: the compiler looks instances up before searching for models
            self.proc.run(condition=RunContinuous(),
                          run_cfg=Loihi2SimCfg(exception_proc_model_map={self.proc: model_cls}))
            self.send_port = self.proc.in_port.external_pipe_csp_send_port
            self.recv_port = self.proc.out_port.external_pipe_csp_recv_port
            self.in_layout = [(i["name"], i["size"]) for i in doc["inputs"]]
            sizes = {p["name"]: p["size"] for p in doc["populations"]}
            self.out_layout = [(o["name"], sizes[o["population"]]) for o in doc["outputs"]]
            self.x = np.zeros(self.proc.in_port.shape)
            return
        self.b = build(doc, arrays, "stream", buffer_size=buffer_size)
        self.proc = any_process(self.b)
        self.proc.run(condition=RunContinuous(), run_cfg=run_config(self.fixed, hw))
        self.zeros = {name: np.zeros(inj.out_port.shape) for name, inj in self.b.injectors.items()}

    def _step_fused(self, k: int, inputs: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        out = {name: np.zeros((k, n), dtype=np.uint8) for name, n in self.out_layout}
        done = 0
        while done < k:
            m = min(k - done, self.buffer_size)
            for i in range(done, done + m):
                o = 0
                self.x[:] = 0
                for name, n in self.in_layout:
                    if name in inputs:
                        self.x[o:o + n] = inputs[name][i]
                    o += n
                self.send_port.send(self.x)
            for i in range(done, done + m):
                y = self.recv_port.recv()
                o = 0
                for name, n in self.out_layout:
                    out[name][i] = y[o:o + n] != 0
                    o += n
            done += m
        return list(out.items())

    def step(self, k: int, inputs: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """Inject k input vectors per port, return k output vectors per port."""
        if self.fused:
            return self._step_fused(k, inputs)
        out = {name: np.zeros((k, ex.in_port.shape[0]), dtype=np.uint8) for name, ex in self.b.extractors.items()}
        done = 0
        while done < k:  # never more than the buffer holds in flight
            m = min(k - done, self.buffer_size)
            for i in range(done, done + m):
                for name, inj in self.b.injectors.items():
                    x = inputs.get(name)
                    inj.send(self.zeros[name] if x is None else np.asarray(x[i], dtype=np.float64))
            for i in range(done, done + m):
                for name, ex in self.b.extractors.items():
                    out[name][i] = ex.receive() != 0
            done += m
        return list(out.items())

    def stop(self) -> None:
        """Stop the Lava runtime."""
        self.proc.stop()


def serve(args: argparse.Namespace) -> int:
    """Connect, build, report ready, then answer requests until ``stop``."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 500)
    sock.connect(args.endpoint)
    stream: Stream | None = None
    try:
        t0 = time.perf_counter()
        import lava
        doc, arrays = load_network(args.net)
        run_config(doc["mode"] == "fixed", args.hw)  # fail early and clearly on --hw
        if args.stream:
            stream = Stream(doc, arrays, args.hw, args.buffer, fused=args.fused)
        send_msg(sock, {"event": "ready", "pid": os.getpid(), "lava": getattr(lava, "__version__", "0.10"),
                        "python": sys.version.split()[0], "startup_s": time.perf_counter() - t0,
                        "stream": stream is not None, "fused": bool(args.fused)})
    except Exception as e:  # report any start-up failure to rigd, then exit
        send_msg(sock, {"event": "error", "error": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc()})
        time.sleep(0.2)
        return 1
    while True:
        header, arrs = recv_msg(sock)
        cmd = header.get("cmd")
        try:
            if cmd == "step":
                if stream is None:
                    raise RuntimeError("sidecar started without --stream")
                send_msg(sock, {"ok": True, "k": header["k"]}, stream.step(int(header["k"]), arrs))
            elif cmd == "run":
                send_msg(sock, {"ok": True}, batch_run(doc, arrays, int(header["n_steps"]), arrs, args.hw))
            elif cmd == "load":
                if stream is not None:
                    raise RuntimeError("load: a streaming sidecar serves one network; start another")
                doc, arrays = load_network(header["path"])
                send_msg(sock, {"ok": True})
            elif cmd == "ping":
                send_msg(sock, {"ok": True, "t": time.time()})
            elif cmd == "stop":
                send_msg(sock, {"ok": True, "bye": True})
                break
            else:
                send_msg(sock, {"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as e:
            send_msg(sock, {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    if stream is not None:
        # the injectors block on an empty buffer, so a stop may never be served: give it 3 s
        th = threading.Thread(target=stream.stop, daemon=True)
        th.start()
        th.join(3.0)
    sock.close()
    return 0


def main() -> None:
    """Command line entry (run by hardware/spiking/lava.py under the Lava venv's Python)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", required=True, help="ZeroMQ endpoint rigd bound (PAIR)")
    ap.add_argument("--net", required=True, help="network file written by Network.save")
    ap.add_argument("--stream", action="store_true", help="build and start the streaming instance")
    ap.add_argument("--buffer", type=int, default=64, help="injector/extractor buffer (max steps in flight)")
    ap.add_argument("--hw", action="store_true", help="Loihi2HwCfg instead of Loihi2SimCfg")
    ap.add_argument("--fused", action="store_true",
                    help="stream through one fused process model instead of one OS process per Lava process")
    code = serve(ap.parse_args())
    sys.stdout.flush()
    os._exit(code)  # Lava's runtime threads may linger; rigd also ends our process group


if __name__ == "__main__":
    main()
