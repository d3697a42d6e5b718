"""rigd picks the hot loop's CPU and wait strategy for the machine it finds (rig/placement.py)."""

from __future__ import annotations

import json
from pathlib import Path

from rig.placement import MIN_CPUS_FOR_OWN_CPU, OWN_CPU_POLL_AHEAD_US, choose, isolated_cpus
from tests.rigd_process import rigd


def test_four_or_more_cpus_give_the_loop_the_last_one_polling_ahead() -> None:
    p = choose(loop_cpu=None, poll_ahead_us=None, mode="auto", cpus={0, 1, 2, 3}, isolated=set())
    assert (p.loop_cpu, p.poll_ahead_us, p.chosen_by) == (3, OWN_CPU_POLL_AHEAD_US, "auto")
    assert "4 usable CPUs" in p.why and "CPU 3 of its own" in p.describe()


def test_an_isolated_cpu_is_preferred() -> None:
    p = choose(loop_cpu=None, poll_ahead_us=None, mode="auto", cpus={0, 1, 2, 3, 4, 5}, isolated={2, 9})
    assert p.loop_cpu == 2 and "isolated" in p.why


def test_fewer_cpus_share_them_and_sleep() -> None:
    for n in range(1, MIN_CPUS_FOR_OWN_CPU):
        p = choose(loop_cpu=None, poll_ahead_us=None, mode="auto", cpus=set(range(n)), isolated=set())
        assert (p.loop_cpu, p.poll_ahead_us) == (None, 0), n
        assert f"{n} usable CPUs" in p.why and "sleeps until a frame comes" in p.describe()


def test_flags_win_and_off_turns_it_off_and_a_virtual_clock_needs_none() -> None:
    cpus = {0, 1, 2, 3, 4, 5, 6, 7}
    p = choose(loop_cpu=5, poll_ahead_us=None, mode="auto", cpus=cpus, isolated=set())
    assert (p.loop_cpu, p.poll_ahead_us, p.chosen_by) == (5, 0, "flags")
    p = choose(loop_cpu=None, poll_ahead_us=300, mode="auto", cpus=cpus, isolated=set())
    assert (p.loop_cpu, p.poll_ahead_us, p.chosen_by) == (None, 300, "flags")
    assert choose(loop_cpu=None, poll_ahead_us=None, mode="off", cpus=cpus).chosen_by == "off"
    p = choose(loop_cpu=None, poll_ahead_us=None, mode="auto", clock="rig", cpus=cpus, isolated=set())
    assert (p.loop_cpu, p.poll_ahead_us) == (None, 0) and "virtual clock" in p.why


def test_isolated_cpu_list_is_parsed(tmp_path: Path) -> None:
    f = tmp_path / "isolated"
    f.write_text("2-3,6\n")
    assert isolated_cpus(f) == {2, 3, 6}
    f.write_text("\n")
    assert isolated_cpus(f) == set()
    f.write_text("garbage")
    assert isolated_cpus(f) == set()
    assert isolated_cpus(tmp_path / "missing") == set()


def test_the_choice_is_in_the_banner_status_and_manifest(tmp_path: Path) -> None:
    with rigd(tmp_path, "--rig", "sim", "--clock", "rig", "--trials", "2", "--iti-s", "0.3", "--no-ui") as r:
        r.wait_ready(120)
        assert r.wait(300) == 0, r.output()
    out = r.output()
    assert "loop      shares the CPUs, sleeps until a frame comes (auto: virtual clock" in out, out
    manifest = json.loads((r.session_dir() / "manifest.json").read_text())
    assert manifest["placement"] == {"loop_cpu": None, "poll_ahead_us": 0, "chosen_by": "auto",
                                     "why": "virtual clock: no real time to keep"}
