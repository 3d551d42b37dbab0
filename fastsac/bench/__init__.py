"""What ``fastsac bench`` measures: fastsac next to the seed-style baseline
(:mod:`fastsac.bench.seed_style`), both timed in one process, block by block in turn.

Each bench is a module with ``run(quick) -> list[dict]`` returning table rows
(:func:`fastsac.bench._util.row`); :data:`BENCHES` is the table the command dispatches to.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastsac.bench import buffer, gpu, sb3, storage, train, update, workers
from fastsac.bench._util import machine, start_clock

BENCHES: dict[str, tuple[str, Callable[[bool], list[dict]]]] = {
    "buffer": ("replay buffer: sample latency, gather bandwidth, memory, fill rate", buffer.run),
    "update": ("SAC learner: updates per second and act() latency", update.run),
    "train": ("end-to-end training on HalfCheetah-v5, vector and pixels (needs the mujoco "
              "extra)", train.run),
    "sb3": ("fastsac's buffer in stable-baselines3 next to SB3's own: memory per step and "
            "sample(256), pixels in 4-frame stacks and vectors (needs the sb3 extra)", sb3.run),
    "storage": ("replay slots in a memory-mapped file next to memory: fill, sampling in the "
                "page cache and from the disk, checkpoints, a file larger than RAM (needs "
                "1.5x RAM of free disk for that case)", storage.run),
    "workers": ("env workers on Ray next to the one-process loop: collection, Ray's cost per "
                "chunk, learner ingest, end-to-end training (needs the ray and mujoco extras)",
                workers.run),
    "gpu": ("the CUDA path: updates, sampling to the GPU, pixel updates, end-to-end training "
            "(needs a GPU; --quick runs on the CPU)", gpu.run),
}


def run(what: str, quick: bool = False) -> dict:
    """Run one bench; returns its report: ``what``, ``quick``, ``elapsed_s``, ``machine`` and
    ``rows``."""
    if what not in BENCHES:
        raise ValueError(f"what must be one of {sorted(BENCHES)}, got {what!r}")
    info = machine()  # before the run, so loadavg shows other work on the machine
    start_clock()
    t0 = time.perf_counter()
    rows = BENCHES[what][1](quick)
    return dict(what=what, quick=quick, elapsed_s=time.perf_counter() - t0, machine=info,
                rows=rows)
