"""The Lava backend as rigd sees it: a Python 3.10 sidecar process reached over ZeroMQ.

This module owns the sidecar's lifetime (start with the network file, wait for ``ready``, stop and
end its process group) and the rigd end of the wire protocol documented in ``lava_sidecar.py``.
``LavaBackend`` has the same ``step`` / ``run`` API as the CPU backend; ``step_many`` sends k
steps per round trip (the batching that amortises Lava's per-message cost). It raises
:class:`~hardware.spiking.backend.BackendUnavailable` when the Lava venv is missing or the sidecar
does not come up, and :class:`~hardware.spiking.backend.BackendDeadlineMissed` when a reply is late.
It must not import lava (which cannot run on Python 3.11).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from hardware.spiking.backend import (
    BackendDeadlineMissed,
    BackendUnavailable,
    Record,
    check_input_names,
    input_matrix,
)
from hardware.spiking.network import Mode, Network

REPO = Path(__file__).resolve().parents[2]
SIDECAR = Path(__file__).resolve().with_name("lava_sidecar.py")
DEFAULT_PYTHON = ".venv-lava/bin/python"


def lava_python(python: str | Path | None = None) -> Path:
    """The Lava venv's interpreter: ``python``, else ``$RIGD_LAVA_PYTHON``, else ``.venv-lava`` in the repo."""
    p = Path(python or os.environ.get("RIGD_LAVA_PYTHON") or DEFAULT_PYTHON)
    return p if p.is_absolute() else REPO / p


def lava_available(python: str | Path | None = None) -> bool:
    """True if the Lava venv's interpreter exists."""
    return lava_python(python).exists()


def _send(sock: zmq.Socket[Any], header: dict[str, Any],
          arrays: list[tuple[str, npt.NDArray[Any]]] | None = None) -> None:
    arrays = arrays or []
    h = dict(header)
    h["arrays"] = [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays]
    frames: list[Any] = [json.dumps(h).encode()] + [np.ascontiguousarray(a) for _, a in arrays]
    sock.send_multipart(frames, copy=False)


