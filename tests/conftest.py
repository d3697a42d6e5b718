"""Test-wide isolation: every test keeps rigd's persistent state (light ledgers) in its own folder.

A light ledger outlives a session on purpose (hardware/ledger.py): without this, light delivered in
one test would count against the energy budget of the next.
"""

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIGD_STATE_DIR", str(tmp_path / "rigd-state"))
