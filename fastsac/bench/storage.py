"""``fastsac bench storage``: replay slots in a memory-mapped file (``ReplayBuffer(path=...)``)
next to the same buffer in memory, 84x84 RGB frames, frame stack 3, batch 256.

- Fill: seconds per image step added, file against memory, in turn.
- Sampling with the file in the page cache, against memory, in turn.
- Checkpoint: flushing the file after 10,000 more steps (what a checkpoint then writes) and
  right after filling, against saving the in-memory buffer to an ``.npz``.
- Larger than RAM (full run only, when the disk has room): a file of 1.5x this machine's RAM,
  sampled cold from the disk; no in-memory baseline can exist there.

Files go to a temporary directory under ``FASTSAC_BENCH_DIR`` (default: the system's temporary
directory), which needs the room: about 2.2 GB, and 1.5x RAM more for the larger-than-RAM case.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from fastsac.bench._util import interleaved, log, median, row
from fastsac.buffers import ReplayBuffer

FRAME = (3, 84, 84)
BATCH = 256


def _buffer(steps: int, path: Path | None) -> ReplayBuffer:
    return ReplayBuffer(steps, FRAME, (6,), obs_dtype=np.uint8, frame_stack=3, n_step=3,
                        seed=0, path=path)


class _Filler:
    """Adds image steps (episodes of 1,000) from a small pool of random frames."""

    def __init__(self, buf: ReplayBuffer, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.frames = rng.integers(0, 256, (64, *FRAME), dtype=np.uint8)
        self.buf, self.t = buf, 0

    def add(self, n: int) -> None:
        f, a = self.frames, np.zeros(6, np.float32)
        for _ in range(n):
            t = self.t
            self.buf.add(f[t % 64], a, 1.0, f[(t + 1) % 64], False, t % 1000 == 999)
            self.t += 1


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _drop_page_cache() -> bool:
    """Evict clean pages (root on Linux only): a cold read then comes from the disk."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def _cold_sample(buf: ReplayBuffer, bookkeeping: Path) -> tuple[ReplayBuffer, float]:
    """Seconds of one sample(BATCH) with none of the file in the page cache (a mapped page
    cannot be dropped: the buffer is closed first, then loaded again); returns the buffer."""
    buf.save(bookkeeping)
    buf.close()
    _drop_page_cache()
    buf = ReplayBuffer.load(bookkeeping)
    t0 = time.perf_counter()
    buf.sample(BATCH)
    return buf, time.perf_counter() - t0


