"""Stepping a gymnasium vector env for the replay buffer: the training loop's envs and each env
worker's (``fastsac.distributed``) step the same way.

The vector env runs with autoreset disabled: a step that ends an episode yields its true final
observation, and only then are the finished envs reset, each episode of an env stream reset
with its own seed (``episode_seed(seed, stream, episode)``). So no stored transition joins two
episodes, and a stream's episodes depend only on the seed and the actions taken.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np

from fastsac.envs import FrameStack, episode_seed, make_env


def make_vector_env(env_id: str, num_envs: int, pixels: bool = False, image_size: int = 84,
                    full_render: bool = False, vector_env: str = "sync") -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``make_env(...)`` in a vector env with autoreset disabled."""
    fns = [lambda: make_env(env_id, pixels, image_size, full_render)] * num_envs
    disabled = gym.vector.AutoresetMode.DISABLED
    try:
        if vector_env == "async":
            # Subprocesses from a fresh server process, not forks of this one: a fork inherits
            # other threads' locks (a software GL renderer's, torch's) and hangs.
            return gym.vector.AsyncVectorEnv(fns, autoreset_mode=disabled, context="forkserver")
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=disabled)
    except gym.error.Error as exc:  # an unknown id, a missing extra: the env option's
        raise ValueError(f"env {env_id!r}: {exc}") from exc


class EnvRunner:
    """A vector env's envs as env streams, and what the policy sees of each.

    ``streams``: the buffer's stream index of each env (it seeds the env's episodes).
    ``episodes``: per env, the number of the episode it is in (-1 before the first).
    """

    def __init__(self, envs: gym.vector.VectorEnv, seed: int, streams: Sequence[int],
                 frame_stack: int, obs_dtype):
        self.envs = envs
        self.seed = seed
        self.streams = [int(s) for s in streams]
        n = len(self.streams)
        self.obs_dtype = np.dtype(obs_dtype)
        frame_shape = envs.single_observation_space.shape
        self.episodes = [-1] * n
        self.frame = np.zeros((n, *frame_shape), self.obs_dtype)
        self.stack = FrameStack(n, frame_shape, frame_stack, self.obs_dtype) \
            if frame_stack > 1 else None
        self.ep_return = np.zeros(n)

    def reset(self, mask: np.ndarray, next_episode: bool = True) -> None:
        """Reset the envs in ``mask``: to their next episode, or (resuming) to the start of the
        episode they were in."""
        for i in np.flatnonzero(mask):
            self.episodes[i] += next_episode
        seeds = [episode_seed(self.seed, s, self.episodes[i]) if m else None
                 for i, (s, m) in enumerate(zip(self.streams, mask))]
        obs, _ = self.envs.reset(seed=seeds, options={"reset_mask": mask})
        for i in np.flatnonzero(mask):
            self.frame[i] = obs[i]
            if self.stack:
                self.stack.reset(i, obs[i])
            self.ep_return[i] = 0.0

    def start(self, next_episode: bool = True) -> None:
        """Reset every env (see ``reset``)."""
        self.reset(np.ones(len(self.streams), bool), next_episode)

    @property
    def policy_obs(self) -> np.ndarray:
        """Each env's observation as the policy takes it (its frame stack, if stacking)."""
        return self.stack.obs if self.stack else self.frame

    def step(self, env_action: np.ndarray) -> tuple[np.ndarray, ...]:
        """Step every env: (next_frame, reward, terminated, truncated), to store with
        ``frame``; then call ``advance``."""
        next_frame, reward, terminated, truncated, _ = self.envs.step(env_action)
        return next_frame.astype(self.obs_dtype, copy=False), reward, terminated, truncated

    def advance(self, next_frame: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
                truncated: np.ndarray) -> list[float]:
        """Move on to ``next_frame`` and reset the envs whose episode ended; returns the
        returns of the episodes that ended."""
        self.frame = next_frame
        if self.stack:
            self.stack.push(next_frame)
        self.ep_return += reward
        done = terminated | truncated
        finished = [float(r) for r in self.ep_return[done]]
        if finished:
            self.reset(done)
        return finished

    def close(self) -> None:
        self.envs.close()
