"""A slow, obviously-correct model of ``fastsac.ReplayBuffer`` written from docs/replay.md.

It does not share code or data layout with the implementation. Every env stream keeps the
full list of positions ever written (absolute, 0, 1, 2, ...); the ring is modelled only by
"a position is held when it is one of the last ``capacity // num_envs`` positions written".

Episode storage: an episode of T steps occupies T + 1 consecutive positions; position
``start + j`` holds observation o_j, and (for j < T) the step taken from it.
Transition storage: one position per step holding (obs, next_obs, action, reward).

All expected numbers are computed in float64 from the float32-cast action/reward inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Position:
    frame: np.ndarray                 # episode storage: o_j; transition storage: the step's obs
    next_frame: np.ndarray | None     # transition storage only: the step's stored next_obs
    episode: int                      # index into Stream.episodes
    action: np.ndarray | None = None  # None for an episode-storage position without a step
    reward: float | None = None


@dataclass
class Episode:
    start: int                                      # position of o_0 (episode storage) / step 0
    steps: list[int] = field(default_factory=list)  # positions of steps 0, 1, ...
    ended: bool = False
    terminated: bool = False


@dataclass
class Stream:
    positions: list[Position] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)

    def running(self) -> Episode | None:
        if self.episodes and not self.episodes[-1].ended:
            return self.episodes[-1]
        return None


@dataclass
class Expected:
    env: int
    position: int
    t: int           # index of the step within its episode
    m: int           # steps in the n-step window
    obs: np.ndarray
    action: np.ndarray
    reward: float
    next_obs: np.ndarray
    discount: float


class ReplayReference:
    def __init__(self, capacity, obs_shape, action_shape, *, obs_dtype=np.float32, num_envs=1,
                 frame_stack=1, n_step=1, gamma=0.99, storage="episode", stack_pad="first"):
        assert storage in ("episode", "transition")
        self.obs_shape = tuple(obs_shape)
        self.action_shape = tuple(action_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.num_envs = num_envs
        self.ring = capacity // num_envs
        self.frame_stack = frame_stack
        self.n_step = n_step
        self.gamma = float(gamma)
        self.storage = storage
        self.stack_pad = stack_pad
        self.streams = [Stream() for _ in range(num_envs)]
        self.floors = [0] * num_envs  # per stream: positions before it are lost

    # -- writing --------------------------------------------------------------------------
    def add(self, obs, action, reward, next_obs, terminated, truncated):
        """Arguments as for ``ReplayBuffer.add`` (valid input assumed)."""
        n = self.num_envs
        obs = np.asarray(obs).reshape(n, *self.obs_shape).astype(self.obs_dtype)
        next_obs = np.asarray(next_obs).reshape(n, *self.obs_shape).astype(self.obs_dtype)
        action = np.asarray(action).reshape(n, *self.action_shape).astype(np.float32)
        reward = np.asarray(reward).reshape(n).astype(np.float32)
        terminated = np.asarray(terminated).reshape(n)
        truncated = np.asarray(truncated).reshape(n)
        for e in range(n):
            self._add_one(self.streams[e], obs[e].copy(), action[e].copy(), float(reward[e]),
                          next_obs[e].copy(), bool(terminated[e]), bool(truncated[e]))

    def add_to(self, streams, obs, action, reward, next_obs, terminated, truncated):
        """One step of the listed streams: arrays with a leading ``len(streams)`` axis."""
        for i, e in enumerate(streams):
            self._add_one(self.streams[e], np.array(obs[i], self.obs_dtype),
                          np.array(action[i], np.float32).reshape(self.action_shape),
                          float(np.float32(reward[i])), np.array(next_obs[i], self.obs_dtype),
                          bool(terminated[i]), bool(truncated[i]))

    def end_episodes(self, streams=None):
        """End the running episode of each of ``streams`` (None: all) as truncated."""
        for e in range(self.num_envs) if streams is None else streams:
            ep = self.streams[e].running()
            if ep is not None:
                ep.ended, ep.terminated = True, False

    def _add_one(self, s: Stream, obs, action, reward, next_obs, term, trunc):
        ep = s.running()
        if self.storage == "episode":
            if ep is not None and obs.tobytes() == s.positions[-1].frame.tobytes():
                pass  # continue the running episode; o_t is already the last position
            else:
                if ep is not None:  # ends here as if truncated
                    ep.ended = True
                    ep.terminated = False
                ep = Episode(start=len(s.positions))
                s.episodes.append(ep)
                s.positions.append(Position(frame=obs, next_frame=None,
                                            episode=len(s.episodes) - 1))
            p = len(s.positions) - 1
            s.positions[p].action = action
            s.positions[p].reward = reward
            ep.steps.append(p)
            s.positions.append(Position(frame=next_obs, next_frame=None,
                                        episode=len(s.episodes) - 1))
        else:
            if ep is None:
                ep = Episode(start=len(s.positions))
                s.episodes.append(ep)
            p = len(s.positions)
            s.positions.append(Position(frame=obs, next_frame=next_obs,
                                        episode=len(s.episodes) - 1, action=action,
                                        reward=reward))
            ep.steps.append(p)
        if term or trunc:
            ep.ended = True
            ep.terminated = bool(term)  # both flags count as terminated

    # -- queries --------------------------------------------------------------------------
    def oldest(self, env: int) -> int:
        """First position of stream ``env`` still held."""
        return max(0, len(self.streams[env].positions) - self.ring, self.floors[env])

    def held(self, env: int, pos: int) -> bool:
        return self.oldest(env) <= pos < len(self.streams[env].positions)

    def __len__(self) -> int:
        total = 0
        for e, s in enumerate(self.streams):
            for p, rec in enumerate(s.positions):
                if rec.action is not None and self.held(e, p):
                    total += 1
        return total

    def _obs_position(self, ep: Episode, j: int) -> int:
        """Position holding o_j of the episode (j clamped at 0 by the caller)."""
        if self.storage == "episode":
            return ep.start + j
        return ep.steps[j]

    def _padded(self, frame: np.ndarray, i: int) -> np.ndarray:
        """o_i of an episode, i < 0 being before its start: its first frame, or zeros."""
        return np.zeros_like(frame) if i < 0 and self.stack_pad == "zeros" else frame

    def _stack(self, frames: list[np.ndarray]) -> np.ndarray:
        """Frames concatenated along axis 0 (scalar frames: a vector of k values)."""
        if self.obs_shape == ():
            return frames[0] if len(frames) == 1 else np.array(frames)
        return np.concatenate(frames, axis=0)

    def expected(self, env: int, pos: int) -> Expected | None:
        """What sampling the step at ``pos`` of stream ``env`` must give, or None when that
        step is not sampleable (not a held step, stack overwritten, window incomplete)."""
        s = self.streams[env]
        if not self.held(env, pos) or s.positions[pos].action is None:
            return None
        ep = s.episodes[s.positions[pos].episode]
        t = ep.steps.index(pos)
        k, n, g = self.frame_stack, self.n_step, self.gamma
        # 1. every frame of the obs stack is still held
        for i in range(t - k + 1, t + 1):
            if not self.held(env, self._obs_position(ep, max(0, i))):
                return None
        # 2. the episode has ended, or the running episode holds steps t..t+n-1 and o_{t+n}
        T = len(ep.steps)
        if ep.ended:
            m = min(n, T - t)
        else:
            # episode storage: the running episode holds o_0..o_T, so o_{t+n} needs
            # t + n <= T; transition storage: o_{t+n} is the stored next_obs of step
            # t + n - 1, which needs t + n - 1 <= T - 1. Both also cover steps t..t+n-1.
            if t + n > T:
                return None
            m = n
        obs = self._stack([self._padded(s.positions[self._obs_position(ep, max(0, i))].frame, i)
                           for i in range(t - k + 1, t + 1)])
        next_frames = []
        for i in range(t + m - k + 1, t + m + 1):
            if self.storage == "episode":
                f = s.positions[self._obs_position(ep, max(0, i))].frame
            elif i == t + m:
                f = s.positions[ep.steps[t + m - 1]].next_frame
            else:
                f = s.positions[ep.steps[max(0, i)]].frame
            next_frames.append(self._padded(f, i))
        next_obs = self._stack(next_frames)
        reward = 0.0
        for j in range(m):
            reward += g ** j * float(s.positions[ep.steps[t + j]].reward)
        if ep.ended and ep.terminated and t + m - 1 == T - 1:
            discount = 0.0
        else:
            discount = g ** m
        return Expected(env=env, position=pos, t=t, m=m, obs=obs,
                        action=s.positions[pos].action, reward=reward, next_obs=next_obs,
                        discount=discount)

    def sampleable(self) -> dict[tuple[int, int], Expected]:
        """Every sampleable step, keyed by (env, position)."""
        out = {}
        for e, s in enumerate(self.streams):
            for p in range(self.oldest(e), len(s.positions)):
                x = self.expected(e, p)
                if x is not None:
                    out[(e, p)] = x
        return out

    @property
    def num_sampleable(self) -> int:
        return len(self.sampleable())
