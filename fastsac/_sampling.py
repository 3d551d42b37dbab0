"""Where sampled batches are gathered: staging memory allocated once per batch size (pinned
for CUDA, where a ring of them lets batches queue for the device), and prefetching, which
gathers the next batch in a background thread while the caller trains on the last one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from fastsac import _core
from fastsac.batch import Batch

# Batches of one size that a CUDA buffer's sampling may have queued for the device at once, each
# from its own pinned staging (the updates a host may run ahead of the GPU); fewer where they
# would take more pinned memory than IN_FLIGHT_BYTES (image batches), but two at least.
IN_FLIGHT = 8
IN_FLIGHT_BYTES = 128 << 20


class Staging:
    """Host memory for one batch of one size, which the core fills without the GIL."""

    def __init__(self, core: _core.ReplayCore, batch_size: int, obs_shape: tuple[int, ...],
                 obs_dtype: torch.dtype, action_shape: tuple[int, ...], device: torch.device,
                 pin: bool) -> None:
        def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return torch.empty((batch_size, *shape), dtype=dtype, pin_memory=pin)

        self.host = h = Batch(obs=empty(obs_shape, obs_dtype),
                              action=empty(action_shape, torch.float32),
                              reward=empty((), torch.float32),
                              next_obs=empty(obs_shape, obs_dtype),
                              discount=empty((), torch.float32))
        # The core writes through numpy views of these tensors, checked once here.
        self.fill = _core.Staging(core, batch_size, h.obs.numpy(), h.next_obs.numpy(),
                                  h.action.numpy(), h.reward.numpy(), h.discount.numpy()).fill
        self.device, self.pin = device, pin
        self.nbytes = sum(t.numel() * t.element_size() for t in h)
        # CUDA only: marks the end of the last non-blocking copy out of this staging, which
        # a refill waits for. The lock: one thread fills it at a time.
        self.copied = torch.cuda.Event() if device.type == "cuda" else None
        self.lock = threading.Lock()

    def fill_and_copy(self, threads: int, stream: torch.cuda.Stream | None = None,
                      out: Batch | None = None) -> Batch:
        """Gather a batch and return it on the device: the staging itself on the CPU, else a
        copy made on ``stream`` (None: the current one), which ``copied`` marks the end of;
        or copied into ``out``'s tensors."""
        if self.copied is not None:
            self.copied.synchronize()  # the last copy out of this staging has finished
        elif self.pin:
            # A CPU batch in pinned memory: a learner may still be copying the last one out
            # with a non-blocking copy, and which one cannot be told: wait for the GPU's work.
            torch.cuda.synchronize()
        self.fill(threads)  # raises ValueError past num_sampleable, writes nothing
        if self.copied is None:
            if out is None:
                return self.host
            for o, t in zip(out, self.host):
                o.copy_(t)
            return out
        if stream is None:  # the copies run on the current stream of the device they go to
            out = self._copy_out(out)
            stream = torch.cuda.current_stream(self.device)
        else:  # (the device first: leaving a stream context alone would select device 0)
            with torch.cuda.device(self.device), torch.cuda.stream(stream):
                out = self._copy_out(out)
        self.copied.record(stream)
        return out

    def _copy_out(self, out: Batch | None) -> Batch:
        if out is None:
            return Batch(*(t.to(self.device, non_blocking=self.pin) for t in self.host))
        for o, t in zip(out, self.host):
            o.copy_(t, non_blocking=self.pin)
        return out

    def copy_done(self) -> bool:
        """Whether no copy out of this staging is queued on the GPU (always, off CUDA)."""
        return self.copied is None or self.copied.query()


class StagingRing:
    """The stagings of one batch size. On CUDA a staging stays busy until the copy out of it
    has run, and that copy waits on its stream for the updates queued before it: refilling a
    busy staging would make the host wait for the GPU, and let it run at most one update
    ahead. The ring takes an idle staging instead, making another while it holds fewer than
    ``limit`` (then it takes the next in turn, and waits). Off CUDA it holds one."""

    def __init__(self, new: Callable[[], Staging], cuda: bool) -> None:
        self._new = new
        self.first = new()
        self._limit = min(IN_FLIGHT, max(2, IN_FLIGHT_BYTES // self.first.nbytes)) if cuda else 1
        self._stagings = [self.first]
        self._turn = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._stagings)

    def take(self) -> Staging:
        """A staging with its lock held, for the caller to fill and then release: one that no
        thread holds and no copy reads from, if there is one."""
        with self._lock:
            n = len(self._stagings)
            for k in range(1, n + 1):
                i = (self._turn + k) % n
                staging = self._stagings[i]
                if staging.lock.acquire(blocking=False):
                    if staging.copy_done():  # (under its lock: no new copy can start)
                        self._turn = i
                        return staging
                    staging.lock.release()
            if n < self._limit:
                staging = self._new()
                staging.lock.acquire()
                self._stagings.append(staging)
                self._turn = n
                return staging
            self._turn = (self._turn + 1) % n
            staging = self._stagings[self._turn]
        staging.lock.acquire()  # outside the ring's lock: another thread may be filling it
        return staging


class Prefetcher:
    """``sample`` returns the batch gathered during the previous call (for the same batch
    size) and starts gathering the next in a background thread, on a second staging. The core
    draws and gathers a batch in one step under its lock, so a prefetched batch holds exactly
    what the buffer held when it was drawn: steps added later are in the next batch, and no
    slot overwritten in between can reach it. On CUDA the copy runs on a side stream, and the
    caller's stream waits for it (an event), not the host."""

    def __init__(self, new_staging, threads: int, device: torch.device) -> None:
        self._new_staging = new_staging  # batch_size -> Staging
        self._threads = threads
        self._stagings: dict[int, list[Staging]] = {}
        self._turn = 0
        self._pending: tuple[int, Future] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fastsac-prefetch")
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._device = device
        self._lock = threading.Lock()

    def _next(self, batch_size: int) -> Staging:
        pair = self._stagings.get(batch_size)
        if pair is None:
            pair = self._stagings[batch_size] = [self._new_staging(batch_size),
                                                 self._new_staging(batch_size)]
        self._turn ^= 1
        return pair[self._turn]

    def _fill(self, staging: Staging) -> tuple[Batch, Staging]:
        return staging.fill_and_copy(self._threads, self._stream), staging

    def sample(self, batch_size: int) -> Batch:
        with self._lock:
            got = None
            if self._pending is not None:
                size, future = self._pending
                self._pending = None
                try:
                    got = future.result()
                except ValueError:  # too few steps when it was drawn: drawn again below
                    got = None
                if size != batch_size:
                    got = None  # another size was asked for: its draw is dropped
            if got is None:
                got = self._fill(self._next(batch_size))
            self._pending = (batch_size, self._pool.submit(self._fill, self._next(batch_size)))
        batch, staging = got
        if staging.copied is not None:  # the caller's stream waits for the copy, not the host
            stream = torch.cuda.current_stream(self._device)
            stream.wait_event(staging.copied)
            for t in batch:
                t.record_stream(stream)  # made on the side stream, used on this one
        return batch

    def settle(self) -> None:
        """Wait for the batch in the background (its draw is then part of the state)."""
        with self._lock:
            if self._pending is not None:
                try:
                    self._pending[1].result()
                except ValueError:
                    pass

    def reset(self) -> None:
        """Drop the batch in the background and the stagings (the core is being replaced)."""
        self.settle()
        with self._lock:
            self._pending = None
            self._stagings.clear()
