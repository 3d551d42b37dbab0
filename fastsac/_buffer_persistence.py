"""What a ReplayBuffer keeps and hands over: its config, state dicts, files (``save`` and
``load``), pickles, and with ``path`` the mapped file's flushing and closing.

:class:`BufferPersistence` is ReplayBuffer's base: its methods read the buffer's layout
attributes, core, staging and prefetcher, which ``ReplayBuffer.__init__`` sets.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from fastsac import _core, _persist

if TYPE_CHECKING:
    from typing_extensions import Self


class Closed:
    """The core of a closed buffer: any use says so."""

    def __getattr__(self, name: str):
        raise ValueError("the replay buffer is closed")


class BufferPersistence:
    """ReplayBuffer's persistence (see the module docstring)."""

    def config(self) -> dict:
        """Constructor arguments that rebuild an empty buffer of the same layout."""
        config = self._file_config()
        config["seed"] = self.seed
        if self.path is not None:
            config["path"] = self.path
        return config

    def _file_config(self) -> dict:
        """What a storage directory's buffer.json records (the seed may differ)."""
        config = dict(capacity=self.num_envs * self._ring, obs_shape=list(self.obs_shape),
                      action_shape=list(self.action_shape), obs_dtype=self.obs_dtype.str,
                      num_envs=self.num_envs, frame_stack=self.frame_stack,
                      n_step=self.n_step, gamma=self.gamma, storage=self.storage)
        if self.stack_pad != "first":  # only then: files of the default stay as they were
            config["stack_pad"] = self.stack_pad
        return config

    def __getstate__(self) -> dict:
        """Pickling (SB3's ``save_replay_buffer`` pickles its buffer): the constructor's
        arguments and the ``state_dict``. A buffer with ``path`` is not pickled: a copy would
        map the file its original holds."""
        if self.path is not None:
            raise TypeError("a ReplayBuffer with path= is not pickled (its slots are in the "
                            "file): save() its bookkeeping and ReplayBuffer.load() it")
        kwargs = dict(self.config(), device=str(self.device), pin_memory=self.pin_memory,
                      memory=self.memory, prefetch=self._prefetcher is not None)
        return {"kwargs": kwargs, "state": self.state_dict()}

    def __setstate__(self, state: dict) -> None:
        kwargs = dict(state["kwargs"])
        if torch.device(kwargs["device"]).type == "cuda" and not torch.cuda.is_available():
            kwargs.update(device="cpu", pin_memory=False)  # pickled on a GPU machine
        self.__init__(**kwargs)
        self.load_state_dict(state["state"])

    def flush(self) -> None:
        """With ``path``: write every slot to the disk and wait (``save`` does it first)."""
        self._settle()
        self._core.flush()

    def close(self) -> None:
        """Release the buffer's memory, or with ``path`` its file and the file's lock; the
        buffer cannot be used after."""
        self._settle()
        with self._lock:
            core, self._core = self._core, Closed()
            self._staging.clear()
        if not isinstance(core, Closed):
            core.close()

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: config, the slots (as ``storage``, a copy),
        per-stream counters and the sampling RNG state."""
        self._settle()
        return _persist.state_dict(self._host_layout_core(), self.config())

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict`` of a buffer with the same config."""
        if self.path is not None:  # the slots are in the file: set the bookkeeping in place
            self._settle()
            if self._prefetcher is not None:
                self._prefetcher.reset()
            core = self._core
            before = core.stream_state(), core.floors(), core.rng_state()
            try:
                _persist.restore(core, self.config(), state)
            except BaseException:
                core.set_stream_state(before[0])
                core.set_floors(before[1])
                core.set_rng_state(before[2])
                raise
            self._staging.clear()
            return
        # Into a fresh core first, so a rejected state leaves this buffer as it was.
        self._use_core(_persist.restore(self._new_core(host_layout=True), self.config(), state))

    def save(self, path: str | os.PathLike) -> None:
        """Write the buffer to ``path`` atomically (temporary file, then rename)."""
        self._settle()
        _persist.save(path, self._host_layout_core(), self.config())

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
             pin_memory: bool | None = None, memory: str = "host",
             prefetch: bool = False) -> Self:
        """Read a buffer written by :meth:`save` (by a buffer of either ``memory``)."""
        buf = None

        def build(config: dict) -> _core.ReplayCore:
            nonlocal buf
            buf = cls(**config, device=device, pin_memory=pin_memory, memory=memory,
                      prefetch=prefetch)
            return buf._core if memory == "host" else buf._new_core(host_layout=True)

        try:
            core = _persist.load(path, build)  # fills an empty core: nothing to keep on failure
        except BaseException:
            if buf is not None:
                buf.close()  # with a path: its file's lock goes now, not with the traceback
            raise
        if core is not buf._core:
            buf._use_core(core)
        return buf

    def _host_layout_core(self) -> _core.ReplayCore:
        """The core, or for ``memory="device"`` a copy of it with the frames put back into
        its records: the layout files and state dicts hold."""
        if self._frames is None:
            return self._core
        host = self._new_core(host_layout=True)
        with self._lock:
            self._frames.to_host(self._core, host)
        return host

    def _use_core(self, core: _core.ReplayCore) -> None:
        """Serve from ``core`` (of the host layout, restored and checked); the staging is bound
        to the core it was made for."""
        if self._prefetcher is not None:
            self._prefetcher.reset()
        with self._lock:
            if self._frames is not None:
                keyed = self._new_core()
                self._frames.from_host(core, keyed)
                core = keyed
            self._core = core
            self._staging.clear()

    def _settle(self) -> None:
        """Let a batch being prefetched finish before the buffer changes or is saved: it then
        holds the buffer as of the ``sample`` call that started it, and a saved state includes
        its draw, whatever the timing."""
        if self._prefetcher is not None:
            self._prefetcher.settle()

