"""The ``rigd`` command line: start, status, stop, export, protocol, decoder, report, bench.

Each command validates its arguments (pydantic for the service config), calls into the package
that owns the work, and turns errors into one clear message and a non-zero exit code. No logic
lives here beyond argument handling and printing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from rig.config import ServiceConfig, is_placeholder_calibration, load_subject_info, runtime_dir

if TYPE_CHECKING:
    from controllers.protocol import CheckResult, Protocol
    from hardware.calibration import SafetyLimits

DEFAULT_CALIBRATION_NAME = "hardware/calibration_default.toml"  #: the shipped placeholder

# Help is click's plain layout, not rich's boxed table: rich shrinks the option-name column to fit the
# terminal and cuts long names ("--bench-test-calibr…") at 80 columns; click wraps only the help text.
_PLAIN_HELP: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": None}
app = typer.Typer(add_completion=False, **_PLAIN_HELP,
                  help="rigd — closed-loop experiment control (delay task, ALM photoinhibition).")
export_app = typer.Typer(**_PLAIN_HELP, help="Export a recorded session.")
protocol_app = typer.Typer(**_PLAIN_HELP, help="Check and dry-run perturbation protocols.")
decoder_app = typer.Typer(**_PLAIN_HELP, help="Fit and evaluate decoders.")
app.add_typer(export_app, name="export")
app.add_typer(protocol_app, name="protocol")
app.add_typer(decoder_app, name="decoder")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise typer.Exit(code)


def _allowed_range(field: str) -> str:
    """A config field's bounds as "10 ≤ x ≤ 10000" (empty when it has none)."""
    info = ServiceConfig.model_fields.get(field)
    if info is None:
        return ""
    low = high = ""
    for m in info.metadata:
        for attr, fmt in (("ge", "{} ≤ "), ("gt", "{} < ")):
            if getattr(m, attr, None) is not None:
                low = fmt.format(getattr(m, attr))
        for attr, fmt in (("le", " ≤ {}"), ("lt", " < {}")):
            if getattr(m, attr, None) is not None:
                high = fmt.format(getattr(m, attr))
    return f"{low}{field}{high}" if low or high else ""


def _validation_message(exc: ValidationError) -> str:
    """Each invalid setting as its option, what it got, and what it allows."""
    parts = []
    for e in exc.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        loc = ".".join(str(x) for x in e["loc"]) or "config"
        where = f"--{field.replace('_', '-')} ({loc})" if field in ServiceConfig.model_fields else loc
        allowed = _allowed_range(field)
        parts.append(f"{where}: {e['msg']} (got {e.get('input')!r}" + (f"; allowed: {allowed})" if allowed else ")"))
    return "invalid configuration: " + "; ".join(parts)


