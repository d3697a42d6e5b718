"""A wheel install carries everything rigd reads at run time: protocols, RNN weights, the live view.

The repository is installed editable for development; a lab installs a wheel. This builds the
wheel, installs it into an empty directory and runs rigd from there, away from the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "wheel"), str(ROOT)], check=True, cwd=tmp, capture_output=True, timeout=300)
    (whl,) = (tmp / "wheel").glob("rigd-*.whl")
    return whl


def test_wheel_ships_runtime_files_and_finds_the_default_protocol(tmp_path: Path) -> None:
    whl = _build(tmp_path)
    names = set(zipfile.ZipFile(whl).namelist())
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "protocols").glob("*.toml")}
    assert len(shipped) >= 3 and shipped <= names
    assert {"sim/data/dual_alm_rnn_modular_seed0.npz", "rig/web/index.html", "rig/web/app.js"} <= names
    assert not any(n.startswith("tests/") for n in names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(whl)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}  # ahead of the editable checkout on sys.path
    run = tmp_path / "elsewhere"
    run.mkdir()
    probe = ("import protocols, rig.supervisor as s; "
             "print(protocols.__file__); print(s.DEFAULT_PROTOCOL); print(s.DEFAULT_PROTOCOL.is_file())")
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=run, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert Path(out[0]).is_relative_to(target) and Path(out[1]).is_relative_to(target) and out[2] == "True"
    # a shipped protocol by name, checked by the installed rigd
    cli = "import sys; from rig.cli import main; sys.argv[0] = 'rigd'; main()"
    chk = subprocess.run([sys.executable, "-c", cli, "protocol", "check", "state_triggered"], env=env, cwd=run,
                         capture_output=True, text=True, timeout=300)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    assert "state" in chk.stdout.lower()
    bad = subprocess.run([sys.executable, "-c", cli, "protocol", "check", "no_such_protocol"], env=env, cwd=run,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "chen2021_early_delay" in bad.stdout + bad.stderr
