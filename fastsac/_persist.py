"""Saving and loading replay buffers: an uncompressed ``.npz`` with a format tag and version.

Members (also the keys of ``state_dict``): ``format`` (the tag), ``version`` (the layout of
``storage``), ``config`` (the buffer's constructor arguments; JSON in a file), ``storage`` (slot
bytes), ``streams`` (the per-stream counters) and ``rng`` (the sampling RNG state), so a loaded
buffer samples exactly what the saved one would have. ``storage`` is laid out as:

- ``WRITTEN_SLOTS`` (2, what ``save`` writes): stream after stream, the slots each stream has
  written, so a file grows as the buffer fills, not with its capacity;
- ``WHOLE_BLOCK`` (1, what ``state_dict`` returns): the core's whole block of slots;
- ``IN_FILE`` (3, both, for a buffer whose slots are in a file): nothing, the slots being in
  ``config["path"]``; a ``floors`` member adds each stream's first position still held.

Files and state dicts are read in either layout, through one restore path.

Saving writes the slots straight from the core under its lock (a concurrent ``add`` waits);
loading reads them straight into the new core, so neither makes a second copy.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from fastsac._io import atomic_write
from fastsac._mapped import SLOTS as _SLOTS
from fastsac._mapped import slots_exist as _slots_exist

if TYPE_CHECKING:
    from fastsac._core import ReplayCore

FORMAT = "fastsac.ReplayBuffer"
WHOLE_BLOCK = 1  # "storage" is the core's whole block of slots
WRITTEN_SLOTS = 2  # "storage" is each stream's written slots, one stream after the other
IN_FILE = 3  # the slots are in the buffer's file (config["path"]); "storage" is empty
VERSIONS = (WHOLE_BLOCK, WRITTEN_SLOTS, IN_FILE)
KEYS = ("format", "version", "config", "storage", "streams", "rng")
_CHUNK = 64 << 20


def _counters(core: ReplayCore) -> dict:
    """The ``streams`` and ``rng`` members, and ``floors`` for a file-backed core (read under
    the core's lock)."""
    counters = {"streams": np.asarray(core.stream_state(), dtype=np.int64),
                "rng": np.asarray(core.rng_state(), dtype=np.uint64)}
    if core.file_backed:
        counters["floors"] = np.asarray(core.floors(), dtype=np.int64)
        counters["generation"] = np.asarray(core.generation, dtype=np.uint64)
    return counters


def _in_file(core: ReplayCore, config: dict) -> dict:
    """A file-backed core's state: its slots flushed to the disk, its bookkeeping."""
    core.flush()
    return {"format": FORMAT, "version": IN_FILE, "config": config,
            "storage": np.empty(0, np.uint8), **_counters(core)}


def state_dict(core: ReplayCore, config: dict) -> dict:
    """A consistent copy, taken under the core's lock (later adds do not change it)."""
    with core.locked():
        if core.file_backed:
            return _in_file(core, config)
        return {"format": FORMAT, "version": WHOLE_BLOCK, "config": config,
                "storage": core.slots().copy(), **_counters(core)}


def save(path: str | os.PathLike, core: ReplayCore, config: dict) -> None:
    """Write ``core`` in the ``WRITTEN_SLOTS`` layout (a file-backed core: its bookkeeping,
    ``IN_FILE``), atomically (temporary file, rename)."""
    if core.file_backed:
        with core.locked():
            state = _in_file(core, config)
        with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for key, value in state.items():
                if key == "config":
                    value = json.dumps(value)
                with z.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
        return
    with atomic_write(path) as f, core.locked():
        members = {"format": FORMAT, "version": WRITTEN_SLOTS, "config": json.dumps(config),
                   **_counters(core)}
        spans, slots = core.written_spans(), core.slots()
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for key, value in members.items():
                with z.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
            with z.open("storage.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, {
                    "descr": "|u1", "fortran_order": False,
                    "shape": (sum(n for _, n in spans),)})
                for offset, n in spans:
                    for start in range(offset, offset + n, _CHUNK):
                        member.write(slots[start:min(start + _CHUNK, offset + n)])


def _check_header(state: Mapping) -> None:
    if state["format"] != FORMAT:
        raise ValueError(f"state has format {state['format']!r}, expected {FORMAT!r}")
    version = np.asarray(state["version"])
    if version.ndim != 0 or version.dtype.kind not in "iu" or int(version) not in VERSIONS:
        raise ValueError(f"state has format version {state['version']}, this fastsac reads "
                         f"version {' or '.join(map(str, VERSIONS))}")


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


