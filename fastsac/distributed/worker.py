"""The env worker: a Ray actor (see ``pool.py``) that steps a gymnasium vector env with a CPU
copy of the actor and returns chunks of consecutive steps of its env streams."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from fastsac.config import TrainConfig
from fastsac.runner import EnvRunner, make_vector_env
from fastsac.sac import SAC


class EnvWorker:
    """Steps ``config.envs_per_worker`` envs, which are the buffer's env streams ``streams``.

    It acts uniformly at random until it is given weights, then with its copy of the actor
    (sampled actions, as the learner's loop acts). Each ``collect`` returns a chunk: the
    ``add_chunk`` arguments, each of leading axes (chunk_steps, envs), and what the learner
    needs to know about them.
    """

    def __init__(self, config: dict, streams: list[int]):
        torch.set_num_threads(1)  # one core per worker, as the pool reserves
        self.config = c = TrainConfig.from_dict(config)
        self.streams = list(streams)
        envs = make_vector_env(c.env, len(self.streams), c.pixels, c.image_size, c.full_render)
        space, act_space = envs.single_observation_space, envs.single_action_space
        self.obs_dtype = np.uint8 if space.dtype == np.uint8 and len(space.shape) == 3 \
            else np.float32
        self.runner = EnvRunner(envs, c.seed, self.streams, c.frame_stack, self.obs_dtype)
        self.low = act_space.low.astype(np.float64)
        self.half_range = (act_space.high.astype(np.float64) - self.low) / 2
        stacked = (space.shape[0] * c.frame_stack, *space.shape[1:])
        sac = dataclasses.replace(c.sac, compile="none", cuda_graph=False)
        self.policy = SAC(stacked, act_space.shape, sac, "cpu")
        self.version: int | None = None  # the learner's update count of the weights held
        self.rng = np.random.default_rng()

    def start(self, episodes: list[int], restart: int) -> None:
        """Reset every env to the episode after ``episodes[i]``; ``restart`` (how often this
        worker was started) seeds the random actions and the policy's noise."""
        seed = [self.config.seed, self.streams[0], restart]
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        self.runner.episodes = list(episodes)
        self.runner.start(next_episode=True)

    def _load(self, weights: list) -> None:
        """``weights``: [] or [version, ObjectRef of the weights] (the ref is not resolved by
        Ray when it is inside a list, so unchanged weights are not fetched again)."""
        if not weights or weights[0] == self.version:
            return
        import ray

        state = ray.get(weights[1])
        for name, module_state in state.items():
            self.policy.modules[name].load_state_dict(module_state)
        self.version = weights[0]

    def collect(self, weights: list, steps: int, started=None) -> dict:
        """``started``: the result of ``start`` (Ray passes its error on instead)."""
        self._load(weights)
        t0 = time.perf_counter()
        runner, n = self.runner, len(self.streams)
        frame_shape = runner.frame.shape[1:]
        chunk = dict(obs=np.empty((steps, n, *frame_shape), self.obs_dtype),
                     action=np.empty((steps, n, *self.half_range.shape), np.float32),
                     reward=np.empty((steps, n), np.float32),
                     next_obs=np.empty((steps, n, *frame_shape), self.obs_dtype),
                     terminated=np.empty((steps, n), bool), truncated=np.empty((steps, n), bool))
        returns: list[float] = []
        for t in range(steps):
            if self.version is None:
                action = self.rng.uniform(-1, 1, chunk["action"].shape[1:]).astype(np.float32)
            else:
                action = self.policy.act(runner.policy_obs)
            next_frame, reward, terminated, truncated = runner.step(
                self.low + (action.astype(np.float64) + 1.0) * self.half_range)
            chunk["obs"][t] = runner.frame
            chunk["next_obs"][t] = next_frame
            chunk["action"][t] = action
            chunk["reward"][t] = reward
            chunk["terminated"][t] = terminated
            chunk["truncated"][t] = truncated
            returns += runner.advance(next_frame, reward, terminated, truncated)
        return dict(chunk, streams=self.streams, returns=returns, version=self.version,
                    episodes=list(runner.episodes), seconds=time.perf_counter() - t0)

    def close(self) -> None:
        self.runner.close()
