"""The service configuration: every knob of ``rigd start``, validated once at the boundary.

Values come from CLI flags and an optional TOML file (``--config``); pydantic rejects bad values
with the field, the value and the allowed range, before anything starts. Budgets that matter
for safety or latency are named here with their units and sources.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIN_FIT_TRIALS = 10  #: fewest trials ``decoders.online.OnlineDecoder`` fits on (it refuses fewer)


def fresh_seed() -> int:
    """A new 32-bit seed from the OS's entropy (the default: each session its own trial order)."""
    return secrets.randbits(32)


class ServiceConfig(BaseModel):
    """Configuration of one rigd run (one session)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("rigd", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="instance name (MQTT prefix)")
    rig: Literal["sim", "external"] = "sim"
    #: with rig "sim": the rig is the replay of this recorded session (``--rig replay:DIR``, rig/replay_rig.py)
    #: instead of the simulated mouse; recorded in the manifest as what the session replays
    replay: Path | None = Field(None, description="recorded session directory to replay as the rig")
    #: replay pace: × the recorded rig clock (1 = real time), or "max": lockstep (needs clock = "rig")
    replay_speed: float | Literal["max"] = Field(1.0, description="replay speed: × real time, or 'max' (lockstep)")
    #: None → the protocol's ``[session] n_trials`` (``rigd start`` fills it in and says so)
    trials: int | None = Field(None, ge=1, le=100_000, description="stop after this many trials")
    #: what set ``trials``: "--trials" (the CLI or --config) or "protocol" (its [session] n_trials);
    #: recorded in the manifest with the rest of the config
    trials_from: Literal["--trials", "protocol"] | None = None
    duration_s: float | None = Field(None, gt=0, le=7 * 24 * 3600, description="stop after this long")
    #: the pipeline's time: "wall" (rigd's monotonic clock: deadlines, light limits and watchdogs in real
    #: time) or "rig" (each frame's rig time: a simulated or replayed rig in lockstep, as fast as the
    #: pipeline keeps up, deterministic; never for a rig with an animal on it)
    clock: Literal["wall", "rig"] = Field("wall", description="pipeline time: wall, or rig (sim/replay lockstep)")
    session_dir: Path = Path("sessions")
    mqtt: str | None = Field(None, description="lab broker mqtt://host:port; None → embedded broker")
    mqtt_port: int = Field(0, ge=0, le=65535, description="embedded broker port; 0 → a free port")
    protocol: Path | None = None
    calibration: Path | None = None
    #: bench test only: let --rig external run on the placeholder calibration (banner + alarm at start)
    bench_test_calibration: bool = False
    #: the animal on the rig: its light ledger (energy, perturbed fraction) outlives a restart
    subject: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,80}$", description="animal id")
    #: where light ledgers live (default: $RIGD_STATE_DIR or ~/.local/state/rigd, under ledger/)
    ledger_dir: Path | None = None
    #: a fresh random seed each start unless given (``--seed N`` reproduces a session: it is printed
    #: at start, recorded in the manifest and in the session directory's name)
    seed: int = Field(default_factory=fresh_seed, ge=0, le=2**32 - 1)
    rig_ids: list[int] = Field(default_factory=lambda: [1])
    #: units per rig (and raw channels) a rig may describe; a larger description is refused at the handshake
    #: before rigd allocates anything for it (docs/wire-protocol.md, "Limits")
    max_units: int = Field(200_000, ge=1, le=10_000_000, description="most units per rig")
    ingest_endpoint: str = "tcp://127.0.0.1:*"
    command_endpoint: str = "tcp://127.0.0.1:*"
    #: decision budget from frame receipt to command on the wire; ≤ 10 ms p99, below the
    #: ≈ 15-ms onset of opsin-mediated silencing (docs/architecture.md, budgets)
    deadline_ms: float = Field(10.0, gt=0, le=1000)
    decoder: str = "cd"
    decoder_file: Path | None = Field(None, description="start with this fitted decoder (rigd decoder fit)")
    publish_estimates: bool = Field(False, description="send every frame's estimate back to the rig")
    decoder_mode: Literal["freeze", "adaptive"] = "adaptive"
    #: the online decoder fits and cross-validates on at least MIN_FIT_TRIALS trials (decoders/online.py)
    n_fit_trials: int = Field(20, ge=MIN_FIT_TRIALS, le=10_000, description="control trials before the first fit")
    # simulated rig (docs/simulator.md)
    mu_left: float = Field(0.6, ge=0, le=1)
    mu_right: float = Field(0.6, ge=0, le=1)
    callosotomy: bool = False
    units_per_hemisphere: int = Field(40, ge=1, le=100_000)
    day: int = Field(0, ge=0, le=10_000)
    bin_ms: float = Field(1.0, gt=0, le=100)
    iti_s: float | None = Field(None, ge=0, le=60, description="sim inter-trial interval (default: sim's)")
    #: sim model: the reduced model (docs/simulator.md), the spiking network, or the authors' trained RNN
    #: (sim/rnn.py, docs/simulator-rnn.md)
    model: Literal["reduced", "spiking", "rnn"] = "reduced"
    backend: Literal["cpu", "lava"] = "cpu"
    #: SCHED_FIFO priority of the hot-loop thread and the simulated rig (0 = normal scheduling);
    #: without the privilege rigd runs normally and says so in its status
    realtime_priority: int = Field(10, ge=0, le=99)
    #: CPU placement: the hot-loop thread and its ZeroMQ I/O thread run on this CPU; rigd's other
    #: threads and the processes it starts (the simulated rig) are kept off it when another CPU exists
    #: "auto": rigd picks the loop's CPU and wait strategy for this machine (rig/placement.py) unless
    #: loop_cpu / poll_ahead_us are given; "off": neither pinned nor polling
    placement: Literal["auto", "off"] = Field("auto", description="auto: pick the loop's CPU and wait strategy")
    loop_cpu: int | None = Field(None, ge=0, description="pin the hot loop to this CPU")
    #: poll the ingest socket without sleeping from this long (µs) before each predicted frame until
    #: this long after it (no thread wake-up on arrival; costs CPU: use with loop_cpu). 0 = off
    poll_ahead_us: int = Field(0, ge=0, le=100_000, description="poll-ahead window around each predicted frame (µs)")
    ui: bool = True
    ui_port: int = Field(0, ge=0, le=65535, description="live view port on 127.0.0.1; 0 → free port")
    live: bool | None = Field(None, description="terminal live view (default: when stdout is a TTY)")

    @field_validator("loop_cpu")
    @classmethod
    def _loop_cpu_usable(cls, v: int | None) -> int | None:
        if v is not None:
            usable = sorted(os.sched_getaffinity(0))
            if v not in usable:
                raise ValueError(f"CPU {v} is not one this process may use; expected one of {usable}")
        return v

    @field_validator("mqtt")
    @classmethod
    def _mqtt_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("mqtt://", "tcp://")):
            raise ValueError(f"must look like mqtt://host:port, got {v!r}")
        return v

    @field_validator("decoder")
    @classmethod
    def _decoder_known(cls, v: str) -> str:
        from decoders import registry

        if v not in registry:
            raise ValueError(f"unknown decoder {v!r}; expected one of {sorted(registry)}")
        return v

    @field_validator("rig_ids")
    @classmethod
    def _rig_ids(cls, v: list[int]) -> list[int]:
        if not v or any(r <= 0 or r >= 2**32 for r in v):
            raise ValueError(f"rig ids must be 1 … 2^32-1 (0 is rigd itself), got {v}")
        return v

    @field_validator("replay_speed")
    @classmethod
    def _replay_speed(cls, v: float | str) -> float | str:
        if v != "max" and not (isinstance(v, float | int) and 0.0 < v <= 1000.0):
            raise ValueError(f"expected 'max' or a speed 0 < x <= 1000 (× the recorded rig clock), got {v!r}")
        return v

    @model_validator(mode="after")
    def _replay_consistent(self) -> ServiceConfig:
        if self.replay is not None and self.rig != "sim":
            raise ValueError(f"replay needs rig = 'sim' (the replay takes the simulated rig's place), got {self.rig!r}")
        if self.replay is not None and (self.replay_speed == "max") != (self.clock == "rig"):
            raise ValueError("a replay at speed 'max' runs in lockstep on the rig's clock (clock = 'rig'), one at "
                             f"a numeric speed on wall time (clock = 'wall'); got speed {self.replay_speed!r} "
                             f"with clock {self.clock!r}")
        return self

    @model_validator(mode="after")
    def _rig_clock_only_simulated(self) -> ServiceConfig:
        if self.clock == "rig" and (self.rig == "external" or self.subject is not None):
            got = "rig = 'external'" if self.rig == "external" else f"subject {self.subject!r}"
            raise ValueError("clock = 'rig' runs the pipeline on the rig's own time, for a simulated or "
                             f"replayed rig without an animal only; got {got}")
        return self

    @classmethod
    def load(cls, file: Path | None, **overrides: Any) -> ServiceConfig:
        """Merge a TOML file (if given) with CLI overrides (None values are ignored)."""
        data: dict[str, Any] = {}
        if file is not None:
            with open(file, "rb") as f:
                data.update(tomllib.load(f))
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)


def is_placeholder_calibration(measured_on: str) -> bool:
    """Whether a calibration's ``measured_on`` marks it as the unmeasured placeholder.

    The shipped hardware/calibration_default.toml says "placeholder - measure on your rig": an
    external rig (a real animal) refuses it unless ``bench_test_calibration`` is set.
    """
    return measured_on.strip().lower().startswith("placeholder")


def runtime_dir() -> Path:
    """Where running instances leave their runtime file (``RIGD_RUNTIME_DIR`` overrides)."""
    env = os.environ.get("RIGD_RUNTIME_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rigd"