def _copy_into(source, target: np.ndarray, spans: list[tuple[int, int]]) -> None:
    """Copy an array's bytes into the ``spans`` (offset, bytes) of ``target``, one after the
    other."""
    source = np.asarray(source)
    expected = (sum(n for _, n in spans),)
    if source.dtype != np.uint8 or source.shape != expected:
        raise ValueError(f"storage has {source.shape} {source.dtype}, expected {expected} uint8")
    done = 0
    for offset, n in spans:
        target[offset:offset + n] = source[done:done + n]
        done += n


def restore(core: ReplayCore, config: dict, state: Mapping) -> ReplayCore:
    """Fill the empty ``core``, built from ``config``, with ``state`` and return it.

    Checks the header and that ``state`` was saved from a buffer of ``config`` (its seed
    aside), sets the counters (which the core validates), reads the slot bytes into the spans
    they fill, sets the RNG and checks every held slot. ``state["storage"]`` is an array, or
    an open ``.npy`` zip member that is read straight into the slots.
    """
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise ValueError(f"state is missing {missing}; not a fastsac ReplayBuffer state")
    _check_header(state)
    theirs, mine = dict(state["config"]), dict(config)
    theirs.pop("seed", None)
    mine.pop("seed", None)
    if theirs != mine:
        raise ValueError(f"state was saved from a buffer with config {theirs}, this buffer has "
                         f"{mine}")
    if (int(state["version"]) == IN_FILE) != core.file_backed:
        raise ValueError("a state of a file-backed buffer (version 3) loads into a buffer of "
                         "the same path only, and such a buffer loads only such a state")
    core.set_stream_state([int(w) for w in np.asarray(state["streams"], dtype=np.int64)])
    if core.file_backed:
        missing = [k for k in ("floors", "generation") if k not in state]
        if missing:
            raise ValueError(f"state is missing {missing}")
        core.set_floors([int(w) for w in np.asarray(state["floors"], dtype=np.int64)])
        core.set_rng_state([int(w) for w in np.asarray(state["rng"], dtype=np.uint64)])
        # Slots written after this state was saved (or by another buffer since) are lost; the
        # slots' integrity is checked there, and a state that fails it leaves the file as it was.
        lost = core.drop_overwritten(int(np.asarray(state["generation"], dtype=np.uint64)))
        if lost:
            warnings.warn(f"{lost} slots of the replay file "
                          f"{os.path.join(config['path'], _SLOTS)} were "
                          "overwritten after this state was saved: their steps are dropped",
                          stacklevel=3)
        return core
    target = core.slots()
    spans = [(0, target.nbytes)] if int(state["version"]) == WHOLE_BLOCK \
        else core.written_spans()
    source = state["storage"]
    if hasattr(source, "readinto"):
        _read_into(source, target, spans)
    else:
        _copy_into(source, target, spans)
    core.set_rng_state([int(w) for w in np.asarray(state["rng"], dtype=np.uint64)])
    core.check_integrity()
    return core


def load(path: str | os.PathLike, build: Callable[[dict], ReplayCore]) -> ReplayCore:
    """Read a file written by :func:`save` into ``build(config)``, an empty core of the file's
    config; a ``TypeError`` or ``ValueError`` from ``build`` means the config is invalid."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as z:
            names = set(z.namelist())
            missing = [k for k in KEYS if f"{k}.npy" not in names]
            if missing:
                raise ValueError(f"missing {missing}")
            state = {k: np.lib.format.read_array(z.open(f"{k}.npy"), allow_pickle=False)
                     for k in (*KEYS, "floors", "generation")
                     if k != "storage" and f"{k}.npy" in names}
            state["format"] = str(state["format"])
            _check_header(state)  # before building a buffer of a foreign file's config
            state["config"] = json.loads(str(state["config"]))
            if int(state["version"]) == IN_FILE and not _slots_exist(state["config"]):
                raise ValueError(f"its slots file is missing from {state['config'].get('path')}")
            try:
                core = build(state["config"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"invalid buffer config: {exc}") from exc
            with z.open("storage.npy") as member:
                return restore(core, state["config"], {**state, "storage": member})
    except FileNotFoundError:
        raise
    except (ValueError, TypeError, OSError, EOFError, KeyError, MemoryError,
            zipfile.BadZipFile) as exc:  # MemoryError: a crafted size or header
        raise ValueError(f"{path} is not a readable fastsac replay buffer file "
                         f"(truncated, foreign or corrupt): {exc}") from exc
