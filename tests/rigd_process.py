"""Helpers for tests that run the real ``rigd`` as a subprocess (real sockets, broker, files)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RIGD = [str(Path(sys.executable).parent / "rigd")]  # the installed console script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rigd:
    """A running ``rigd start`` subprocess and where to find it."""

    def __init__(self, proc: subprocess.Popen[str], runtime: Path, name: str, log: Path) -> None:
        self.proc = proc
        self.runtime = runtime
        self.name = name
        self.log = log
        self.info: dict[str, Any] = {}

    def env(self) -> dict[str, str]:
        return {**os.environ, "RIGD_RUNTIME_DIR": str(self.runtime)}

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        path = self.runtime / f"{self.name}.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rigd exited early ({self.proc.returncode}):\n{self.output()}")
            if path.exists():
                try:
                    self.info = json.loads(path.read_text())
                    return self.info
                except json.JSONDecodeError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"rigd not ready after {timeout} s:\n{self.output()}")

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*RIGD, *args], capture_output=True, text=True, timeout=timeout, env=self.env(),
                              cwd=REPO)

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--name", self.name, "--json")
        assert r.returncode == 0, r.stderr + r.stdout
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def session_dir(self) -> Path:
        return Path(self.info["session_dir"])


@contextmanager
def rigd(tmp: Path, *args: str, name: str = "rigd") -> Iterator[Rigd]:
    runtime = tmp / "runtime"
    runtime.mkdir(exist_ok=True)
    log = tmp / f"rigd-{name}.log"
    env = {**os.environ, "RIGD_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1"}
    cmd = [*RIGD, "start", "--name", name, "--session-dir", str(tmp / "sessions"), "--no-live", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                                start_new_session=True)
    r = Rigd(proc, runtime, name, log)
    try:
        yield r
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def mosquitto(tmp: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private Mosquitto broker on a free loopback port."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield f"mqtt://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(5)


def measured_calibration(tmp: Path, **limits: float) -> Path:
    """A calibration file as a lab would write it (not the placeholder), with optional lower limits.

    ``--rig external`` refuses the shipped placeholder; tests use this one instead.
    """
    text = (REPO / "hardware" / "calibration_default.toml").read_text()
    text = text.replace('measured_on = "placeholder - measure on your rig"', 'measured_on = "test bench"')
    for key, value in limits.items():
        lines = [f"{key} = {value}" if ln.split("=")[0].strip() == key else ln for ln in text.splitlines()]
        text = "\n".join(lines) + "\n"
    path = tmp / "calibration.toml"
    path.write_text(text)
    return path


@contextmanager
def external_rigd(tmp: Path, name: str, *args: str) -> Iterator[tuple[Rigd, str, str]]:
    """A ready ``rigd start --rig external`` on free ports, with a measured calibration: (rigd, ingest, command)."""
    ingest, command = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with rigd(tmp, "--rig", "external", "--calibration", str(measured_calibration(tmp)), "--ingest", ingest,
              "--command", command, *args, name=name) as r:
        r.wait_ready()
        yield r, ingest, command


def rig_summary(session: Path) -> dict[str, Any]:
    """The rig process's JSON summary line (its last JSON line in the session's sim.log)."""
    for line in reversed((session / "sim.log").read_text().splitlines()):
        try:
            out: dict[str, Any] = json.loads(line)
            return out
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"no summary in {session / 'sim.log'}")
