"""SAC learns: Pendulum-v1 from vectors within 10,000 env steps (the issue's bar: -200)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from fastsac import SAC, ReplayBuffer, SACConfig, TrainConfig, train


def evaluate(agent: SAC, seed: int, episodes: int = 10) -> float:
    """Mean return of the deterministic policy, episode i reset with seed + 100 + i."""
    env = gym.make("Pendulum-v1")
    low, high = env.action_space.low, env.action_space.high
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + 100 + i)
        total, done = 0.0, False
        while not done:
            a = agent.act(obs.astype(np.float32), deterministic=True)
            obs, r, terminated, truncated, _ = env.step(low + (a + 1) * 0.5 * (high - low))
            total += float(r)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def test_pendulum_reaches_minus_200_within_10k_steps():
    seed, steps, starts = 0, 10_000, 500
    torch.manual_seed(seed)
    env = gym.make("Pendulum-v1")
    env.action_space.seed(seed)
    low, high = env.action_space.low, env.action_space.high
    agent = SAC((3,), (1,), SACConfig())
    buf = ReplayBuffer(steps, (3,), (1,), seed=seed)
    obs, _ = env.reset(seed=seed)
    history = {}
    for t in range(1, steps + 1):
        if t <= starts:  # warm-up from the env's action space, mapped to [-1, 1]
            env_action = env.action_space.sample()
            action = (env_action - low) / (high - low) * 2 - 1
        else:
            action = agent.act(obs.astype(np.float32))
            env_action = low + (action + 1) * 0.5 * (high - low)
        next_obs, reward, terminated, truncated, _ = env.step(env_action)
        buf.add(obs, action, reward, next_obs, terminated, truncated)
        obs = next_obs if not (terminated or truncated) else env.reset()[0]
        if t > starts:
            agent.update(buf.sample(256))
        if t % 2000 == 0:
            history[t] = evaluate(agent, seed)
            if history[t] >= -200:
                break
    assert max(history.values()) >= -200, history  # a random policy scores about -1200


def test_pendulum_with_two_ray_workers_reaches_minus_200_within_10k_steps(tmp_path):
    """The default run (fastsac train) with its env steps from two Ray workers instead."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    result = train(TrainConfig(workers=2, run_dir=str(tmp_path / "run"), device="cpu",
                               progress=False))
    assert max(result.eval_returns) >= 10_000
    assert max(result.eval_returns.values()) >= -200, result.eval_returns
