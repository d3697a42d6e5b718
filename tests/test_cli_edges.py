"""The CLI at its edges, as an experimenter meets them (issue 21, point 6).

* ``rigd report`` / ``rigd export nwb`` on a folder that is not a session: one line (what, where,
  expected vs got), exit 1, no traceback.
* ``rigd protocol list``: aligned columns; a description is a whole first sentence or ends at a
  word with "…".
* ``rigd start --help`` at 80 columns shows every option name whole.
* ``--n-fit-trials`` below what the online decoder fits on is refused with field, value and range.
* A protocol's ``[session] n_trials`` ends the session unless ``--trials`` overrides it (the banner
  says which); each start draws a fresh seed, printed and recorded; ``--seed N`` repeats it.
* One instance per name: a second ``rigd start --name X`` is refused with the first's pid and
  endpoints; a stale runtime file is replaced with a note; an exiting rigd removes only its own
  runtime file; ``rigd stop --mqtt`` stops an instance through its broker alone.
* Counts read "1 trial", "2 trials".

Every CLI case runs the real ``rigd`` console script as a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import typer

import protocols
from rig.config import MIN_FIT_TRIALS, ServiceConfig
from rig.progress import count, render, stop_plan
from rig.session import Session
from tests.rigd_process import REPO, RIGD, external_rigd, free_port, measured_calibration, rigd

pytestmark = pytest.mark.slow
CHEN = REPO / "protocols" / "chen2021_early_delay.toml"


def run(tmp: Path, *args: str, columns: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RIGD_RUNTIME_DIR": str(tmp / "runtime")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([*RIGD, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_report_and_export_refuse_what_is_not_a_session_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "mouse.txt").write_text("not a session")
    for cmd in (["report"], ["export", "nwb"]):
        msg = one_line_error(run(tmp_path, *cmd, str(folder)))
        assert str(folder) in msg and "not a session" in msg
        assert "expected a rigd session directory" in msg and "wire.rlog" in msg and "manifest.json" in msg
        assert "got a folder without" in msg and "mouse.txt" in msg
        msg = one_line_error(run(tmp_path, *cmd, str(tmp_path / "missing")))
        assert "got nothing there" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "(empty)" in one_line_error(run(tmp_path, "report", str(empty)))
    assert ".nwb file" in one_line_error(run(tmp_path, "report", str(empty)))  # report also takes NWB


def _comment_paragraph(path: Path) -> str:
    lines = []
    for ln in path.read_text().splitlines():
        if not ln.startswith("#"):
            break
        lines.append(ln.lstrip("#").strip())
    return " ".join(" ".join(lines).split())


@pytest.mark.parametrize("columns", [80, 200])
def test_protocol_list_is_aligned_and_cuts_no_sentence(tmp_path: Path, columns: int) -> None:
    res = run(tmp_path, "protocol", "list", columns=columns)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "\t" not in res.stdout and all(len(ln.rstrip()) <= columns for ln in lines)
    shipped = protocols.shipped()
    starts = [i for i, ln in enumerate(lines) if ln.split(" ", 1)[0] in shipped]
    assert [lines[i].split(" ", 1)[0] for i in starts] == list(shipped)
    header = next(ln for ln in lines if ln.startswith("name"))
    col = header.index("description")
    end = next(i for i, ln in enumerate(lines) if ln.startswith("files:"))
    for k, i in enumerate(starts):
        row = lines[i:starts[k + 1] if k + 1 < len(starts) else end]
        assert all(ln[:col].strip() == "" for ln in row[1:])  # continuation lines stay in the column
        assert lines[i][col - 1] == " " and lines[i][col] != " "  # every description starts in one column
        text = " ".join(ln[col:].strip() for ln in row)
        para = _comment_paragraph(shipped[lines[i].split(" ", 1)[0]])
        if text.endswith("…"):  # shortened: a prefix of the header comment, ended between words
            stem = text[:-1]
            assert para.startswith(stem) and para[len(stem)] in " ,;:(", (text, para)
        else:  # a whole first sentence
            assert text.endswith(".") and para.startswith(text), (text, para)
    assert "(default)" in lines[starts[list(shipped).index(protocols.DEFAULT)]]


def test_start_help_shows_every_option_name_whole_at_80_columns(tmp_path: Path) -> None:
    from rig.cli import app

    res = run(tmp_path, "start", "--help", columns=80)
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout and all(len(ln) <= 80 for ln in res.stdout.splitlines())
    start = typer.main.get_command(app).commands["start"]  # type: ignore[attr-defined]
    names = [o for p in start.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    assert "--bench-test-calibration" in names and "--no-publish-estimates" in names
    words = set(re.findall(r"--[a-z0-9-]+", res.stdout))
    assert set(names) <= words, sorted(set(names) - words)


def test_n_fit_trials_below_the_decoders_minimum_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from decoders import registry
    from decoders.online import OnlineDecoder

    def online(n: int) -> OnlineDecoder:
        return OnlineDecoder(registry["cd"], n_units=4, hemisphere=np.array([0, 0, 1, 1]), bin_s=0.001,
                             n_fit_trials=n)

    online(MIN_FIT_TRIALS)  # the config's bound is the decoder's own minimum
    with pytest.raises(ValueError, match="need at least"):
        online(MIN_FIT_TRIALS - 1)
    res = run(tmp_path, "start", "--no-ui", "--no-live", "--session-dir", str(tmp_path / "sessions"),
              "--n-fit-trials", "4")
    assert res.returncode == 2, res.stdout + res.stderr
    msg = " ".join(res.stderr.split())
    assert "--n-fit-trials (n_fit_trials)" in msg and "got 4" in msg
    assert f"allowed: {MIN_FIT_TRIALS} ≤ n_fit_trials ≤ 10000" in msg
    assert not (tmp_path / "sessions").exists()


def test_counts_are_singular_for_one() -> None:
    assert [count(n, "trial") for n in (0, 1, 2)] == ["0 trials", "1 trial", "2 trials"]
    assert count(1, "neuron") == "1 neuron" and count(3, "neuron") == "3 neurons"
    status = {"decoder": {"decoder": "cd", "ready": True, "n_fits": 1, "age_trials": 1}}
    line = "".join(str(r) for r in render(status).renderables)
    assert "age 1 trial" in line and "1 trials" not in line
    status = {"decoder": {"decoder": "cd", "ready": False, "pool_trials": 1}}
    assert "(1 control trial pooled)" in "".join(str(r) for r in render(status).renderables)
    cfg = ServiceConfig.model_validate({"trials": 1, "trials_from": "--trials", "name": "rig2"})
    assert stop_plan(cfg) == "after 1 trial (--trials); earlier: Ctrl-C or `rigd stop --name rig2`"


def test_each_start_draws_its_own_seed() -> None:
    seeds = {ServiceConfig.model_validate({}).seed for _ in range(4)}
    assert len(seeds) == 4 and all(0 <= s < 2**32 for s in seeds)
    assert ServiceConfig.model_validate({"seed": 0}).seed == 0


def _finished(r: object, timeout: float = 300) -> tuple[str, Session]:
    from tests.rigd_process import Rigd

    assert isinstance(r, Rigd)
    r.wait_ready()
    rc = r.wait(timeout)
    out = r.output()
    assert rc == 0, out
    return out, Session.open(r.session_dir())


def test_protocol_n_trials_ends_the_session_and_the_seed_is_fresh_recorded_and_repeatable(tmp_path: Path) -> None:
    short = tmp_path / "short.toml"
    short.write_text(CHEN.read_text().replace("n_trials = 400", "n_trials = 3"))
    with rigd(tmp_path, "--rig", "sim", "--protocol", str(short), "--iti-s", "0.3", "--no-ui", name="short") as r:
        out, s = _finished(r)
    assert "stops     after 3 trials (the protocol's [session] n_trials; --trials N overrides); earlier: " \
           "Ctrl-C or `rigd stop --name short`" in out
    assert "session finished (3 trials done)" in out
    m = s.manifest
    assert m["trials_done"] == 3 and m["config"]["trials"] == 3 and m["config"]["trials_from"] == "protocol"
    seed = m["seeds"]["service"]
    assert f"  seed      {seed} (fresh; --seed {seed} repeats this trial order)" in out
    assert m["config"]["seed"] == seed and s.directory.name.endswith(f"-seed{seed}")
    first = [(t["instructed"], t["decision"]["condition"]) for t in s.trials()]

    # --trials overrides the protocol; --seed repeats the first session's trial order
    with rigd(tmp_path, "--rig", "sim", "--protocol", str(short), "--iti-s", "0.3", "--no-ui", "--trials", "2",
              "--seed", str(seed), name="again") as r:
        out, s = _finished(r)
    assert "stops     after 2 trials (--trials); earlier" in out and "session finished (2 trials done)" in out
    assert f"  seed      {seed} (--seed; --seed {seed} repeats this trial order)" in out
    assert s.manifest["trials_done"] == 2 and s.manifest["config"]["trials_from"] == "--trials"
    assert s.manifest["seeds"]["service"] == seed and s.directory.name.endswith(f"-seed{seed}")
    assert [(t["instructed"], t["decision"]["condition"]) for t in s.trials()] == first[:2]


def test_one_instance_per_name_and_stop_through_the_broker(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (runtime / "dup.json").write_text(json.dumps({"pid": dead.pid, "name": "dup", "mqtt": "mqtt://127.0.0.1:1"}))
    ingest, command = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with rigd(tmp_path, "--rig", "external", "--calibration", str(measured_calibration(tmp_path)), "--ingest",
              ingest, "--command", command, "--no-ui", name="dup") as first:
        deadline = time.monotonic() + 60  # ready: the runtime file is its own (the stale one is replaced ...)
        while first.wait_ready().get("pid") != first.proc.pid:
            assert time.monotonic() < deadline, first.output()
            time.sleep(0.05)
        assert f"note: replacing the runtime file {runtime / 'dup.json'} left by rigd pid {dead.pid}, which is " \
               "no longer running" in " ".join(first.output().split())  # ... and said so
        res = run(tmp_path, "start", "--name", "dup", "--rig", "sim", "--no-ui", "--no-live", "--session-dir",
                  str(tmp_path / "second"))
        msg = " ".join(res.stderr.split())
        assert res.returncode == 1, res.stdout + res.stderr
        assert "rigd 'dup' is already running" in msg and f"pid {first.proc.pid}" in msg
        for endpoint in (first.info["mqtt"], ingest, command, first.info["session_dir"]):
            assert endpoint in msg
        assert not (tmp_path / "second").exists()
        assert first.proc.poll() is None and json.loads((runtime / "dup.json").read_text()) == first.info
        assert first.status()["state"] == "running"  # `rigd status` still finds the first

        # `rigd stop --mqtt` from a machine without its runtime file: through the broker alone
        elsewhere = tmp_path / "elsewhere"
        no_local = run(elsewhere, "stop", "--name", "dup")
        assert no_local.returncode == 1 and "--mqtt" in no_local.stderr
        res = run(elsewhere, "stop", "--name", "dup", "--mqtt", first.info["mqtt"], timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "rigd 'dup' stopped" in res.stdout and first.info["session_dir"] in res.stdout
        assert first.wait(60) == 0
        m = json.loads((Path(first.info["session_dir"]) / "manifest.json").read_text())
        assert m["state"] == "stopped" and "stop command" in m["stop_reason"]
        # nothing runs any more: a second stop says so instead of waiting
        again = run(elsewhere, "stop", "--name", "dup", "--mqtt", first.info["mqtt"], timeout=60)
        assert again.returncode == 1, again.stdout + again.stderr


def test_an_exiting_rigd_removes_only_its_own_runtime_file(tmp_path: Path) -> None:
    with external_rigd(tmp_path, "own", "--no-ui") as (r, _ingest, _command):
        path = r.runtime / "own.json"
        foreign = {**r.info, "pid": os.getpid()}  # another live process's file (written past the lock)
        path.write_text(json.dumps(foreign))
        os.kill(r.proc.pid, signal.SIGTERM)
        assert r.wait(60) == 0, r.output()
        assert json.loads(path.read_text()) == foreign
    with external_rigd(tmp_path, "own2", "--no-ui") as (r, _ingest, _command):
        os.kill(r.proc.pid, signal.SIGTERM)
        assert r.wait(60) == 0, r.output()
        assert not (r.runtime / "own2.json").exists()  # its own file goes
