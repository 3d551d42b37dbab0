"""``fastsac bench train``: end-to-end training on HalfCheetah-v5 (MuJoCo).

- Vector: one env, hidden (256, 256), batch 256, one update per env step, after learning
  starts. fastsac's own training loop (``Trainer.train_step``, what ``fastsac train``
  repeats) next to a seed-style loop built from the seed-style buffer and
  learner (act, env step, store, sample, learn), in alternating blocks.
- Pixels: 84x84 RGB, frame stack 3, batch 256: env steps/s and where the time goes.
- Rendering: an 84x84 frame as fastsac renders it (no shadows, reflections or multisampling)
  and with MuJoCo's defaults.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gymnasium as gym
import torch

from fastsac.bench._util import (block, compiled_eagerly, interleaved, log, median, row,
                                 without_jit_notice)
from fastsac.bench.seed_style import SeedStyleBuffer, SeedStyleSAC
from fastsac.config import SACConfig, TrainConfig
from fastsac.trainer import Trainer

ENV = "HalfCheetah-v5"
SEED_1M_SECONDS = 1 * 3600 + 53 * 60 + 40  # the tutorial's reported 1M-step run: 1:53:40


def _trainer(run_dir: Path, device: str = "cpu", **kw) -> Trainer:
    cfg = TrainConfig(env=ENV, progress=False, eval_episodes=0, checkpoint_every=0,
                      run_dir=str(run_dir), device=device, **kw)
    with without_jit_notice():
        trainer = Trainer(cfg, run_dir)
    trainer.start()
    return trainer


class SeedLoop:
    """The tutorial's training step: act, env step, store, then one learn call on a batch."""

    def __init__(self, batch_size: int, learning_starts: int, device: str = "cpu"):
        self.env = gym.make(ENV)
        self.obs, _ = self.env.reset(seed=0)
        dims = self.env.observation_space.shape[0], self.env.action_space.shape[0]
        self.buffer = SeedStyleBuffer(*dims, 1_000_000)
        self.agent = SeedStyleSAC(*dims, device=device)
        self.batch_size = batch_size
        for _ in range(learning_starts):
            self.step(self.env.action_space.sample(), learn=False)

    def step(self, action=None, learn: bool = True) -> None:
        if action is None:
            action = self.agent.act(self.obs)
        next_obs, r, terminated, truncated, _ = self.env.step(action)
        self.buffer.store(self.obs, action, r, next_obs, terminated)
        self.obs = self.env.reset()[0] if terminated or truncated else next_obs
        if learn:
            self.agent.learn(self.buffer.sample(self.batch_size))


def loop_rates(tmp: Path, starts: int, blocks: int, calls: tuple[int, int],
               device: str = "cpu", sac: SACConfig = SACConfig(),
               variants: dict[str, dict] | None = None) -> dict:
    """Training steps/s after learning starts of fastsac's loop (``Trainer.train_step``, what
    ``fastsac train`` repeats) and of the seed-style loop, one env each, timed in turn in
    blocks of ``calls`` steps (fastsac's, seed-style's); and under "split", fastsac's seconds
    per step in each of its timers (act, env, buffer, update) over those blocks; under
    "compile_failed", the loops whose ``compile="torch"`` fell back to the eager update.

    ``variants``: more fastsac loops timed in the same turns, name -> TrainConfig options
    (``sac`` included).
    """
    loops = {"fastsac": {}, **(variants or {})}
    trainers, steps = {}, {}
    seed = None
    try:
        for name, options in loops.items():
            torch.manual_seed(0)
            tr = trainers[name] = _trainer(tmp / name, device=device, learning_starts=starts,
                                           **{"sac": sac, **options})
            while tr.step < starts:
                tr.env_step()
            steps[name] = tr.train_step
            for _ in range(20):  # the first updates compile (and capture a CUDA graph)
                steps[name]()
        seed = SeedLoop(256, starts, device=device)
        log(f"train: timing {blocks} blocks of training steps on {device}, {ENV} "
            f"({', '.join(loops)}, seed)")
        fast = trainers["fastsac"]
        before, step0 = dict(fast.timers), fast.step
        t = interleaved({**{k: block(f, calls[0], device) for k, f in steps.items()},
                         "seed": block(seed.step, calls[1], device)}, calls=1, blocks=blocks)
        split = {k: (fast.timers[k] - before[k]) / (fast.step - step0) for k in before}
        eager = [k for k, tr in trainers.items() if compiled_eagerly(tr.agent)]
    finally:
        for tr in trainers.values():
            tr.close()
        if seed is not None:
            seed.env.close()
    return {**{k: calls[0] / median(t[k]) for k in loops},
            "seed": calls[1] / median(t["seed"]), "split": split, "compile_failed": eager}


