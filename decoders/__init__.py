"""Online decoders: pure computation on spike counts, no sockets and no clocks (time is passed in).

``registry`` maps the names used on the command line and in saved files to decoder classes;
:func:`load` reads any saved decoder by dispatching on its stored name; :func:`register` lets
another package (e.g. the spiking decoder) add its class, which must implement
:class:`decoders.base.Decoder` and a ``load(path)`` classmethod.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from decoders.base import Decoder, Estimate, FitReport, TrialSet
from decoders.coding_direction import ChoiceMode, CodingDirection
from decoders.common import read_npz
from decoders.gru import GRUDecoder
from decoders.kalman import KalmanCD
from decoders.linear import LDA, Logistic

#: decoders living in modules that are imported only when a saved file names them (they pull in
#: heavier packages, e.g. the spiking decoder needs hardware.spiking)
LAZY_MODULES = {"spiking": "decoders.spiking"}

registry: dict[str, Any] = {
    "cd": CodingDirection,
    "cd_li": ChoiceMode,
    "logistic": Logistic,
    "lda": LDA,
    "kalman": KalmanCD,
    "gru": GRUDecoder,
}


def register(name: str, cls: Any) -> None:
    """Add a decoder class under ``name`` (what :func:`load` dispatches on)."""
    registry[name] = cls


def load(path: Path | str) -> Decoder:
    """Load a decoder saved by any registered class (dispatch on the saved name)."""
    meta, _ = read_npz(Path(path))
    name = meta["name"]
    if name not in registry and name in LAZY_MODULES:
        importlib.import_module(LAZY_MODULES[name])  # registers itself
    if name not in registry:
        raise ValueError(f"{path}: decoder {name!r} is not registered; known: {sorted(registry)}")
    dec: Decoder = registry[name].load(Path(path))
    return dec


__all__ = ["Decoder", "Estimate", "FitReport", "TrialSet", "load", "register", "registry"]
