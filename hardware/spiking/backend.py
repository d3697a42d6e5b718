"""What every spiking backend offers rigd: the streaming ``step`` and batch ``run`` contract.

This module owns the interface (:class:`Backend`), the batch result (:class:`Record`), the
input-normalising helper every backend shares and the errors a backend raises. It holds no
arithmetic (``cpu.py``), no subprocess (``lava.py``) and no choice between them (``select.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from hardware.spiking.network import Mode, Network


class BackendUnavailable(RuntimeError):  # noqa: N818 - the name rigd code and docs use
    """A backend cannot run here (missing environment, no hardware, sidecar failed to start)."""


class BackendDeadlineMissed(RuntimeError):  # noqa: N818 - reads as the event it reports
    """A backend did not answer a step within its deadline."""


@dataclass
class Record:
    """What a batch ``run`` recorded, per population: (n_steps, size) arrays.

    ``spikes`` are bool; ``v`` and ``u`` are int64 in fixed mode, float64 in float mode.
    """

    n_steps: int
    spikes: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)
    v: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    u: dict[str, npt.NDArray[Any]] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A running network. ``step`` advances one time step; ``run`` advances many."""

    kind: str
    net: Network

    def step(self, inputs: dict[str, npt.NDArray[Any]] | None = None) -> dict[str, npt.NDArray[np.bool_]]:
        """Inject this step's inputs (port → (size,)) and return this step's output spikes per output port."""
        ...

    def step_many(self, inputs: dict[str, npt.NDArray[Any]] | None, k: int) -> dict[str, npt.NDArray[np.bool_]]:
        """Advance k steps in one call (one round trip for a sidecar): inputs and outputs (k, size) per port."""
        ...

    def run(self, n_steps: int, inputs: dict[str, npt.NDArray[Any]] | None = None) -> Record:
        """Advance ``n_steps`` with inputs (port → (n_steps, size)), recording spikes, v and u."""
        ...

    def close(self) -> None:
        """Release processes and memory."""
        ...


def input_matrix(net: Network, name: str, data: npt.ArrayLike, n_steps: int | None) -> npt.NDArray[Any]:
    """Validate one port's input; return int64 (fixed) or float64 (float), binary ports as 0/1.

    ``n_steps`` None means one step: shape (size,); otherwise (n_steps, size).
    """
    port = net.input_port(name)
    a = np.asarray(data)
    want: tuple[int, ...] = (port.size,) if n_steps is None else (n_steps, port.size)
    if a.shape != want:
        raise ValueError(f"input {name!r}: expected shape {want}, got {a.shape}")
    out: npt.NDArray[Any]
    if not port.graded:
        out = (a != 0).astype(np.int64 if net.mode is Mode.FIXED else np.float64)
    elif net.mode is Mode.FIXED:
        if a.size and not np.array_equal(a, np.round(a)):
            raise ValueError(f"graded input {name!r}: fixed-point payloads must be integers")
        out = a.astype(np.int64)
    else:
        out = a.astype(np.float64)
    return out


def check_input_names(net: Network, inputs: dict[str, Any]) -> None:
    """Raise on input names the network has no port for."""
    known = {i.name for i in net.inputs}
    extra = set(inputs) - known
    if extra:
        raise KeyError(f"unknown input port(s) {sorted(extra)}; the network has {sorted(known)}")
