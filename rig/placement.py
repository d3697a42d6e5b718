"""Where the hot loop runs and how it waits for frames, chosen from the machine rigd finds.

A lab should get rigd's lowest latency without tuning flags. Measured on a 4-CPU machine at
1,000 units × 1 kHz (docs/benchmarks.md, "Fast by default"): with rigd's default placement its p99
was 1.93× the raw pyzmq floor; with a CPU of its own (the loop pinned there, polling for each
predicted frame instead of sleeping: ``--loop-cpu N --poll-ahead-us 1000``) 1.06×. A CPU of its own
costs that CPU (the loop never sleeps), so rigd takes one only where CPUs are to spare:

* four or more usable CPUs: the loop gets one (an isolated CPU if the kernel has any, else the
  last), everything else in rigd and the simulated rig stays off it, and it polls ahead for the
  whole frame period;
* fewer: the loop shares the CPUs and sleeps until a frame comes (polling one CPU of two would
  starve the rig process, the recorder and the broker);
* a virtual clock (``--clock rig``): no placement (there is no real time to keep).

``--loop-cpu`` / ``--poll-ahead-us`` override the choice; ``--placement off`` turns it off. What
was chosen, and why, is in the start banner and in the status (``placement``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MIN_CPUS_FOR_OWN_CPU = 4  #: usable CPUs from which the loop takes one of its own
OWN_CPU_POLL_AHEAD_US = 1000  #: poll-ahead window with a CPU of its own (≥ a 1 kHz frame period: it never sleeps)
ISOLATED_CPUS = Path("/sys/devices/system/cpu/isolated")


@dataclass(frozen=True)
class Placement:
    """The hot loop's CPU and wait strategy, and why."""

    loop_cpu: int | None
    poll_ahead_us: int
    chosen_by: Literal["auto", "flags", "off"]
    why: str

    def describe(self) -> str:
        """One line for the banner: what, and why."""
        where = f"CPU {self.loop_cpu} of its own" if self.loop_cpu is not None else "shares the CPUs"
        wait = (f"polls ahead {self.poll_ahead_us} µs for each frame" if self.poll_ahead_us
                else "sleeps until a frame comes")
        return f"{where}, {wait} ({self.chosen_by}: {self.why})"

    def as_dict(self) -> dict[str, object]:
        """For the status and the manifest."""
        return {"loop_cpu": self.loop_cpu, "poll_ahead_us": self.poll_ahead_us, "chosen_by": self.chosen_by,
                "why": self.why}


def isolated_cpus(path: Path = ISOLATED_CPUS) -> set[int]:
    """CPUs the kernel keeps free of other work (``isolcpus=``), from a list such as "2-3,6"."""
    try:
        text = path.read_text().strip()
    except OSError:
        return set()
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        try:
            out.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            return set()
    return out


def choose(*, loop_cpu: int | None, poll_ahead_us: int | None, mode: Literal["auto", "off"],
           clock: Literal["wall", "rig"] = "wall", cpus: set[int] | None = None,
           isolated: set[int] | None = None) -> Placement:
    """The placement for this machine (``cpus``: usable CPUs; ``isolated``: the kernel's isolated ones).

    ``loop_cpu`` / ``poll_ahead_us`` are the flags as given (None: not given); given flags win.
    """
    usable = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if loop_cpu is not None or poll_ahead_us is not None:
        return Placement(loop_cpu, poll_ahead_us or 0, "flags", "--loop-cpu/--poll-ahead-us as given")
    if mode == "off":
        return Placement(None, 0, "off", "--placement off")
    if clock == "rig":
        return Placement(None, 0, "auto", "virtual clock: no real time to keep")
    if len(usable) < MIN_CPUS_FOR_OWN_CPU:
        return Placement(None, 0, "auto", f"{len(usable)} usable CPUs; a CPU of its own needs "
                                          f"{MIN_CPUS_FOR_OWN_CPU} or more")
    iso = [c for c in usable if c in (isolated_cpus() if isolated is None else isolated)]
    cpu = iso[-1] if iso else usable[-1]
    what = "an isolated CPU" if iso else "the last CPU"
    return Placement(cpu, OWN_CPU_POLL_AHEAD_US, "auto", f"{len(usable)} usable CPUs: {what} for the loop")
