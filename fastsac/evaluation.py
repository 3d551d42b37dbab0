"""The evaluation protocol, and evaluating a saved run (``fastsac evaluate``).

Episodes of the deterministic (mean) action on an env of their own, episode i reset with seed
``seed + 100 + i``: what ``fastsac train`` logs as ``eval/return``, and what ``fastsac
evaluate`` reproduces from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from fastsac._checkpoint import Checkpoints
from fastsac.config import read_run_config
from fastsac.envs import FrameStack, make_env
from fastsac.sac import SAC


@dataclass
class Evaluation:
    returns: list[float]
    lengths: list[int]

    def summary(self) -> dict:
        r = np.asarray(self.returns)
        return dict(episodes=len(r), mean=float(r.mean()), std=float(r.std()),
                    min=float(r.min()), max=float(r.max()), returns=self.returns,
                    lengths=self.lengths, mean_length=float(np.mean(self.lengths)))


def run_episodes(agent: SAC, env: gym.Env, episodes: int, seed: int, frame_stack: int,
                 to_env: Callable[[np.ndarray], np.ndarray],
                 on_frame: Callable[[gym.Env], None] | None = None) -> Evaluation:
    """``episodes`` deterministic episodes, episode i reset with seed ``seed + 100 + i``.
    ``on_frame(env)`` is called after each reset and step (e.g. to record a video)."""
    space = env.observation_space
    obs_dtype = np.uint8 if space.dtype == np.uint8 and len(space.shape) == 3 else np.float32
    stack = FrameStack(1, space.shape, frame_stack, obs_dtype) if frame_stack > 1 else None
    returns, lengths = [], []
    for i in range(episodes):
        frame, _ = env.reset(seed=seed + 100 + i)
        if stack:
            stack.reset(0, frame)
        if on_frame:
            on_frame(env)
        total, steps, done = 0.0, 0, False
        while not done:
            obs = stack.obs[0] if stack else np.asarray(frame, obs_dtype)
            a = agent.act(obs, deterministic=True)
            frame, r, terminated, truncated, _ = env.step(to_env(a))
            if stack:
                stack.push(frame[None])
            if on_frame:
                on_frame(env)
            total += float(r)
            steps += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(steps)
    return Evaluation(returns, lengths)


def action_scaler(space: gym.spaces.Box) -> Callable[[np.ndarray], np.ndarray]:
    """An action in [-1, 1] rescaled to the env's bounds."""
    low = space.low.astype(np.float64)
    half = (space.high.astype(np.float64) - low) / 2
    return lambda a: low + (a + 1.0) * half


def load_run_agent(run_dir: str | os.PathLike, step: int | None = None,
                   device: str = "cpu") -> tuple[SAC, int]:
    """The agent of a run's checkpoint (``step``; None: the newest readable one) on
    ``device``, and its step. CUDA graphs are off off CUDA, so a GPU run loads on a CPU."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir).sac
    if torch.device(device).type != "cuda":
        config = dataclasses.replace(config, cuda_graph=False)
    ckpt = Checkpoints(run_dir / "checkpoints")
    state, step = ckpt.load_agent(step)
    agent = SAC(state["obs_shape"], state["action_shape"], config, device)
    agent.load_state_dict(state)
    return agent, step


def evaluate_run(run_dir: str | os.PathLike, *, step: int | None = None,
                 episodes: int | None = None, seed: int | None = None, device: str = "cpu",
                 on_frame=None) -> tuple[Evaluation, int]:
    """Evaluate a run's saved agent under the run's protocol (its env, frame stack, seed and
    episode count, unless given). Returns the evaluation and the checkpoint's step."""
    agent, step = load_run_agent(run_dir, step, device)
    return evaluate_agent(agent, read_run_config(run_dir), episodes, seed, on_frame), step


def evaluate_agent(agent: SAC, config, episodes: int | None = None, seed: int | None = None,
                   on_frame=None) -> Evaluation:
    """``agent`` under the protocol of a run's ``config`` (see ``evaluate_run``)."""
    env = make_env(config.env, config.pixels, config.image_size, config.full_render)
    try:
        return run_episodes(agent, env, episodes or config.eval_episodes or 10,
                            config.seed if seed is None else seed, config.frame_stack,
                            action_scaler(env.action_space), on_frame)
    finally:
        env.close()


def write_json(path: str | os.PathLike, summary: dict) -> None:
    Path(path).write_text(json.dumps(summary, indent=2) + "\n")
