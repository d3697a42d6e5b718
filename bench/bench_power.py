"""Protocol power analysis throughput: experiments per second serially and on 1 and 2 Dask workers.

Measures, on this machine, for a standard design (the Chen 2021 block protocol, 4 mice × 2 sessions ×
400 trials, chunks of 10 experiments = one task):

* the per-task cost run in-process (median over tasks) and the per-trial cost it implies;
* experiments per second on a ``distributed.LocalCluster`` of 1 and of 2 worker processes (cluster
  start-up timed apart), with the result checked identical to the serial run's;
* the scheduler's overhead per task: many empty tasks through the same 2-worker cluster;

and writes a paper estimate of a full sweep on a 100-worker cluster from those figures
(docs/benchmarks.md, "Protocol power analysis"; docs/power.md).

    .venv/bin/python bench/bench_power.py [--experiments 80] [--noop-tasks 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from analysis import power as pw
from controllers.protocol import load_protocol
from sim.config import MouseConfig

ROOT = Path(__file__).resolve().parents[1]
#: the sweep the paper estimate is for: every design of this grid × populations, EXPERIMENTS_PER_DESIGN each
SWEEP_TRIALS = (200, 400, 800)
SWEEP_SESSIONS = (1, 2, 4)
SWEEP_MICE = (2, 4, 8)
SWEEP_POPULATIONS = 5  #: e.g. μ = 0.3 … 0.7 symmetric and asymmetric
EXPERIMENTS_PER_DESIGN = 1000


def _noop(i: int) -> int:
    return i


def _cluster_run(spec: pw.PowerSpec, workers: int, noop_tasks: int) -> dict[str, Any]:
    from distributed import Client

    t0 = time.perf_counter()
    cluster = pw.local_cluster(workers)
    client = Client(cluster)
    client.wait_for_workers(workers)
    startup = time.perf_counter() - t0
    try:
        seeds = pw.chunk_seeds(spec)
        client.submit(_noop, 0).result()  # warm: the task function's module imported on a worker
        t1 = time.perf_counter()
        futures = [client.submit(pw.simulate_chunk, spec, i, ss, pure=False) for i, ss in enumerate(seeds)]
        chunks = client.gather(futures)
        run_s = time.perf_counter() - t1
        overhead = float("nan")
        if noop_tasks:
            t2 = time.perf_counter()
            client.gather(client.map(_noop, range(noop_tasks), pure=False))
            overhead = (time.perf_counter() - t2) / noop_tasks
    finally:
        client.close()
        cluster.close()
    return {"startup_s": startup, "run_s": run_s, "exp_per_s": spec.experiments / run_s,
            "task_s": statistics.median(c.seconds for c in chunks),
            "overhead_per_task_s": overhead, "chunks": chunks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=80)
    ap.add_argument("--noop-tasks", type=int, default=2000)
    a = ap.parse_args()
    proto = load_protocol(ROOT / "protocols" / "chen2021_early_delay.toml")
    pop = pw.Population(mice=4, sessions=2, trials=400)
    spec = pw.PowerSpec(proto, pop, MouseConfig(), experiments=a.experiments, seed=1, chunk_size=10)
    trials_per_task = 10 * pop.mice * pop.sessions * pop.trials

    t0 = time.perf_counter()
    serial_chunks = [pw.simulate_chunk(spec, i, ss) for i, ss in enumerate(pw.chunk_seeds(spec))]
    serial_s = time.perf_counter() - t0
    task_s = statistics.median(c.seconds for c in serial_chunks)
    per_trial = task_s / trials_per_task
    ref = pw.summarise(spec, serial_chunks)

    rows = [("serial (in-process)", 1, float("nan"), a.experiments / serial_s, task_s)]
    overhead = float("nan")
    for workers in (1, 2):
        r = _cluster_run(spec, workers, a.noop_tasks if workers == 2 else 0)
        same = [vars(q) for q in pw.summarise(spec, r["chunks"])] == [vars(q) for q in ref]
        assert same, f"{workers}-worker result differs from the serial one"
        rows.append((f"LocalCluster, {workers} worker{'s' if workers > 1 else ''}", workers, r["startup_s"],
                     r["exp_per_s"], r["task_s"]))
        if workers == 2:
            overhead = r["overhead_per_task_s"]

    print(f"standard design: Chen 2021 block protocol, {pop.mice} mice × {pop.sessions} sessions × {pop.trials} "
          f"trials = {pop.mice * pop.sessions * pop.trials:,} trials per experiment; {a.experiments} experiments in "
          f"tasks of 10 ({trials_per_task:,} trials per task); results identical on 1 and 2 workers to the serial run")
    print()
    print("| runner | workers | start-up (s) | experiments/s | median task (s, inside the worker) |")
    print("|---|---|---|---|---|")
    for name, _w, start, eps, tsk in rows:
        print(f"| {name} | {_w} | {'—' if np.isnan(start) else f'{start:.1f}'} | {eps:.2f} | {tsk:.2f} |")
    print()
    print(f"per task (10 experiments, in-process, median): {task_s:.2f} s = {per_trial * 1e6:.1f} µs per trial; "
          f"scheduler overhead per task ({a.noop_tasks} empty tasks, 2 workers): {overhead * 1e3:.2f} ms")
    # paper estimate for the sweep on 100 workers
    designs = [(n, s, m) for n in SWEEP_TRIALS for s in SWEEP_SESSIONS for m in SWEEP_MICE]
    trials_total = SWEEP_POPULATIONS * EXPERIMENTS_PER_DESIGN * sum(n * s * m for n, s, m in designs)
    tasks = SWEEP_POPULATIONS * len(designs) * EXPERIMENTS_PER_DESIGN // 10
    compute_s = trials_total * per_trial
    t100 = compute_s / 100 + tasks * overhead
    print(f"full sweep: {len(designs)} designs (trials {SWEEP_TRIALS} × sessions {SWEEP_SESSIONS} × mice "
          f"{SWEEP_MICE}) × {SWEEP_POPULATIONS} populations × {EXPERIMENTS_PER_DESIGN} experiments = "
          f"{trials_total / 1e9:.2f} × 10⁹ trials in {tasks:,} tasks: {compute_s / 3600:.1f} CPU-hours; on 100 "
          f"workers ≈ {compute_s / 100 / 60:.1f} min of compute + {tasks * overhead / 60:.1f} min of scheduler "
          f"overhead (serial in the scheduler) ≈ {t100 / 60:.0f} min, vs {compute_s / 2 / 3600:.1f} h on this "
          "machine's 2 workers")


if __name__ == "__main__":
    main()
