"""The filled buffers the buffer and GPU benches time: fastsac's and the seed-style ones,
holding the same random episodes (vector: HalfCheetah's sizes; images: 3x84x84 frames, stacks
of 3)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from fastsac.bench._util import interleaved, log
from fastsac.bench.seed_style import SeedStyleBuffer
from fastsac.buffers import ReplayBuffer

BATCH = 256
EP_LEN = 1000  # steps per episode; the last step is truncated (a time limit)
VEC_OBS, ACTION = 17, 6  # HalfCheetah sizes
FRAME = (3, 84, 84)  # one RGB frame, channels first
STACK = 3
FRAME_BYTES = math.prod(FRAME)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big and how long: ``FULL`` is the documented benchmark, ``QUICK`` a smoke test."""

    vector_capacity: int
    """fastsac and seed-style vector buffers (the tutorial's 1,000,000)."""
    image_capacity: int
    """fastsac image buffer, in steps (the tutorial's 100,000)."""
    seed_image_capacity: int
    """Seed-style image buffers: its float32 layout cannot hold 100,000 stacks in RAM."""
    frame_pool: int
    """Distinct random frames the image episodes are cut from."""
    memcpy_bytes: int
    """Size of the plain copy that gives the reference bandwidth."""
    vector_blocks: int
    """Timed blocks of 100 ``sample`` calls per vector buffer."""
    image_blocks: int
    """Timed blocks per image buffer."""


FULL = Sizes(vector_capacity=1_000_000, image_capacity=100_000, seed_image_capacity=10_000,
             frame_pool=2048, memcpy_bytes=256 << 20, vector_blocks=200, image_blocks=30)
QUICK = Sizes(vector_capacity=3_003, image_capacity=2_002, seed_image_capacity=300,
              frame_pool=64, memcpy_bytes=16 << 20, vector_blocks=10, image_blocks=3)


# -- filling -------------------------------------------------------------------------------
def fill(fast: ReplayBuffer, fast_steps: int, seeds: dict[str, object], seed_steps: int,
         episode: Callable[[int, bool], tuple]) -> dict[str, list[float]]:
    """Add episodes of ``EP_LEN`` steps to ``fast`` and store the same steps in every
    seed-style buffer, alternating episode by episode; returns seconds per step of each timed
    block.

    ``episode(e, for_seed)`` gives ``(obs, seed_obs, action, reward)``: ``obs`` holds the
    episode's ``EP_LEN + 1`` observations as fastsac takes them, ``seed_obs`` the same as the
    seed-style buffers store them (stacked for images; ``None`` unless ``for_seed``).
    Preparing them is not timed: only ``add`` / ``store`` calls are.
    """
    times: dict[str, list[float]] = {"fastsac": [], **{k: [] for k in seeds}}
    done_fast = done_seed = e = 0
    while done_fast < fast_steps or done_seed < seed_steps:
        n_seed = min(EP_LEN, seed_steps - done_seed)
        obs, sobs, act, rew = episode(e, n_seed > 0)
        if done_fast < fast_steps:
            last = EP_LEN - 1
            t0 = time.perf_counter()
            for t in range(EP_LEN):
                fast.add(obs[t], act[t], rew[t], obs[t + 1], False, t == last)
            times["fastsac"].append((time.perf_counter() - t0) / EP_LEN)
            done_fast += EP_LEN
        if n_seed > 0:
            for name, buf in seeds.items():
                store = buf.store
                t0 = time.perf_counter()
                for t in range(n_seed):
                    store(sobs[t], act[t], rew[t], sobs[t + 1], 0)  # done = terminated only
                times[name].append((time.perf_counter() - t0) / n_seed)
            done_seed += n_seed
        e += 1
    return times


