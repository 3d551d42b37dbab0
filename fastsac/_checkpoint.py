"""A run's checkpoints: the agent, the trainer's counters and RNG states, the replay buffer.

A checkpoint is several files named by step, then ``latest.json`` naming them, each written
atomically (temporary file, then rename). A run killed while saving leaves ``latest.json``
naming the previous complete checkpoint; older files are deleted only after it moved on.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from fastsac._io import atomic_write
from fastsac.buffers import ReplayBuffer
from fastsac.sac import SAC, check_state

_OURS = re.compile(r"(agent-\d+\.pt|trainer-\d+\.json|buffer-\d+\.npz|\.fastsac-.*\.tmp)")


class Checkpoints:
    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def exists(self) -> bool:
        return (self.dir / "latest.json").exists()

    def save(self, step: int, agent: SAC, state: dict, rng: dict, buffer: ReplayBuffer | None
             ) -> None:
        """``rng``: torch RNG states ("cpu": a tensor; "cuda": a list of them)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        files = {"agent": f"agent-{step}.pt", "trainer": f"trainer-{step}.json"}
        with atomic_write(self.dir / files["agent"]) as f:
            torch.save({"agent": agent.state_dict(), "rng": rng}, f)
        with atomic_write(self.dir / files["trainer"]) as f:
            f.write(json.dumps(state).encode())
        if buffer is not None:
            files["buffer"] = f"buffer-{step}.npz"
            buffer.save(self.dir / files["buffer"])
        with atomic_write(self.dir / "latest.json") as f:
            f.write(json.dumps({"step": step, **files}).encode())
        _fsync_dir(self.dir)
        # Older checkpoints, and temporary files a killed save left behind: only our own files
        # (this save's temporaries are gone by now), never anything else put here.
        keep = set(files.values())
        for p in self.dir.iterdir():
            if p.name not in keep and _OURS.fullmatch(p.name) and p.is_file():
                p.unlink()

    def load(self, device: torch.device, memory: str = "host", prefetch: bool = False
             ) -> tuple[dict, dict, dict, ReplayBuffer | None]:
        """(agent state, trainer state, RNG states, buffer or None) of the latest one. Tensors
        load on the CPU (RNG states must); the agent copies its own to its device."""
        latest = self.dir / "latest.json"
        if not latest.exists():
            raise ValueError(f"{self.dir} holds no checkpoint (no latest.json) to resume from")
        files = json.loads(latest.read_text())
        saved = torch.load(self.dir / files["agent"], map_location="cpu", weights_only=True)
        try:
            check_state(saved.get("agent") if isinstance(saved, dict) else None)
        except ValueError as exc:
            raise ValueError(f"{self.dir / files['agent']} is not a fastsac agent checkpoint: "
                             f"{exc}") from None
        state = json.loads((self.dir / files["trainer"]).read_text())
        buffer = ReplayBuffer.load(self.dir / files["buffer"], device=device, memory=memory,
                                   prefetch=prefetch) \
            if "buffer" in files else None
        return saved["agent"], state, saved["rng"], buffer


def _fsync_dir(path: Path) -> None:
    """Make the renames into ``path`` durable (a crash after this keeps latest.json's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
