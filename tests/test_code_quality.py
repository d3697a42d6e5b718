"""The code base stays ruff-clean, mypy --strict clean and inside its architecture's import rules (enforced in CI)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_finds_nothing() -> None:
    r = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_finds_nothing() -> None:
    # packages and strictness come from [tool.mypy] in pyproject.toml
    r = subprocess.run([str(BIN / "mypy")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_rules_hold() -> None:
    """import-linter's contracts ([tool.importlinter] in pyproject.toml): pure decoders and controllers,
    a simulator that is only a rig, a real-time path without analysis, UI or simulator code."""
    r = subprocess.run([str(BIN / "lint-imports")], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout and "3 kept" in r.stdout, r.stdout