def episodes_to_fill(capacity: int) -> int:
    """Steps of whole episodes that write every slot of an episode-storage ring."""
    return -(-capacity // (EP_LEN + 1)) * EP_LEN


# -- vector --------------------------------------------------------------------------------
class VectorSetup:
    """Full 1M x 17 buffers (fastsac, episode storage; seed-style float32)."""

    def __init__(self, sizes: Sizes, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.sizes = sizes
        rng = np.random.default_rng(seed)
        self.fast = ReplayBuffer(sizes.vector_capacity, VEC_OBS, ACTION, seed=seed,
                                 device=device)
        self.seed = SeedStyleBuffer(VEC_OBS, ACTION, sizes.vector_capacity)

        def episode(e: int, for_seed: bool) -> tuple:
            obs = rng.standard_normal((EP_LEN + 1, VEC_OBS), dtype=np.float32)
            act = rng.uniform(-1, 1, (EP_LEN, ACTION)).astype(np.float32)
            rew = rng.standard_normal(EP_LEN, dtype=np.float32)
            return obs, obs, act, rew

        log(f"vector: filling fastsac and seed-style buffers ({sizes.vector_capacity:,} steps)")
        self.fill_times = fill(self.fast, episodes_to_fill(sizes.vector_capacity),
                               {"seed": self.seed}, sizes.vector_capacity, episode)
        log(f"vector: filled, fastsac len={len(self.fast):,}, seed size={self.seed.size:,}")


# -- images --------------------------------------------------------------------------------
class ImageSetup:
    """fastsac 3x84x84 uint8 frames, frame_stack 3, episode storage; seed-style pre-stacked
    9x84x84 float32 (its code) and uint8 (its advice) at a capacity that fits in RAM."""

    def __init__(self, sizes: Sizes, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.sizes = sizes
        rng = np.random.default_rng(seed)
        stacked = (STACK * FRAME[0], *FRAME[1:])
        self.fast = ReplayBuffer(sizes.image_capacity, FRAME, ACTION, obs_dtype=np.uint8,
                                 frame_stack=STACK, storage="episode", seed=seed, device=device)
        cap = sizes.seed_image_capacity
        self.seed = SeedStyleBuffer(stacked, ACTION, cap)  # float32, as in the tutorial
        self.seed_u8 = SeedStyleBuffer(stacked, ACTION, cap, obs_dtype=np.uint8)
        pool = rng.integers(0, 256, (sizes.frame_pool, *FRAME), dtype=np.uint8)
        back = np.arange(-(STACK - 1), 1)  # frame offsets of a stack, oldest first

        def episode(e: int, for_seed: bool) -> tuple:
            idx = (int(rng.integers(sizes.frame_pool)) + np.arange(EP_LEN + 1)) % sizes.frame_pool
            obs = pool[idx]
            sobs = None
            if for_seed:  # the tutorial's env wrapper stacks frames, repeating the first one
                t = np.maximum(np.arange(EP_LEN + 1)[:, None] + back, 0)
                sobs = pool[idx[t]].reshape(EP_LEN + 1, *stacked)
            act = rng.uniform(-1, 1, (EP_LEN, ACTION)).astype(np.float32)
            rew = rng.standard_normal(EP_LEN, dtype=np.float32)
            return obs, sobs, act, rew

        log(f"image: filling fastsac ({sizes.image_capacity:,} steps) and seed-style buffers "
            f"({sizes.seed_image_capacity:,} steps, float32 and uint8)")
        self.fill_times = fill(self.fast, episodes_to_fill(sizes.image_capacity),
                               {"seed": self.seed, "seed_u8": self.seed_u8},
                               sizes.seed_image_capacity, episode)
        gb = 1e9
        log(f"image: filled, fastsac len={len(self.fast):,} nbytes={self.fast.nbytes / gb:.2f} GB, "
            f"seed float32 {self.seed.nbytes / gb:.2f} GB, uint8 {self.seed_u8.nbytes / gb:.2f} GB")
        self.sample_times: dict[str, list[float]] | None = None

    def measure_sample(self, extra: dict[str, tuple[Callable[[], object], int]] | None = None
                       ) -> dict[str, list[float]]:
        """Times ``sample(256)`` of the three buffers, block by block in turn with the
        ``extra`` functions (name -> (function, calls per block)); measured once, then cached."""
        if self.sample_times is None:
            log("image: timing sample(256)" + (" and the copy references" if extra else ""))
            fns = {"fastsac": (lambda: self.fast.sample(BATCH), 10),  # ~10x faster per call
                   "seed": (lambda: self.seed.sample(BATCH), 1),
                   "seed_u8": (lambda: self.seed_u8.sample(BATCH), 1), **(extra or {})}
            self.sample_times = interleaved({k: f for k, (f, _) in fns.items()},
                                            calls={k: n for k, (_, n) in fns.items()},
                                            blocks=self.sizes.image_blocks)
        return self.sample_times
