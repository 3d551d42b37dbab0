"""A vector task whose observations name their episode and step, for the env worker tests:
obs = [reset seed mod 2^24, reset seed div 2^24 mod 2^24, t] (exact in float32).

Importing this module registers ``Counting-v0`` and ``CountingCrash-v0``; Ray workers import it
through the id ``counting_env:Counting-v0`` (gymnasium imports the module before the id).
``CountingCrash-v0`` raises once in its third step, in whichever process first gets there
without finding the file named by ``COUNTING_CRASH_FILE`` (it then writes that file).
"""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np

MAX_LENGTH = 8


def seed_code(seed: int) -> tuple[float, float]:
    return float(seed % 2**24), float((seed >> 24) % 2**24)


class CountingEnv(gym.Env):
    """Episodes of 1 to MAX_LENGTH steps, ending terminated or truncated at random; the
    reward is the action."""

    def __init__(self, crash: bool = False):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.crash = crash
        self.code = (0.0, 0.0)
        self.t, self.length = 0, 1

    def _obs(self) -> np.ndarray:
        return np.array([*self.code, self.t], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.code = seed_code(seed if seed is not None else -1)
        self.t, self.length = 0, int(self.np_random.integers(1, MAX_LENGTH + 1))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        if self.crash and self.t == 3:
            marker = Path(os.environ["COUNTING_CRASH_FILE"])
            if not marker.exists():
                marker.write_text("crashed\n")
                raise RuntimeError("CountingCrash-v0: the env broke")
        end = self.t >= self.length
        terminated = end and bool(self.np_random.random() < 0.5)
        return self._obs(), float(np.asarray(action).reshape(-1)[0]), terminated, \
            end and not terminated, {}


for _id, _kwargs in (("Counting-v0", {}), ("CountingCrash-v0", {"crash": True})):
    if _id not in gym.registry:
        gym.register(_id, entry_point=CountingEnv, kwargs=_kwargs)
