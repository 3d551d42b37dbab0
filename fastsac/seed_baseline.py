"""The seed's replay buffer, re-implemented as the baseline for ``fastsac bench``.

This is the buffer of the seed tutorial (``seed/000_d3a1e1ed7310a303.txt``, section 19.2),
kept as it is, defects included, so that every speed and memory number of fastsac is a ratio
against it measured in the same run:

- five arrays ``s, a, r, s_prime, done`` in a ring (``ptr``, ``size``); ``s``/``s_prime``
  float32 (the seed's code), ``a``/``r`` float32, ``done`` uint8;
- ``store()`` writes one transition per call;
- ``sample()`` draws indices with ``np.random.randint`` (the global numpy RNG) and builds five
  new ``torch.FloatTensor`` per batch from fancy-indexed copies, so images come out as float32
  whatever they are stored as (the seed's learner feeds them to float networks).

The only addition is ``obs_dtype`` (default float32, the seed's choice), so that the uint8
layout the tutorial recommends in prose can be measured too. For images the seed stores
observations already frame-stacked (84 x 84 x 9 per ``s`` and per ``s_prime``), so
``state_dim`` is the stacked shape.
"""

from __future__ import annotations

import numpy as np
import torch


class ReplayBuffer:
    """Ring buffer of transitions ``(s, a, r, s_prime, done)``, as in the seed."""

    def __init__(self, state_dim, action_dim, max_size, obs_dtype=np.float32):
        if np.isscalar(state_dim):
            state_dim = (state_dim,)
        if np.isscalar(action_dim):
            action_dim = (action_dim,)

        self.s = np.zeros((max_size, *state_dim), dtype=obs_dtype)
        self.a = np.zeros((max_size, *action_dim), dtype=np.float32)
        self.r = np.zeros((max_size, 1), dtype=np.float32)
        self.s_prime = np.zeros((max_size, *state_dim), dtype=obs_dtype)
        self.done = np.zeros((max_size, 1), dtype=np.uint8)

        self.ptr = 0
        self.size = 0
        self.max_size = max_size

    def __getitem__(self, idx):
        return (
            self.s[idx],
            self.a[idx],
            self.r[idx],
            self.s_prime[idx],
            self.done[idx],
        )

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes of the five arrays (allocated for ``max_size`` transitions)."""
        arrays = (self.s, self.a, self.r, self.s_prime, self.done)
        return sum(x.nbytes for x in arrays)

    def sample(self, batch_size):
        idx = np.random.randint(0, self.size, size=batch_size)

        return (
            torch.FloatTensor(self.s[idx]),
            torch.FloatTensor(self.a[idx]),
            torch.FloatTensor(self.r[idx]),
            torch.FloatTensor(self.s_prime[idx]),
            torch.FloatTensor(self.done[idx]),
        )

    def store(self, s, a, r, s_prime, done):
        self.s[self.ptr] = s
        self.a[self.ptr] = a
        self.r[self.ptr] = r
        self.s_prime[self.ptr] = s_prime
        self.done[self.ptr] = done

        self.ptr = (self.ptr + 1) % self.max_size
        self.size = min(self.size + 1, self.max_size)


# The name used by fastsac.bench and the pytest benchmarks.
SeedReplayBuffer = ReplayBuffer
