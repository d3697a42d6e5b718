"""Spiking offload: one network description, run on the numba CPU backend or on Lava.

``network`` describes a model, ``cpu`` runs it in-process, ``lava`` runs it in a Lava sidecar
(``lava_sidecar.py``, Python 3.10, never imported here), ``select`` picks one with a fallback to
the CPU backend. See docs/spiking.md.
"""

from hardware.spiking.backend import Backend, BackendDeadlineMissed, BackendUnavailable, Record
from hardware.spiking.cpu import CpuBackend
from hardware.spiking.lava import LavaBackend, lava_available
from hardware.spiking.network import Connection, InputPort, Mode, Network, OutputPort, Population
from hardware.spiking.select import FallbackBackend, make_backend

__all__ = ["Backend", "BackendDeadlineMissed", "BackendUnavailable", "Connection", "CpuBackend",
           "FallbackBackend", "InputPort", "LavaBackend", "Mode", "Network", "OutputPort", "Population",
           "Record", "lava_available", "make_backend"]
