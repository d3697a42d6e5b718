"""The ``rigd`` command line: start, status, stop, export, protocol, decoder, report, bench.

Each command validates its arguments (pydantic for the service config), calls into the package
that owns the work, and turns errors into one clear message and a non-zero exit code. No logic
lives here beyond argument handling and printing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from rig.config import ServiceConfig, is_placeholder_calibration, runtime_dir

if TYPE_CHECKING:
    from controllers.protocol import CheckResult
    from hardware.calibration import SafetyLimits

DEFAULT_CALIBRATION_NAME = "hardware/calibration_default.toml"  #: the shipped placeholder

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="rigd — closed-loop experiment control (delay task, ALM photoinhibition).")
export_app = typer.Typer(no_args_is_help=True, help="Export a recorded session.")
protocol_app = typer.Typer(no_args_is_help=True, help="Check and dry-run perturbation protocols.")
decoder_app = typer.Typer(no_args_is_help=True, help="Fit and evaluate decoders.")
app.add_typer(export_app, name="export")
app.add_typer(protocol_app, name="protocol")
app.add_typer(decoder_app, name="decoder")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise typer.Exit(code)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "config"
        parts.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid configuration: " + "; ".join(parts)


@app.command()
def start(
    rig: Annotated[str, typer.Option(help="'sim' (simulated mouse) or 'external' (a lab rig connects)")] = "sim",
    trials: Annotated[int | None, typer.Option(help="stop after N trials")] = None,
    duration: Annotated[float | None, typer.Option(help="stop after S seconds")] = None,
    session_dir: Annotated[Path | None, typer.Option(help="where sessions are written")] = None,
    mqtt: Annotated[str | None, typer.Option(help="lab broker mqtt://host:port (default: embedded)")] = None,
    mqtt_port: Annotated[int | None, typer.Option(help="embedded broker port (default: a free one)")] = None,
    protocol: Annotated[Path | None, typer.Option(help="perturbation protocol file (TOML/YAML)")] = None,
    calibration: Annotated[Path | None, typer.Option(help="rig light calibration file (TOML)")] = None,
    bench_test_calibration: Annotated[bool | None, typer.Option(
        "--bench-test-calibration", help="bench test without an animal: let --rig external run on the "
        "placeholder calibration")] = None,
    subject: Annotated[str | None, typer.Option(help="the animal's id (its light ledger survives restarts)")] = None,
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
    try:
        cfg = ServiceConfig.load(
            config, rig=rig, trials=trials, duration_s=duration, session_dir=session_dir, mqtt=mqtt,
            mqtt_port=mqtt_port, protocol=protocol, calibration=calibration,
            bench_test_calibration=bench_test_calibration, seed=seed, name=name,
            subject=subject, ledger_dir=ledger_dir,
            mu_left=mu_left, mu_right=mu_right, callosotomy=callosotomy,
            units_per_hemisphere=units_per_hemisphere, day=day, bin_ms=bin_ms, iti_s=iti_s, model=model,
            backend=backend, decoder=decoder, decoder_file=decoder_file,
            publish_estimates=publish_estimates, n_fit_trials=n_fit_trials, deadline_ms=deadline_ms,
            ingest_endpoint=ingest, command_endpoint=command, realtime_priority=realtime_priority,
            loop_cpu=loop_cpu, poll_ahead_us=poll_ahead_us, max_units=max_units, ui=ui,
            ui_port=ui_port, live=live)
    except ValidationError as exc:
        _fail(_validation_message(exc))
        return
    except (OSError, ValueError) as exc:
        _fail(str(exc))
        return
    if cfg.protocol is not None:
        import protocols

        cfg.protocol = protocols.resolve(cfg.protocol)
        if not cfg.protocol.exists():
            _fail(f"--protocol {cfg.protocol}: no such file, nor a shipped protocol ({', '.join(protocols.shipped())})")
    _refuse_unsafe_start(cfg)
    if cfg.rig == "sim" and cfg.trials is None and cfg.duration_s is None:
        console.print("no --trials or --duration: running until Ctrl-C or `rigd stop`")
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


def _refuse_unsafe_start(cfg: ServiceConfig) -> None:
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
    if cfg.rig == "external" and placeholder:
        where = (f"--calibration {cfg.calibration}" if cfg.calibration is not None
                 else f"no --calibration given: the shipped {DEFAULT_CALIBRATION_NAME}")
        if not cfg.bench_test_calibration:
            _fail(f"--rig external refuses the placeholder calibration ({where}, measured_on "
                  f"{cal.measured_on!r}): measure each spot's power at the brain surface and pass "
                  "--calibration FILE (format: hardware/calibration_default.toml); for a bench test "
                  "without an animal, --bench-test-calibration", code=1)
        err.print(f"[bold white on red] BENCH TEST: placeholder calibration ({where}); not measured on "
                  "this rig. Not for an animal. [/bold white on red]", highlight=False)
    import protocols

    # the session's protocol, or the default it runs without --protocol (a lab calibration may not allow it)
    file = cfg.protocol or protocols.shipped()[protocols.DEFAULT]
    result = _check_protocol_file(file, cal.safety_limits())
    if not result.ok:
        err.print(result.report(), highlight=False)
        _fail(f"protocol {file}: rejected by `rigd protocol check` (above) against the calibration "
              f"{cfg.calibration or DEFAULT_CALIBRATION_NAME}; nothing started", code=1)


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


def _runtime_info(name: str) -> dict[str, Any] | None:
    path = runtime_dir() / f"{name}.json"
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    try:
        if not _alive(int(info["pid"])):
            return None  # stale file of a crashed instance
    except (KeyError, ValueError):
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
    timeout: Annotated[float, typer.Option(help="seconds to wait for a clean stop")] = 20.0,
) -> None:
    """Stop a running instance cleanly (MQTT stop command; SIGTERM if the broker is unreachable)."""
    info = _runtime_info(name)
    if info is None:
        _fail(f"no running rigd named {name!r} on this machine", code=1)
        return
    pid = int(info["pid"])

    async def _send() -> bool:
        """Publish cmd/stop until rigd confirms on stop/result (it may still be subscribing)."""
        import aiomqtt

        from rig.control_plane import parse_mqtt_url

        host, port = parse_mqtt_url(info["mqtt"])
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

    try:
        confirmed = asyncio.run(_send())
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


@export_app.command("nwb")
def export_nwb(
    session: Annotated[Path, typer.Argument(help="session directory")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="NWB file to write")] = None,
) -> None:
    """Export a session to NWB (units/binned counts, trials with photostim fields, opto series, decoder)."""
    from rig.nwb_export import export_session

    try:
        with console.status(f"exporting {session} to NWB…"):
            path = export_session(session, output)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc), code=1)
        return
    console.print(f"wrote {path}")


@protocol_app.command("list")
def protocol_list() -> None:
    """List the protocols shipped with rigd (usable by name wherever a protocol file is taken)."""
    import protocols

    for name, path in protocols.shipped().items():
        first = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        default = " (default of rigd start)" if name == protocols.DEFAULT else ""
        console.print(f"{name}{default}\t{path}\t{first}", highlight=False, soft_wrap=True)


@protocol_app.command("check")
def protocol_check(
    file: Annotated[Path, typer.Argument(help="protocol file (TOML or YAML), or a shipped protocol's name")],
    dry_run: Annotated[int | None, typer.Option("--dry-run", help="also run N trials on the simulated mouse")] = None,
    calibration: Annotated[Path | None, typer.Option(help="rig light calibration file")] = None,
    seed: Annotated[int, typer.Option(help="seed of the simulated mouse")] = 0,
    mu_left: Annotated[float, typer.Option(help="dry run: simulated μ_L")] = 0.6,
    mu_right: Annotated[float, typer.Option(help="dry run: simulated μ_R")] = 0.6,
    model: Annotated[str, typer.Option(
        help="dry run: 'reduced' (latent model, μ; docs/simulator.md) or 'rnn' (docs/simulator-rnn.md)")]
    = "reduced",
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
    result = _check_protocol_file(file, limits)
    console.print(result.report(), highlight=False)
    if not result.ok:
        raise typer.Exit(1)
    if dry_run:
        from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        from rig.dry_run import default_config
        from rig.dry_run import dry_run as run_dry

        assert result.protocol is not None
        if model not in ("reduced", "rnn"):
            _fail(f"--model {model!r}: expected 'reduced' or 'rnn'", code=1)
        mouse_kw: dict[str, Any] = {"model": "rnn"} if model == "rnn" else {"mu_left": mu_left, "mu_right": mu_right}
        cfg = default_config(result.protocol, **mouse_kw)
        what = "the bilateral ALM RNN" if model == "rnn" else f"μ = {mu_left}, {mu_right}"
        with Bar("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                 TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task(f"dry run on the simulated mouse ({what})", total=dry_run)
            res = run_dry(result.protocol, dry_run, config=cfg, seed=seed, limits=limits,
                          progress=lambda done: bar.update(task, completed=done))
        console.print(res.report(), highlight=False)


@decoder_app.command("fit")
def decoder_fit(
    sessions: Annotated[list[Path], typer.Argument(help="recorded session directories")],
    output: Annotated[Path, typer.Option("-o", "--output", help="decoder file to write")],
    decoder: Annotated[str, typer.Option(help="decoder name")] = "cd",
    bin_ms: Annotated[float, typer.Option(help="bin width for fitting (ms)")] = 100.0,
) -> None:
    """Fit a decoder on recorded (or simulated) sessions and save it with its provenance."""
    from decoders.fitting import fit_sessions
    from rig.trials import session_trialset

    sets = []
    for s in sessions:
        try:
            sets.append(session_trialset(s, bin_s=bin_ms * 1e-3))
        except (FileNotFoundError, ValueError) as exc:
            _fail(f"{s}: {exc}", code=1)
    with console.status(f"fitting {decoder} on {sum(t.n_trials for t in sets)} trials…"):
        dec, report = fit_sessions(sets, decoder)
    dec.save(output)
    console.print(f"{decoder}: cross-validated accuracy {report.accuracy:.3f} on {report.n_trials} trials "
                  f"→ {output}")


@decoder_app.command("accuracy")
def decoder_accuracy(
    sessions: Annotated[list[Path], typer.Argument(help="recorded session directories")],
    decoder: Annotated[str, typer.Option(help="decoder name")] = "cd",
    bin_ms: Annotated[float, typer.Option(help="bin width (ms)")] = 100.0,
    folds: Annotated[int, typer.Option(help="cross-validation folds")] = 5,
) -> None:
    """Cross-validated decoding accuracy of the upcoming choice through the trial."""
    from decoders.fitting import accuracy_over_time
    from rig.trials import session_trialset

    for s in sessions:
        ts = session_trialset(s, bin_s=bin_ms * 1e-3)
        times, acc = accuracy_over_time(decoder, ts, folds=folds)
        console.print(f"{s} ({ts.n_trials} trials, {decoder}):")
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

    from rig.report import write_report

    if not session.exists():
        _fail(f"{session}: no such session", code=1)
    with Bar("[progress.description]{task.description}", BarColumn(), TimeRemainingColumn(),
             console=console, transient=True) as bar:
        path = write_report(session, output, progress=bar)
    console.print(f"wrote {path}")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