def _vector_rows(quick: bool, tmp: Path) -> list[dict]:
    starts, blocks, calls = (300, 3, 5) if quick else (2_000, 10, 40)
    sps = loop_rates(tmp / "vector", starts, blocks, (calls, calls))
    hours = 1e6 / sps["fastsac"] / 3600
    return [
        row(f"training steps/s, {ENV}, after learning starts", "1/s", sps["fastsac"],
            sps["seed"], lower_is_better=False, target=1.5 * sps["seed"],
            target_text=">= 1.5x seed",
            note="act + env step + store + sample + update, one env, 256x256, batch 256. "
                 f"1M steps at this rate: {hours:.2f} h (fastsac), "
                 f"{1e6 / sps['seed'] / 3600:.2f} h (seed-style, this machine); the tutorial "
                 f"reported {SEED_1M_SECONDS / 3600:.2f} h on its machine")]


def _pixel_rows(quick: bool, tmp: Path) -> list[dict]:
    starts, steps, batch = (20, 2, 16) if quick else (300, 8, 256)
    torch.manual_seed(0)
    px = _trainer(tmp / "pixels", pixels=True, frame_stack=3, learning_starts=starts,
                  batch_size=batch, buffer_size=10_000)
    while px.step < starts:
        px.env_step()
    px.train_step()  # the first update compiles
    renders = [e.render_seconds for e in px.runner.envs.envs]
    before = dict(px.timers)
    log(f"train: timing {steps} pixel training steps (batch {batch})")
    t0 = time.perf_counter()
    for _ in range(steps):
        px.train_step()
    elapsed = time.perf_counter() - t0
    spent = {k: (px.timers[k] - before[k]) / steps for k in before}
    render = (sum(e.render_seconds for e in px.runner.envs.envs) - sum(renders)) / steps
    px.close()
    ms = 1e3
    split = (f"per step: update {spent['update'] * ms:.0f} ms, render {render * ms:.1f} ms, "
             f"rest of env step {(spent['env'] - render) * ms:.1f} ms, act "
             f"{spent['act'] * ms:.1f} ms, store {spent['buffer'] * ms:.2f} ms")
    return [row(f"pixel training steps/s, {ENV} 84x84 RGB, stack 3, batch {batch}", "1/s",
                steps / elapsed, None, lower_is_better=False, note=split)]


def _encoder_rows(quick: bool) -> list[dict]:
    """The pixel update's main cost, the encoder's forward + backward, in fastsac's
    channels-last layout and in the NCHW layout of plain PyTorch code."""
    from fastsac.networks import Encoder

    batch, blocks = (8, 2) if quick else (256, 3)
    torch.manual_seed(0)
    obs = torch.randint(0, 256, (batch, 9, 84, 84), dtype=torch.uint8)
    nets = {"fastsac": Encoder((9, 84, 84)).to(memory_format=torch.channels_last),
            "seed": Encoder((9, 84, 84))}
    nchw = nets["seed"]
    nchw.forward = lambda o: nchw.head(nchw.convs(o.float() / 255.0 - 0.5).flatten(1))

    def fwd_bwd(net):
        return lambda: net(obs).sum().backward()
    log(f"train: timing the encoder, channels-last vs NCHW (batch {batch})")
    t = interleaved({k: fwd_bwd(n) for k, n in nets.items()}, calls=1, blocks=blocks, warmup=1)
    return [row(f"pixel encoder forward + backward, batch {batch} x 9x84x84", "ms",
                median(t["fastsac"]) * 1e3, median(t["seed"]) * 1e3, lower_is_better=True,
                note="fastsac: channels-last activations and weights; seed-style: NCHW")]


def _render_rows(quick: bool) -> list[dict]:
    from fastsac.envs import make_env

    frames, blocks = (3, 2) if quick else (20, 5)
    envs = {name: make_env(ENV, pixels=True, full_render=full)
            for name, full in (("fastsac", False), ("seed", True))}
    for env in envs.values():
        env.reset(seed=0)
    log("train: timing renders, fast and full")
    t = interleaved({k: e.unwrapped.render for k, e in envs.items()}, calls=frames,
                    blocks=blocks)
    for env in envs.values():
        env.close()
    return [row("render one 84x84 frame: fastsac's vs MuJoCo's default quality", "ms",
                median(t["fastsac"]) * 1e3, median(t["seed"]) * 1e3, lower_is_better=True,
                note="fastsac: shadows, reflections and multisampling off; Mesa software "
                     "rendering through EGL (MUJOCO_GL=egl)")]


def run(quick: bool = False) -> list[dict]:
    try:
        import mujoco  # noqa: F401
    except ImportError as exc:
        raise SystemExit("fastsac bench train needs MuJoCo: pip install 'fastsac[mujoco]'") \
            from exc
    with tempfile.TemporaryDirectory(prefix="fastsac-bench-") as tmp:
        rows = _vector_rows(quick, Path(tmp))
        rows += _pixel_rows(quick, Path(tmp))
    rows += _encoder_rows(quick)
    rows += _render_rows(quick)
    return rows

