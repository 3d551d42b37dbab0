"""fastsac's replay buffer inside stable-baselines3 (the ``sb3`` extra).

```python
from stable_baselines3 import SAC
from fastsac.sb3 import ReplayBuffer      # or NStepReplayBuffer
model = SAC("MlpPolicy", env, replay_buffer_class=ReplayBuffer)
```

An adapter with SB3's ``ReplayBuffer`` interface backed by the C++ core in episode storage:
each observation is stored once (SB3's buffer stores ``obs`` and ``next_obs``), and a
time-limit truncation (``infos[i]["TimeLimit.truncated"]``) bootstraps while a termination
does not, which SB3's ``optimize_memory_usage`` cannot do (SB3 issue #934). The next
observation SB3 passes for a finished env (its terminal observation) is stored as the episode's
final frame; the reset observation that follows starts the next episode.

Differences from SB3's own buffers, by design:
- ``buffer_size`` counts slots: an episode of T steps takes T + 1 (its final observation), so
  a full buffer holds a little fewer steps than SB3's.
- ``NStepReplayBuffer`` samples complete n-step windows only: the newest n - 1 steps of a
  running episode wait for their window (SB3's cuts them short at the newest step).
- With ``VecNormalize``, observations are normalised as SB3 does; the n-step reward sum is
  normalised as one reward (SB3 normalises each reward, then sums: the same unless the
  normalised rewards are clipped).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.buffers import ReplayBuffer as _SB3ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from fastsac.buffers import ReplayBuffer as _ReplayBuffer


class ReplayBuffer(_SB3ReplayBuffer):
    """SB3's ``ReplayBuffer`` interface over :class:`fastsac.ReplayBuffer` (a subclass of SB3's,
    since SB3 checks that, without its arrays).

    SB3 passes its constructor arguments; the rest come through ``replay_buffer_kwargs``:
    ``n_step`` and ``gamma`` (n-step returns: give the model's gamma; ``NStepReplayBuffer``
    takes SB3's ``n_steps``),
    ``frame_stack`` (observations from ``VecFrameStack(env, frame_stack)``, stacked along
    their first axis, as SB3 has them channels-first: only the newest frame of each is stored,
    and sampled stacks are exactly VecFrameStack's, zero frames included), ``seed`` (of the
    sampling RNG) and ``path`` (keep the slots in a file, see ``fastsac.ReplayBuffer``).
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Space,
                 action_space: spaces.Space, device: torch.device | str = "auto",
                 n_envs: int = 1, optimize_memory_usage: bool = False,
                 handle_timeout_termination: bool = True, *, n_step: int = 1,
                 gamma: float = 0.99, frame_stack: int = 1, seed: int | None = None,
                 path: str | None = None):
        # SB3's ReplayBuffer.__init__ would allocate its arrays: only the base's runs.
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device,
                            n_envs=n_envs)
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(f"observation_space must be a Box (fastsac stores arrays), got "
                            f"{observation_space}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1] (SB3's dones are read from the "
                             f"discount), got {gamma}")
        if optimize_memory_usage:
            raise ValueError("optimize_memory_usage: fastsac's buffer stores each observation "
                             "once already; leave it False")
        self.buffer_size = max(buffer_size // n_envs, 2)  # per env, as SB3 counts
        self.handle_timeout_termination = handle_timeout_termination
        self.optimize_memory_usage = False
        self._action_dtype = np.float32 if action_space.dtype == np.float64 \
            else action_space.dtype
        if frame_stack < 1 or self.obs_shape[0] % frame_stack:
            raise ValueError(f"frame_stack {frame_stack} must divide the first axis of the "
                             f"observations {self.obs_shape} (stacked along it)")
        # VecFrameStack observations: only the newest frame is stored, and the core rebuilds
        # the stacks, with zero frames before an episode's start as VecFrameStack has.
        self._frame = self.obs_shape[0] // frame_stack
        self._kwargs = dict(
            capacity=self.buffer_size * n_envs,
            obs_shape=(self._frame, *self.obs_shape[1:]), action_shape=(self.action_dim,),
            obs_dtype=observation_space.dtype, num_envs=n_envs, frame_stack=frame_stack,
            n_step=n_step, gamma=gamma, device=self.device, seed=seed, path=path,
            stack_pad="zeros" if frame_stack > 1 else "first")
        self.buffer = _ReplayBuffer(**self._kwargs)
        self._adds = 0

    # -- SB3's interface ------------------------------------------------------------------
    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray,
            reward: np.ndarray, done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        done = np.asarray(done, dtype=bool).reshape(self.n_envs)
        truncated = np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos])
        if not self.handle_timeout_termination:
            truncated[:] = False  # SB3's meaning: every done is a termination
        truncated &= done
        newest = slice(self.obs_shape[0] - self._frame, None)  # the newest frame of a stack
        self.buffer.add(np.asarray(obs).reshape(self.n_envs, *self.obs_shape)[:, newest],
                        np.asarray(action, dtype=np.float32).reshape(self.n_envs, -1),
                        np.asarray(reward, dtype=np.float32).reshape(self.n_envs),
                        np.asarray(next_obs).reshape(self.n_envs, *self.obs_shape)[:, newest],
                        done & ~truncated, truncated)
        self._adds += 1
        self.pos = self._adds % self.buffer_size
        self.full = self._adds >= self.buffer_size

    def size(self) -> int:
        return self.buffer_size if self.full else self.pos

    def reset(self) -> None:
        super().reset()
        self._adds = 0
        self.buffer.close()
        self.buffer = _ReplayBuffer(**self._kwargs)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        available = self.buffer.num_sampleable
        if 0 < available < batch_size:
            # SB3 samples with replacement from however few steps it holds (its SAC learns
            # from step 100 with batches of 256): draw in parts of a power of two within
            # what there is, so that only a few part sizes (each with its staging) occur.
            part = 1 << (available.bit_length() - 1)
            parts = [self.buffer.sample(part).clone() for _ in range(-(-batch_size // part))]
            batch = type(parts[0])(*(torch.cat(f)[:batch_size] for f in zip(*parts)))
        else:
            batch = self.buffer.sample(batch_size)
            if batch.obs.device.type == "cpu":
                batch = batch.clone()  # a CPU batch is a view the next sample overwrites
        batch = type(batch)(*(t.to(self.device) for t in batch))  # a no-op on its device
        obs, next_obs, reward = batch.obs, batch.next_obs, batch.reward
        if env is not None:  # SB3's hooks work on numpy arrays
            obs = self.to_torch(self._normalize_obs(obs.cpu().numpy(), env))
            next_obs = self.to_torch(self._normalize_obs(next_obs.cpu().numpy(), env))
            reward = self.to_torch(self._normalize_reward(reward.cpu().numpy(), env))
        action = batch.action if self._action_dtype == np.float32 \
            else batch.action.to(torch.from_numpy(np.zeros(0, self._action_dtype)).dtype)
        discount = batch.discount.reshape(-1, 1)
        # A terminated window has discount 0; SB3 reads that as done.
        dones = (discount == 0).to(torch.float32)
        n_step = self.buffer.n_step > 1
        return ReplayBufferSamples(
            observations=obs, actions=action, next_observations=next_obs, dones=dones,
            rewards=reward.reshape(-1, 1).to(torch.float32),
            discounts=torch.where(dones > 0, torch.ones_like(discount), discount)
            if n_step else None)

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None):
        raise NotImplementedError("fastsac's buffer draws its own indices: call sample()")


class NStepReplayBuffer(ReplayBuffer):
    """SB3's ``NStepReplayBuffer`` interface (``n_steps``, ``gamma``) over fastsac's buffer."""

    def __init__(self, *args, n_steps: int = 3, gamma: float = 0.99, **kwargs):
        kwargs.pop("n_step", None)
        super().__init__(*args, n_step=n_steps, gamma=gamma, **kwargs)
        self.n_steps = n_steps
        self.gamma = gamma
