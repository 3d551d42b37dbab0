"""``fastsac bench sb3``: fastsac's buffer behind SB3's interface (``fastsac.sb3``) next to
SB3's own ``ReplayBuffer`` (the baseline column), fed the same steps (needs the sb3 extra).

- Memory per stored step: 84x84 RGB frames in 4-frame stacks (``VecFrameStack``), and
  HalfCheetah's vectors (17 floats, 6 actions).
- ``sample(256)`` of each, timed in turn.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from fastsac.bench._util import interleaved, log, median, row

ACT = spaces.Box(-1.0, 1.0, (6,), np.float32)


def _pair(space: spaces.Box, steps: int, frame_stack: int):
    from stable_baselines3.common.buffers import ReplayBuffer as SB3Buffer

    from fastsac.sb3 import ReplayBuffer

    ours = ReplayBuffer(steps, space, ACT, "cpu", frame_stack=frame_stack, seed=0)
    theirs = SB3Buffer(steps, space, ACT, "cpu")
    return ours, theirs


def _fill(buffers, space: spaces.Box, steps: int, frame_stack: int) -> None:
    """Episodes of 100 steps; image stacks shift one new random frame in per step."""
    rng = np.random.default_rng(0)
    frame = space.shape[0] // frame_stack
    pool = (rng.integers(0, 256, (16, *space.shape), dtype=np.uint8)
            if space.dtype == np.uint8 else rng.normal(size=(16, *space.shape)).astype(np.float32))
    obs = pool[0][None]
    action = np.zeros((1, 6), np.float32)
    for t in range(steps):
        next_obs = np.concatenate([obs[:, frame:], pool[(t + 1) % 16][None, -frame:]], axis=1) \
            if frame_stack > 1 else pool[(t + 1) % 16][None]
        done = np.array([t % 100 == 99])
        infos = [{"TimeLimit.truncated": bool(done[0])}]
        for b in buffers:
            b.add(obs, next_obs, action, np.zeros(1, np.float32), done, infos)
        obs = pool[t % 16][None] if done[0] else next_obs


def _bytes_per_step(ours, theirs) -> tuple[float, float]:
    sb3 = sum(getattr(theirs, k).nbytes for k in ("observations", "next_observations",
                                                  "actions", "rewards", "dones", "timeouts"))
    return ours.buffer.nbytes / len(ours.buffer), sb3 / theirs.buffer_size  # both full


def run(quick: bool = False) -> list[dict]:
    try:
        import stable_baselines3  # noqa: F401
    except ImportError as exc:
        raise SystemExit("fastsac bench sb3 needs stable-baselines3: "
                         "pip install 'fastsac[sb3]'") from exc
    rows = []
    cases = (("84x84 RGB, VecFrameStack(4)", spaces.Box(0, 255, (12, 84, 84), np.uint8), 4,
              1_000 if quick else 10_000),
             ("HalfCheetah vectors (17)", spaces.Box(-np.inf, np.inf, (17,), np.float32), 1,
              2_000 if quick else 100_000))
    for name, space, k, steps in cases:
        log(f"sb3: filling {steps:,} steps of {name}, fastsac's and SB3's buffers")
        ours, theirs = _pair(space, steps, k)
        _fill([ours, theirs], space, steps, k)
        mine, sb3 = _bytes_per_step(ours, theirs)
        rows.append(row(f"memory per stored step, {name}", "B", mine, sb3,
                        lower_is_better=True,
                        note="both full, episodes of 100 steps; fastsac: bytes over steps "
                             "held, a slot (one frame, action, reward, flags) per step plus one "
                             "per episode for its final frame. Baseline column: SB3's "
                             "ReplayBuffer (obs and next_obs stacks, action, reward, done, "
                             "timeout)"))
        log(f"sb3: timing sample(256), {name}")
        t = interleaved({"fastsac": lambda: ours.sample(256),
                         "sb3": lambda: theirs.sample(256)},
                        calls=2 if quick else 20, blocks=2 if quick else 5)
        rows.append(row(f"sample(256), {name}", "ms", median(t["fastsac"]) * 1e3,
                        median(t["sb3"]) * 1e3, lower_is_better=True,
                        note="ReplayBufferSamples of torch tensors on the CPU; baseline "
                             "column: SB3's ReplayBuffer.sample"))
    return rows
