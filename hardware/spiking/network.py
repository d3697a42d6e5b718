"""The network description every spiking backend runs: LIF populations, connections, named ports.

This module owns the *what* of a spiking model, never the *how*: a :class:`Network` is a
pydantic-validated description of LIF populations (Loihi-compatible parameters), dense and sparse
connections (with optional per-synapse delays), named input ports (spike or graded sources
injected by the host each step) and named output ports (the spikes of a population), in one of
two arithmetic modes:

* ``fixed``: Loihi-exact integers, the semantics of Lava 0.10's bit-accurate process models
  (``lava.proc.lif.models.PyLifModelBitAcc``, ``lava.proc.dense.models.PyDenseModelBitAcc``,
  ``PySparseModelBitAcc``, ``PyDelayDenseModelBitAcc``, ``PyDelaySparseModelBitAcc``).
  ``du``/``dv`` are 12-bit decay constants (0…4095), ``vth`` a 17-bit threshold, ``bias_mant``
  a 13-bit signed mantissa with a 3-bit exponent, weights 8-bit integers with a shared
  ``weight_exp``. Every backend must give bit-identical spikes and voltages in this mode.
* ``float``: Lava's ``floating_pt`` models (``u ← u(1−du) + a``, ``v ← v(1−dv) + u + bias``),
  decays as fractions in [0, 1]; an optional refractory period (``LIFRefractory``).

Timing (shared by all backends, as in Lava): a spike emitted (or injected) at step t reaches the
target's current ``u`` at step t + 1 + delay. It owns saving/loading (one ``.npz`` holding the
JSON description plus the weight arrays) and the weight preprocessing Lava applies in fixed mode
(:func:`effective_weights`). It must not import a backend, a socket or a clock.
"""

from __future__ import annotations

import io
import json
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FORMAT_VERSION = 1
MAX_DELAY = 63  #: Loihi 2 synaptic delays are 6 bits (Lava's DelayDense/DelaySparse check this)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class Mode(StrEnum):
    """Arithmetic of a network: Loihi-exact integers or floating point."""

    FIXED = "fixed"
    FLOAT = "float"


class Population(BaseModel):
    """A population of LIF neurons sharing decays and threshold (as one Lava ``LIF`` process).

    In fixed mode: ``du``, ``dv`` ∈ 0…4095 (current decays by (4096 − du − 1)/4096 per step,
    voltage by (4096 − dv)/4096), ``vth`` ∈ 0…131071 (compared with v after a 6-bit left shift),
    ``bias_mant`` ∈ −4096…4095, ``bias_exp`` ∈ 0…7. In float mode ``du``/``dv`` are fractions
    in [0, 1] and ``bias_mant`` is the bias itself (``bias_exp`` must be 0, as Lava's float LIF
    ignores it). ``bias_mant`` is a scalar or one value per neuron.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
    size: int = Field(ge=1, le=1_000_000)
    du: float
    dv: float
    vth: float
    bias_mant: float | list[float] = 0.0
    bias_exp: int = Field(default=0, ge=0, le=7)
    refractory_period: int = Field(default=0, ge=0, le=1000)

    @model_validator(mode="after")
    def _bias_length(self) -> Population:
        if isinstance(self.bias_mant, list) and len(self.bias_mant) != self.size:
            raise ValueError(f"population {self.name!r}: bias_mant has {len(self.bias_mant)} values, "
                             f"expected a scalar or {self.size} (one per neuron)")
        return self

    def bias_array(self) -> FloatArray:
        """``bias_mant`` as one value per neuron."""
        return np.broadcast_to(np.asarray(self.bias_mant, dtype=np.float64), (self.size,)).copy()


class InputPort(BaseModel):
    """A named source of ``size`` channels the host injects each step.

    ``graded`` inputs carry integer (fixed) or real (float) payloads multiplied by the weights
    (Lava ``num_message_bits`` > 0); binary inputs treat any non-zero value as one spike.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
    size: int = Field(ge=1, le=1_000_000)
    graded: bool = False


