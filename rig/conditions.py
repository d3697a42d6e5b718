"""Photoinhibition conditions of a trial: what the protocol planned and what the light delivered.

Chen et al. 2021 compare four conditions: control, left ALM, right ALM and bilateral ALM
photoinhibition. A trial counts under the condition of the light that actually reached the rig.
A planned perturbation that never became light (refused by the interlock, decided too late,
rejected by the rig as late or invalid, cut by the rig's watchdog) is ``not_delivered`` and sits
outside every comparison: counting it under its planned condition would dilute the effect of
light with trials that had none. The report, the NWB trials table reader and the live view all
label trials through this one mapping.
"""

from __future__ import annotations

from typing import Any

CONDITIONS = ("control", "left", "right", "bilateral")
NOT_DELIVERED = "not_delivered"
#: light statuses under which no (complete) light reached the animal as commanded
_NOT_LIGHT = ("late", "invalid", "watchdog_off")


def canonical_condition(name: str | None) -> str:
    """Map a protocol's condition label ("left_alm", "bilateral", None…) onto the four of Chen 2021."""
    s = str(name or "control").lower()
    if "bilat" in s or "both" in s:
        return "bilateral"
    if "left" in s:
        return "left"
    if "right" in s:
        return "right"
    return "control" if s in ("control", "none", "", "ctrl") else s


def delivered_condition(planned: str, hemisphere: str | None, status: str | None) -> str:
    """The condition a trial counts under.

    Args:
        planned: the protocol's condition for the trial (any label; canonicalised here).
        hemisphere: the lit side of the trial's light command ("left", "right", "bilateral"), or
            None when no light command was sent.
        status: that command's last status ("sent", "applied", "late"...), None without one.
    """
    planned = canonical_condition(planned)
    if hemisphere in ("left", "right", "bilateral") and status not in _NOT_LIGHT:
        return hemisphere
    return "control" if planned == "control" else NOT_DELIVERED


def trial_condition(summary: dict[str, Any]) -> str:
    """The delivered condition of one of rigd's trial summaries (a ``type: trial`` log record)."""
    light = summary.get("light") or {}
    if not light:
        return delivered_condition(str(summary.get("condition") or "control"), None, None)
    return delivered_condition(str(summary.get("condition") or "control"), str(light.get("hemisphere", "none")),
                               str(light.get("status", "none")))