@app.command()
def start(
    rig: Annotated[str, typer.Option(help="'sim' (simulated mouse), 'external' (a lab rig connects), 'openephys' "
                                          "(the Open Ephys GUI, docs/openephys.md) or 'replay:SESSION_DIR' (a "
                                          "recorded session's rig, replayed)")] = "sim",
    openephys_zmq: Annotated[str | None, typer.Option(
        help="--rig openephys: the ZMQ Interface's data endpoint (default tcp://127.0.0.1:5556)")] = None,
    openephys_events: Annotated[str | None, typer.Option(
        help="--rig openephys: the Event Broadcaster's endpoint (trial TTLs from there)")] = None,
    openephys_broadcast: Annotated[str | None, typer.Option(
        help="--rig openephys: publish rigd's events and decoder output here, Event Broadcaster format")] = None,
    openephys_record: Annotated[str | None, typer.Option(
        help="--rig openephys: the GUI's HTTP remote control (http://HOST:37497): record during the session")] = None,
    openephys_map: Annotated[Path | None, typer.Option(
        help="--rig openephys: the map (TOML): which electrodes are which units, which TTL lines which events")] = None,
    trials: Annotated[int | None, typer.Option(help="stop after N trials")] = None,
    duration: Annotated[float | None, typer.Option(help="stop after S seconds")] = None,
    clock: Annotated[str | None, typer.Option(
        help="'wall' (real time) or 'rig' (sim/replay in lockstep, as fast as the pipeline keeps up)")] = None,
    speed: Annotated[str | None, typer.Option(
        help="--rig replay:DIR: × the recorded rig clock (1 = real time, the default), or 'max' (lockstep)")] = None,
    session_dir: Annotated[Path | None, typer.Option(help="where sessions are written")] = None,
    mqtt: Annotated[str | None, typer.Option(help="lab broker mqtt://host:port (default: embedded)")] = None,
    mqtt_port: Annotated[int | None, typer.Option(help="embedded broker port (default: a free one)")] = None,
    protocol: Annotated[Path | None, typer.Option(help="perturbation protocol file (TOML/YAML)")] = None,
    calibration: Annotated[Path | None, typer.Option(help="rig light calibration file (TOML)")] = None,
    bench_test_calibration: Annotated[bool | None, typer.Option(
        "--bench-test-calibration", help="bench test without an animal: let --rig external run on the "
        "placeholder calibration")] = None,
    subject: Annotated[str | None, typer.Option(help="the animal's id (its light ledger survives restarts)")] = None,
    subject_file: Annotated[Path | None, typer.Option(
        help="the animal's metadata (TOML: subject_id, species, sex, age, genotype, strain, opsin, description; "
             "docs/nwb.md), recorded and exported to NWB")] = None,
    species: Annotated[str | None, typer.Option(help="subject species, e.g. 'Mus musculus'")] = None,
    sex: Annotated[str | None, typer.Option(help="subject sex: M, F, U (unknown) or O (other)")] = None,
    age: Annotated[str | None, typer.Option(help="subject age, ISO 8601 duration (e.g. P90D)")] = None,
    genotype: Annotated[str | None, typer.Option(help="subject genotype (e.g. VGAT-ChR2-EYFP)")] = None,
    strain: Annotated[str | None, typer.Option(help="subject strain (e.g. C57BL/6J)")] = None,
    ledger_dir: Annotated[Path | None, typer.Option(help="where light ledgers are kept")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for the sim and the schedulers")] = None,
    name: Annotated[str | None, typer.Option(help="instance name (MQTT topic prefix)")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with any of these settings")] = None,
    mu_left: Annotated[float | None, typer.Option(help="sim: left-hemisphere modularity μ_L")] = None,
    mu_right: Annotated[float | None, typer.Option(help="sim: right-hemisphere modularity μ_R")] = None,
    callosotomy: Annotated[bool | None, typer.Option(help="sim: cut the corpus callosum")] = None,
    units_per_hemisphere: Annotated[int | None, typer.Option(help="sim: units per hemisphere")] = None,
    day: Annotated[int | None, typer.Option(help="sim: session day (drift)")] = None,
    bin_ms: Annotated[float | None, typer.Option(help="sim: bin size in ms")] = None,
    iti_s: Annotated[float | None, typer.Option(help="sim: inter-trial interval in s")] = None,
    model: Annotated[str | None, typer.Option(help="sim model: 'reduced', 'spiking' or 'rnn'")] = None,
    backend: Annotated[str | None, typer.Option(help="spiking backend: 'cpu' or 'lava'")] = None,
    decoder: Annotated[str | None, typer.Option(help="decoder name (cd, cd_li, logistic, lda, kalman, gru)")] = None,
    decoder_file: Annotated[Path | None, typer.Option(help="start with this fitted decoder file")] = None,
    publish_estimates: Annotated[bool | None, typer.Option(help="send each frame's estimate to the rig")] = None,
    n_fit_trials: Annotated[int | None, typer.Option(help="control trials before the first decoder fit")] = None,
    deadline_ms: Annotated[float | None, typer.Option(help="decision budget in ms")] = None,
    ingest: Annotated[str | None, typer.Option(help="ingest endpoint to bind")] = None,
    command: Annotated[str | None, typer.Option(help="command endpoint to bind")] = None,
    realtime_priority: Annotated[int | None, typer.Option(help="SCHED_FIFO priority of the loop (0: off)")] = None,
    placement: Annotated[str | None, typer.Option(
        help="'auto' (default): rigd picks the loop's CPU and wait strategy for this machine; 'off'")] = None,
    loop_cpu: Annotated[int | None, typer.Option(help="run the hot loop on this CPU, everything else off it")] = None,
    max_units: Annotated[int | None, typer.Option(help="most units per rig; a rig describing more is refused")] = None,
    poll_ahead_us: Annotated[int | None, typer.Option(
        help="poll for each predicted frame from this many µs before it instead of sleeping (use with --loop-cpu)")]
    = None,
    ui: Annotated[bool | None, typer.Option(help="serve the live web view")] = None,
    ui_port: Annotated[int | None, typer.Option(help="live view port (default: a free one)")] = None,
    live: Annotated[bool | None, typer.Option(help="terminal live view (default: on a TTY)")] = None,
) -> None:
    """Start a session: rigd + (for --rig sim) the simulated mouse, until trials/duration/stop."""
    replay_source = rig.removeprefix("replay:") if rig.startswith("replay:") else None
    if replay_source is not None:
        rig = "sim"  # the replay takes the simulated rig's place (rig/replay_rig.py)
    elif speed is not None:
        _fail("--speed paces a replay: it needs --rig replay:SESSION_DIR")
    try:
        subject_info = load_subject_info(subject_file, species=species, sex=sex, age=age, genotype=genotype,
                                         strain=strain)
        cfg = ServiceConfig.load(
            config, rig=rig, trials=trials, duration_s=duration, clock=clock, session_dir=session_dir, mqtt=mqtt,
            mqtt_port=mqtt_port, protocol=protocol, calibration=calibration,
            bench_test_calibration=bench_test_calibration, seed=seed, name=name,
            subject=subject, subject_info=subject_info, ledger_dir=ledger_dir,
            mu_left=mu_left, mu_right=mu_right, callosotomy=callosotomy,
            units_per_hemisphere=units_per_hemisphere, day=day, bin_ms=bin_ms, iti_s=iti_s, model=model,
            backend=backend, decoder=decoder, decoder_file=decoder_file,
            publish_estimates=publish_estimates, n_fit_trials=n_fit_trials, deadline_ms=deadline_ms,
            ingest_endpoint=ingest, command_endpoint=command, realtime_priority=realtime_priority,
            placement=placement, loop_cpu=loop_cpu, poll_ahead_us=poll_ahead_us, max_units=max_units, ui=ui,
            ui_port=ui_port, live=live, openephys_zmq=openephys_zmq, openephys_events=openephys_events,
            openephys_broadcast=openephys_broadcast, openephys_record=openephys_record, openephys_map=openephys_map)
    except ValidationError as exc:
        _fail(_validation_message(exc))
        return
    except (OSError, ValueError) as exc:
        _fail(str(exc))
        return
    if replay_source is not None:
        given = {k for k, v in {"protocol": protocol, "seed": seed, "decoder": decoder, "n_fit_trials": n_fit_trials,
                                "deadline_ms": deadline_ms}.items() if v is not None} | _config_keys(config)
        cfg = _replay_config(cfg, replay_source, speed, clock=clock, given=given)
    if cfg.clock == "rig":
        cfg.publish_estimates = True  # a lockstep rig waits for rigd's estimate of each frame
    if cfg.protocol is not None:
        import protocols

        cfg.protocol = protocols.resolve(cfg.protocol)
        if not cfg.protocol.exists():
            _fail(f"--protocol {cfg.protocol}: no such file, nor a shipped protocol ({', '.join(protocols.shipped())})")
    _claim_instance(cfg.name)
    plan = _refuse_unsafe_start(cfg)
    if cfg.trials is not None:
        cfg.trials_from = "--trials"
    elif cfg.replay is None:  # the protocol says how long a session is; the banner says which applies
        cfg.trials, cfg.trials_from = plan.spec.session.n_trials, "protocol"
    from rig import supervisor

    try:
        final = _run_async(supervisor.run(cfg, console=console))
    except Exception as exc:
        _fail(f"rigd failed: {type(exc).__name__}: {exc}", code=1)
        return
    from rig.progress import render

    console.print()
    console.print(f"[bold]session finished[/bold] ({final.get('stop_reason', '')})")
    console.print(render(final))
    console.print(f"session: {final['session_dir']}")


def _config_keys(config: Path | None) -> set[str]:
    """The settings a ``--config`` TOML file gives (empty when none or unreadable)."""
    if config is None:
        return set()
    import tomllib

    try:
        with open(config, "rb") as f:
            return set(tomllib.load(f))
    except (OSError, tomllib.TOMLDecodeError):
        return set()


def _replay_config(cfg: ServiceConfig, source: str, speed: str | None, *, clock: str | None,
                   given: set[str]) -> ServiceConfig:
    """``--rig replay:DIR``: the config with what the recording says (rig/replay_rig.py ``replay_settings``)."""
    from rig.replay_rig import replay_settings

    try:
        over = replay_settings(Path(source), speed=speed, clock=clock, given=given, runtime=runtime_dir(),
                               name=cfg.name)
        return ServiceConfig.model_validate({**cfg.model_dump(), **over})
    except ValidationError as exc:
        _fail(_validation_message(exc))
    except (OSError, ValueError) as exc:
        _fail(f"--rig replay:{source}: {exc}")


_instance_lock: int | None = None  #: the fd holding this process's instance lock (see _claim_instance)


def _claim_instance(name: str) -> None:
    """One ``rigd start`` per instance name on this machine; a second is refused with the first's endpoints.

    An exclusive lock on ``<runtime dir>/<name>.lock`` is held for the life of this process (the OS
    releases it when the process ends, however it ends), so a crashed instance never blocks a new
    one. The lock file holds the owner's pid; its runtime file (``<name>.json``, written once it is
    ready) has its endpoints. A runtime file left by a dead process is replaced, with a note.
    """
    global _instance_lock
    d = runtime_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        _fail(f"runtime dir {d}: {exc} (RIGD_RUNTIME_DIR sets another)", code=1)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        info = _read_runtime(name)
        if info is None:
            _fail(f"rigd {name!r} is already starting (pid {owner}; runtime dir {d}); wait for it and "
                  f"`rigd status --name {name}`, or start this one with another --name", code=1)
        _fail(f"rigd {name!r} is already running: {_where(info)}; stop it with "
              f"`rigd stop --name {name}`, or start this one with another --name", code=1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _instance_lock = fd  # held (never closed) until this process exits
    info = _read_runtime(name)
    if info is not None:
        pid = info.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and _alive(pid):  # an instance that takes no lock
            _fail(f"rigd {name!r} is already running: {_where(info)}; stop it with "
                  f"`rigd stop --name {name}`, or start this one with another --name", code=1)
        err.print(f"note: replacing the runtime file {d / f'{name}.json'} left by rigd pid {pid}, which is "
                  "no longer running", highlight=False)


def _where(info: dict[str, Any]) -> str:
    """An instance's pid, session and endpoints from its runtime file, for messages."""
    parts = [f"pid {info.get('pid')}", f"session {info.get('session_dir')}", f"MQTT {info.get('mqtt')}",
             f"ingest {info.get('ingest')}", f"commands {info.get('command')}"]
    if info.get("ui"):
        parts.append(f"live view {info['ui']}")
    return ", ".join(parts)


def _refuse_unsafe_start(cfg: ServiceConfig) -> Protocol:
    """Before anything starts: the calibration an external rig runs on, and the protocol's check.

    An external rig (a real animal) must run on its own measured calibration: the shipped
    placeholder is refused unless ``--bench-test-calibration`` says this is a bench test (then a
    banner here, and an alarm the session raises at start). The protocol goes through exactly
    ``rigd protocol check`` against the calibration the interlock will enforce; a rejected one
    stops the start with the same report, before any session directory exists.
    """
    from hardware.calibration import load_calibration

    try:
        cal = load_calibration(cfg.calibration)
    except (OSError, ValueError) as exc:
        _fail(f"calibration: {exc}", code=1)
        return
    placeholder = is_placeholder_calibration(cal.measured_on)
    if cfg.rig in ("external", "openephys") and placeholder:  # a lab rig: an animal
        where = (f"--calibration {cfg.calibration}" if cfg.calibration is not None
                 else f"no --calibration given: the shipped {DEFAULT_CALIBRATION_NAME}")
        if not cfg.bench_test_calibration:
            _fail(f"--rig {cfg.rig} refuses the placeholder calibration ({where}, measured_on "
                  f"{cal.measured_on!r}): measure each spot's power at the brain surface and pass "
                  "--calibration FILE (format: hardware/calibration_default.toml); for a bench test "
                  "without an animal, --bench-test-calibration", code=1)
        err.print(f"[bold white on red] BENCH TEST: placeholder calibration ({where}); not measured on "
                  "this rig. Not for an animal. [/bold white on red]", highlight=False)
    import protocols

    # the session's protocol, or the default it runs without --protocol (a lab calibration may not allow it)
    file = cfg.protocol or protocols.shipped()[protocols.DEFAULT]
    result = _check_protocol_file(file, cal.safety_limits())
    if not result.ok or result.protocol is None:
        err.print(result.report(), highlight=False, markup=False)
        _fail(f"protocol {file}: rejected by `rigd protocol check` (above) against the calibration "
              f"{cfg.calibration or DEFAULT_CALIBRATION_NAME}; nothing started", code=1)
    return result.protocol


def _check_protocol_file(file: Path, limits: SafetyLimits) -> CheckResult:
    """``rigd protocol check``'s own check of a protocol file against the interlock limits."""
    from controllers.protocol import check_protocol

    return check_protocol(file, limits)


def _run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(coro)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_runtime(name: str) -> dict[str, Any] | None:
    """The runtime file of instance ``name`` as written, alive or not (None: none or unreadable)."""
    try:
        info = json.loads((runtime_dir() / f"{name}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def _runtime_info(name: str) -> dict[str, Any] | None:
    """The runtime file of instance ``name`` while its process runs (None: none, or a stale one)."""
    info = _read_runtime(name)
    if info is None:
        return None
    try:
        if not _alive(int(info["pid"])):
            return None  # stale file of a crashed instance
    except (KeyError, TypeError, ValueError):
        return None
    return info


async def _read_retained(url: str, topic: str, timeout_s: float) -> dict[str, Any] | None:
    import aiomqtt

    from rig.control_plane import parse_mqtt_url

    host, port = parse_mqtt_url(url)
    async with aiomqtt.Client(host, port, timeout=timeout_s) as c:
        await c.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout_s):
            async for m in c.messages:
                payload = m.payload if isinstance(m.payload, bytes | bytearray) else b""
                with contextlib.suppress(json.JSONDecodeError):
                    obj = json.loads(payload)
                    if isinstance(obj, dict):
                        return obj
    return None


@app.command()
def status(
    name: Annotated[str, typer.Option(help="instance name")] = "rigd",
    mqtt: Annotated[str | None, typer.Option(help="broker to ask (default: the local instance's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw status JSON")] = False,
) -> None:
    """Show a running instance's status (from its retained MQTT status)."""
    info = _runtime_info(name)
    url = mqtt or (info or {}).get("mqtt")
    if url is None:
        _fail(f"no running rigd named {name!r} on this machine (runtime dir {runtime_dir()}); "
              "use --mqtt to ask a lab broker", code=1)
        return
    try:
        st = asyncio.run(_read_retained(url, f"rigd/{name}/status", 5.0))
    except Exception as exc:
        st = None
        err.print(f"could not read status from {url}: {exc}")
    if st is None:
        if info is None:
            _fail(f"no status for {name!r} on {url}", code=1)
        st = {"state": "running (broker unreachable)", **(info or {})}
    if as_json:
        print(json.dumps(st, indent=2, default=str))
        return
    from rig.progress import render

    console.print(render(st))
    console.print(f"session: {st.get('session_dir')}   MQTT: {url}   live view: {st.get('ui') or '–'}")


@app.command()
def stop(
    name: Annotated[str, typer.Option(help="instance name")] = "rigd",
    mqtt: Annotated[str | None, typer.Option(help="broker to send the stop to (default: the local instance's)")]
    = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for a clean stop")] = 20.0,
) -> None:
    """Stop a running instance cleanly (MQTT stop command; SIGTERM if the broker is unreachable).

    With ``--mqtt`` an instance on another machine is stopped through the lab broker: it has
    stopped when its retained status says so.
    """
    info = _runtime_info(name)
    url = mqtt or (info or {}).get("mqtt")
    if url is None:
        _fail(f"no running rigd named {name!r} on this machine (runtime dir {runtime_dir()}); "
              "use --mqtt to stop one through a lab broker", code=1)
        return
    if info is None:
        _stop_remote(name, url, timeout)
        return
    pid = int(info["pid"])
    try:
        confirmed = asyncio.run(_send_stop(url, name))
    except Exception as exc:
        err.print(f"MQTT stop failed ({exc})")
        confirmed = False
    if not confirmed:
        err.print(f"no confirmation over MQTT; sending SIGTERM to {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            console.print(f"rigd {name!r} stopped; session {info['session_dir']}")
            return
        time.sleep(0.1)
    _fail(f"rigd {name!r} (pid {pid}) did not stop within {timeout} s", code=1)


async def _send_stop(url: str, name: str) -> bool:
    """Publish cmd/stop until rigd confirms on stop/result (it may still be subscribing)."""
    import aiomqtt

    from rig.control_plane import parse_mqtt_url

    host, port = parse_mqtt_url(url)
    async with aiomqtt.Client(host, port, timeout=5) as c:
        await c.subscribe(f"rigd/{name}/stop/result", qos=1)
        for _ in range(5):
            await c.publish(f"rigd/{name}/cmd/stop", b"{}", qos=1)
            try:
                async with asyncio.timeout(2.0):
                    async for _m in c.messages:
                        return True
            except TimeoutError:
                continue
    return False


ENDED_STATES = ("stopped", "offline")  #: retained status states of an instance that no longer runs


def _stop_remote(name: str, url: str, timeout: float) -> None:
    """Stop an instance known only by its broker: cmd/stop, then its status until it says it ended.

    An instance on its embedded broker takes the broker with it when it exits: the connection
    closing after a confirmed stop is its end too.
    """
    import aiomqtt

    from rig.control_plane import parse_mqtt_url

    status_topic, result_topic = f"rigd/{name}/status", f"rigd/{name}/stop/result"

    async def _run() -> tuple[dict[str, Any], str]:
        host, port = parse_mqtt_url(url)
        last: dict[str, Any] = {}
        confirmed = False
        try:
            async with aiomqtt.Client(host, port, timeout=5) as c:
                await c.subscribe(status_topic, qos=1)
                await c.subscribe(result_topic, qos=1)
                deadline = time.monotonic() + 5.0 + timeout
                next_send = time.monotonic() + 1.0  # first the retained status: is it running at all?
                async with asyncio.timeout(5.0 + timeout):
                    async for m in c.messages:
                        obj = _json_object(m.payload)
                        if m.topic.matches(result_topic):
                            confirmed = True
                        elif obj is not None:
                            last = obj
                            if obj.get("state") in ENDED_STATES:
                                if confirmed:
                                    return last, "stopped"
                                _fail(f"no running rigd named {name!r} on {url} (its status: {obj['state']})",
                                      code=1)
                        if not confirmed and time.monotonic() >= next_send:
                            if not last:
                                _fail(f"no rigd named {name!r} on {url} (no status on {status_topic})", code=1)
                            await c.publish(f"rigd/{name}/cmd/stop", b"{}", qos=1)
                            next_send = time.monotonic() + 2.0
                        if time.monotonic() > deadline:
                            break
        except TimeoutError:
            pass
        except aiomqtt.MqttError:
            if confirmed:
                return last, "stopped; its broker closed with it"
            raise
        return last, "confirmed" if confirmed else ""

    try:
        final, how = asyncio.run(_run())
    except typer.Exit:
        raise
    except Exception as exc:
        _fail(f"could not stop rigd {name!r} through {url}: {type(exc).__name__}: {exc}", code=1)
    if not how.startswith("stopped"):
        what = "confirmed the stop but its status did not say stopped" if how else "did not confirm the stop"
        _fail(f"rigd {name!r} on {url} {what} within {timeout} s", code=1)
    console.print(f"rigd {name!r} {how} (via {url}); session {final.get('session_dir')}")


def _json_object(payload: Any) -> dict[str, Any] | None:
    """An MQTT payload as a JSON object (None if it is not one)."""
    try:
        obj = json.loads(payload if isinstance(payload, bytes | bytearray) else b"")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


@export_app.command("nwb")
def export_nwb(
    session: Annotated[Path, typer.Argument(help="session directory")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="NWB file to write")] = None,
) -> None:
    """Export a session to NWB (units/binned counts, trials with photostim fields, opto series, decoder)."""
    from analysis.nwb_export import export_session

    _require_session(session, "export nwb")
    try:
        with console.status(f"exporting {session} to NWB…"):
            path = export_session(session, output)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"rigd export nwb {session}: {exc}", code=1)
        return
    console.print(f"wrote {path}")


@protocol_app.command("list")
def protocol_list() -> None:
    """List the protocols shipped with rigd (usable by name wherever a protocol file is taken)."""
    from rich.table import Table

    import protocols

    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column("name", no_wrap=True)
    table.add_column("description", overflow="fold")
    for name, path in protocols.shipped().items():
        default = " (default)" if name == protocols.DEFAULT else ""
        table.add_row(f"{name}{default}", _summary(path.read_text()))
    console.print(table, highlight=False, soft_wrap=False)
    console.print(f"files: {protocols.HERE}/<name>.toml; (default): what `rigd start` runs without --protocol",
                  highlight=False, soft_wrap=False)


SUMMARY_CHARS = 160  #: longest description `rigd protocol list` shows (then cut at a word, with "…")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]][.!?])\s+(?=[A-Z(])")


def _summary(text: str, limit: int = SUMMARY_CHARS) -> str:
    """A protocol's first sentence from its leading comment block, never cut inside a word."""
    lines = []
    for ln in text.splitlines():
        if not ln.startswith("#"):
            break
        lines.append(ln.lstrip("#").strip())
    para = " ".join(" ".join(lines).split())
    first = _SENTENCE_END.split(para, maxsplit=1)[0] if para else ""
    if len(first) <= limit:
        return first
    head = first[:limit - 1]
    # end at the last clause ("; ", " (", ": ", ", ") in its second half, else at the last word
    clause = max(head.rfind(sep) for sep in ("; ", " (", ": ", ", "))
    cut = head[:clause] if clause >= limit // 2 else head.rsplit(" ", 1)[0]
    return cut.rstrip(",;:–-( ") + "…"


# The simulator options of `rigd start`, for `rigd protocol check --dry-run` and `rigd protocol power` (one list)
_MuLeft = Annotated[float | None, typer.Option(help="sim: left-hemisphere modularity μ_L (default 0.6)")]
_MuRight = Annotated[float | None, typer.Option(help="sim: right-hemisphere modularity μ_R (default 0.6)")]
_Callosotomy = Annotated[bool | None, typer.Option(help="sim: cut the corpus callosum")]
_Units = Annotated[int | None, typer.Option(help="sim: units per hemisphere")]
_Day = Annotated[int | None, typer.Option(help="sim: session day (drift)")]
_BinMs = Annotated[float | None, typer.Option(help="sim: bin size in ms (dry run default 5; spiking 1)")]
_ItiS = Annotated[float | None, typer.Option(help="sim: inter-trial interval in s")]
_Model = Annotated[str | None, typer.Option(
    help="sim model: 'reduced' (docs/simulator.md), 'spiking' (dry run only; docs/spiking.md) or 'rnn' "
         "(docs/simulator-rnn.md)")]
_Backend = Annotated[str | None, typer.Option(help="spiking backend: 'cpu' or 'lava'")]


def _mouse_options(*, mu_left: float | None, mu_right: float | None, callosotomy: bool | None,
                   units_per_hemisphere: int | None, day: int | None, bin_ms: float | None, iti_s: float | None,
                   model: str | None, backend: str | None) -> dict[str, Any]:
    """MouseConfig fields from `rigd start`'s simulator options (given ones only; bad values: one-line error)."""
    if model is not None and model not in ("reduced", "spiking", "rnn"):
        _fail(f"--model {model!r}: expected 'reduced', 'spiking' or 'rnn'", code=1)
    if backend is not None and backend not in ("cpu", "lava"):
        _fail(f"--backend {backend!r}: expected 'cpu' or 'lava'", code=1)
    if backend is not None and model != "spiking":
        _fail(f"--backend {backend}: a spiking-model option (add --model spiking)", code=1)
    if model == "rnn" and (mu_left is not None or mu_right is not None):
        _fail("--mu-left/--mu-right: the RNN (--model rnn) has no modularity parameter μ (docs/simulator-rnn.md)",
              code=1)
    kw: dict[str, Any] = {"mu_left": mu_left, "mu_right": mu_right, "callosotomy": callosotomy,
                          "units_per_hemisphere": units_per_hemisphere, "day": day,
                          "bin_s": None if bin_ms is None else bin_ms * 1e-3,
                          "iti_s": None if iti_s is None else (iti_s, iti_s), "model": model, "backend": backend}
    if model == "spiking" and bin_ms is None:
        kw["bin_s"] = 0.001  # the spiking network steps per 1-ms bin
    return {k: v for k, v in kw.items() if v is not None}


def _mouse_config(protocol: Protocol, overrides: dict[str, Any]) -> Any:
    """The dry run's mouse (analysis.dry_run.default_config) with the options; invalid: one-line error."""
    from analysis.dry_run import default_config

    try:
        return default_config(protocol, **overrides)
    except ValidationError as exc:
        opt = {"bin_s": "--bin-ms", "iti_s": "--iti-s"}
        parts = []
        for e in exc.errors():
            field = ".".join(str(x) for x in e["loc"])
            if field:
                parts.append(f"{opt.get(field, '--' + field.replace('_', '-'))}: {e['msg']} (got {e.get('input')!r})")
            else:  # a rule across fields (e.g. the bin must divide the model step)
                parts.append(str(e["msg"]).removeprefix("Value error, "))
        _fail("invalid simulated mouse: " + "; ".join(parts), code=1)


@protocol_app.command("check")
def protocol_check(
    file: Annotated[Path, typer.Argument(help="protocol file (TOML or YAML), or a shipped protocol's name")],
    dry_run: Annotated[int | None, typer.Option("--dry-run", help="also run N trials on the simulated mouse")] = None,
    calibration: Annotated[Path | None, typer.Option(help="rig light calibration file")] = None,
    seed: Annotated[int, typer.Option(help="seed of the simulated mouse")] = 0,
    mu_left: _MuLeft = None,
    mu_right: _MuRight = None,
    callosotomy: _Callosotomy = None,
    units_per_hemisphere: _Units = None,
    day: _Day = None,
    bin_ms: _BinMs = None,
    iti_s: _ItiS = None,
    model: _Model = None,
    backend: _Backend = None,
) -> None:
    """Validate a protocol against the interlock limits; optionally dry-run it on the simulator."""
    import protocols
    from hardware.calibration import load_calibration

    file = protocols.resolve(file)
    if not file.exists():
        _fail(f"{file}: no such file, nor a shipped protocol ({', '.join(protocols.shipped())})", code=1)
    try:
        limits = load_calibration(calibration).safety_limits()
    except (OSError, ValueError) as exc:
        _fail(f"calibration: {exc}", code=1)
        return
    mouse_kw = _mouse_options(mu_left=mu_left, mu_right=mu_right, callosotomy=callosotomy,
                              units_per_hemisphere=units_per_hemisphere, day=day, bin_ms=bin_ms, iti_s=iti_s,
                              model=model, backend=backend)
    result = _check_protocol_file(file, limits)
    cfg = _mouse_config(result.protocol, mouse_kw) if dry_run and result.protocol is not None else None
    console.print(result.report(), highlight=False, markup=False)
    if not result.ok:
        raise typer.Exit(1)
    if dry_run:
        from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        from analysis.dry_run import dry_run as run_dry

        assert result.protocol is not None and cfg is not None
        what = {"rnn": "the bilateral ALM RNN", "spiking": f"the spiking network ({cfg.backend})"}.get(
            cfg.model, f"μ = {cfg.mu_left}, {cfg.mu_right}") + (", callosotomy" if cfg.callosotomy else "")
        with Bar("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                 TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task(f"dry run on the simulated mouse ({what})", total=dry_run)
            try:
                res = run_dry(result.protocol, dry_run, config=cfg, seed=seed, limits=limits,
                              progress=lambda done: bar.update(task, completed=done))
            except ValueError as exc:
                _fail(f"dry run: {exc}", code=1)
        console.print(res.report(), highlight=False, markup=False)


def _parse_plant_errors(items: list[str]) -> dict[str, float]:
    """`--plant-error left=0.1` → {"error_left": 0.1}; a bad item: one-line error."""
    out: dict[str, float] = {}
    for item in items:
        cond, sep, val = item.partition("=")
        if not sep or cond not in ("none", "left", "right", "bilateral"):
            _fail(f"--plant-error {item!r}: expected LIGHT=FRACTION with LIGHT one of none, left, right, bilateral "
                  "(e.g. left=0.1)", code=1)
        try:
            q = float(val)
        except ValueError:
            q = math.nan
        if not 0.0 <= q <= 1.0:
            _fail(f"--plant-error {item!r}: expected a fraction 0 ≤ q ≤ 1, got {val!r}", code=1)
        out[f"error_{cond}"] = q
    return out


@protocol_app.command("power")
def protocol_power(
    file: Annotated[Path, typer.Argument(help="protocol file (TOML or YAML), or a shipped protocol's name")],
    experiments: Annotated[int, typer.Option(help="simulated experiments")] = 200,
    mice: Annotated[int, typer.Option(help="mice per experiment")] = 4,
    sessions: Annotated[int, typer.Option(help="sessions per mouse (consecutive days)")] = 2,
    trials: Annotated[int | None, typer.Option(help="trials per session (default: the protocol's n_trials)")] = None,
    trials_sd: Annotated[float, typer.Option(help="between-session SD of the trials per session")] = 0.0,
    mu_sd: Annotated[float, typer.Option(help="between-mouse SD of μ_L and μ_R (normal, clipped to 0…1)")] = 0.0,
    day_spread: Annotated[int, typer.Option(help="first drift day uniform in DAY … DAY + DAY_SPREAD")] = 0,
    mu_left: _MuLeft = None,
    mu_right: _MuRight = None,
    callosotomy: _Callosotomy = None,
    units_per_hemisphere: _Units = None,
    day: _Day = None,
    bin_ms: _BinMs = None,
    iti_s: _ItiS = None,
    model: _Model = None,
    backend: _Backend = None,
    plant_error: Annotated[list[str] | None, typer.Option(
        help="planted behavioural effect: LIGHT=Q forces errors on a fraction Q of trials whose light reached "
             "LIGHT (none/left/right/bilateral); repeatable")] = None,
    plant_efficacy_weak: Annotated[float | None, typer.Option(
        help="planted state-dependent light: ε × this on weak-state trials (state-triggered protocols)")] = None,
    plant_efficacy_strong: Annotated[float | None, typer.Option(
        help="planted state-dependent light: ε × this on strong-state trials")] = None,
    plant_threshold: Annotated[float | None, typer.Option(
        help="signed state below which a trial is weak for the plant (default: the population's median)")] = None,
    truth: Annotated[bool | None, typer.Option(
        help="also compute the ground truth with one very large experiment (default: when effects are planted)")]
    = None,
    alpha: Annotated[float, typer.Option(help="significance level of the two-sided test")] = 0.05,
    target_power: Annotated[float, typer.Option(help="power the needed trials/sessions/mice are sized for")] = 0.8,
    seed: Annotated[int, typer.Option(help="seed of the whole analysis (same numbers on any number of workers)")] = 0,
    chunk_size: Annotated[int, typer.Option(help="experiments per Dask task")] = 10,
    workers: Annotated[int | None, typer.Option(help="LocalCluster worker processes (default: the CPUs)")] = None,
    scheduler: Annotated[str | None, typer.Option(help="use this Dask scheduler (tcp://HOST:8786) instead")] = None,
    serial: Annotated[bool, typer.Option("--serial", help="run in this process, without Dask")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write power.json, power.png, power.md here")]
    = None,
) -> None:
    """Power analysis: simulate many experiments on a population of mice; effects, CIs, power, N for 80 %."""
    import protocols
    from analysis import power as pw
    from controllers.protocol import ProtocolError, load_protocol

    file = protocols.resolve(file)
    if not file.exists():
        _fail(f"{file}: no such file, nor a shipped protocol ({', '.join(protocols.shipped())})", code=1)
    try:
        proto = load_protocol(file)
    except ProtocolError as exc:
        _fail(f"{file}: {exc}".replace("\n", "; "), code=1)
    if scheduler is not None and not re.fullmatch(r"(tcp|tls|inproc|ucx)://\S+", scheduler):
        _fail(f"--scheduler {scheduler!r}: expected a Dask scheduler address such as tcp://HOST:8786", code=1)
    if scheduler is not None and serial:
        _fail("--scheduler and --serial exclude each other (one runs on a Dask cluster, the other in this process)",
              code=1)
    if workers is not None and (workers < 1 or scheduler is not None or serial):
        _fail(f"--workers {workers}: expected ≥ 1 worker processes of a local cluster (not with --scheduler/--serial)",
              code=1)
    if model == "spiking":
        _fail("--model spiking: the power analysis runs the vectorised offline model ('reduced' or 'rnn'); "
              "dry-run the spiking mouse with `rigd protocol check --dry-run N --model spiking`", code=1)
    mouse_kw = _mouse_options(mu_left=mu_left, mu_right=mu_right, callosotomy=callosotomy,
                              units_per_hemisphere=units_per_hemisphere, day=day, bin_ms=bin_ms, iti_s=iti_s,
                              model=model, backend=backend)
    cfg = _mouse_config(proto, mouse_kw)
    pop = pw.Population(mice=mice, sessions=sessions, trials=trials or proto.spec.session.n_trials,
                        trials_sd=trials_sd, mu_left=cfg.mu_left, mu_right=cfg.mu_right, mu_sd=mu_sd, day=cfg.day,
                        day_spread=day_spread)
    spec = pw.PowerSpec(proto, pop, cfg, experiments=experiments, seed=seed, alpha=alpha, target_power=target_power,
                        chunk_size=chunk_size)
    try:
        design = spec.check()
    except ValueError as exc:
        _fail(str(exc), code=1)
    plant_kw: dict[str, Any] = _parse_plant_errors(plant_error or [])
    state_plant = plant_efficacy_weak is not None or plant_efficacy_strong is not None
    if plant_threshold is not None and not state_plant:
        _fail("--plant-threshold: set --plant-efficacy-weak and/or --plant-efficacy-strong as well", code=1)
    if state_plant:
        if design.kind != "state_triggered":
            _fail(f"--plant-efficacy-weak/--plant-efficacy-strong: a state-dependent efficacy needs a "
                  f"state-triggered protocol; {proto.name!r} is kind {design.kind!r}", code=1)
        if cfg.model != "reduced":
            _fail("--plant-efficacy-weak/--plant-efficacy-strong: implemented for the reduced model only", code=1)
        for name, v in (("--plant-efficacy-weak", plant_efficacy_weak), ("--plant-efficacy-strong",
                                                                          plant_efficacy_strong)):
            if v is not None and not 0.0 <= v <= 1.0:
                _fail(f"{name} {v}: expected a multiplier 0 ≤ g ≤ 1 of the light's efficacy", code=1)
        plant_kw.update(efficacy_weak=1.0 if plant_efficacy_weak is None else plant_efficacy_weak,
                        efficacy_strong=1.0 if plant_efficacy_strong is None else plant_efficacy_strong,
                        state_read=design.read, state_window_s=design.read_window_s,
                        state_threshold=pw.median_state(spec) if plant_threshold is None else plant_threshold)
    if plant_kw:
        from sim.config import PlantedEffects

        try:
            plant = PlantedEffects(**plant_kw)
        except ValidationError as exc:
            _fail(f"planted effects: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}", code=1)
        spec = pw.PowerSpec(proto, pop, pw.with_plant(cfg, plant), experiments=experiments, seed=seed, alpha=alpha,
                            target_power=target_power, chunk_size=chunk_size)
    if cfg.model == "reduced" and (units_per_hemisphere is not None or bin_ms is not None or iti_s is not None):
        err.print("note: --units-per-hemisphere, --bin-ms and --iti-s change the spikes and the session's timing, "
                  "not the latent model's behaviour or state (docs/power.md): recorded, no effect here",
                  highlight=False)
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    where = "in this process" if serial else (scheduler or "on a local Dask cluster")
    with Bar("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
             TimeRemainingColumn(), console=err, transient=True, disable=as_json and not err.is_terminal) as bar:
        task = bar.add_task(f"{experiments} experiments in {spec.n_chunks} tasks {where}", total=spec.n_chunks)
        try:
            result = pw.run_power(spec, serial=serial, scheduler=scheduler, workers=workers, truth=truth,
                                  progress=lambda done, total: bar.update(task, completed=done))
        except (OSError, TimeoutError, ValueError) as exc:
            _fail(f"power analysis: {type(exc).__name__}: {exc}", code=1)
    if output is not None:
        try:
            files = pw.write_outputs(result, output)
        except OSError as exc:
            _fail(f"-o {output}: cannot write: {exc}", code=1)
    if as_json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        console.print(result.report(), highlight=False, markup=False)
    if output is not None:
        err.print("wrote " + ", ".join(str(p) for p in files.values()), highlight=False)


@decoder_app.command("fit")
def decoder_fit(
    sessions: Annotated[list[Path], typer.Argument(help="recorded session directories")],
    output: Annotated[Path, typer.Option("-o", "--output", help="decoder file to write")],
    decoder: Annotated[str, typer.Option(help="decoder name")] = "cd",
    bin_ms: Annotated[float, typer.Option(help="bin width for fitting (ms)")] = 100.0,
) -> None:
    """Fit a decoder on recorded (or simulated) sessions and save it with its provenance."""
    from analysis.trials import session_trialset
    from decoders.fitting import fit_sessions

    sets = []
    for s in sessions:
        try:
            sets.append(session_trialset(s, bin_s=bin_ms * 1e-3))
        except (FileNotFoundError, ValueError) as exc:
            _fail(f"{s}: {exc}", code=1)
    from rig.progress import count

    with console.status(f"fitting {decoder} on {count(sum(t.n_trials for t in sets), 'trial')}…"):
        dec, report = fit_sessions(sets, decoder)
    dec.save(output)
    console.print(f"{decoder}: cross-validated accuracy {report.accuracy:.3f} on {count(report.n_trials, 'trial')} "
                  f"→ {output}")


@decoder_app.command("accuracy")
def decoder_accuracy(
    sessions: Annotated[list[Path], typer.Argument(help="recorded session directories")],
    decoder: Annotated[str, typer.Option(help="decoder name")] = "cd",
    bin_ms: Annotated[float, typer.Option(help="bin width (ms)")] = 100.0,
    folds: Annotated[int, typer.Option(help="cross-validation folds")] = 5,
) -> None:
    """Cross-validated decoding accuracy of the upcoming choice through the trial."""
    from analysis.trials import session_trialset
    from decoders.fitting import accuracy_over_time
    from rig.progress import count

    for s in sessions:
        ts = session_trialset(s, bin_s=bin_ms * 1e-3)
        times, acc = accuracy_over_time(decoder, ts, folds=folds)
        console.print(f"{s} ({count(ts.n_trials, 'trial')}, {decoder}):")
        for t, a in zip(times, acc, strict=True):
            console.print(f"  t = {t:+.2f} s   accuracy {a:.3f}  " + "█" * round(40 * float(a)), highlight=False)


@app.command()
def report(
    session: Annotated[Path, typer.Argument(help="session directory or NWB file")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="output directory")] = None,
) -> None:
    """Write an HTML report with figures for a session."""
    from rich.progress import BarColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    from analysis.report import write_report

    if not (session.is_file() and session.suffix.lower() == ".nwb"):
        _require_session(session, "report", nwb=True)
    try:
        with Bar("[progress.description]{task.description}", BarColumn(), TimeRemainingColumn(),
                 console=console, transient=True) as bar:
            path = write_report(session, output, progress=bar)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"rigd report {session}: {exc}", code=1)
        return
    console.print(f"wrote {path}")


def _require_session(path: Path, command: str, nwb: bool = False) -> None:
    """Refuse, in one line, a path that is not a session directory (what, where, expected vs got)."""
    from rig.session import LOG_NAME, MANIFEST_NAME

    expected = f"a rigd session directory (with {LOG_NAME} and {MANIFEST_NAME}, as `rigd start` writes)"
    if nwb:
        expected += " or an .nwb file from `rigd export nwb`"
    if not path.exists():
        got = "nothing there"
    elif not path.is_dir():
        got = "a file"
    else:
        missing = [n for n in (LOG_NAME, MANIFEST_NAME) if not (path / n).is_file()]
        if not missing:
            return
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        shown = ", ".join(entries[:6]) + (f", … ({len(entries)} entries)" if len(entries) > 6 else "")
        got = f"a folder without {' or '.join(missing)}" + (f" (holds {shown})" if entries else " (empty)")
    _fail(f"rigd {command} {path}: not a session: expected {expected}, got {got}", code=1)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
