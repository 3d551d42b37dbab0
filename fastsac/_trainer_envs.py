"""A Trainer's env side: choosing the actions, stepping the envs of this process
(``fastsac.runner``) or receiving the chunks of the env workers (``fastsac.distributed``), and
storing the steps in the buffer.

:class:`TrainerEnvs` is Trainer's base: its methods read the trainer's config, agent, buffer,
counters, timers and ``runner`` or ``pool``.
"""

from __future__ import annotations

import time

import numpy as np


class TrainerEnvs:
    """Trainer's env side (see the module docstring)."""

    @property
    def episodes(self) -> list[int]:
        """Per env stream: the episode it is in (its reset seed's episode number)."""
        return (self.pool if self.pool is not None else self.runner).episodes

    @episodes.setter
    def episodes(self, value: list[int]) -> None:
        (self.pool if self.pool is not None else self.runner).episodes = list(value)

    def start(self) -> None:
        """Reset every env: to its first episode, or, after ``restore``, to the start of the
        episode it was in (with workers: to its next episode). ``run`` calls it; call it
        yourself to drive ``train_step`` (or ``env_step`` and ``learn``) directly."""
        if self.pool is not None:
            self.pool.start(self._weights(), self.agent.updates)
        else:
            self.runner.start(next_episode=self.step == 0)
        self.started = True

    def _actions(self) -> tuple[np.ndarray, np.ndarray]:
        """(action in [-1, 1] for the buffer, the same action in the env's bounds)."""
        scale = self.half_range
        if self.step < self.config.learning_starts:
            env_action = self.rng.uniform(self.low, self.high,
                                          (self.config.num_envs, *self.action_shape))
            action = ((env_action - self.low) / scale - 1).astype(np.float32)
            return np.clip(action, -1, 1), env_action
        action = self.agent.act(self.runner.policy_obs)
        return action, self._to_env(action)

    def _to_env(self, action: np.ndarray) -> np.ndarray:
        """An action in [-1, 1] rescaled to the env's bounds."""
        return self.low + (action + 1.0) * self.half_range

    def env_step(self) -> list[float]:
        """One step of every env: act, step, store, reset the envs whose episode ended.
        Returns the returns of the episodes that ended."""
        return self._step_envs(*self._timed_actions())

    def _timed_actions(self) -> tuple[np.ndarray, np.ndarray]:
        if self.runner is None:
            raise RuntimeError("env_step steps envs of this process; with workers, call "
                               "receive")
        t0 = time.perf_counter()
        actions = self._actions()
        self.timers["act"] += time.perf_counter() - t0
        return actions

    def _step_envs(self, action: np.ndarray, env_action: np.ndarray) -> list[float]:
        """Step every env with ``env_action``, store the steps (``action`` in [-1, 1]) and
        reset the envs whose episode ended; the returns of those episodes."""
        t, c = self.timers, self.config
        t1 = time.perf_counter()
        runner = self.runner
        next_frame, reward, terminated, truncated = runner.step(env_action)
        t2 = time.perf_counter()
        self.buffer.add(runner.frame, action, reward.astype(np.float32), next_frame,
                        terminated, truncated)
        t3 = time.perf_counter()
        finished = runner.advance(next_frame, reward, terminated, truncated)
        t4 = time.perf_counter()
        t["env"] += (t2 - t1) + (t4 - t3)
        t["buffer"] += t3 - t2
        self.step += c.num_envs
        return finished

    def receive(self) -> list[float]:
        """With workers: store the chunks that arrived (waiting for one if none has), and end
        the episodes of workers that failed. Returns the returns of the episodes that ended.
        First the workers whose chunks came last time are asked for new ones, with the newest
        weights when ``sync_every`` updates have passed."""
        t0 = time.perf_counter()
        self.pool.refill(self.agent.updates, self._weights)
        chunks, failed = self.pool.receive(self.agent.updates)
        t1 = time.perf_counter()
        finished: list[float] = []
        for chunk in chunks:
            self.buffer.add_chunk(chunk["obs"], chunk["action"], chunk["reward"],
                                  chunk["next_obs"], chunk["terminated"], chunk["truncated"],
                                  streams=chunk["streams"])
            self.step += chunk["reward"].size
            finished += chunk["returns"]
        if failed:  # after their last chunks: the replacements' steps come next
            self.buffer.end_episodes(streams=failed)
        self.timers["env"] += t1 - t0  # waiting for the workers
        self.timers["buffer"] += time.perf_counter() - t1
        return finished

    def _weights(self) -> dict | None:
        """The actor's weights for the workers (None before learning starts: they act at
        random until then)."""
        if self.step < self.config.learning_starts:
            return None
        return {name: {k: v.detach().cpu() for k, v in self.agent.modules[name].state_dict()
                       .items()} for name in ("encoder", "actor")}