def _in_cache_rows(tmp: Path, quick: bool) -> list[dict]:
    steps = 2_000 if quick else 100_000
    more = 200 if quick else 10_000
    blocks, calls = (2, 3) if quick else (5, 20)
    mem, filed = _buffer(steps, None), _buffer(steps, tmp / "in-cache")
    fillers = {"file": _Filler(filed), "memory": _Filler(mem)}
    log(f"storage: filling two {steps:,}-step image buffers, in turn")
    t = interleaved({k: (lambda f=f: f.add(steps // 10)) for k, f in fillers.items()},
                    calls=1, blocks=10, warmup=0)
    fill = {k: median(v) / (steps // 10) for k, v in t.items()}
    rows = [row(f"image fill, {steps:,} steps, file-backed", "us", fill["file"] * 1e6,
                fill["memory"] * 1e6, lower_is_better=True,
                note="per 84x84 RGB step added; baseline column: the same buffer in memory")]
    log(f"storage: timing sample({BATCH}), the file in the page cache, against memory")
    t = interleaved({"file": lambda: filed.sample(BATCH), "memory": lambda: mem.sample(BATCH)},
                    calls=calls, blocks=blocks)
    rows.append(row(f"image sample({BATCH}), stack 3, n-step 3, file in the page cache", "ms",
                    median(t["file"]) * 1e3, median(t["memory"]) * 1e3, lower_is_better=True,
                    note=f"{steps:,} steps ({filed.nbytes / 1e9:.1f} GB of slots); baseline "
                         "column: the same buffer in memory"))
    if not quick and _drop_page_cache():
        times = []
        for _ in range(blocks):
            filed, cold = _cold_sample(filed, tmp / "cold.npz")
            times.append(cold)
        fillers["file"].buf = filed
        rows.append(row(f"image sample({BATCH}) from the disk (page cache dropped first)",
                        "ms", median(times) * 1e3, median(t["memory"]) * 1e3,
                        lower_is_better=True,
                        note="the buffer saved, closed, the page cache dropped, loaded again: "
                             "the first batch after a resume, every frame read from the disk"))

    log("storage: timing a checkpoint, file flush against an in-memory save")
    fillers["file"].add(more)
    t0 = time.perf_counter()
    filed.flush()
    flush_more = time.perf_counter() - t0
    t0 = time.perf_counter()
    filed.save(tmp / "bookkeeping.npz")
    bookkeeping = time.perf_counter() - t0
    t0 = time.perf_counter()
    mem.save(tmp / "memory.npz")
    save = time.perf_counter() - t0
    size = (tmp / "memory.npz").stat().st_size
    rows.append(row(f"checkpoint of a {steps:,}-step image buffer: file-backed", "s",
                    flush_more + bookkeeping, save, lower_is_better=True,
                    note=f"file-backed: flush after {more:,} more steps ({flush_more:.2f} s) + "
                         f"bookkeeping ({bookkeeping * 1e3:.1f} ms, "
                         f"{(tmp / 'bookkeeping.npz').stat().st_size:,} bytes); baseline "
                         f"column: the in-memory buffer's save() ({size / 1e9:.2f} GB)"))
    mem.close()
    filed.close()
    return rows


def _larger_than_ram_rows(tmp: Path) -> list[dict]:
    ram = _ram_bytes()
    target = int(1.5 * ram)
    if _free_bytes(tmp) < target + (4 << 30):
        log(f"storage: skipping the larger-than-RAM case: needs {target / 1e9:.0f} GB of disk")
        return []
    probe = _buffer(1_000, None)
    per_step = probe.nbytes / 1_000
    probe.close()
    steps = int(target / per_step)
    log(f"storage: filling a {steps:,}-step file ({steps * per_step / 1e9:.0f} GB, RAM "
        f"{ram / 1e9:.0f} GB)")
    buf = _buffer(steps, tmp / "big")
    filler = _Filler(buf)
    t0 = time.perf_counter()
    filler.add(steps)
    fill = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    buf.flush()
    flush = time.perf_counter() - t0
    log(f"storage: timing sample({BATCH}) from the larger-than-RAM file")
    buf, first = _cold_sample(buf, tmp / "big.npz")
    times = [first]
    for _ in range(19):
        t0 = time.perf_counter()
        buf.sample(BATCH)
        times.append(time.perf_counter() - t0)
    buf.close()
    return [row(f"image sample({BATCH}), {steps:,} steps in a file of 1.5x RAM", "ms",
                median(times) * 1e3, None, lower_is_better=True,
                note=f"{steps * per_step / 1e9:.0f} GB of slots, {ram / 1e9:.0f} GB RAM; 20 "
                     f"batches after a resume with the page cache dropped (first "
                     f"{times[0] * 1e3:.0f} ms, last {times[-1] * 1e3:.0f} ms). Filling it took "
                     f"{fill * 1e6:.0f} us per step, then {flush:.1f} s to flush")]


def run(quick: bool = False) -> list[dict]:
    base = os.environ.get("FASTSAC_BENCH_DIR") or None
    with tempfile.TemporaryDirectory(prefix="fastsac-bench-", dir=base) as tmp:
        rows = _in_cache_rows(Path(tmp), quick)
        if not quick:
            rows += _larger_than_ram_rows(Path(tmp))
    return rows
