"""Learning over several seeds (the tests run one): Pendulum-v1 (vector) and
fastsac/PointMass-v0 (pixels), with the settings the tests use.

    python benchmarks/learning.py [--seeds 0 1 2 3 4] [--out runs/learning]

Prints, per task and seed, the evaluation returns and the first step that met the bar.
Run it alone: two torch processes on two cores slow each other down many times over.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import fastsac
from fastsac import TrainConfig
from fastsac.envs import random_policy_return

TASKS = {  # name -> (config overrides, bar the evaluation return must reach)
    "Pendulum-v1": (dict(total_steps=10_000, learning_starts=1_000, eval_every=2_000), -200.0),
    "fastsac/PointMass-v0": (dict(total_steps=2_000, learning_starts=500, batch_size=64,
                                  eval_every=500), None),  # bar: half the random return
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    args = parser.parse_args()
    fastsac.tune_process()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for env_id, (overrides, task_bar) in TASKS.items():
            for seed in args.seeds:
                bar = task_bar if task_bar is not None else 0.5 * random_policy_return(env_id, seed)
                t0 = time.perf_counter()
                r = fastsac.train(TrainConfig(env=env_id, seed=seed, progress=False,
                                              checkpoint_every=0,
                                              run_dir=f"{tmp}/{env_id}-{seed}".replace(
                                                  "fastsac/", ""), **overrides))
                met = [s for s, v in sorted(r.eval_returns.items()) if v >= bar]
                results.append(dict(env=env_id, seed=seed, bar=bar,
                                    seconds=time.perf_counter() - t0,
                                    first_step_at_bar=met[0] if met else None,
                                    eval_returns=r.eval_returns))
                print(f"{env_id:22s} seed {seed}: bar {bar:8.1f}  first met at "
                      f"{met[0] if met else 'never':>6}  returns "
                      + " ".join(f"{v:.0f}" for _, v in sorted(r.eval_returns.items()))
                      + f"  ({results[-1]['seconds']:.0f} s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for env_id in TASKS:
        rows = [x for x in results if x["env"] == env_id]
        finals = [x["eval_returns"][max(x["eval_returns"])] for x in rows]
        print(f"{env_id}: bar met by {sum(x['first_step_at_bar'] is not None for x in rows)}"
              f"/{len(rows)} seeds; final return median {np.median(finals):.1f}")


if __name__ == "__main__":
    main()
