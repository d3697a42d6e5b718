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
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from rig.config import ServiceConfig, runtime_dir

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="rigd — closed-loop experiment control (delay task, ALM photoinhibition).")
export_app = typer.Typer(no_args_is_help=True, help="Export a recorded session.")
protocol_app = typer.Typer(no_args_is_help=True, help="Check and dry-run perturbation protocols.")
decoder_app = typer.Typer(no_args_is_help=True, help="Fit and evaluate decoders.")
app.add_typer(export_app, name="export")
app.add_typer(protocol_app, name="protocol")
app.add_typer(decoder_app, name="decoder")
console = Console()
err = Console(stderr=True)


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
    model: Annotated[str | None, typer.Option(help="sim model: 'reduced' or 'spiking'")] = None,
    backend: Annotated[str | None, typer.Option(help="spiking backend: 'cpu' or 'lava'")] = None,
    decoder: Annotated[str | None, typer.Option(help="decoder name (cd, cd_li, logistic, lda, kalman, gru)")] = None,
    decoder_file: Annotated[Path | None, typer.Option(help="start with this fitted decoder file")] = None,
    publish_estimates: Annotated[bool | None, typer.Option(help="send each frame's estimate to the rig")] = None,
    n_fit_trials: Annotated[int | None, typer.Option(help="control trials before the first decoder fit")] = None,
    deadline_ms: Annotated[float | None, typer.Option(help="decision budget in ms")] = None,
    ingest: Annotated[str | None, typer.Option(help="ingest endpoint to bind")] = None,
    command: Annotated[str | None, typer.Option(help="command endpoint to bind")] = None,
    ui: Annotated[bool | None, typer.Option(help="serve the live web view")] = None,
    ui_port: Annotated[int | None, typer.Option(help="live view port (default: a free one)")] = None,
    live: Annotated[bool | None, typer.Option(help="terminal live view (default: on a TTY)")] = None,
) -> None:
    """Start a session: rigd + (for --rig sim) the simulated mouse, until trials/duration/stop."""
    try:
        cfg = ServiceConfig.load(
            config, rig=rig, trials=trials, duration_s=duration, session_dir=session_dir, mqtt=mqtt,
            mqtt_port=mqtt_port, protocol=protocol, calibration=calibration, seed=seed, name=name,
            mu_left=mu_left, mu_right=mu_right, callosotomy=callosotomy,
            units_per_hemisphere=units_per_hemisphere, day=day, bin_ms=bin_ms, iti_s=iti_s, model=model,
            backend=backend, decoder=decoder, decoder_file=decoder_file,
            publish_estimates=publish_estimates, n_fit_trials=n_fit_trials, deadline_ms=deadline_ms,
            ingest_endpoint=ingest, command_endpoint=command, ui=ui, ui_port=ui_port, live=live)
    except ValidationError as exc:
        _fail(_validation_message(exc))
        return
    except (OSError, ValueError) as exc:
        _fail(str(exc))
        return
    if cfg.protocol is not None and not cfg.protocol.exists():
        _fail(f"--protocol {cfg.protocol}: no such file")
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


def _run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(coro)


def _runtime_info(name: str) -> dict[str, Any] | None:
    path = runtime_dir() / f"{name}.json"
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, PermissionError, KeyError, ValueError):
        return None  # stale file of a crashed instance
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

    async def _send() -> None:
        import aiomqtt

        from rig.control_plane import parse_mqtt_url

        host, port = parse_mqtt_url(info["mqtt"])
        async with aiomqtt.Client(host, port, timeout=5) as c:
            await c.publish(f"rigd/{name}/cmd/stop", b"{}", qos=1)

    try:
        asyncio.run(_send())
    except Exception as exc:
        err.print(f"MQTT stop failed ({exc}); sending SIGTERM to {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
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
        path = export_session(session, output)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc), code=1)
        return
    console.print(f"wrote {path}")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