class OutputPort(BaseModel):
    """A named output: the spikes of one population, every step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
    population: str


class Connection(BaseModel):
    """Synapses from a population or input port (``source``) onto a population (``target``).

    Weights are held in COO form: ``pre``, ``post`` (indices into source and target), ``weight``
    and ``delay`` (0…63 steps, added to the one-step synaptic latency). ``kind`` picks the Lava
    process it becomes: ``dense`` (Dense / DelayDense, full matrix with zeros where no synapse)
    or ``sparse`` (Sparse / DelaySparse). In fixed mode weights are integers; Lava clips them to
    8 bits and, for mixed-sign matrices, drops their least significant bit (see
    :func:`effective_weights`); the per-target sum is shifted by ``weight_exp``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
    source: str
    target: str
    kind: Literal["dense", "sparse"] = "sparse"
    weight_exp: int = Field(default=0, ge=-16, le=16)
    num_weight_bits: int = Field(default=8, ge=1, le=8)
    pre: Any = Field(exclude=True)
    post: Any = Field(exclude=True)
    weight: Any = Field(exclude=True)
    delay: Any = Field(default=None, exclude=True)

    @field_validator("pre", "post", mode="before")
    @classmethod
    def _as_index(cls, v: Any) -> IntArray:
        a = np.asarray(v)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"pre/post must be 1-D integer index arrays, got shape {a.shape} "
                             f"dtype {a.dtype}")
        return a.astype(np.int64)

    @field_validator("weight", mode="before")
    @classmethod
    def _as_weight(cls, v: Any) -> FloatArray:
        a = np.asarray(v, dtype=np.float64)
        if a.ndim != 1 or not np.all(np.isfinite(a)):
            raise ValueError("weight must be a 1-D array of finite values")
        return a

    @field_validator("delay", mode="before")
    @classmethod
    def _as_delay(cls, v: Any) -> IntArray | None:
        if v is None:
            return None
        a = np.asarray(v)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError("delay must be a 1-D integer array")
        if a.size and (a.min() < 0 or a.max() > MAX_DELAY):
            raise ValueError(f"delays must lie in 0…{MAX_DELAY} steps (Loihi 2's 6 bits), "
                             f"got {int(a.min())}…{int(a.max())}")
        return a.astype(np.int64)

    @model_validator(mode="after")
    def _shapes(self) -> Connection:
        n = len(self.pre)
        if len(self.post) != n or len(self.weight) != n or (self.delay is not None and len(self.delay) != n):
            raise ValueError(f"connection {self.name!r}: pre, post, weight (and delay) must have the "
                             f"same length, got {len(self.pre)}, {len(self.post)}, {len(self.weight)}"
                             + ("" if self.delay is None else f", {len(self.delay)}"))
        if n:
            key = self.post * (int(self.pre.max()) + 1) + self.pre
            if np.unique(key).size != n:
                raise ValueError(f"connection {self.name!r}: duplicate (pre, post) synapses; "
                                 "merge them into one weight")
        return self

    @property
    def n_synapses(self) -> int:
        """Number of synapses listed."""
        return len(self.pre)

    @property
    def max_delay(self) -> int:
        """Largest delay (0 without delays)."""
        return 0 if self.delay is None or len(self.delay) == 0 else int(self.delay.max())

    def dense_matrix(self, n_post: int, n_pre: int, values: npt.NDArray[Any] | None = None
                     ) -> npt.NDArray[Any]:
        """(n_post, n_pre) matrix of ``values`` (default: the weights), zeros elsewhere."""
        vals = self.weight if values is None else values
        m = np.zeros((n_post, n_pre), dtype=vals.dtype)
        m[self.post, self.pre] = vals
        return m

    @classmethod
    def from_dense(cls, name: str, source: str, target: str, weights: npt.ArrayLike,
                   delays: npt.ArrayLike | None = None, **kw: Any) -> Connection:
        """Build from an (n_post, n_pre) matrix; every entry is a synapse (kind defaults to dense)."""
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 2:
            raise ValueError(f"weights must be a (n_post, n_pre) matrix, got shape {w.shape}")
        post, pre = np.indices(w.shape)
        d = None if delays is None else np.asarray(delays).reshape(-1)
        kw.setdefault("kind", "dense")
        return cls(name=name, source=source, target=target, pre=pre.reshape(-1), post=post.reshape(-1),
                   weight=w.reshape(-1), delay=d, **kw)


