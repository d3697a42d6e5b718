"""The live web view of a running session: a small aiohttp server inside rigd's own event loop.

It owns the HTTP side of watching a session: it registers a tap on the service's recorder that
feeds a :class:`rig.live_state.LiveState` (on the recorder's writer thread, never the hot path),
serves one static page (``rig/web/``: hand-written HTML, JS drawing on canvas, CSS; no build
step), and pushes updates to each open page as server-sent events at a bounded rate (≤ 10 Hz).
Each update carries only the raster and decoder columns that client has not seen yet, plus the
session status, the latency histograms (internal and end to end, with p50/p99 and deadline
misses) and the drop counters. It binds to loopback by default. It reads the service's status,
telemetry and recorder; it never sends anything to the rig and never touches the hot loop.

When the view stops (the session ended: the service's state is then ``stopped``), every open page
gets one last update as an ``end`` event, so that it shows "session finished" instead of retrying
a connection that is gone.

Routes: ``/`` the page, ``/static/*`` its assets, ``/events`` the SSE stream, ``/api/state`` one
JSON snapshot (for scripts and tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from aiohttp import web

from rig.live_state import Cursor, LiveState
from rig.session import Recorder
from rig.telemetry import Histogram, LoopTelemetry

WEB_DIR = Path(__file__).with_name("web")
MAX_REFRESH_HZ = 10.0  #: the page never updates faster than this (issue 8: bounded refresh rate)
#: Display bins of the latency histogram: 10 per decade from 1 µs to 1 s.
_HIST_LO_LOG10, _HIST_HI_LOG10, _HIST_PER_DECADE = 0.0, 6.0, 10
#: Counters shown as drops (anything that lost data or a decision), by substring.
_DROP_WORDS = ("drop", "late", "missing", "lost", "torn", "overflow", "tap_errors")


class ServiceLike(Protocol):
    """What the live view reads from the service (rig.supervisor.Service provides it)."""

    recorder: Recorder
    telemetry: LoopTelemetry

    def status(self) -> dict[str, Any]:
        """Return the service status dict."""
        ...

    def telemetry_summary(self) -> dict[str, Any]:
        """Return latency summaries (µs) with deadline misses."""
        ...


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, numpy scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, str | int | bool) or obj is None:
        return obj
    return str(obj)


class _Rebin:
    """Fold a telemetry Histogram (200 bins/decade) into a coarse log histogram for display."""

    def __init__(self, fine: Histogram) -> None:
        n = int((_HIST_HI_LOG10 - _HIST_LO_LOG10) * _HIST_PER_DECADE)
        self.edges_us = 10.0 ** (_HIST_LO_LOG10 + np.arange(n + 1) / _HIST_PER_DECADE)
        centers = np.sqrt(fine.edges[:-1] * fine.edges[1:])  # fine bin i+1 spans edges[i]..edges[i+1]
        idx = np.floor((np.log10(centers) - _HIST_LO_LOG10) * _HIST_PER_DECADE).astype(np.intp)
        self.index = np.clip(idx, 0, n - 1)
        self.n = n

    def counts(self, fine: Histogram) -> npt.NDArray[np.int64]:
        inner = fine.counts[1:-1]
        out = np.bincount(self.index, weights=inner, minlength=self.n).astype(np.int64)
        out[0] += fine.counts[0]
        out[-1] += fine.counts[-1]
        return out


def drop_counters(counters: dict[str, Any]) -> dict[str, int]:
    """Pick the counters that count lost data or lost decisions (the drops panel)."""
    return {k: int(v) for k, v in sorted(counters.items())
            if isinstance(v, int | float) and any(w in k for w in _DROP_WORDS)}


class LiveView:
    """Serve the live page of one service.

    Args:
        service: the running service (its recorder, telemetry, status and telemetry summary).
        port: TCP port; 0 picks a free one.
        host: interface to bind; loopback by default (the page has no authentication).
        refresh_hz: SSE updates per second per page, 0 < refresh_hz ≤ 10.
        state: the LiveState to feed (a new one by default).

    """

    def __init__(self, service: ServiceLike, port: int = 0, host: str = "127.0.0.1",
                 refresh_hz: float = 5.0, state: LiveState | None = None) -> None:
        if not 0 < refresh_hz <= MAX_REFRESH_HZ:
            raise ValueError(f"refresh_hz must be in (0, {MAX_REFRESH_HZ}], got {refresh_hz}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0…65535, got {port}")
        self.service = service
        self.host = host
        self.port = port
        self.refresh_s = 1.0 / refresh_hz
        self.state = state or LiveState()
        self.url = ""
        self.clients = 0
        self.updates_sent = 0
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._common: tuple[float, dict[str, Any]] | None = None
        self._rebin = _Rebin(service.telemetry.e2e)
        self._tapped = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> str:
        """Start serving; returns the page URL (``http://host:port/``)."""
        if not self._tapped:
            self.service.recorder.add_tap(self.state.on_record, span=self.state.on_span)
            self._tapped = True
        self.state.enabled = True
        self._closing.clear()
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/events", self._events)
        app.router.add_get("/api/state", self._api_state)
        app.router.add_static("/static/", WEB_DIR, show_index=False)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            await runner.cleanup()
            raise OSError(f"live view cannot bind {self.host}:{self.port}: {exc}; pick another "
                          "--ui-port or 0 for a free one") from exc
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner
        self.port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}/"
        return self.url

    async def stop(self) -> None:
        """Send every page its last update (an ``end`` event), then close the streams and the server."""
        self._closing.set()
        self.state.enabled = False
        deadline = time.monotonic() + 1.0
        while self.clients and time.monotonic() < deadline:  # each stream writes its end event
            await asyncio.sleep(0.02)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> LiveView:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- content ------------------------------------------------------------------------------

    def _latency(self) -> dict[str, Any]:
        tel = self.service.telemetry
        summary = self.service.telemetry_summary()
        cfg = getattr(self.service, "cfg", None)
        deadline_us = float(getattr(cfg, "deadline_ms", 10.0)) * 1e3
        internal = tel.hist["internal_us"]
        return {
            "edges_us": self._rebin.edges_us.tolist(), "deadline_us": deadline_us,
            "internal": {**summary.get("internal", {}), "counts": self._rebin.counts(internal).tolist(),
                         "deadline_misses": internal.count_above(deadline_us)},
            "e2e": {**summary.get("e2e", {}), "counts": self._rebin.counts(tel.e2e).tolist(),
                    "deadline_misses": tel.e2e.count_above(deadline_us)},
            "loops": summary.get("loops", 0), "lost_rows": summary.get("lost_rows", 0),
        }

    def _decoder_status(self, st: dict[str, Any]) -> dict[str, Any]:
        """The decoder's status with the trials its first fit needs (``n_fit_trials``), for "calibrating k/N"."""
        dec = dict(st.get("decoder") or {})
        if dec.get("n_fit_trials") is None:
            n_fit = getattr(getattr(self.service, "cfg", None), "n_fit_trials", None)
            if isinstance(n_fit, int):
                dec["n_fit_trials"] = n_fit
        return dec

    def common(self, fresh: bool = False) -> dict[str, Any]:
        """Return the part of an update every page shares (status, latency, drops), cached per tick."""
        now = time.monotonic()
        if not fresh and self._common is not None and now - self._common[0] < self.refresh_s * 0.9:
            return self._common[1]
        st = self.service.status()
        counters = dict(st.get("counters", {}))
        counters["live_view.tap_errors"] = self.state.errors
        counters["telemetry.lost_rows"] = int(self.service.telemetry.lost_rows)
        interlock = st.get("interlock", {})
        out: dict[str, Any] = _clean({
            "status": {k: st.get(k) for k in ("state", "name", "rig", "session_dir", "uptime_s",
                                              "trials_done", "trials_target", "frames", "errors",
                                              "alarms", "ui", "mqtt")},
            "protocol": st.get("protocol", {}), "decoder_status": self._decoder_status(st),
            "interlock": {"refusals": interlock.get("refusals", {}),
                          "energy_used_j": interlock.get("energy_used_j", {}),
                          "energy_budget_j": interlock.get("energy_budget_j"),
                          "perturbed": interlock.get("perturbed"), "trials": interlock.get("trials")},
            "service_alarms": st.get("last_alarms", []),
            "latency": self._latency(), "drops": drop_counters(counters),
            "refresh_hz": round(1.0 / self.refresh_s, 3),
        })
        self._common = (now, out)
        return out

    def update(self, cursor: Cursor | None = None, fresh: bool = False) -> dict[str, Any]:
        """One full update for a client (its cursor advances past the columns sent)."""
        snap = self.state.snapshot(cursor)
        snap.update(self.common(fresh))
        snap["server_time"] = time.time()
        return snap

    # -- handlers -----------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _api_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.update(), dumps=lambda o: json.dumps(o, allow_nan=False))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        cursor = Cursor()
        self.clients += 1
        try:
            await resp.write(b"retry: 1000\n\n")
            while not self._closing.is_set():
                data = json.dumps(self.update(cursor), allow_nan=False, separators=(",", ":"))
                await resp.write(f"data: {data}\n\n".encode())
                self.updates_sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.refresh_s)
            # the last word: the state the service ended in ("stopped" at the end of a session)
            data = json.dumps(self.update(cursor, fresh=True), allow_nan=False, separators=(",", ":"))
            await resp.write(f"event: end\ndata: {data}\n\n".encode())
            self.updates_sent += 1
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self.clients -= 1
        return resp
