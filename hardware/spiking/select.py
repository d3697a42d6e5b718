"""Choosing a spiking backend, with the CPU backend as the fallback that keeps the loop alive.

This module owns the policy: ``make_backend(net, "lava", deadline_s=…)`` starts the Lava sidecar
and, if that fails, raises an alarm and serves the CPU backend instead. While Lava serves, a CPU
backend runs the same network in *shadow* every step (cheap: ≤ 1 ms at 10,000 neurons), so when
the sidecar misses a step's deadline or dies the loop switches to the CPU result for that very
step and continues without a gap. In fixed-point mode both produce the same spikes, so the
switch is invisible in the data; a divergence between them is itself alarmed. It must not know
about rigs or decoders: alarms go to the callback it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from hardware.spiking.backend import Backend, BackendDeadlineMissed, BackendUnavailable, Record
from hardware.spiking.cpu import CpuBackend
from hardware.spiking.lava import LavaBackend
from hardware.spiking.network import Mode, Network

Alarm = Callable[[str], None]


def _no_alarm(msg: str) -> None:
    """Default alarm sink: nothing (pass a callback that reaches rigd's alarms)."""


class FallbackBackend:
    """Lava in front, the CPU backend in shadow; falls back for good on the first miss or error."""

    def __init__(self, net: Network, lava: LavaBackend, deadline_s: float, alarm: Alarm) -> None:
        self.net = net
        self.lava: LavaBackend | None = lava
        self.cpu = CpuBackend(net)
        self.deadline_s = deadline_s
        self.alarm = alarm
        self.kind = "lava"
        self.steps = 0
        self.misses = 0
        self.divergences = 0
        self.fallback_reason = ""
        self._out = {o.name: np.zeros(net.population(o.population).size, np.bool_) for o in net.outputs}

    def _fall_back(self, why: str) -> None:
        self.fallback_reason = why
        self.kind = "cpu"
        lava, self.lava = self.lava, None
        self.alarm(f"spiking backend: Lava {why} at step {self.steps}; the CPU backend serves from now on")
        if lava is not None:
            lava.close()

    def step(self, inputs: dict[str, npt.NDArray[Any]] | None = None) -> dict[str, npt.NDArray[np.bool_]]:
        """One step on Lava within ``deadline_s`` (send → reply), else the CPU shadow's result."""
        self.steps += 1
        t0 = time.perf_counter()
        sent = False
        if self.lava is not None:
            try:
                self.lava.send_steps({n: np.asarray(a)[None] for n, a in (inputs or {}).items()}, 1)
                sent = True
            except Exception as e:
                self._fall_back(f"failed to take input ({e})")
        shadow = self.cpu.step(inputs)
        if self.lava is None or not sent:
            return shadow
        try:
            left = self.deadline_s - (time.perf_counter() - t0)
            got = self.lava.recv_steps(timeout_s=max(left, 0.0))
        except BackendDeadlineMissed:
            self.misses += 1
            self._fall_back(f"missed its {self.deadline_s * 1e3:.3g} ms deadline")
            return shadow
        except (BackendUnavailable, RuntimeError) as e:
            self._fall_back(f"failed ({e})")
            return shadow
        for n, a in got.items():
            self._out[n][:] = a[0]
            if self.net.mode is Mode.FIXED and not np.array_equal(a[0], shadow[n]):
                self.divergences += 1
                if self.divergences == 1:
                    self.alarm(f"spiking backend: Lava and CPU spikes diverge at step {self.steps} "
                               f"(port {n}); fixed-point backends must agree")
        return self._out

    def step_many(self, inputs: dict[str, npt.NDArray[Any]] | None, k: int) -> dict[str, npt.NDArray[np.bool_]]:
        """Advance k steps in one Lava round trip within ``deadline_s`` (the CPU shadow runs meanwhile)."""
        self.steps += k
        t0 = time.perf_counter()
        sent = False
        if self.lava is not None:
            try:
                self.lava.send_steps(inputs, k)
                sent = True
            except Exception as e:
                self._fall_back(f"failed to take input ({e})")
        shadow = self.cpu.step_many(inputs, k)
        if self.lava is None or not sent:
            return shadow
        try:
            got = self.lava.recv_steps(timeout_s=max(self.deadline_s - (time.perf_counter() - t0), 0.0))
        except BackendDeadlineMissed:
            self.misses += 1
            self._fall_back(f"missed its {self.deadline_s * 1e3:.3g} ms deadline for {k} steps")
            return shadow
        except (BackendUnavailable, RuntimeError) as e:
            self._fall_back(f"failed ({e})")
            return shadow
        if self.net.mode is Mode.FIXED and any(not np.array_equal(got[n], shadow[n]) for n in shadow):
            self.divergences += 1
            if self.divergences == 1:
                self.alarm(f"spiking backend: Lava and CPU spikes diverge by step {self.steps}; "
                           "fixed-point backends must agree")
        return got

    def run(self, n_steps: int, inputs: dict[str, npt.NDArray[Any]] | None = None) -> Record:
        """Batch run on the CPU backend (continuing the shadow's state, so both stay in step)."""
        if self.lava is not None:
            self._fall_back("cannot follow a batch run of the shadow")
        return self.cpu.run(n_steps, inputs)

    def close(self) -> None:
        """Stop the sidecar if it still serves."""
        if self.lava is not None:
            self.lava.close()
            self.lava = None


def make_backend(net: Network, kind: Literal["cpu", "lava"] = "cpu", *, deadline_s: float = 0.010,
                 alarm: Alarm | None = None, python: str | None = None, start_timeout_s: float = 120.0,
                 hw: bool = False, fused: bool = True) -> Backend:
    """The backend to run ``net`` on: ``cpu``, or ``lava`` with the CPU backend as its fallback.

    Args:
        net: the network.
        kind: "cpu" (numba, in-process) or "lava" (sidecar; Loihi2SimCfg, or Loihi2HwCfg with ``hw``).
        deadline_s: per-step budget for the Lava round trip (send → spikes back); on a miss the CPU
            shadow's result is used and Lava is dropped.
        alarm: called with a message whenever the fallback engages or the backends diverge.
        python: the Lava venv's interpreter (default ``.venv-lava/bin/python``).
        start_timeout_s: how long the sidecar may take to build and start the network.
        hw: run on Loihi 2 hardware (fails over to the CPU backend where there is none).
        fused: stream through the one-process fused model (the low-latency path, same spikes as
            the stock models); False uses one Lava process per population/connection. Ignored
            with ``hw`` (hardware runs the stock processes).
    """
    alarm = alarm or _no_alarm
    if kind == "cpu":
        return CpuBackend(net)
    if kind != "lava":
        raise ValueError(f"backend kind must be 'cpu' or 'lava', got {kind!r}")
    try:
        lava = LavaBackend(net, python, stream=True, hw=hw, start_timeout_s=start_timeout_s,
                           fused=fused and not hw)
    except (BackendUnavailable, BackendDeadlineMissed) as e:
        alarm(f"spiking backend: Lava could not start ({e}); the CPU backend serves")
        return CpuBackend(net)
    return FallbackBackend(net, lava, deadline_s, alarm)