class Network(BaseModel):
    """A whole spiking model: populations, connections and ports in one arithmetic mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "network"
    mode: Mode = Mode.FIXED
    populations: list[Population]
    inputs: list[InputPort] = Field(default_factory=list)
    outputs: list[OutputPort] = Field(default_factory=list)
    connections: list[Connection] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Network:
        names = [p.name for p in self.populations] + [i.name for i in self.inputs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"populations and input ports need distinct names; duplicated: {sorted(dup)}")
        pops = {p.name: p for p in self.populations}
        sizes = {**{p.name: p.size for p in self.populations}, **{i.name: i.size for i in self.inputs}}
        out_names = [o.name for o in self.outputs]
        if len(set(out_names)) != len(out_names):
            raise ValueError(f"output port names must be distinct, got {out_names}")
        for o in self.outputs:
            if o.population not in pops:
                raise ValueError(f"output {o.name!r}: unknown population {o.population!r}; "
                                 f"known: {sorted(pops)}")
        conn_names = [c.name for c in self.connections]
        if len(set(conn_names)) != len(conn_names):
            raise ValueError(f"connection names must be distinct, got {conn_names}")
        fixed = self.mode is Mode.FIXED
        for p in self.populations:
            _check_population(p, fixed)
        for c in self.connections:
            if c.source not in sizes:
                raise ValueError(f"connection {c.name!r}: unknown source {c.source!r}; "
                                 f"known: {sorted(sizes)}")
            if c.target not in pops:
                raise ValueError(f"connection {c.name!r}: target {c.target!r} is not a population; "
                                 f"known: {sorted(pops)}")
            n_pre, n_post = sizes[c.source], pops[c.target].size
            if c.n_synapses and (c.pre.min() < 0 or c.pre.max() >= n_pre
                                 or c.post.min() < 0 or c.post.max() >= n_post):
                raise ValueError(f"connection {c.name!r}: indices out of range (pre < {n_pre}, "
                                 f"post < {n_post})")
            if fixed:
                if not np.array_equal(c.weight, np.round(c.weight)):
                    raise ValueError(f"connection {c.name!r}: fixed-point weights must be integers")
                if np.abs(c.weight).max(initial=0) > 2**15:
                    raise ValueError(f"connection {c.name!r}: weights beyond ±32768 (Lava clips to 8 bits)")
            elif c.weight_exp != 0:
                raise ValueError(f"connection {c.name!r}: weight_exp={c.weight_exp} has no effect in "
                                 "float mode (Lava's floating_pt Dense ignores it); scale the weights")
        return self

    # ----- lookups -------------------------------------------------------------------------
    def population(self, name: str) -> Population:
        """The population called ``name``."""
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(f"no population {name!r}; known: {[p.name for p in self.populations]}")

    def source_size(self, name: str) -> int:
        """Size of a population or input port."""
        for p in self.populations:
            if p.name == name:
                return p.size
        for i in self.inputs:
            if i.name == name:
                return i.size
        raise KeyError(f"no population or input {name!r}")

    def input_port(self, name: str) -> InputPort:
        """The input port called ``name``."""
        for i in self.inputs:
            if i.name == name:
                return i
        raise KeyError(f"no input port {name!r}; known: {[i.name for i in self.inputs]}")

    @property
    def n_neurons(self) -> int:
        """Total neurons."""
        return sum(p.size for p in self.populations)

    @property
    def n_synapses(self) -> int:
        """Total synapses."""
        return sum(c.n_synapses for c in self.connections)

    @classmethod
    def union(cls, parts: list[tuple[str, Network]], name: str = "union") -> Network:
        """Disjoint union of networks (same mode), every name prefixed with ``"<prefix>."``.

        Running the union runs each part independently: one Lava build for many small networks.
        """
        modes = {n.mode for _, n in parts}
        if len(modes) != 1:
            raise ValueError(f"union needs one arithmetic mode, got {sorted(m.value for m in modes)}")
        pops: list[Population] = []
        ins: list[InputPort] = []
        outs: list[OutputPort] = []
        conns: list[Connection] = []
        for pre, n in parts:
            pops += [p.model_copy(update={"name": f"{pre}.{p.name}"}) for p in n.populations]
            ins += [i.model_copy(update={"name": f"{pre}.{i.name}"}) for i in n.inputs]
            outs += [o.model_copy(update={"name": f"{pre}.{o.name}", "population": f"{pre}.{o.population}"})
                     for o in n.outputs]
            conns += [c.model_copy(update={"name": f"{pre}.{c.name}", "source": f"{pre}.{c.source}",
                                           "target": f"{pre}.{c.target}"}) for c in n.connections]
        return cls(name=name, mode=modes.pop(), populations=pops, inputs=ins, outputs=outs, connections=conns)

    # ----- files ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one ``.npz``: the JSON description under ``network.json`` plus each connection's arrays."""
        p = Path(path)
        arrays: dict[str, npt.NDArray[Any]] = {}
        for i, c in enumerate(self.connections):
            arrays[f"c{i}.pre"] = c.pre.astype(np.int32)
            arrays[f"c{i}.post"] = c.post.astype(np.int32)
            arrays[f"c{i}.weight"] = c.weight
            if c.delay is not None:
                arrays[f"c{i}.delay"] = c.delay.astype(np.int8)
        doc = {"format": "rigd-spiking-network", "version": FORMAT_VERSION, **self.model_dump(mode="json")}
        arrays["network.json"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
        p.write_bytes(buf.getvalue())
        return p

    @classmethod
    def load(cls, path: str | Path) -> Network:
        """Read a file written by :meth:`save` (validating everything again)."""
        with np.load(Path(path)) as z:
            doc = json.loads(bytes(z["network.json"]).decode())
            if doc.pop("format", None) != "rigd-spiking-network" or doc.pop("version", None) != FORMAT_VERSION:
                raise ValueError(f"{path}: not a rigd spiking network file of version {FORMAT_VERSION}")
            for i, c in enumerate(doc["connections"]):
                c["pre"], c["post"], c["weight"] = z[f"c{i}.pre"], z[f"c{i}.post"], z[f"c{i}.weight"]
                c["delay"] = z[f"c{i}.delay"] if f"c{i}.delay" in z.files else None
        return cls.model_validate(doc)


def _check_population(p: Population, fixed: bool) -> None:
    b = p.bias_array()
    if fixed:
        for field, val, hi in (("du", p.du, 4095), ("dv", p.dv, 4095), ("vth", p.vth, 131071)):
            if val != int(val) or not 0 <= val <= hi:
                raise ValueError(f"population {p.name!r}: fixed-point {field}={val} must be an integer "
                                 f"in 0…{hi}")
        if not np.array_equal(b, np.round(b)) or b.min() < -4096 or b.max() > 4095:
            raise ValueError(f"population {p.name!r}: fixed-point bias_mant must be integers in "
                             f"-4096…4095, got {b.min()}…{b.max()}")
        if p.refractory_period:
            raise ValueError(f"population {p.name!r}: refractory_period={p.refractory_period} needs "
                             "float mode (Lava 0.10 has no fixed-point LIFRefractory model)")
    else:
        for field, val in (("du", p.du), ("dv", p.dv)):
            if not 0.0 <= val <= 1.0:
                raise ValueError(f"population {p.name!r}: float-mode {field}={val} must be a decay "
                                 "fraction in [0, 1]")
        if p.bias_exp != 0:
            raise ValueError(f"population {p.name!r}: bias_exp={p.bias_exp} has no effect in float mode "
                             "(Lava's float LIF ignores it); put the bias in bias_mant")


def sign_mode(c: Connection, n_post: int, n_pre: int) -> int:
    """Lava's ``determine_sign_mode`` of the connection's full matrix: 1 mixed, 2 excitatory, 3 inhibitory.

    Absent synapses count as zeros (as in Lava's dense matrix or sparse ``min``/``max``).
    """
    w = c.weight
    vals = np.append(w, 0.0) if c.n_synapses < n_post * n_pre else w
    lo, hi = float(vals.min()), float(vals.max())
    if lo >= 0:
        return 2
    if hi <= 0:
        return 3
    return 1


def effective_weights(c: Connection, n_post: int, n_pre: int) -> IntArray:
    """The integer weights Lava's bit-accurate Dense/Sparse models actually use (fixed mode).

    Reproduces ``clip_weights(w, sign_mode, num_bits=8)`` then
    ``truncate_weights(w, sign_mode, num_weight_bits)`` from ``lava.utils.weightutils``:
    excitatory 0…255, inhibitory −255…0, mixed −256…255 with one extra LSB truncated.
    """
    mode = sign_mode(c, n_post, n_pre)
    w = c.weight.astype(np.int64)
    mixed = int(mode == 1)
    if mode == 3:
        w = -w
    w = np.clip(w, -256 * mixed, 255)
    shift = 8 - c.num_weight_bits + mixed
    w = (w >> shift) << shift
    if mode == 3:
        w = -w
    out: IntArray = w.astype(np.int64)
    return out
