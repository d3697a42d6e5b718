"""The simulated mouse with a spiking bilateral ALM: the task and light of SimulatedMouse, spikes from LIF pools.

This module owns :class:`SpikingMouse`, the ``model="spiking"`` mouse of ``rigd start --rig sim
--model spiking --backend cpu|lava``. Everything the rig sees of the task is
:class:`~sim.mouse.SimulatedMouse`'s: the state machine, trial events, light commands and their
acknowledgements, the light physiology (dose-response, spread, onset latency, ramp-down), the
watchdog and the behaviour readout (docs/simulator.md). What differs is where ALM activity comes from: the
three model hooks of SimulatedMouse are replaced so that

* at each model step (``model_dt_s``, 5 ms by default) the network of :mod:`sim.spiking_alm` runs
  that step's 1-ms bins in one backend round trip (``SpikingALM.step_block``) with the inputs of
  the step held constant — the sensory evidence of the trial (``y + σ_s η``, times each
  hemisphere's sensory gain) during the sample epoch, and each hemisphere's silencing ε (the
  light's efficacy at that hemisphere times the delayed silencing level, exactly what the
  reduced model receives) onto its excitatory cells;
* the spike counts on the wire are the excitatory cells' spikes (``2 × units_per_hemisphere``
  units, left hemisphere first, lick-left pool then lick-right pool in each);
* the latent coordinates x_L, x_R fed to the unchanged behaviour readout are the network's
  filtered pool-rate differences (``SpikingALM.x``), so the choice comes from the network.

It never reads a clock: model time advances 1 ms per completed network step, however long the
backend takes; :mod:`sim.rig_process` paces it and reports the resulting slowdown. The mouse's
seed is its network (its "brain"); the day and session reseed only the network's input noise.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from sim import alm
from sim.config import MouseConfig
from sim.mouse import SimulatedMouse
from sim.spiking_alm import DT_S, SpikingALM, SpikingALMParams

_INPUT_STREAM = 23  #: the network's input-noise stream (after mouse.py's trial and spike streams)
#: Per-step budget of a Lava round trip before the CPU shadow takes over for good. The simulated
#: world waits for its network (it runs on its own clock), so this only catches a stuck sidecar.
DEFAULT_DEADLINE_S = 2.0


class SpikingMouse(SimulatedMouse):
    """A :class:`SimulatedMouse` whose ALM activity and choice come from the spiking network.

    Args:
        config: the mouse; ``config.model`` need not be "spiking" (this class is the spiking
            model), ``config.backend`` picks the backend unless ``backend`` is given.
            ``bin_s`` must be 1 ms and ``units_per_hemisphere`` even and ≥ 4.
        seed: the mouse's identity (its network) and trials.
        session: an independent session (trials and network input noise).
        backend: "cpu" or "lava" (default: ``config.backend``).
        params: network parameters (default :class:`SpikingALMParams`; ``config.callosotomy``
            sets ``callosal_scale = 0``).
        deadline_s: per-round-trip budget for Lava before the CPU backend takes over.

    The Lava venv's interpreter is ``$RIGD_LAVA_PYTHON`` or ``.venv-lava/bin/python``; where the
    sidecar cannot start, the CPU backend serves and the alarm is kept in :attr:`alarms`.

    Call :meth:`close` (or use it as a context manager) to stop a Lava sidecar.
    """

    def __init__(self, config: MouseConfig, seed: int, *, session: int = 0,
                 backend: Literal["cpu", "lava"] | None = None, params: SpikingALMParams | None = None,
                 deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        c = config
        if abs(c.bin_s - DT_S) > 1e-9:
            raise ValueError(f"the spiking mouse steps its network per 1-ms bin: bin_s must be 0.001, got {c.bin_s}")
        n = c.units_per_hemisphere
        if n < 4 or n % 2:
            raise ValueError(f"units_per_hemisphere must be even and >= 4 for the spiking mouse, got {n}")
        self.backend_kind: Literal["cpu", "lava"] = backend or c.backend
        self.alarms: list[str] = []
        prm = params or SpikingALMParams()
        if c.callosotomy:
            prm = SpikingALMParams(**{**prm.__dict__, "callosal_scale": 0.0})
        self.alm = SpikingALM(self.backend_kind, seed, n, prm, deadline_s=deadline_s, alarm=self._alarm)
        self.alm.rng = np.random.default_rng(np.random.SeedSequence([seed, _INPUT_STREAM, c.day, session]))
        k = c.bins_per_step
        self._block = np.zeros((k, 2 * n), np.uint8)
        self._block_counts = np.zeros(2 * n, np.uint8)
        self.network_steps = 0
        try:
            super().__init__(c, seed, session=session)
        except BaseException:
            self.alm.close()
            raise

    # -- public ---------------------------------------------------------------------------------

    @property
    def description(self) -> dict[str, Any]:
        """The rig description of every heartbeat: SimulatedMouse's, with the spiking model's facts."""
        d = super().description
        d.update(model="spiking", backend=self.backend_kind, fs_units=[],
                 units="excitatory LIF cells; per hemisphere lick-left pool then lick-right pool",
                 network_neurons=sum(p.size for p in self.alm.net.populations))
        return d

    @property
    def backend_active(self) -> str:
        """The backend computing the spikes now: "lava", or "cpu" (chosen, or after a fallback)."""
        return str(getattr(self.alm.backend, "kind", "cpu"))

    def status(self) -> dict[str, Any]:
        """Heartbeat status fields: the backend in use and any backend alarm (fallback to CPU)."""
        st: dict[str, Any] = {"backend_active": self.backend_active,
                              "backend_fallback": self.backend_kind != self.backend_active}
        if self.alarms:
            st["backend_alarm"] = self.alarms[-1]
            st["backend_alarms"] = len(self.alarms)
        return st

    def close(self) -> None:
        """Stop the backend (the Lava sidecar, if any)."""
        self.alm.close()

    def __enter__(self) -> SpikingMouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- SimulatedMouse's model hooks ----------------------------------------------------------

    def _alarm(self, msg: str) -> None:
        self.alarms.append(msg)

    def _advance_latent(self, t_s: float, eps_l: float, eps_r: float, *, start: bool) -> None:
        """Run this model step's bins through the network; x_L, x_R from its pool rates."""
        c = self.config
        s_l = s_r = 0.0
        if alm.in_sample(self._p, t_s):  # t_s is -1e9 between trials: never in the sample
            ev = float(self._evidence[0])
            s_l, s_r = c.sensory_gain_left * ev, c.sensory_gain_right * ev
        k = self._block.shape[0]
        counts = self.alm.step_block(k, s_l, s_r, eps_l, eps_r)
        np.copyto(self._block, np.minimum(counts, 255), casting="unsafe")
        self.network_steps += k
        x_l, x_r = self.alm.x
        self._x_l[0] = x_l
        self._x_r[0] = x_r

    def _set_rates(self, t_s: float, in_trial: bool) -> None:
        """No Poisson layer: the counts are the network's spikes."""

    def _draw_counts(self) -> npt.NDArray[np.uint8]:
        np.copyto(self._block_counts, self._block[self._bin % self._block.shape[0]])
        return self._block_counts
