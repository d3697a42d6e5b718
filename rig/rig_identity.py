"""Who a rig is: whether its description can be trusted, and which process speaks for its id.

A rig's heartbeat describes its units (what rigd sizes memory by) and names the process that sends
it (``boot_id``, ``host``, ``pid``; docs/wire-protocol.md). This module owns the rules, pure (no
sockets, no clocks: time is passed in):

* :func:`validate_description` — the fields rigd allocates by (``n_units``, ``raw_channels``,
  the threshold detector's settings, ``boot_id``) are checked before anything is built;
  ``n_units`` above the maximum is a :class:`UnitLimitError`.
* :class:`RigIdentity` — the process rigd follows for one rig id: a new ``boot_id`` is a restart;
  an earlier one heard again while the current one is alive is a second sender claiming the id.
  :meth:`RigIdentity.hear` says which; the hot loop acts on it (resets the rig's streams, closes
  its trials, raises the alarm).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from rig import wire

#: an earlier boot_id of a rig heard again while the current one spoke within this time: two senders
DUPLICATE_WINDOW_NS = 5_000_000_000
MAX_BOOTS_REMEMBERED = 8  #: earlier boot_ids remembered per rig (for the duplicate-id diagnosis)


class UnitLimitError(wire.WireError):
    """A description asks for more units (or raw channels) than rigd's maximum."""

    def __init__(self, rig_id: int, what: str, n: int, max_units: int) -> None:
        self.detail = (f"rig {rig_id} describes {what}, above rigd's maximum of {max_units} units per rig "
                       "(rigd start --max-units): refused, nothing allocated")
        super().__init__("n_units", self.detail)
        self.n = n


def validate_description(rig_id: int, desc: dict[str, Any], max_units: int) -> int:
    """The description's ``n_units``, once every field rigd sizes memory by is valid; WireError if not."""
    n_units = whole(desc.get("n_units"))
    if n_units is None or n_units < 0:
        raise wire.WireError("heartbeat", f"rig {rig_id} heartbeat must describe 'n_units' (int ≥ 0), "
                             f"got {desc.get('n_units')!r}")
    raw = desc.get("raw_channels")
    raw_n = whole(raw) if raw is not None else 0
    if raw_n is None or raw_n < 0:
        raise wire.WireError("heartbeat", f"rig {rig_id}: 'raw_channels' must be an int ≥ 0, got {raw!r}")
    if max(n_units, raw_n) > max_units:
        what = f"n_units={n_units}" if n_units > max_units else f"raw_channels={raw_n}"
        raise UnitLimitError(rig_id, what, max(n_units, raw_n), max_units)
    if raw_n:
        th, rate = desc.get("threshold_sd", -4.5), desc.get("sample_rate_hz", 30_000)
        if not _number(th) or th >= 0:
            raise wire.WireError("heartbeat", f"rig {rig_id}: 'threshold_sd' must be a negative number, got {th!r}")
        if not _number(rate) or not 1 <= rate <= 1e7:
            raise wire.WireError("heartbeat", f"rig {rig_id}: 'sample_rate_hz' must be a number in [1, 1e7], "
                                 f"got {rate!r}")
    boot = desc.get("boot_id")
    if boot is not None and not boot_id_ok(boot):
        raise wire.WireError("boot_id", f"rig {rig_id}: 'boot_id' must be an int or a short string, got {boot!r}")
    return n_units


class Heard(enum.Enum):
    """What a heartbeat's ``boot_id`` means for the rig id it claims."""

    KEEP = "keep"  #: the process rigd follows (or a rig without boot ids): nothing changes
    FIRST = "first"  #: the first heartbeat of this rig that names its process
    RESTART = "restart"  #: a new process: the rig restarted
    DUPLICATE = "duplicate"  #: an earlier process speaks again: two senders (first time for this pair)
    DROP = "drop"  #: a settled second sender: its heartbeat is dropped


@dataclass
class RigIdentity:
    """The process rigd follows for one rig id, and the earlier ones it remembers."""

    boot_id: int | str | None = None
    sender: dict[str, Any] = field(default_factory=dict)
    seen_ns: int = 0  #: when a heartbeat of the followed process last came
    boots: dict[int | str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  #: earlier processes
    duplicates: set[frozenset[int | str]] = field(default_factory=set)  #: pairs already diagnosed
    previous: dict[str, Any] = field(default_factory=dict)  #: RESTART: the old process; DUPLICATE: the newcomer

    def hear(self, desc: dict[str, Any], t_ns: int) -> Heard:
        """Judge a heartbeat of this rig id and update who is followed (see :class:`Heard`)."""
        boot = desc.get("boot_id")
        if boot is None or not boot_id_ok(boot):
            return Heard.KEEP  # a rig without boot ids (a malformed one is refused by validate_description)
        if boot == self.boot_id:
            self.seen_ns = t_ns
            return Heard.KEEP
        sender = sender_of(desc)
        if self.boot_id is None:
            self.boot_id, self.sender, self.seen_ns = boot, sender, t_ns
            return Heard.FIRST
        if boot in self.boots and t_ns - self.seen_ns < DUPLICATE_WINDOW_NS:
            pair = frozenset((boot, self.boot_id))
            if pair in self.duplicates:  # settled: the followed one keeps the id
                self.boots[boot] = (t_ns, sender)
                self.previous = sender
                return Heard.DROP
            # first seen: the earlier holder (returning now) keeps the id; the newcomer, taken for a
            # restart a moment ago, is the second sender
            self.duplicates.add(pair)
            newcomer = self.sender
            del self.boots[boot]
            self.boots[newcomer["boot_id"]] = (self.seen_ns, newcomer)
            self.boot_id, self.sender, self.seen_ns, self.previous = boot, sender, t_ns, newcomer
            return Heard.DUPLICATE
        self.boots[self.boot_id] = (self.seen_ns, self.sender)
        self.boots.pop(boot, None)
        while len(self.boots) > MAX_BOOTS_REMEMBERED:
            del self.boots[next(iter(self.boots))]
        self.previous = self.sender
        self.boot_id, self.sender, self.seen_ns = boot, sender, t_ns
        return Heard.RESTART


def whole(x: Any) -> int | None:
    """A JSON whole number (an int, or a float with no fraction), else None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return int(x)
    return None


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def boot_id_ok(boot: Any) -> bool:
    """An int, or a non-empty string of at most 200 characters."""
    return (isinstance(boot, int) and not isinstance(boot, bool)) or (isinstance(boot, str) and 0 < len(boot) <= 200)


def sender_of(desc: dict[str, Any]) -> dict[str, Any]:
    """Who sent a rig heartbeat: its boot_id, host and pid (as far as it says)."""
    pid = desc.get("pid")
    return {"boot_id": desc.get("boot_id"), "host": str(desc.get("host", "?"))[:200],
            "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None}


def who(sender: dict[str, Any]) -> str:
    """A sender in words, for alarms."""
    return f"boot_id {sender.get('boot_id')} (host {sender.get('host')}, pid {sender.get('pid')})"
