"""Light sources: what finally turns a checked light command into light (or bytes on the wire).

This module owns the :class:`LightSource` protocol and its implementations: :class:`WireLightSource`
(packs the command into the rig.wire LIGHT_COMMAND payload and hands the bytes to a function the
service supplies, which sends them on the command socket) and :class:`RecordingLightSource`
(in-process: records every command and optionally forwards it, e.g. to the simulated mouse).

A light source accepts only :class:`MintedCommand` objects, and a ``MintedCommand`` can be created
only with the module-private token that :mod:`hardware.interlock` holds: every ``send`` checks it
and raises :class:`UnmintedCommandError` otherwise. Python cannot make this unforgeable; it makes
bypassing the interlock a deliberate act that review catches (docs/safety.md). Nothing here
validates limits: that is the interlock's job alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from rig.wire import LightCommandFields


class UnmintedCommandError(PermissionError):
    """A light command that did not come from the light interlock reached a light source."""


class _Token:
    __slots__ = ()


_INTERLOCK_TOKEN = _Token()  # handed to hardware.interlock only (see _token_for_interlock)
_token_taken = False


def _token_for_interlock() -> _Token:
    """Return the minting token; called once, by hardware.interlock at import; a second call raises."""
    global _token_taken
    if _token_taken:
        raise UnmintedCommandError("the light-command minting token is already held by hardware.interlock")
    _token_taken = True
    return _INTERLOCK_TOKEN


@dataclass(frozen=True, slots=True)
class MintedCommand:
    """A light command the interlock has checked (or an ALL_OFF / RAMP_DOWN it issued)."""

    fields: LightCommandFields
    token: _Token = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.token is not _INTERLOCK_TOKEN:
            raise UnmintedCommandError("light commands are minted only by hardware.interlock.LightInterlock")


def _check(cmd: object) -> LightCommandFields:
    if not isinstance(cmd, MintedCommand) or cmd.token is not _INTERLOCK_TOKEN:
        raise UnmintedCommandError(f"light source refused {type(cmd).__name__}: only commands minted by "
                                   "hardware.interlock.LightInterlock may reach a light source")
    return cmd.fields


@runtime_checkable
class LightSource(Protocol):
    """Something that executes minted light commands."""

    def send(self, cmd: MintedCommand) -> None:
        """Execute (or transmit) the command; raise UnmintedCommandError for anything not minted."""
        ...


class WireLightSource:
    """Packs minted commands into LIGHT_COMMAND payload bytes and hands them to ``send``.

    Args:
        send: the service's function that puts the payload on the command socket (it adds the
            header with its own sequence number and send time).

    """

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send = send
        self.n_sent = 0

    def send(self, cmd: MintedCommand) -> None:
        """Pack and transmit."""
        payload = _check(cmd).pack()
        self._send(payload)
        self.n_sent += 1


class RecordingLightSource:
    """Records every command it receives (in-process rigs, dry runs, tests); optionally forwards it.

    Args:
        forward: called with each command's fields after recording (e.g. the simulated mouse's
            ``apply_light``); its return value is kept in :attr:`results`.

    """

    def __init__(self, forward: Callable[[LightCommandFields], object] | None = None) -> None:
        self.commands: list[LightCommandFields] = []
        self.results: list[object] = []
        self._forward = forward

    def send(self, cmd: MintedCommand) -> None:
        """Record (and forward)."""
        f = _check(cmd)
        self.commands.append(f)
        if self._forward is not None:
            self.results.append(self._forward(f))
