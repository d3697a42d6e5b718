"""One closed loop: the dry run and a live session run the same pipeline and decide alike.

A live session (``rigd start --rig sim --clock rig``: the simulated rig as its own process, in
lockstep with rigd over the wire protocol) and the in-process dry run of the same seed, mouse,
protocol and decoder must produce the same trials: the same controller decisions, the same light
commands at the same trial times, and the same decoded end-of-delay state, bit for bit. The
state-triggered protocol is used because its decisions depend on the online decoder, which
calibrates and refits during the session.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from analysis.dry_run import dry_run
from controllers.protocol import load_protocol
from rig.session import Session, strict_json
from sim.config import MouseConfig
from tests.rigd_process import rigd

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / "protocols" / "state_triggered.toml"
SEED = 11
N_TRIALS = 36
N_FIT = 10


def _comparable(trial: dict[str, Any], t0: int) -> dict[str, Any]:
    """A trial summary with rig-clock times made relative to the session's first trial start."""
    out = {k: v for k, v in trial.items() if k not in ("t_start_rig_ns",)}
    out["t_start"] = trial["t_start_rig_ns"] - t0
    light = trial.get("light")
    if light:
        light = dict(light)
        if "t_light_change_rig_ns" in light:
            light["t_light_change"] = light.pop("t_light_change_rig_ns") - t0
        out["light"] = light
    return json.loads(strict_json(out))  # as the recorder writes a record (non-finite → null)


def test_dry_run_and_a_live_lockstep_session_make_the_same_decisions(tmp_path: Path) -> None:
    proto = load_protocol(STATE)
    args = ["--rig", "sim", "--clock", "rig", "--trials", str(N_TRIALS), "--seed", str(SEED), "--protocol",
            str(STATE), "--n-fit-trials", str(N_FIT), "--bin-ms", "5", "--iti-s", "0.5", "--no-ui",
            "--units-per-hemisphere", "60", "--mu-left", "0.7", "--mu-right", "0.35"]
    with rigd(tmp_path, *args) as r:
        r.wait_ready(120)
        assert r.wait(600) == 0, r.output()
        session_dir = r.session_dir()
    live = [t for t in Session.open(session_dir).trials() if t.get("type") == "trial"]
    assert len(live) == N_TRIALS, (len(live), r.output())

    cfg = MouseConfig.from_json_file(session_dir / "sim_config.json", seed=SEED)
    dry = dry_run(proto, N_TRIALS, config=cfg, seed=SEED, n_fit_trials=N_FIT, estimator="decoder")
    assert len(dry.pipeline_trials) == N_TRIALS

    # the session did what the comparison needs: the decoder fitted and decided, light was delivered
    decided = [t for t in live if (t.get("decision") or {}).get("state") in ("weak", "strong")]
    assert decided, "the state-triggered controller never classified a state"
    assert any(t["light"] and t["light"].get("status") == "applied" for t in live)
    assert any(t["cd_end_delay_left"] is not None for t in live)

    t0_live, t0_dry = live[0]["t_start_rig_ns"], dry.pipeline_trials[0]["t_start_rig_ns"]
    for a, b in zip(live, dry.pipeline_trials, strict=True):
        la, lb = _comparable(a, t0_live), _comparable(b, t0_dry)
        assert la == lb, f"trial {a['trial']}: live {la} != dry run {lb}"
    # bit for bit: the decoded end-of-delay states are equal floats, not close ones
    for a, b in zip(live, dry.pipeline_trials, strict=True):
        for k in ("cd_end_delay_left", "cd_end_delay_right"):
            if a[k] is not None:
                assert math.copysign(1, a[k]) == math.copysign(1, b[k]) and a[k] == b[k]