def _recv(sock: zmq.Socket[Any]) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    frames = sock.recv_multipart(copy=False)
    header: dict[str, Any] = json.loads(bytes(frames[0].buffer).decode())
    arrays: dict[str, npt.NDArray[Any]] = {}
    for spec, fr in zip(header.get("arrays", []), frames[1:], strict=False):
        arrays[spec["name"]] = np.frombuffer(fr.buffer, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"])
    return header, arrays


class LavaBackend:
    """A network running in a Lava sidecar (Loihi2SimCfg on CPU, or Loihi2HwCfg with ``hw``).

    ``stream`` builds the streaming instance at start (needed by ``step``); with ``fused`` it is one
    Lava process model for the whole network (one OS process instead of one per Lava process,
    same arithmetic as the stock models, tested equal) fed through external pipes. ``run`` always runs a
    *fresh* instance from the initial state (Lava's batch path with a Monitor), independent of
    the streaming one. Use as a context manager or call :meth:`close`.
    """

    kind = "lava"

    def __init__(self, net: Network, python: str | Path | None = None, *, stream: bool = True,
                 hw: bool = False, start_timeout_s: float = 120.0, buffer_steps: int = 64,
                 fused: bool = False) -> None:
        self.net = net
        self.python = lava_python(python)
        if not self.python.exists():
            raise BackendUnavailable(
                f"Lava backend unavailable: {self.python} does not exist. Create the Lava venv with "
                "scripts/setup (needs a Python 3.10, e.g. PYENV_VERSION=3.10.13), or use the CPU backend.")
        self.stream = stream
        self.buffer_steps = buffer_steps
        self._tmp = tempfile.TemporaryDirectory(prefix="rigd-lava-")
        self.net_path = net.save(Path(self._tmp.name) / "network.npz")
        self.log_path = Path(self._tmp.name) / "sidecar.log"
        self._ctx: zmq.Context[Any] = zmq.Context.instance()
        self._sock: zmq.Socket[Any] = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        cmd = [str(self.python), str(SIDECAR), "--endpoint", self.endpoint, "--net", str(self.net_path),
               "--buffer", str(buffer_steps)]
        if stream:
            cmd.append("--stream")
        if hw:
            cmd.append("--hw")
        if fused:
            cmd.append("--fused")
        self.fused = fused
        self._log = self.log_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self._pending = 0
        self._last_arrays: dict[str, npt.NDArray[Any]] = {}
        self.info: dict[str, Any] = {}
        self._in_names = [i.name for i in net.inputs]
        self._out = {o.name: np.zeros(net.population(o.population).size, np.bool_) for o in net.outputs}
        try:
            header = self._wait(start_timeout_s, "start")
        except BaseException:
            self.close()
            raise
        if header.get("event") != "ready":
            err = header.get("error", header)
            self.close()
            raise BackendUnavailable(f"Lava sidecar failed to start: {err}")
        self.info = header

    # ----- plumbing -------------------------------------------------------------------------
    def _wait(self, timeout_s: float, what: str) -> dict[str, Any]:
        deadline = time.perf_counter() + timeout_s
        while True:
            left = deadline - time.perf_counter()
            if self._sock.poll(max(0, min(int(left * 1000), 200))):
                header, self._last_arrays = _recv(self._sock)
                return header
            if self.proc is not None and self.proc.poll() is not None:
                raise BackendUnavailable(f"Lava sidecar exited (code {self.proc.returncode}) during {what}; "
                                         f"log:\n{self._tail()}")
            if left <= 0:
                raise BackendDeadlineMissed(f"Lava sidecar gave no reply to {what} within {timeout_s:.3g} s")

    def _tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def _check(self, header: dict[str, Any]) -> None:
        if not header.get("ok"):
            raise RuntimeError(f"Lava sidecar error: {header.get('error')}\n{header.get('traceback', '')}")

    # ----- streaming ------------------------------------------------------------------------
    def send_steps(self, inputs: dict[str, npt.NDArray[Any]] | None, k: int) -> None:
        """Send k steps of input (port → (k, size)) without waiting for the reply."""
        if not self.stream:
            raise RuntimeError("LavaBackend(stream=False) cannot step; create it with stream=True")
        inputs = inputs or {}
        check_input_names(self.net, inputs)
        arrays = [(n, input_matrix(self.net, n, inputs[n], k).astype(
            np.int32 if self.net.mode is Mode.FIXED else np.float64)) for n in self._in_names if n in inputs]
        _send(self._sock, {"cmd": "step", "k": k}, arrays)
        self._pending += 1

    def recv_steps(self, timeout_s: float = 30.0) -> dict[str, npt.NDArray[np.bool_]]:
        """The reply to :meth:`send_steps`: output spikes per port, (k, size) bool."""
        header = self._wait(timeout_s, "step")
        self._pending -= 1
        self._check(header)
        return {n: a.astype(np.bool_) for n, a in self._last_arrays.items()}

    def step_many(self, inputs: dict[str, npt.NDArray[Any]] | None, k: int,
                  timeout_s: float = 30.0) -> dict[str, npt.NDArray[np.bool_]]:
        """K steps in one round trip: inputs (k, size) per port → output spikes (k, size) per port."""
        self.send_steps(inputs, k)
        return self.recv_steps(timeout_s)

    def step(self, inputs: dict[str, npt.NDArray[Any]] | None = None,
             timeout_s: float = 30.0) -> dict[str, npt.NDArray[np.bool_]]:
        """One step: inputs (size,) per port → output spikes (size,) per port (overwritten next step)."""
        batched = {n: np.asarray(a)[None] for n, a in (inputs or {}).items()}
        got = self.step_many(batched, 1, timeout_s)
        for n, a in got.items():
            self._out[n][:] = a[0]
        return self._out

    # ----- batch ----------------------------------------------------------------------------
    def run(self, n_steps: int, inputs: dict[str, npt.NDArray[Any]] | None = None,
            timeout_s: float = 600.0) -> Record:
        """A fresh instance run for ``n_steps`` (RingBuffer inputs, Monitor probes): spikes, v, u."""
        inputs = inputs or {}
        check_input_names(self.net, inputs)
        fixed = self.net.mode is Mode.FIXED
        arrays = [(n, input_matrix(self.net, n, inputs[n], n_steps).astype(np.int32 if fixed else np.float64))
                  for n in self._in_names if n in inputs]
        _send(self._sock, {"cmd": "run", "n_steps": n_steps}, arrays)
        header = self._wait(timeout_s, "run")
        self._check(header)
        rec = Record(n_steps=n_steps)
        for p in self.net.populations:
            rec.spikes[p.name] = self._last_arrays[f"spikes/{p.name}"].astype(np.bool_)
            rec.v[p.name] = self._last_arrays[f"v/{p.name}"].copy()
            rec.u[p.name] = self._last_arrays[f"u/{p.name}"].copy()
        return rec

    def load(self, net: Network, timeout_s: float = 30.0) -> None:
        """Replace the network of a batch-only backend (``stream=False``): one sidecar, many networks."""
        if self.stream:
            raise RuntimeError("load() needs LavaBackend(stream=False); a streaming sidecar serves one network")
        self.net = net
        self._in_names = [i.name for i in net.inputs]
        self._out = {o.name: np.zeros(net.population(o.population).size, np.bool_) for o in net.outputs}
        self.net_path = net.save(Path(self._tmp.name) / f"network-{time.monotonic_ns()}.npz")
        _send(self._sock, {"cmd": "load", "path": str(self.net_path)})
        self._check(self._wait(timeout_s, "load"))

    def ping(self, timeout_s: float = 5.0) -> float:
        """Round trip of an empty request, seconds."""
        t0 = time.perf_counter()
        _send(self._sock, {"cmd": "ping"})
        self._check(self._wait(timeout_s, "ping"))
        return time.perf_counter() - t0

    # ----- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Ask the sidecar to stop, then end its process group (Lava spawns one OS process per process)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None and self._pending == 0:
                try:
                    _send(self._sock, {"cmd": "stop"})
                    if self._sock.poll(2000):
                        _recv(self._sock)
                    proc.wait(timeout=5)
                except (zmq.ZMQError, subprocess.TimeoutExpired):
                    pass
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)  # the group the sidecar leads (start_new_session)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    proc.wait(timeout=3)
                    time.sleep(0.05)
                except subprocess.TimeoutExpired:
                    continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not self._sock.closed:
            self._sock.close(0)
        if not self._log.closed:
            self._log.close()
        self._tmp.cleanup()

    def __enter__(self) -> LavaBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "proc", None) is not None:
            self.close()
