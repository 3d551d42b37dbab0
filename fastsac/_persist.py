"""Saving and loading replay buffers: an uncompressed ``.npz`` with a format tag and version.

The file holds the buffer's config (JSON), its slots, the per-stream counters and the
sampling RNG state, so a loaded buffer samples exactly what the saved one would have. Version
2 files hold only the slots each stream has written (a buffer's file grows as it fills;
version 1, still read, held the whole block). Saving holds the core's lock (a concurrent
``add`` waits) and writes the slots straight from the core; loading reads them straight into
the new core, so neither needs a second copy.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import TYPE_CHECKING

import numpy as np

from fastsac._io import atomic_write

if TYPE_CHECKING:
    from fastsac.buffers import ReplayBuffer

FORMAT = "fastsac.ReplayBuffer"
VERSION = 1  # of state_dict(), whose "storage" is the whole block
FILE_VERSION = 2  # of save()'s files, whose "storage" holds each stream's written slots
FILE_VERSIONS = (1, 2)
KEYS = ("format", "version", "config", "storage", "streams", "rng")
_CHUNK = 64 << 20


def _state(buf: ReplayBuffer, slots: np.ndarray) -> dict:
    core = buf._core
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": buf.config(),
        "storage": slots,
        "streams": np.asarray(core.stream_state(), dtype=np.int64),
        "rng": np.asarray(core.rng_state(), dtype=np.uint64),
    }


def state_dict(buf: ReplayBuffer) -> dict:
    """A consistent copy, taken under the core's lock (later adds do not change it)."""
    with buf._core.locked():
        return _state(buf, buf._core.slots().copy())


def _check_header(state: dict, versions: tuple[int, ...] = (VERSION,)) -> None:
    if state["format"] != FORMAT:
        raise ValueError(f"state has format {state['format']!r}, expected {FORMAT!r}")
    version = np.asarray(state["version"])
    if version.ndim != 0 or version.dtype.kind not in "iu" or int(version) not in versions:
        raise ValueError(f"state has format version {state['version']}, this fastsac reads "
                         f"version {' or '.join(map(str, versions))}")


def _set_streams(core, state: dict) -> None:
    """The per-stream counters into ``core`` (validated there); its written spans follow."""
    core.set_stream_state([int(w) for w in np.asarray(state["streams"], dtype=np.int64)])


def _finish(core, state: dict) -> None:
    """The RNG into ``core`` (whose counters and slots are set), then a full consistency check."""
    core.set_rng_state([int(w) for w in np.asarray(state["rng"], dtype=np.uint64)])
    core.check_integrity()


def load_state_dict(buf: ReplayBuffer, state: dict) -> None:
    """Restore into a fresh core first, so a bad state leaves ``buf`` as it was."""
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise ValueError(f"state is missing {missing}; not a fastsac ReplayBuffer state")
    _check_header(state)
    config, mine = dict(state["config"]), buf.config()
    config.pop("seed", None)
    mine.pop("seed", None)
    if config != mine:
        raise ValueError(f"state was saved from a buffer with config {config}, this buffer has "
                         f"{mine}")
    core = buf._new_core()
    slots, target = np.asarray(state["storage"]), core.slots()
    if slots.dtype != np.uint8 or slots.shape != target.shape:
        raise ValueError(f"state storage has {slots.shape} {slots.dtype}, expected "
                         f"{target.shape} uint8")
    _set_streams(core, state)
    target[...] = slots
    _finish(core, state)
    buf._core = core
    buf._staging.clear()


def save(buf: ReplayBuffer, path: str | os.PathLike) -> None:
    with atomic_write(path) as f, buf._core.locked():
        slots = buf._core.slots()
        state = _state(buf, None)
        state["version"] = FILE_VERSION
        state["config"] = json.dumps(state["config"])
        spans = buf._core.written_spans()
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for key in KEYS:
                if key == "storage":
                    continue
                with z.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, np.asarray(state[key]),
                                              allow_pickle=False)
            with z.open("storage.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, {
                    "descr": "|u1", "fortran_order": False,
                    "shape": (sum(n for _, n in spans),)})
                for offset, n in spans:
                    for start in range(offset, offset + n, _CHUNK):
                        member.write(slots[start:min(start + _CHUNK, offset + n)])


def _read_into(member, target: np.ndarray, spans: list[tuple[int, int]]) -> None:
    """Read an uncompressed ``.npy`` zip member straight into the ``spans`` (offset, bytes) of
    ``target``, one after the other (checks the CRC)."""
    version = np.lib.format.read_magic(member)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError(f"unsupported .npy version {version}")
    shape, _, dtype = read_header(member)
    expected = (sum(n for _, n in spans),)
    if dtype != np.uint8 or shape != expected:
        raise ValueError(f"storage has {shape} {dtype}, expected {expected} uint8")
    for offset, length in spans:
        view, done = memoryview(target[offset:offset + length]), 0
        while done < length:
            n = member.readinto(view[done:])
            if not n:
                raise ValueError("storage is truncated")
            done += n
    if member.read(1):
        raise ValueError("storage has trailing bytes")


def load(cls: type[ReplayBuffer], path: str | os.PathLike, **kwargs) -> ReplayBuffer:
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as z:
            names = set(z.namelist())
            missing = [k for k in KEYS if f"{k}.npy" not in names]
            if missing:
                raise ValueError(f"missing {missing}")
            state = {k: np.lib.format.read_array(z.open(f"{k}.npy"), allow_pickle=False)
                     for k in KEYS if k != "storage"}
            state["format"] = str(state["format"])
            _check_header(state, FILE_VERSIONS)
            config = json.loads(str(state["config"]))
            config["obs_shape"] = tuple(config["obs_shape"])
            config["action_shape"] = tuple(config["action_shape"])
            try:
                buf = cls(**config, **kwargs)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"invalid buffer config: {exc}") from exc
            core = buf._core  # buf is new: nothing to keep on failure
            _set_streams(core, state)
            target = core.slots()
            spans = [(0, target.nbytes)] if int(state["version"]) == 1 \
                else core.written_spans()
            with z.open("storage.npy") as member:
                _read_into(member, target, spans)
            _finish(core, state)
    except FileNotFoundError:
        raise
    except (ValueError, TypeError, OSError, EOFError, KeyError, MemoryError,
            zipfile.BadZipFile) as exc:  # MemoryError: a crafted size or header
        raise ValueError(f"{path} is not a readable fastsac replay buffer file "
                         f"(truncated, foreign or corrupt): {exc}") from exc
    return buf
