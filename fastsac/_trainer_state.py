"""A Trainer's checkpoints: what one holds of the run (step, episodes, RNGs, logs' length,
the agent and, with ``save_buffer``, the buffer), and the resume from the newest readable one.

:class:`TrainerCheckpoints` is Trainer's base: its methods read the trainer's agent, buffer,
counters, log and ``checkpoints`` (``fastsac._checkpoint.Checkpoints``).
"""

from __future__ import annotations

import torch


class TrainerCheckpoints:
    """Trainer's checkpoints (see the module docstring)."""

    def save_checkpoint(self) -> None:
        """Checkpoint the run at this step (the ``keep_checkpoints`` newest are kept)."""
        state = dict(step=self.step, episodes=self.episodes, update_debt=self.update_debt,
                     eval_returns={str(k): v for k, v in self.eval_returns.items()},
                     rng=self.rng.bit_generator.state, metrics_bytes=self.log.tell())
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        self.checkpoints.save(self.step, self.agent, state, rng,
                              self.buffer if self.config.save_buffer else None)

    def _check_agent(self, state: dict) -> None:
        """Raise ValueError unless ``state`` holds networks of this run's agent's shapes."""
        ours = _shapes({k: m.state_dict() for k, m in self.agent.modules.items()})
        if not isinstance(state.get("modules"), dict) or _shapes(state["modules"]) != ours:
            raise ValueError("its networks are not this run's agent's")

    def restore(self) -> None:
        """Continue from the latest checkpoint: everything but the episodes in flight, which
        restart (their steps so far stay in the buffer, ended as truncated)."""
        if self.buffer.path is not None and self.config.save_buffer:
            self.buffer.close()  # its file is locked: the loaded buffer maps it
        agent_state, state, rng, buffer = self.checkpoints.load(
            self.device, memory=self.config.buffer_memory, prefetch=self.prefetch,
            check_agent=self._check_agent)
        self.agent.load_state_dict(agent_state)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        if buffer is not None:
            self.buffer = buffer
            # The envs restart: an episode left running must not continue into the restart,
            # even where the reset observation equals its last one.
            self.buffer.end_episodes()
        self.step = int(state["step"])
        self.episodes = [int(e) for e in state["episodes"]]
        self.update_debt = float(state["update_debt"])
        self.eval_returns = {int(k): float(v) for k, v in state["eval_returns"].items()}
        self.rng.bit_generator.state = state["rng"]
        self.log.truncate(int(state["metrics_bytes"]), self.step)  # rows after the checkpoint


def _shapes(modules: dict) -> dict:
    return {name: {k: tuple(v.shape) for k, v in m.items()} for name, m in modules.items()}
