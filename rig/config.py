"""The service configuration: every knob of ``rigd start``, validated once at the boundary.

Values come from CLI flags and an optional TOML file (``--config``); pydantic rejects bad values
with the field, the value and the allowed range, before anything starts. Budgets that matter
for safety or latency are named here with their units and sources.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MIN_FIT_TRIALS = 10  #: fewest trials ``decoders.online.OnlineDecoder`` fits on (it refuses fewer)
#: an ISO 8601 duration (P90D, P12W, P1Y2M, P0DT12H) or a range of two (P90D/P120D): DANDI's subject age form
ISO_DURATION = (r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?"
                r"(/P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?)?$")
#: a Latin binomial ("Mus musculus") or an NCBI taxonomy link, as DANDI expects
SPECIES = r"^([A-Z][a-z]+ [a-z]+( [a-z]+)?|https?://.*ncbi.*taxonomy.*)$"


def fresh_seed() -> int:
    """A new 32-bit seed from the OS's entropy (the default: each session its own trial order)."""
    return secrets.randbits(32)


class SubjectInfo(BaseModel):
    """The animal on the rig, as the session records it and the NWB export writes it (pynwb ``Subject``).

    From ``rigd start --subject-file FILE.toml`` and/or the flags ``--species --sex --age --genotype
    --strain`` (flags win); recorded in the manifest's ``config.subject_info`` (docs/nwb.md). Metadata
    only: the light ledger belongs to ``--subject`` (see :class:`ServiceConfig`).
    """

    model_config = ConfigDict(extra="forbid")

    subject_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,80}$", description="animal id")
    species: str | None = Field(None, pattern=SPECIES, description="Latin binomial, e.g. 'Mus musculus'")
    sex: Literal["M", "F", "U", "O"] | None = Field(None, description="M, F, U (unknown) or O (other)")
    age: str | None = Field(None, description="an ISO 8601 duration, e.g. P90D (or a range P90D/P120D)")
    #: what ``age`` counts from: birth (the default) or gestational (embryonic age)
    age_reference: Literal["birth", "gestational"] = "birth"
    date_of_birth: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}", description="ISO 8601 date")
    genotype: str | None = Field(None, max_length=200, description="e.g. 'VGAT-ChR2-EYFP'")
    strain: str | None = Field(None, max_length=200, description="e.g. 'C57BL/6J'")
    #: the light-gated effector the photoinhibition acts through (ndx-optogenetics Effector), e.g. 'ChR2'
    opsin: str | None = Field(None, max_length=200, description="effector, e.g. 'ChR2(H134R)-EYFP in VGAT+ cells'")
    weight: str | None = Field(None, pattern=r"^\d+(\.\d+)? (kg|g|mg)$", description="e.g. '24.5 g' (with the space)")
    description: str | None = Field(None, max_length=2000)

    @field_validator("age")
    @classmethod
    def _iso_duration(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(ISO_DURATION, v):
            raise ValueError("not an ISO 8601 duration")
        return v


def load_subject_info(file: Path | None, **flags: str | None) -> dict[str, Any] | None:
    """Subject metadata from a TOML file and/or flags (flags win), validated; None when neither is given.

    Raises ValueError with one line per bad field: where (the file or the flag), what it got and
    what it expects.
    """
    data: dict[str, Any] = {}
    where = "--subject-file"
    if file is not None:
        where = f"--subject-file {file}"
        try:
            with open(file, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ValueError(f"{where}: cannot read it ({exc.strerror or exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{where}: not valid TOML ({exc})") from None
        data = data.get("subject", data)  # a [subject] table or top-level keys
    data.update({k: v for k, v in flags.items() if v is not None})
    if not data:
        return None
    try:
        return SubjectInfo.model_validate(data).model_dump(exclude_none=True)
    except ValidationError as exc:
        parts = []
        for e in exc.errors():
            name = ".".join(str(x) for x in e["loc"]) or "subject"
            src = f"--{name}" if name in flags and flags[name] is not None else f"{where}: {name}"
            hint = SubjectInfo.model_fields[name].description if name in SubjectInfo.model_fields else None
            parts.append(f"{src}: {e['msg']} (got {e.get('input')!r}" + (f"; expected {hint})" if hint else ")"))
        raise ValueError("invalid subject metadata: " + "; ".join(parts)) from None


class ServiceConfig(BaseModel):
    """Configuration of one rigd run (one session)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("rigd", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="instance name (MQTT prefix)")
    rig: Literal["sim", "external", "openephys"] = "sim"
    #: --rig openephys (rig/openephys_rig.py, docs/openephys.md): the GUI's ZMQ Interface data port, its
    #: Event Broadcaster (trial TTLs), rigd's own Event-Broadcaster-format PUB, the GUI's HTTP remote
    #: control (record during the session) and the lab's map (units, TTL lines)
    openephys_zmq: str = Field("tcp://127.0.0.1:5556", description="Open Ephys ZMQ Interface data endpoint")
    openephys_events: str | None = Field(None, description="Open Ephys Event Broadcaster endpoint")
    openephys_broadcast: str | None = Field(None, description="bind rigd's Event-Broadcaster-format PUB here")
    openephys_record: str | None = Field(None, description="Open Ephys HTTP remote control: record the session")
    openephys_map: Path | None = Field(None, description="the Open Ephys map (TOML): units, TTL lines")
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
    #: the animal's metadata (species, sex, age, genotype/opsin, strain: :class:`SubjectInfo`), recorded in the
    #: manifest and exported to NWB; metadata only. A lab rig's subject_id names its ledger when
    #: ``subject`` is not given; a simulated session keeps its metadata without a ledger (docs/nwb.md)
    subject_info: SubjectInfo | None = None
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
    def _subject_consistent(self) -> ServiceConfig:
        info = self.subject_info
        if info is None:
            return self
        if info.subject_id is None:
            info.subject_id = self.subject
        elif self.subject is not None and info.subject_id != self.subject:
            raise ValueError(f"--subject {self.subject!r} and the subject file's subject_id {info.subject_id!r} "
                             "name different animals; expected the same id (or only one of them)")
        elif self.subject is None and self.rig in ("external", "openephys"):
            self.subject = info.subject_id  # a real animal: its light ledger goes under its id
        return self

    @model_validator(mode="after")
    def _openephys(self) -> ServiceConfig:
        given = [k for k in ("openephys_events", "openephys_broadcast", "openephys_record", "openephys_map")
                 if getattr(self, k) is not None]
        if self.rig != "openephys":
            if given:
                raise ValueError(f"{', '.join(given)} need rig = 'openephys' (--rig openephys), got {self.rig!r}")
            return self
        for key in ("openephys_zmq", "openephys_events", "openephys_broadcast"):
            v = getattr(self, key)
            if v is not None and not (v.startswith("tcp://") and v.rpartition(":")[2].isdigit()):
                raise ValueError(f"{key} {v!r}: expected tcp://HOST:PORT")
        if self.openephys_record is not None and not self.openephys_record.startswith(("http://", "https://")):
            raise ValueError(f"openephys_record {self.openephys_record!r}: expected http://HOST:PORT (the GUI's "
                             "HTTP server, port 37497 by default)")
        if self.openephys_map is None:
            raise ValueError("rig = 'openephys' needs openephys_map (--openephys-map FILE: which electrodes are "
                             "which units, which TTL lines are which trial events; docs/openephys.md, example "
                             "hardware/openephys/map_example.toml)")
        from hardware.openephys.mapping import MapError, OpenEphysMap

        try:
            OpenEphysMap.load(self.openephys_map)
        except (MapError, OSError) as exc:
            raise ValueError(f"openephys_map: {exc}") from None
        return self

    @model_validator(mode="after")
    def _rig_clock_only_simulated(self) -> ServiceConfig:
        if self.clock == "rig" and (self.rig in ("external", "openephys") or self.subject is not None):
            got = f"rig = {self.rig!r}" if self.rig in ("external", "openephys") else f"subject {self.subject!r}"
            hint = ("; a simulated session's subject metadata goes in --subject-file (its subject_id, without "
                    "a light ledger)" if self.rig != "external" else "")
            raise ValueError("clock = 'rig' runs the pipeline on the rig's own time, for a simulated or "
                             f"replayed rig without an animal only; got {got}{hint}")
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
