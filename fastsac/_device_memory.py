"""``memory="device"``: a replay buffer's frames in one torch tensor on its device.

The C++ core keeps its episode bookkeeping, actions and rewards as usual, but where a slot
would hold a frame it holds a key: the row of that frame in the tensor (the slot's own index;
in transition storage ``2 * slot`` for ``obs`` and ``2 * slot + 1`` for ``next_obs``). An
``obs`` that continues its stream's episode is given the key of that stream's last
``next_obs``, so the core's bytewise "same observation" test works on keys as it does on
frames. Sampling then gathers keys in C++ (stacks, n-step windows, every rule unchanged) and
the frames with one ``index_select`` on the device: frames never cross to the host again.
"""

from __future__ import annotations

import numpy as np
import torch

KEY_BYTES = 8  # an int64 key where a slot would hold a frame


class DeviceFrames:
    """The frames of ``num_envs`` rings of ``ring`` slots, and their keys."""

    def __init__(self, num_envs: int, ring: int, frame_shape: tuple[int, ...],
                 obs_dtype: np.dtype, torch_dtype: torch.dtype, transition: bool,
                 device: torch.device, pin: bool) -> None:
        """``pin``: copy each step's frames to a CUDA device through pinned memory."""
        self.ring, self.transition, self.device = ring, transition, device
        self._pin = pin and device.type == "cuda"
        self.frame_shape, self.obs_dtype = frame_shape, obs_dtype
        rows = num_envs * ring * (2 if transition else 1)
        self.frames = torch.zeros((rows, *frame_shape), dtype=torch_dtype, device=device)
        # Each stream's last next_obs, on the host, to tell whether the next obs continues it.
        self.last_next = np.zeros((num_envs, *frame_shape), obs_dtype)
        self.known = np.zeros(num_envs, bool)
        self._base = np.arange(num_envs, dtype=np.int64) * ring

    @property
    def nbytes(self) -> int:
        return self.frames.numel() * self.frames.element_size()

    def keys(self, words: list[int], obs: np.ndarray, streams: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(obs keys, next_obs keys, whether each obs needs writing) for one step of
        ``streams``, given the core's stream state (of all streams) before it."""
        words = np.asarray(words, dtype=np.int64).reshape(-1, 4)[streams]
        count, running = words[:, 0], words[:, 3].astype(bool)
        base = self._base[streams]
        here = base + count % self.ring  # the slot the core writes next, per stream
        if self.transition:
            return 2 * here, 2 * here + 1, np.ones(len(count), bool)
        n = len(count)
        same = (obs.reshape(n, -1).view(np.uint8) ==
                self.last_next[streams].reshape(n, -1).view(np.uint8)).all(axis=1)
        cont = running & self.known[streams] & same
        after = base + (count + 1) % self.ring
        last = base + (count - 1) % self.ring
        return np.where(cont, last, here), np.where(cont, here, after), ~cont

    def write(self, obs: np.ndarray, next_obs: np.ndarray, obs_keys: np.ndarray,
              next_keys: np.ndarray, new_obs: np.ndarray, streams: np.ndarray) -> None:
        """Store the frames of one step of ``streams`` (after the core accepted it)."""
        rows = self._to_device(np.concatenate([obs_keys[new_obs], next_keys]))
        self.frames[rows] = self._to_device(np.concatenate([obs[new_obs], next_obs]))
        self.last_next[streams] = next_obs
        self.known[streams] = True

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        if not self._pin:
            return t.to(self.device)
        # From pageable memory a copy would wait for all the GPU's queued work (the updates);
        # from pinned memory it queues behind them. Torch's pinned-memory cache keeps the block
        # until the copy has run.
        return t.pin_memory().to(self.device, non_blocking=True)

    def gather(self, keys: torch.Tensor, stacked_shape: tuple[int, ...],
               out: torch.Tensor | None = None) -> torch.Tensor:
        """The frames of ``keys`` (batch, frame_stack), stacked along axis 0 of each row
        (written into ``out`` when given)."""
        rows = keys.reshape(-1)
        if out is not None:
            torch.index_select(self.frames, 0, rows, out=out.view(-1, *self.frame_shape))
            return out
        return self.frames.index_select(0, rows).view(keys.shape[0], *stacked_shape)

    # -- persistence: files and state dicts hold the host layout, frames inside the records --
    def to_host(self, core, host) -> None:
        """Fill ``host``, an empty core of the host layout, with ``core``'s state and these
        frames (a slot's frames are the tensor's rows of that slot)."""
        with core.locked():
            src = core.slots().reshape(-1, core.stride)
            dst = host.slots().reshape(-1, host.stride)
            head = core.frame_offset
            dst[:, :head] = src[:, :head]
            frames = self.frames.cpu().numpy().reshape(len(dst), -1).view(np.uint8)
            dst[:, head:head + frames.shape[1]] = frames
            host.set_stream_state(core.stream_state())
            host.set_rng_state(core.rng_state())

    def from_host(self, host, core) -> None:
        """Fill ``core``, an empty core of the key layout, and these frames from ``host``."""
        src = host.slots().reshape(-1, host.stride)
        dst = core.slots().reshape(-1, core.stride)
        head = core.frame_offset
        dst[:, :head] = src[:, :head]
        per_slot = 2 if self.transition else 1
        keys = np.arange(len(dst) * per_slot, dtype=np.int64).reshape(len(dst), per_slot)
        dst[:, head:head + KEY_BYTES * per_slot] = keys.view(np.uint8)
        frame_bytes = self.last_next[0].nbytes
        frames = np.ascontiguousarray(src[:, head:head + frame_bytes * per_slot])
        self.frames.copy_(torch.from_numpy(frames.view(self.obs_dtype).reshape(
            self.frames.shape)))
        words = host.stream_state()
        core.set_stream_state(words)
        core.set_rng_state(host.rng_state())
        core.check_integrity()
        count = np.asarray(words, dtype=np.int64).reshape(-1, 4)[:, 0]
        last = self._base + (count - 1) % self.ring  # each stream's last frame
        rows = last * per_slot + (per_slot - 1)
        self.last_next[...] = self.frames[torch.from_numpy(rows)].cpu().numpy()
        self.known[:] = count > 0
