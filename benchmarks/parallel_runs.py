"""Runs that share a machine: `fastsac train` steps/s alone and with as many runs at once as
there are cores, each with torch's default threads (one per core) and with `--num-threads` 1.

    python benchmarks/parallel_runs.py [--rounds 2] [--steps 3000]

Pendulum-v1, hidden (256, 256), batch 256, one update per step: the update is most of a step.
Prints the median of each run's perf/steps_per_s rows after learning starts, per setting and
round (the settings take turns, so drifts of the machine hit them alike). Run it alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from fastsac._runlog import read_metrics

STARTS = 1_000


def steps_per_s(run_dir: Path) -> float:
    rows = read_metrics(run_dir / "metrics.csv")["perf/steps_per_s"]
    return float(np.median([v for step, v in rows if step > STARTS]))


def run_at_once(n: int, threads: int, steps: int, tmp: Path) -> list[float]:
    """``n`` runs started together (in a fresh directory of ``tmp``); each one's steps/s
    after learning starts."""
    tmp = Path(tempfile.mkdtemp(dir=tmp))
    dirs = [tmp / f"run-{i}" for i in range(n)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "fastsac", "train", "--env", "Pendulum-v1", "--seed", str(i),
         "--total-steps", str(steps), "--learning-starts", str(STARTS), "--eval-every", "0",
         "--checkpoint-every", "0", "--log-every", "250", "--no-progress", "--device", "cpu",
         "--num-threads", str(threads), "--run-dir", str(d)], cwd=tmp,
        stdout=subprocess.DEVNULL) for i, d in enumerate(dirs)]
    if any(p.wait() for p in procs):
        raise SystemExit("a fastsac train run failed")
    return [steps_per_s(d) for d in dirs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3_000)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    settings = [(1, 0), (cores, 0), (cores, 1), (1, 1)]  # (runs at once, num_threads)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n, threads in settings:
                rates = run_at_once(n, threads, args.steps, Path(tmp))
                print(f"round {r}: {n} run(s) at once, num_threads {threads}: steps/s each "
                      + ", ".join(f"{x:.1f}" for x in rates) + f"; together {sum(rates):.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
