"""Photoinhibition conditions of a trial: what the protocol planned and what the light delivered.

Chen et al. 2021 compare four conditions: control, left ALM, right ALM and bilateral ALM
photoinhibition. A trial counts under the condition of the light that actually reached the animal:
its light command was acknowledged APPLIED by the rig (and not cut afterwards by the rig's
watchdog). A planned perturbation that never became light (refused by the interlock, decided too
late, acknowledged LATE or INVALID, cut by the rig's watchdog, or never acknowledged at all) is
``not_delivered`` and sits outside every comparison: counting it under its planned condition would
dilute the effect of light with trials that had none.

This module is the one place that rule lives. The hot loop's trial summaries, the terminal and
``rigd status`` tables (rig/progress.py), the live view (rig/live_state.py), the report and the NWB
export all label trials through it. Acknowledgements that arrive after a trial's summary was
written are joined back from the recording (:func:`join_recorded_acks`) by every reader of a
finished session, and reported live as ``light_update`` records (docs/report.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rig import wire

CONDITIONS = ("control", "left", "right", "bilateral")
NOT_DELIVERED = "not_delivered"
#: the one light status under which the commanded light reached the animal
DELIVERED_STATUS = "applied"
_HEMISPHERES = ("left", "right", "bilateral")


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


def trial_label(protocol_label: str | None, delivered: str) -> str:
    """The name a finished trial is analysed under: the protocol's own condition, or ``not_delivered``.

    Two conditions that light the same hemisphere at different times (``right_early``,
    ``right_late``) keep their names, so no analysis merges them; a trial whose planned light never
    reached the animal is ``not_delivered`` (this module's rule).

    Args:
        protocol_label: the condition the protocol drew for the trial (a trial summary's
            ``condition``, NWB ``photostim_condition``); None for a trial without a draw.
        delivered: the trial's :func:`delivered_condition`.
    """
    if delivered == NOT_DELIVERED:
        return NOT_DELIVERED
    label = str(protocol_label or "").strip()
    if delivered == "control":
        return label if label and label.lower() not in ("none", "null") else "control"
    return label or delivered


def light_delivered(status: str | None) -> bool:
    """Whether a light command with this last status reached the animal (acknowledged APPLIED)."""
    return status == DELIVERED_STATUS


def delivered_condition(planned: str, hemisphere: str | None, status: str | None) -> str:
    """The condition a trial counts under.

    Args:
        planned: the protocol's condition for the trial (any label; canonicalised here).
        hemisphere: the lit side of the trial's light command ("left", "right", "bilateral"), or
            None when no light command was sent.
        status: that command's last status ("sent" = never acknowledged, "applied", "late",
            "invalid", "watchdog_off"), None without one.
    """
    if hemisphere in _HEMISPHERES and light_delivered(status):
        return str(hemisphere)
    return "control" if canonical_condition(planned) == "control" else NOT_DELIVERED


def light_truth(planned: str | None, light: dict[str, Any] | None) -> dict[str, Any]:
    """The planned/delivered fields of a trial summary, from its planned label and light dict.

    ``delivered`` is True only when light reached the animal; ``light_status`` is the light
    command's last status ("none" when no light command was sent for the trial).
    """
    status = str(light.get("status", "none")) if light else "none"
    hemisphere = str(light.get("hemisphere", "none")) if light else None
    cond = delivered_condition(str(planned or "control"), hemisphere, status if light else None)
    return {"planned_condition": canonical_condition(planned), "delivered": cond in _HEMISPHERES,
            "delivered_condition": cond, "light_status": status}


def trial_condition(summary: dict[str, Any]) -> str:
    """The delivered condition of one of rigd's trial summaries (a ``type: trial`` log record)."""
    return str(light_truth(summary.get("condition"), summary.get("light"))["delivered_condition"])


def last_acks(acks: Iterable[tuple[Any, wire.LightAckFields]]) -> dict[tuple[int, int], tuple[str, int]]:
    """Per (rig id, command id): the last acknowledged status and the measured light onset.

    ``acks`` are recorded acknowledgements in recording order (``Session.light_acks()``); the
    last one of a command wins (an APPLIED later cut by the rig's watchdog is ``watchdog_off``).
    The onset (``t_light_change_rig_ns`` of the APPLIED ack, rig clock) is 0 when not measured.
    """
    last: dict[tuple[int, int], tuple[str, int]] = {}
    for rec, ack in acks:
        key = (int(rec.header.rig_id), int(ack.command_id))
        onset = ack.t_light_change_rig_ns if ack.status == wire.AckStatus.APPLIED else last.get(key, ("", 0))[1]
        last[key] = (ack.status.name.lower(), int(onset))
    return last


def join_recorded_acks(trials: list[dict[str, Any]],
                       acks: Iterable[tuple[Any, wire.LightAckFields]]) -> list[dict[str, Any]]:
    """Trial summaries with every recorded acknowledgement of their light command applied.

    A summary written before its command's ack arrived gets that ack's status (and measured onset)
    here, and its planned/delivered fields are recomputed with :func:`light_truth`. ``acks`` as
    for :func:`last_acks`; the input is not modified.
    """
    last = last_acks(acks)
    out = []
    for summary in trials:
        tr = dict(summary)
        light = tr.get("light")
        if light and "command_id" in light:
            ack = last.get((int(tr.get("rig_id", 1)), int(light["command_id"])))
            if ack is not None:
                light = {**light, "status": ack[0]}
                if ack[1]:
                    light["t_light_change_rig_ns"] = ack[1]
                tr["light"] = light
        tr.update(light_truth(tr.get("condition"), light))
        out.append(tr)
    return out
