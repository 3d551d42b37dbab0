"""A run's checkpoints: the agent, the trainer's counters and RNG states, the replay buffer.

A checkpoint is several files named by step, then ``checkpoint-STEP.json`` listing them and
``latest.json`` (the same list) naming the newest, each written atomically (temporary file,
then rename). The list is written last, so a run killed while saving leaves the previous
complete checkpoints as they were. The newest ``keep`` complete checkpoints stay; files of
older ones are deleted only once the new one is complete. Loading takes the newest checkpoint
whose files can all be read, with a warning naming each file that cannot.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from fastsac._io import atomic_write
from fastsac.buffers import ReplayBuffer
from fastsac.sac import check_state

_OURS = re.compile(r"(agent|trainer|buffer|checkpoint)-(\d+)\.(pt|json|npz)|\.fastsac-.*\.tmp")
_MANIFEST = re.compile(r"checkpoint-(\d+)\.json")
TRAINER_KEYS = ("step", "episodes", "update_debt", "eval_returns", "rng", "metrics_bytes")


class Checkpoints:
    def __init__(self, directory: Path, keep: int = 2):
        self.dir = Path(directory)
        self.keep = keep

    def exists(self) -> bool:
        return (self.dir / "latest.json").exists() or any(self._manifests())

    def save(self, step: int, agent, state: dict, rng: dict, buffer: ReplayBuffer | None
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
        manifest = json.dumps({"step": step, **files}).encode()
        with atomic_write(self.dir / f"checkpoint-{step}.json") as f:
            f.write(manifest)
        with atomic_write(self.dir / "latest.json") as f:
            f.write(manifest)
        _fsync_dir(self.dir)
        # Keep the newest `keep` checkpoints up to this one. Delete the rest, checkpoints of
        # later steps (a run resumed from before them redoes them) and temporary files a killed
        # save left behind: only our own files, never anything else put here.
        steps = sorted((s for s in self._manifests() if s <= step), reverse=True)[:self.keep]
        keep = {f"{kind}-{s}.{ext}" for s in steps
                for kind, ext in (("agent", "pt"), ("trainer", "json"), ("buffer", "npz"),
                                  ("checkpoint", "json"))}
        for p in self.dir.iterdir():
            if p.name not in keep and _OURS.fullmatch(p.name) and p.is_file():
                p.unlink()

    def _manifests(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return [int(m.group(1)) for p in self.dir.iterdir()
                if (m := _MANIFEST.fullmatch(p.name))]

    def load(self, device: torch.device, memory: str = "host", prefetch: bool = False,
             check_agent: Callable[[dict], None] | None = None
             ) -> tuple[dict, dict, dict, ReplayBuffer | None]:
        """(agent state, trainer state, RNG states, buffer or None) of the newest readable
        checkpoint; a warning names each file passed over. ``check_agent`` raises ValueError
        for an agent state that does not fit. Tensors load on the CPU (RNG states must); the
        agent copies its own to its device."""
        manifests = [self.dir / f"checkpoint-{s}.json"
                     for s in sorted(self._manifests(), reverse=True)]
        if not manifests:  # a run saved before checkpoint-STEP.json files: its latest only
            manifests = [self.dir / "latest.json"]
        if not manifests[0].exists():
            raise ValueError(f"{self.dir} holds no checkpoint (no latest.json) to resume from")
        bad: list[str] = []
        for manifest in manifests:
            try:
                loaded = self._load(manifest, device, memory, prefetch, check_agent)
            except _Unreadable as exc:
                bad.append(str(exc))
                continue
            if bad:
                warnings.warn(f"{'; '.join(bad)}: resuming from the checkpoint of step "
                              f"{loaded[1]['step']} instead", stacklevel=3)
            return loaded
        raise ValueError(f"no readable checkpoint in {self.dir}: " + "; ".join(bad))

    def load_agent(self, step: int | None = None) -> tuple[dict, int]:
        """(the agent state, its step) of checkpoint ``step``, or of the newest checkpoint
        whose agent file can be read (a warning names each passed over)."""
        steps = sorted(self._manifests(), reverse=True)
        if step is not None:
            if step not in steps:
                raise ValueError(f"{self.dir} holds no checkpoint of step {step}; it holds "
                                 f"{sorted(steps) or 'none'}")
            steps = [step]
        if not steps:
            raise ValueError(f"{self.dir} holds no checkpoint")
        bad: list[str] = []
        for s in steps:
            try:
                files = _read_json(self.dir / f"checkpoint-{s}.json", ("step", "agent"))
                return self._agent(self.dir / files["agent"], None)["agent"], s
            except _Unreadable as exc:
                bad.append(str(exc))
                if step is None and s != steps[-1]:
                    warnings.warn(f"{exc}: trying the checkpoint before it", stacklevel=2)
        raise ValueError("; ".join(bad))

    def _agent(self, path: Path, check_agent) -> dict:
        """The saved {"agent", "rng"} of an agent file; _Unreadable naming it if it is not."""
        _check_file(path)
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            check_state(saved.get("agent") if isinstance(saved, dict) else None)
            if "rng" not in saved:
                raise ValueError("no RNG states")
            if check_agent is not None:
                check_agent(saved["agent"])
        except Exception as exc:  # noqa: BLE001 - whatever a damaged or foreign file raises
            raise _Unreadable(f"{path} is not a readable fastsac agent checkpoint "
                              f"({_reason(exc)})") from None
        return saved

    def _load(self, manifest: Path, device, memory, prefetch, check_agent) -> tuple:
        files = _read_json(manifest, ("step", "agent", "trainer"))
        step = files["step"]
        saved = self._agent(self.dir / files["agent"], check_agent)
        state = _read_json(self.dir / files["trainer"], TRAINER_KEYS)
        if state["step"] != step:  # before the buffer: a loaded buffer may hold its file
            raise _Unreadable(f"{self.dir / files['trainer']} is of step {state['step']}, "
                              f"its checkpoint of step {step}")
        buffer = None
        if "buffer" in files:
            _check_file(self.dir / files["buffer"])
            try:
                buffer = ReplayBuffer.load(self.dir / files["buffer"], device=device,
                                           memory=memory, prefetch=prefetch)
            except (ValueError, OSError) as exc:  # its message names the file
                raise _Unreadable(" ".join(str(exc).split())) from None
        return saved["agent"], state, saved["rng"], buffer


class _Unreadable(Exception):
    """A checkpoint file that cannot be read; the message names it."""


def _reason(exc: BaseException) -> str:
    """The exception's type and first sentence, on one line."""
    text = " ".join(str(exc).split()).split(". ")[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise _Unreadable(f"{path} is missing")
    if path.stat().st_size == 0:
        raise _Unreadable(f"{path} is empty")


def _read_json(path: Path, keys: tuple[str, ...]) -> dict:
    _check_file(path)
    try:
        d = json.loads(path.read_bytes())
        if not isinstance(d, dict) or not all(k in d for k in keys):
            raise ValueError(f"not a dict with {', '.join(keys)}")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        raise _Unreadable(f"{path} is not a readable fastsac checkpoint file "
                          f"({_reason(exc)})") from None
    return d


def _fsync_dir(path: Path) -> None:
    """Make the renames into ``path`` durable (a crash after this keeps latest.json's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
