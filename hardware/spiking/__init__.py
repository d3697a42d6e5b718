"""Spiking offload: one network description, run on the numba CPU backend or on Lava.

``network`` describes a model, ``cpu`` runs it in-process, ``lava`` runs it in a Lava sidecar
(``lava_sidecar.py``, Python 3.10), ``select`` picks one with a fallback to the CPU backend.
"""
