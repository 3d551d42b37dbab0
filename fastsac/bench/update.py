"""``fastsac bench update``: fastsac's SAC update and ``act`` next to :class:`SeedStyleSAC`, at
HalfCheetah shapes (obs 17, action 6), hidden (256, 256), batch 256.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from fastsac.bench._util import interleaved, log, median, row, spread, without_jit_notice
from fastsac.bench.seed_style import SeedStyleBuffer, SeedStyleSAC
from fastsac.buffers import ReplayBuffer
from fastsac.config import SACConfig
from fastsac.sac import SAC

OBS, ACT, BATCH, CAPACITY = 17, 6, 256, 100_000
FLOP_PER_UPDATE = 0.66e9  # forward and backward passes of one update at these sizes


def buffers(steps: int, seed: int = 0, device: str | torch.device = "cpu"
            ) -> tuple[ReplayBuffer, SeedStyleBuffer]:
    """fastsac's and the seed-style buffer, holding the same ``steps`` random steps."""
    rng = np.random.default_rng(seed)
    fast = ReplayBuffer(CAPACITY, (OBS,), (ACT,), seed=seed, device=device)
    slow = SeedStyleBuffer(OBS, ACT, CAPACITY)
    obs = rng.standard_normal((steps + 1, OBS)).astype(np.float32)
    act = rng.uniform(-1, 1, (steps, ACT)).astype(np.float32)
    rew = rng.standard_normal(steps).astype(np.float32)
    for t in range(steps):
        end = t % 1000 == 999
        fast.add(obs[t], act[t], rew[t], obs[t + 1], False, end)
        slow.store(obs[t], act[t], rew[t], obs[t + 1], False)
    return fast, slow


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    blocks, calls = (3, 5) if quick else (15, 20)
    fast_buf, seed_buf = buffers(2_000 if quick else 10_000)
    with without_jit_notice():
        agent = SAC((OBS,), (ACT,), SACConfig(compile="jit"))
        eager = SAC((OBS,), (ACT,), SACConfig(compile="none"))
    compiled = SAC((OBS,), (ACT,), SACConfig(compile="torch"))
    log("update: compiling the update (compile='torch')")
    t0 = time.perf_counter()
    compiled.update(fast_buf.sample(BATCH))
    compile_s = time.perf_counter() - t0
    seed = SeedStyleSAC(OBS, ACT)

    log("update: timing one update (sample + update)")
    t = interleaved({"fastsac": lambda: agent.update(fast_buf.sample(BATCH)),
                     "eager": lambda: eager.update(fast_buf.sample(BATCH)),
                     "torch": lambda: compiled.update(fast_buf.sample(BATCH)),
                     "seed": lambda: seed.learn(seed_buf.sample(BATCH))},
                    calls=calls, blocks=blocks)
    ups = {k: 1 / median(v) for k, v in t.items()}
    rows = [row("SAC update/s (sample + update, batch 256)", "1/s", ups["fastsac"], ups["seed"],
                lower_is_better=False, target=1.5 * ups["seed"], target_text=">= 1.5x seed",
                fastsac_iqr=spread([1 / x for x in t["fastsac"]]),
                note=f"TorchScript networks; compile='none' (eager): {ups['eager']:.0f}/s; "
                     f"compile='torch': {ups['torch']:.0f}/s, after a first update of "
                     f"{compile_s:.1f} s (compiling). At {FLOP_PER_UPDATE / 1e9:.2f} GFLOP per "
                     f"update that is {ups['fastsac'] * FLOP_PER_UPDATE / 1e9:.0f} GFLOP/s")]

    log("update: timing act() on one observation")
    obs = np.random.default_rng(1).standard_normal(OBS).astype(np.float32)
    t = interleaved({"fastsac": lambda: agent.act(obs), "seed": lambda: seed.act(obs)},
                    calls=200 if not quick else 20, blocks=blocks)
    us = 1e6
    rows.append(row("act() latency, one observation", "us", median(t["fastsac"]) * us,
                    median(t["seed"]) * us, lower_is_better=True, target=40.0,
                    note="stochastic action, numpy in, numpy out"))
    return rows
