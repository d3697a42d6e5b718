"""Open Ephys GUI remote control over HTTP: start and stop its recording around a rigd session.

This module owns the few calls of the GUI's HTTP server (Open Ephys GUI docs, User Manual →
"Remote control"; port 37497 by default) that rigd needs: ``GET /api/status`` (``{"mode": "IDLE" |
"ACQUIRE" | "RECORD"}``), ``PUT /api/status {"mode": ...}``, ``GET /api/recording`` and ``PUT
/api/recording`` (``parent_directory``, ``base_text``, ``prepend_text``, ``append_text``). It uses the
standard library only. An unreachable server, an HTTP error or an answer that is not the documented
JSON raises :class:`RemoteControlError` with the URL and what went wrong.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:37497"
MODES = ("IDLE", "ACQUIRE", "RECORD")


class RemoteControlError(RuntimeError):
    """The Open Ephys HTTP server could not do what was asked (the text says where and why)."""


class OpenEphysRemote:
    """A client of the GUI's HTTP server at ``url`` (``http://HOST:PORT``)."""

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 3.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Open Ephys remote-control URL {url!r}: expected http://HOST:PORT "
                             f"(default {DEFAULT_URL})")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, endpoint: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + endpoint, data=data, method="GET" if payload is None else "PUT",
                                     headers={"Content-Type": "application/json"})
        where = f"Open Ephys HTTP server {req.get_method()} {self.url}{endpoint}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            raise RemoteControlError(f"{where}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise RemoteControlError(f"{where}: unreachable ({why}); is the GUI running with its HTTP server "
                                     "enabled (File menu), and is the URL right?") from None
        try:
            obj = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RemoteControlError(f"{where}: answered {body[:80]!r}; expected a JSON object") from None
        if not isinstance(obj, dict):
            raise RemoteControlError(f"{where}: answered a JSON {type(obj).__name__}; expected an object")
        return obj

    def mode(self) -> str:
        """The GUI's mode: IDLE, ACQUIRE or RECORD."""
        mode = self._call("/api/status").get("mode")
        if mode not in MODES:
            raise RemoteControlError(f"Open Ephys HTTP server {self.url}/api/status: mode {mode!r}; expected one of "
                                     f"{', '.join(MODES)}")
        return str(mode)

    def set_mode(self, mode: str) -> str:
        """Ask for ``mode`` (IDLE, ACQUIRE or RECORD); returns the mode the GUI reports afterwards."""
        if mode not in MODES:
            raise ValueError(f"Open Ephys mode {mode!r}; expected one of {', '.join(MODES)}")
        got = self._call("/api/status", {"mode": mode}).get("mode")
        if got != mode:
            raise RemoteControlError(f"Open Ephys HTTP server {self.url}/api/status: asked for {mode}, the GUI "
                                     f"reports {got!r} (RECORD needs a Record Node in the signal chain)")
        return str(got)

    def recording(self) -> dict[str, Any]:
        """The recording settings (``parent_directory``, ``base_text``, ``record_nodes``…)."""
        return self._call("/api/recording")

    def set_recording(self, **fields: str) -> dict[str, Any]:
        """Set recording settings (``parent_directory``, ``base_text``, ``prepend_text``, ``append_text``)."""
        allowed = {"parent_directory", "base_text", "prepend_text", "append_text"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"recording settings {sorted(bad)}: expected some of {sorted(allowed)}")
        return self._call("/api/recording", dict(fields))

    def start_recording(self, base_text: str | None = None) -> str:
        """Name the recording directory ``base_text`` (if given) and start recording; returns the prior mode."""
        before = self.mode()
        if base_text:
            self.set_recording(base_text=base_text)
        self.set_mode("RECORD")
        return before

    def stop_recording(self, then: str = "ACQUIRE") -> None:
        """Stop recording; the GUI goes on acquiring (``then`` = ACQUIRE) or idles (IDLE)."""
        self.set_mode(then)
