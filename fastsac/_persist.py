"""Saving and loading replay buffers: an uncompressed ``.npz`` with a format tag and version.

The file holds the buffer's config (JSON), its raw storage block, the per-stream counters and
the sampling RNG state, so a loaded buffer samples exactly what the saved one would have.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fastsac.buffers import ReplayBuffer

FORMAT = "fastsac.ReplayBuffer"
VERSION = 1
KEYS = ("format", "version", "config", "storage", "streams", "rng")


def state_dict(buf: ReplayBuffer) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": buf.config(),
        "storage": buf._core.storage(),
        "streams": np.asarray(buf._core.stream_state(), dtype=np.int64),
        "rng": np.asarray(buf._core.rng_state(), dtype=np.uint64),
    }


def load_state_dict(buf: ReplayBuffer, state: dict) -> None:
    """Restore into a fresh core first, so a bad state leaves ``buf`` as it was."""
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise ValueError(f"state is missing {missing}; not a fastsac ReplayBuffer state")
    if state["format"] != FORMAT:
        raise ValueError(f"state has format {state['format']!r}, expected {FORMAT!r}")
    if int(state["version"]) != VERSION:
        raise ValueError(f"state has format version {state['version']}, this fastsac reads "
                         f"version {VERSION}")
    config = dict(state["config"])
    mine = buf.config()
    config.pop("seed", None)
    mine.pop("seed", None)
    if config != mine:
        raise ValueError(f"state was saved from a buffer with config {config}, this buffer has "
                         f"{mine}")
    core = buf._new_core()
    storage = np.asarray(state["storage"])
    target = core.storage()
    if storage.dtype != np.uint8 or storage.shape != target.shape:
        raise ValueError(f"state storage has {storage.shape} {storage.dtype}, expected "
                         f"{target.shape} uint8")
    target[...] = storage
    core.set_stream_state([int(w) for w in np.asarray(state["streams"], dtype=np.int64)])
    core.set_rng_state([int(w) for w in np.asarray(state["rng"], dtype=np.uint64)])
    core.check_integrity()
    buf._core = core
    buf._staging.clear()


def save(buf: ReplayBuffer, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    state = state_dict(buf)
    arrays = {k: np.asarray(v) for k, v in state.items() if k != "config"}
    arrays["format"] = np.asarray(FORMAT)
    arrays["config"] = np.asarray(json.dumps(state["config"]))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastsac-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half
    except BaseException:
        os.unlink(tmp)
        raise


def load(cls: type[ReplayBuffer], path: str | os.PathLike, **kwargs) -> ReplayBuffer:
    path = os.fspath(path)
    try:
        # Our own handle: numpy leaks it when a truncated zip fails to open.
        with open(path, "rb") as fh:
            f = np.load(fh, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with f:
                if "format" not in f.files:
                    raise ValueError("no format tag")
                if str(f["format"]) != FORMAT:
                    raise ValueError(f"format tag is {str(f['format'])!r}")
                state = {k: f[k] for k in KEYS}
        state["format"] = str(state["format"])
        state["config"] = json.loads(str(state["config"]))
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile,
            json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable fastsac replay buffer file "
                         f"(truncated or foreign?): {exc}") from exc
    config = dict(state["config"])
    config["obs_shape"] = tuple(config["obs_shape"])
    config["action_shape"] = tuple(config["action_shape"])
    try:
        buf = cls(**config, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} holds an invalid buffer config: {exc}") from exc
    load_state_dict(buf, state)
    return buf
