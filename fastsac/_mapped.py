"""File-backed slots (``ReplayBuffer(path=DIR)``): the storage directory, its ``buffer.json``
(the buffer's layout, checked when the directory is used again) and its ``slots`` file (mapped
by the C++ core, which checks the file's own header)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastsac import _core
from fastsac._io import atomic_write

SLOTS = "slots"
CONFIG = "buffer.json"


def storage_dir(path: str | os.PathLike, memory: str, config: dict) -> str:
    """The absolute directory, created if need be, after checking that a buffer of
    ``config`` may keep its slots there. Raises ValueError naming the path."""
    if memory != "host":
        raise ValueError("path (slots in a file) needs memory='host'")
    d = Path(os.path.abspath(os.fspath(path)))
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"path {str(d)!r}: cannot create the directory "
                         f"({exc.strerror or exc})") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise ValueError(f"path {str(d)!r}: the directory is not writable")
    recorded = d / CONFIG
    if recorded.exists():
        try:
            theirs = json.loads(recorded.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"path {str(d)!r}: {CONFIG} cannot be read ({exc})") from None
        if theirs != config:
            raise ValueError(f"path {str(d)!r} holds the slots of another buffer: {theirs}; "
                             f"this buffer is {config}")
    return str(d)


def open_slots(directory: str, config: dict, core_args: dict) -> _core.ReplayCore:
    """A core whose slots are ``directory/slots`` (created if missing); records ``config`` in
    ``directory/buffer.json``."""
    try:
        core = _core.ReplayCore(**core_args, path=os.path.join(directory, SLOTS))
    except (ValueError, RuntimeError) as exc:  # the message names the file and the reason
        raise ValueError(f"path: {exc}") from None
    recorded = Path(directory, CONFIG)
    if not recorded.exists():
        with atomic_write(recorded) as f:
            f.write((json.dumps(config, indent=2) + "\n").encode())
    return core


def slots_exist(config: dict) -> bool:
    return os.path.exists(os.path.join(config["path"], SLOTS))
