"""The replay buffer: validation, staging and device transfer around the C++ core.

A :class:`ReplayBuffer` keeps one ring of slots per env stream in C++ (``fastsac._core``).
Python checks and casts every input before the core sees it, so a rejected call changes
nothing; the core draws and gathers batches without the GIL into staging memory that is
allocated once per batch size and reused.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from functools import partial

import numpy as np
import torch

from fastsac import _core
from fastsac._device_memory import KEY_BYTES, DeviceFrames
from fastsac._buffer_persistence import BufferPersistence
from fastsac._mapped import open_slots, storage_dir
from fastsac._sampling import Prefetcher, Staging, StagingRing
from fastsac._validate import (
    as_flags,
    as_float32,
    as_obs,
    check_choice,
    check_count,
    obs_dtype_of,
    shape,
    torch_device,
    torch_dtype,
)
from fastsac.batch import Batch
from fastsac.config import MEMORIES

STORAGES = ("episode", "transition")
STACK_PADS = ("first", "zeros")


class ReplayBuffer(BufferPersistence):
    """Replay memory for off-policy RL that stores each observation once.

    Args:
        capacity: steps held (per env stream ``capacity // num_envs``); the oldest are
            overwritten first. In ``storage="episode"`` an episode's final observation also
            takes one slot.
        obs_shape: shape of one observation (one frame when ``frame_stack > 1``).
        action_shape: shape of one action; actions are stored as float32.
        obs_dtype: stored observation dtype (``np.uint8`` for images).
        num_envs: env streams added together; ``add`` arrays then carry a leading
            ``num_envs`` axis.
        frame_stack: frames stacked along axis 0 at sample time. At an episode's start the
            first frame is repeated.
        n_step: steps summed into each sampled reward (``gamma``-discounted).
        gamma: discount used for n-step returns and for ``Batch.discount``.
        storage: ``"episode"`` (consecutive steps of a stream share observations; an ``obs``
            that is not the previous ``next_obs`` starts a new episode and ends the previous
            one as truncated) or ``"transition"`` (``obs`` and ``next_obs`` stored as given;
            steps of a stream are linked into episodes only by ``terminated``/``truncated``).
        device: where sampled batches are returned.
        pin_memory: pin the staging memory (and, with ``memory="device"``, the frames on their
            way to the device); defaults to True exactly when ``device`` is CUDA.
        seed: seed of the buffer's own sampling RNG (``None``: from the OS).
        memory: where the frames live. ``"host"``: in the C++ core's memory, gathered into
            staging and copied to ``device``. ``"device"``: in one torch tensor on ``device``
            (GPU memory with CUDA), gathered there; the core keeps the rest.
        prefetch: ``sample`` returns the batch drawn during the previous call (of the same
            batch size) and draws the next in a background thread, so that gathering (and on
            CUDA copying) it overlaps the caller's work. It holds the buffer as it was at that
            previous call: ``add`` waits for it to finish first.
        stack_pad: what a frame stack holds before an episode's start: ``"first"`` (its
            first frame, repeated) or ``"zeros"`` (zero frames, as SB3's ``VecFrameStack``;
            ``memory="host"`` only).
        path: a directory to keep the slots in, in a memory-mapped file (``slots``, its
            blocks allocated up front), so that capacity is bounded by the disk rather than
            RAM (``memory="host"`` only). The file is locked while the buffer lives. ``save``
            and ``state_dict`` then hold only the bookkeeping (the file is flushed first), and
            loading them maps the file again (docs/replay.md).

    A returned :class:`Batch` on the CPU is a view of the staging memory: it is valid until
    the next ``sample`` call with the same ``batch_size`` (``clone()`` it to keep it). On CUDA
    the batch is a fresh device copy and stays valid.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...] | int,
                 action_shape: tuple[int, ...] | int, *, obs_dtype: np.dtype | type = np.float32,
                 num_envs: int = 1, frame_stack: int = 1, n_step: int = 1, gamma: float = 0.99,
                 storage: str = "episode", device: str | torch.device = "cpu",
                 pin_memory: bool | None = None, seed: int | None = None,
                 memory: str = "host", prefetch: bool = False,
                 path: str | os.PathLike | None = None, stack_pad: str = "first") -> None:
        self.obs_shape = shape("obs_shape", obs_shape)
        self.action_shape = shape("action_shape", action_shape)
        self.obs_dtype = obs_dtype_of(obs_dtype)
        self._torch_obs_dtype = torch_dtype(self.obs_dtype)
        self.num_envs = check_count("num_envs", num_envs)
        self.frame_stack = check_count("frame_stack", frame_stack)
        self.n_step = check_count("n_step", n_step)
        capacity = check_count("capacity", capacity)
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
            raise TypeError(f"gamma must be a real number, got {gamma!r}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
        self.gamma = float(gamma)
        check_choice("storage", storage, STORAGES)
        self.storage = storage
        ring = capacity // self.num_envs
        min_ring = 2 if storage == "episode" else 1
        if ring < min_ring:
            raise ValueError(f"capacity must be >= {min_ring * self.num_envs} (at least {min_ring} "
                             f"per env for storage={storage!r}), got {capacity}")
        self.device = torch_device(device)
        if pin_memory is None:
            pin_memory = self.device.type == "cuda"
        if pin_memory and not torch.cuda.is_available():
            raise ValueError("pin_memory=True needs a CUDA build of torch with a GPU")
        self.pin_memory = bool(pin_memory)
        self._on_cpu = self.device.type == "cpu"
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.seed = int(seed) % 2**64

        self._frame_bytes = math.prod(self.obs_shape) * self.obs_dtype.itemsize
        self._action_dim = math.prod(self.action_shape)
        for name, size in (("obs_shape", self._frame_bytes), ("action_shape", self._action_dim)):
            if size > 2**40:  # the core's bound, which keeps its arithmetic in int64
                raise ValueError(f"{name} is too large ({size} elements or bytes)")
        check_choice("memory", memory, MEMORIES)
        if memory == "device" and prefetch:
            raise ValueError("prefetch=True with memory='device': batches are gathered on the "
                             "device already, with nothing to overlap")
        self.memory = memory
        check_choice("stack_pad", stack_pad, STACK_PADS)
        if stack_pad == "zeros" and memory == "device":
            raise ValueError("stack_pad='zeros' needs memory='host'")
        self.stack_pad = stack_pad
        self._ring = ring
        self.path = None if path is None else storage_dir(path, memory, self._file_config())
        self._frames = DeviceFrames(
            self.num_envs, ring, self.obs_shape, self.obs_dtype, self._torch_obs_dtype,
            storage == "transition", self.device, self.pin_memory) if memory == "device" else None
        self._lock = threading.Lock()  # device memory: a core add and its frames' write
        self._all_streams = np.arange(self.num_envs, dtype=np.int64)
        self._out_checked: Batch | None = None
        self._core = self._new_core()
        self._staging: dict[int, StagingRing] = {}  # by batch size
        self._threads = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                            else (os.cpu_count() or 1), 8)
        self._prefetcher = Prefetcher(self._new_staging, self._threads, self.device) \
            if prefetch else None

    def _new_core(self, host_layout: bool = False) -> _core.ReplayCore:
        """An empty core of this buffer's layout; ``host_layout``: with frames in its records
        even for ``memory="device"`` (the layout of files and state dicts)."""
        floats = self.obs_dtype.itemsize if self.obs_dtype.kind == "f" else 0
        keys = self._frames is not None and not host_layout
        if keys:  # the core holds keys, and Python checks the frames
            floats = 0
        args = dict(
            num_envs=self.num_envs, ring=self._ring,
            frame_bytes=KEY_BYTES if keys else self._frame_bytes,
            action_dim=self._action_dim, frame_stack=self.frame_stack, n_step=self.n_step,
            gamma=self.gamma, transition=self.storage == "transition", seed=self.seed,
            obs_float_bytes=floats, pad_zeros=self.stack_pad == "zeros")
        if self.path is None:
            return _core.ReplayCore(**args)
        return open_slots(self.path, self._file_config(), args)

    # -- shapes ---------------------------------------------------------------------------
    @property
    def stacked_obs_shape(self) -> tuple[int, ...]:
        """Shape of one sampled ``obs``: frames stacked along axis 0."""
        if self.frame_stack == 1:
            return self.obs_shape
        if not self.obs_shape:
            return (self.frame_stack,)
        return (self.frame_stack * self.obs_shape[0], *self.obs_shape[1:])

    @property
    def capacity(self) -> int:
        """Slots held in all (``capacity // num_envs`` per env stream)."""
        return self._core.capacity

    @property
    def nbytes(self) -> int:
        """Bytes of replay memory held: every slot's record (frame, action, header)."""
        return self._core.nbytes + (self._frames.nbytes if self._frames is not None else 0)

    @property
    def num_sampleable(self) -> int:
        """Steps ``sample`` can currently draw from."""
        return self._core.num_sampleable

    def __len__(self) -> int:
        return self._core.size

    def __repr__(self) -> str:
        return (f"ReplayBuffer(len={len(self)}, capacity={self.capacity}, obs_shape="
                f"{self.obs_shape}, obs_dtype={self.obs_dtype}, num_envs={self.num_envs}, "
                f"frame_stack={self.frame_stack}, n_step={self.n_step}, storage={self.storage!r},"
                f" device={str(self.device)!r})")

    # -- writing --------------------------------------------------------------------------
    def add(self, obs, action, reward, next_obs, terminated, truncated, *,
            streams=None) -> None:
        """Store one step of every env stream (or of ``streams``, a sequence of distinct
        stream indices: the arrays' leading axis then follows it).

        ``terminated``: the step ended the episode in a terminal state (no bootstrap).
        ``truncated``: the episode was cut (time limit); it bootstraps from ``next_obs``.
        With ``num_envs > 1`` every argument has a leading ``num_envs`` axis.
        Raises ``ValueError``/``TypeError`` naming the argument; then nothing is stored.
        """
        if streams is None and self._frames is None:  # the common case, kept short
            rows = self._checked(self.num_envs, obs, action, reward, next_obs, terminated,
                                 truncated)
            self._settle()
            self._core.add_steps(self._all_streams, 1, *rows)
            return
        idx = self._stream_indices(streams)
        self._add_steps(idx, None, obs, action, reward, next_obs, terminated, truncated)

    def add_chunk(self, obs, action, reward, next_obs, terminated, truncated, *,
                  streams=None) -> None:
        """Store T consecutive steps of every env stream (or of ``streams``) in one call:
        every argument has leading axes (T, number of streams). The same as T ``add`` calls,
        checked as a whole first: a rejected chunk stores nothing."""
        idx = self._stream_indices(streams)
        if np.ndim(obs) < 1:
            raise ValueError("obs must have leading axes (steps, streams)")
        self._add_steps(idx, len(obs), obs, action, reward, next_obs, terminated, truncated)

    def _checked(self, lead, obs, action, reward, next_obs, terminated, truncated) -> tuple:
        """The arguments of ``add`` as the core takes them, rows of shape ``(*lead, ...)``."""
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf: rejected
            o = as_obs("obs", obs, lead, self.obs_shape, self.obs_dtype)
            no = as_obs("next_obs", next_obs, lead, self.obs_shape, self.obs_dtype)
            a = as_float32("action", action, lead, self.action_shape)
            r = as_float32("reward", reward, lead, ())
        return (o, a, r, no, as_flags("terminated", terminated, lead),
                as_flags("truncated", truncated, lead))

    def _stream_indices(self, streams) -> np.ndarray:
        if streams is None:
            return self._all_streams
        a = np.asarray(streams)
        if a.dtype.kind not in "iu" or a.ndim != 1:
            raise TypeError(f"streams must be a sequence of ints, got {streams!r}")
        if not len(a) or a.min() < 0 or a.max() >= self.num_envs or len(set(a.tolist())) < len(a):
            raise ValueError(f"streams must be distinct indices in [0, {self.num_envs}), got "
                             f"{a.tolist()}")
        return a.astype(np.int64)

    def _add_steps(self, idx: np.ndarray, steps: int | None, obs, action, reward, next_obs,
                   terminated, truncated) -> None:
        """``steps`` steps of streams ``idx`` (None: one step, arrays without the step axis)."""
        lead = len(idx) if steps is None else (steps, len(idx))
        o, a, r, no, te, tr = self._checked(lead, obs, action, reward, next_obs, terminated,
                                            truncated)
        self._settle()
        if self._frames is None:
            self._core.add_steps(idx, steps or 1, o, a, r, no, te, tr)
            return
        # Device memory: the core sees keys, so the frames (and, since the steps go to the core
        # one by one, everything else) are checked here, before any step is stored.
        checks = [("obs", o), ("next_obs", no)] if self.obs_dtype.kind == "f" else []
        for name, x in (*checks, ("action", a), ("reward", r)):
            if not np.isfinite(x).all():
                raise ValueError(f"{name} must be finite (no NaN or inf)")
        rows = [(o, a, r, no, te, tr)] if steps is None else zip(o, a, r, no, te, tr)
        for o1, a1, r1, no1, te1, tr1 in rows:
            with self._lock:
                obs_keys, next_keys, new = self._frames.keys(self._core.stream_state(), o1, idx)
                self._core.add_steps(idx, 1, obs_keys, a1, r1, next_keys, te1, tr1)
                self._frames.write(o1, no1, obs_keys, next_keys, new, idx)

    # -- sampling -------------------------------------------------------------------------
    def end_episodes(self, streams=None) -> None:
        """End every stream's (or ``streams``') running episode as truncated: it bootstraps
        from its last ``next_obs``, and the next ``add`` starts a new episode even if its
        ``obs`` equals that ``next_obs``. For envs that restart without a final step (a
        resumed run, an env worker that died)."""
        idx = None if streams is None else self._stream_indices(streams)
        self._settle()
        self._core.end_episodes(idx)

    def sample(self, batch_size: int, out: Batch | None = None) -> Batch:
        """Draw ``batch_size`` sampleable steps uniformly, with replacement.

        ``out``: tensors on ``device`` of the batch's shapes and dtypes to write it into, and
        return (a CUDA graph's inputs, say: the batch then needs no copy of its own). See the
        class docstring for how long a returned batch stays valid otherwise.
        """
        # Hot path: a known batch size goes straight to its staging.
        if type(batch_size) is not int:
            batch_size = check_count("batch_size", batch_size)
        if out is not None and (out is not self._out_checked or batch_size != len(out.reward)):
            self._check_out(out, batch_size)
            self._out_checked = out  # a CUDA graph's inputs come back every update
        if self._prefetcher is not None:
            batch = self._prefetcher.sample(batch_size)
            if out is None:
                return batch
            for o, t in zip(out, batch):  # on the caller's stream: after its last use of out
                o.copy_(t)
            return out
        if self._frames is not None:
            return self._sample_device_memory(batch_size, out)
        ring = self._staging.get(batch_size)
        if ring is None:
            ring = self._staging[batch_size] = self._new_ring(batch_size)
        if self._on_cpu and not self.pin_memory and out is None:
            ring.first.fill(self._threads)  # raises ValueError past num_sampleable, writes nothing
            return ring.first.host
        staging = ring.take()  # locked
        try:
            return staging.fill_and_copy(self._threads, out=out)
        finally:
            staging.lock.release()

    def _check_out(self, out, batch_size: int) -> None:
        expected = Batch(
            obs=((batch_size, *self.stacked_obs_shape), self._torch_obs_dtype),
            action=((batch_size, *self.action_shape), torch.float32),
            reward=((batch_size,), torch.float32),
            next_obs=((batch_size, *self.stacked_obs_shape), self._torch_obs_dtype),
            discount=((batch_size,), torch.float32))
        if not isinstance(out, Batch):
            raise TypeError(f"out must be a Batch of tensors, got {type(out).__name__}")
        for name, t, (want, dtype) in zip(Batch._fields, out, expected):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want \
                    or t.dtype != dtype or t.device != self.device or not t.is_contiguous():
                got = (f"{tuple(t.shape)} {t.dtype} on {t.device}"
                       if isinstance(t, torch.Tensor) else type(t).__name__)
                raise ValueError(f"out.{name} must be a contiguous {want} {dtype} tensor on "
                                 f"{self.device}, got {got}")

    def _sample_device_memory(self, batch_size: int, out: Batch | None = None) -> Batch:
        """The core gathers keys and the small fields, the device gathers the frames."""
        ring = self._staging.get(batch_size)
        if ring is None:
            ring = self._staging[batch_size] = self._new_ring(batch_size)
        staging = ring.take()  # locked (before self._lock, as everywhere)
        try:
            with self._lock:
                keys = staging.fill_and_copy(self._threads)
                shape = self.stacked_obs_shape
                obs = self._frames.gather(keys.obs, shape, None if out is None else out.obs)
                next_obs = self._frames.gather(keys.next_obs, shape,
                                               None if out is None else out.next_obs)
            if out is None:
                return Batch(obs, keys.action, keys.reward, next_obs, keys.discount)
            for name in ("action", "reward", "discount"):  # (on the CPU: from the staging)
                getattr(out, name).copy_(getattr(keys, name))
            return out
        finally:
            staging.lock.release()

    def _new_ring(self, batch_size: int) -> StagingRing:
        return StagingRing(partial(self._new_staging, batch_size), self.device.type == "cuda")

    def _new_staging(self, batch_size: int) -> Staging:
        batch_size = check_count("batch_size", batch_size)
        available = self._core.num_sampleable
        if batch_size > available:  # before allocating (and pinning) staging for it
            raise ValueError(f"batch_size {batch_size} is larger than the {available} steps that "
                             "can be sampled now")
        if self._frames is not None:  # the stacks' keys
            obs_shape, obs_dtype = (self.frame_stack,), torch.int64
        else:
            obs_shape, obs_dtype = self.stacked_obs_shape, self._torch_obs_dtype
        return Staging(self._core, batch_size, obs_shape, obs_dtype, self.action_shape,
                       self.device, self.pin_memory)
