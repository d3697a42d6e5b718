"""Replaying a recorded session as the rig (``rigd start --rig replay:DIR --speed max``, rig/replay_rig.py).

A session recorded in lockstep and replayed in lockstep must give rigd the same input in the same
order, so the replayed session's decoder outputs and light commands equal the original's bit for
bit; the replay acknowledges each command with the recorded status and counts none diverged.
Also: the CLI's refusals for a replay that cannot run.
"""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from rig import wire
from rig.loop import DECODER_FIELDS
from rig.session import Session
from tests.rigd_process import REPO, RIGD, rig_summary, rigd


def _run(tmp: Path, name: str, *args: str) -> Path:
    with rigd(tmp, *args, "--no-ui", name=name) as r:
        info = r.wait_ready()
        assert r.wait(600) == 0, r.output()
    return Path(info["session_dir"])


def _first_difference(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], names: tuple[str, ...]) -> str:
    """Where two tables first differ, for the assertion message ("" if equal bit for bit)."""
    if a.shape != b.shape:
        n = min(len(a), len(b))
        head = _first_difference(a[:n], b[:n], names)
        return head or f"shapes differ: original {a.shape}, replay {b.shape} (equal over the first {n} rows)"
    diff = np.flatnonzero((a.view(np.uint64) != b.view(np.uint64)).any(axis=1)) if a.dtype == np.float64 else \
        np.flatnonzero((a != b).any(axis=1))
    if diff.size == 0:
        return ""
    i = int(diff[0])
    cols = [n for n, x, y in zip(names, a[i], b[i], strict=True) if not (x == y or (x != x and y != y))]
    return (f"{diff.size} of {len(a)} rows differ; first at row {i} (columns {cols}):\n"
            f"  original {dict(zip(names, a[i].tolist(), strict=True))}\n"
            f"  replay   {dict(zip(names, b[i].tolist(), strict=True))}")


COMMAND_FIELDS = ("command_id", "cause_seq", "cause_t_rig_ns", "trial", "action", "spots_left", "spots_right",
                  "power_mw_per_spot", "duration_s", "ramp_down_s", "t_start_rig_ns", "deadline_rig_ns")


def _commands(s: Session) -> np.ndarray[Any, Any]:
    rows = [[float(getattr(c, f)) for f in COMMAND_FIELDS] for _, c in s.light_commands()]
    return np.array(rows, dtype=np.float64).reshape(-1, len(COMMAND_FIELDS))


def test_a_lockstep_replay_reproduces_the_sessions_decoder_outputs_and_light_commands(tmp_path: Path) -> None:
    original = _run(tmp_path, "orig", "--rig", "sim", "--clock", "rig", "--trials", "30", "--iti-s", "0.5",
                    "--n-fit-trials", "10", "--seed", "7")
    replayed = _run(tmp_path, "replay", "--rig", f"replay:{original}", "--speed", "max")

    m0 = json.loads((original / "manifest.json").read_text())
    m1 = json.loads((replayed / "manifest.json").read_text())
    # the replayed session says what it replays, and ran with the recording's protocol and seed in lockstep
    assert m1["config"]["replay"] == str(original) and m1["config"]["replay_speed"] == "max"
    assert m1["config"]["clock"] == "rig" and m1["config"]["publish_estimates"] is True
    assert m1["config"]["seed"] == m0["config"]["seed"] == 7
    assert m1["protocol"]["sha256"] == m0["protocol"]["sha256"]
    assert m1["config"]["n_fit_trials"] == 10
    assert json.loads((replayed / "replay.json").read_text())["source"] == str(original)

    # the original's decoder was fitted during the session: the comparison covers outputs after refits
    print(f"original decoder: {m0['decoder'].get('n_fits')} fits; replay: {m1['decoder'].get('n_fits')} fits")
    assert m0["decoder"]["n_fits"] >= 1 and m1["decoder"]["n_fits"] == m0["decoder"]["n_fits"]

    rs = rig_summary(replayed)
    assert rs["stop_reason"] == "end" and rs["lockstep"] is True, rs
    s0, s1 = Session.open(original), Session.open(replayed)
    n_frames = s0.counts()[0].size
    assert rs["bins"] == n_frames == m1["counters"]["frames"] == rs["estimates"]
    assert rs["trials"] == m0["trials_done"] == m1["trials_done"] == 30

    # the replay's acks are the recorded ones: same status for the same command
    assert rs["diverged"] == 0 and rs["missing"] == 0, rs
    acks0 = [(a.command_id, a.status, a.t_received_rig_ns, a.t_light_change_rig_ns) for _, a in s0.light_acks()]
    acks1 = [(a.command_id, a.status, a.t_received_rig_ns, a.t_light_change_rig_ns) for _, a in s1.light_acks()]
    assert acks1 == acks0
    assert any(a[1] == wire.AckStatus.APPLIED for a in acks0), "no light in the original: a weak test"

    commands = _first_difference(_commands(s0), _commands(s1), COMMAND_FIELDS)
    assert not commands, f"light commands differ:\n{commands}"
    decoded = _first_difference(s0.decoder_outputs(), s1.decoder_outputs(), DECODER_FIELDS)
    assert not decoded, f"decoder outputs differ:\n{decoded}"


def _start(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RIGD_RUNTIME_DIR": str(tmp / "runtime")}
    return subprocess.run([*RIGD, "start", "--no-ui", "--no-live", "--session-dir", str(tmp / "s"), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=env)


def test_the_cli_refuses_a_replay_it_cannot_run(tmp_path: Path) -> None:
    r = _start(tmp_path, "--rig", f"replay:{tmp_path / 'nothing'}")
    assert r.returncode != 0 and "not a rigd session directory" in r.stderr, r.stderr
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "wire.rlog").write_bytes(b"")
    (fake / "manifest.json").write_text(json.dumps({"config": {"seed": 3}, "protocol": {"text": "", "sha256": ""}}))
    r = _start(tmp_path, "--rig", f"replay:{fake}", "--speed", "2", "--clock", "rig")
    assert r.returncode != 0 and "--speed max" in r.stderr and "--clock rig" in r.stderr, r.stderr
    r = _start(tmp_path, "--rig", f"replay:{fake}", "--speed", "fast")
    assert r.returncode != 0 and "expected 'max' or a number" in r.stderr, r.stderr
    r = _start(tmp_path, "--rig", "sim", "--speed", "2")
    assert r.returncode != 0 and "needs --rig replay:SESSION_DIR" in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()  # nothing started
