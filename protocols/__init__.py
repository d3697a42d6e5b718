"""The perturbation protocols shipped with rigd, installed with it (so a wheel install finds them).

``chen2021_early_delay`` is the default of ``rigd start``; the others are worked examples
(docs/protocols.md). Wherever rigd takes a protocol file it also takes the name of a shipped one:
``rigd protocol check state_triggered``; ``rigd protocol list`` prints them.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = "chen2021_early_delay"


def shipped() -> dict[str, Path]:
    """Name → file of every shipped protocol."""
    return {p.stem: p for p in sorted(HERE.glob("*.toml"))}


def resolve(arg: Path | str) -> Path:
    """``arg`` itself if it is an existing file, else the shipped protocol of that name (if any), else ``arg``."""
    p = Path(arg)
    if p.exists():
        return p
    bare = p.parent == Path() and p.suffix in ("", ".toml")  # "state_triggered[.toml]", not a path
    return shipped().get(p.stem, p) if bare else p
