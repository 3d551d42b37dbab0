"""``fastsac bench buffer``: the replay buffer next to :class:`SeedStyleBuffer`, measured in
one run: sample latency (vector and image), gather bandwidth against plain copies, bytes per
stored step, fill rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from fastsac.batch import Batch
from fastsac.bench._buffer_setup import (ACTION, BATCH, EP_LEN, FRAME, FRAME_BYTES, FULL,
                                         QUICK, STACK, VEC_OBS, ImageSetup, Sizes, VectorSetup)
from fastsac.bench._util import cpus, interleaved, log, median, row, spread
from fastsac.buffers import ReplayBuffer


# -- vector --------------------------------------------------------------------------------
def vector_sample_row(v: VectorSetup) -> dict:
    log("vector: timing sample(256)")
    t = interleaved({"fastsac": lambda: v.fast.sample(BATCH), "seed": lambda: v.seed.sample(BATCH)},
                    calls=100, blocks=v.sizes.vector_blocks)
    us = 1e6
    return row(f"vector sample, batch {BATCH} ({v.sizes.vector_capacity:,} x {VEC_OBS} f32)", "us",
               median(t["fastsac"]) * us, median(t["seed"]) * us, lower_is_better=True,
               target=10.0, fastsac_iqr=spread(t["fastsac"], us), seed_iqr=spread(t["seed"], us),
               note=f"per sample() call, median of {len(t['fastsac'])} blocks of 100 calls; "
                    "fastsac returns views of reused staging, seed-style builds 5 new tensors")


def _spin(seconds: float) -> None:
    """Python work that holds the GIL, as gymnasium's wrappers around an env step do."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def vector_prefetch_rows(v: VectorSetup, work_s: float = 200e-6) -> list[dict]:
    """Host time of a vector ``sample(256)`` into given tensors (as the trainer samples into
    a CUDA graph's inputs) with ``prefetch=True``, next to the same buffer without, with
    ``work_s`` between calls, as an env step sits between updates: Python work that holds
    the GIL (the prefetch thread then waits for it), or a wait that releases it."""
    pre = ReplayBuffer(**v.fast.config(), prefetch=True)
    try:
        pre.load_state_dict(v.fast.state_dict())
        bufs = {"prefetch": pre, "direct": v.fast}
        out = {k: Batch(*(t.clone() for t in b.sample(BATCH))) for k, b in bufs.items()}
        rows = []
        kinds = (("Python work", _spin, "Python work (holding the GIL)"),
                 ("GIL released", time.sleep, "a wait that releases the GIL"))
        for between, work, what in kinds:
            def calls(name: str, work=work) -> float:
                spent = 0.0
                for _ in range(20):
                    work(work_s)
                    t0 = time.perf_counter()
                    bufs[name].sample(BATCH, out=out[name])
                    spent += time.perf_counter() - t0
                return spent / 20
            log(f"vector: timing sample(256) with and without prefetch, {between} between")
            t: dict[str, list[float]] = {k: [] for k in bufs}
            for _ in range(max(5, v.sizes.vector_blocks // 10)):
                for k in bufs:
                    t[k].append(calls(k))
            us = 1e6
            rows.append(row(
                f"prefetched vector sample, batch {BATCH}, {between} between calls", "us",
                median(t["prefetch"]) * us, None, lower_is_better=True,
                note=f"host time per call into given tensors, {work_s * us:.0f} us of {what} "
                     f"between calls; without prefetch: {median(t['direct']) * us:.1f} us in "
                     "the same turns"))
        return rows
    finally:
        pre.close()


def vector_fill_row(v: VectorSetup) -> dict:
    f, s = v.fill_times["fastsac"], v.fill_times["seed"]
    return row("vector fill (add / store)", "steps/s", 1 / median(f), 1 / median(s),
               lower_is_better=False, note="one Python call per step; median over blocks of "
               f"{EP_LEN} steps, first fill of fresh memory (informational)")


def vector_memory_row(v: VectorSetup) -> dict:
    return row("memory per vector step", "B", v.fast.nbytes / len(v.fast),
               v.seed.nbytes / v.seed.max_size, lower_is_better=True,
               note="nbytes / steps held (fastsac, full) vs the five arrays' nbytes / capacity "
                    "(seed-style); informational")


# -- images --------------------------------------------------------------------------------
def image_sample_row(img: ImageSetup) -> dict:
    t = img.measure_sample()
    ms = 1e3
    s = img.sizes
    return row(f"image sample, batch {BATCH} (9x84x84 obs + next_obs)", "ms",
               median(t["fastsac"]) * ms, median(t["seed"]) * ms, lower_is_better=True,
               target=3.0, fastsac_iqr=spread(t["fastsac"], ms), seed_iqr=spread(t["seed"], ms),
               note=f"fastsac uint8 frames, capacity {s.image_capacity:,}, gathered with "
                    f"{getattr(img.fast, '_threads', '?')} threads; seed-style float32 stacks at "
                    f"capacity {s.seed_image_capacity:,} only ({img.seed.nbytes / 1e9:.1f} GB; "
                    f"{s.image_capacity:,} would need "
                    f"{img.seed.nbytes / s.seed_image_capacity * s.image_capacity / 1e9:.0f} GB): "
                    "once both are far beyond cache, per-batch cost barely depends on capacity")


def image_sample_u8_row(img: ImageSetup) -> dict:
    t = img.measure_sample()
    ms = 1e3
    return row("image sample vs seed uint8 layout", "ms", median(t["fastsac"]) * ms,
               median(t["seed_u8"]) * ms, lower_is_better=True, seed_iqr=spread(t["seed_u8"], ms),
               note=f"seed-style uint8 stacks (capacity {img.sizes.seed_image_capacity:,}), "
                    "converted to float per batch as its learner needs (informational)")


def _copy(dst: np.ndarray, src: np.ndarray, threads: int) -> None:
    """``np.copyto`` split in ``threads`` contiguous parts (numpy drops the GIL for it)."""
    if threads == 1:
        np.copyto(dst, src)
        return
    cuts = np.linspace(0, len(src), threads + 1).astype(int)
    pool = [threading.Thread(target=np.copyto, args=(dst[lo:hi], src[lo:hi]))
            for lo, hi in zip(cuts[1:-1], cuts[2:])]
    for t in pool:
        t.start()
    np.copyto(dst[:cuts[1]], src[:cuts[1]])
    for t in pool:
        t.join()


class CopyReference:
    """Plain-copy references for the gather, in bytes written per second (best of 1 and
    ``threads`` threads): a large ``np.copyto`` between two touched arrays, and a batch-sized
    copy out of that large array (a different part each time) into one reused destination,
    which is what the gather does with its staging. Timed together with the image samples."""

    def __init__(self, sizes: Sizes, threads: int) -> None:
        n = sizes.memcpy_bytes
        m = min(2 * BATCH * STACK * FRAME_BYTES, n // 4)
        self.threads, self.large_bytes, self.batch_bytes = threads, n, m
        self.src = np.ones(n, dtype=np.uint8)
        self.dst = np.full(n, 2, dtype=np.uint8)  # touch every page
        self.small = np.full(m, 3, dtype=np.uint8)
        self._k = 0

    def _batch_copy(self, threads: int) -> None:
        self._k += 1
        o = (self._k % (self.large_bytes // self.batch_bytes)) * self.batch_bytes
        _copy(self.small, self.src[o:o + self.batch_bytes], threads)

    def fns(self) -> dict[str, tuple[Callable[[], object], int]]:
        """name -> (copy, calls per block) for :meth:`ImageSetup.measure_sample`."""
        out = {}
        for th in sorted({1, self.threads}):
            out[f"copy_large_{th}"] = (lambda th=th: _copy(self.dst, self.src, th), 1)
            out[f"copy_batch_{th}"] = (lambda th=th: self._batch_copy(th), 4)
        return out

    def results(self, t: dict[str, list[float]]) -> dict:
        out = {"threads": self.threads}
        for kind, size in (("large", self.large_bytes), ("batch", self.batch_bytes)):
            bw = {th: size / median(t[f"copy_{kind}_{th}"]) / 1e9
                  for th in sorted({1, self.threads})}
            out[kind] = dict(bytes=size, gbps_by_threads=bw, gbps=max(bw.values()))
        return out


def memcpy_rows(mc: dict) -> list[dict]:
    th = mc["threads"]
    rows = []
    for kind, what in (("large", "np.copyto {} MB"), ("batch", "{} MB out of it, reused dst")):
        r = mc[kind]
        size = f"{r['bytes'] >> 20}" if kind == "large" else f"{r['bytes'] / 1e6:.1f}"
        by = r["gbps_by_threads"]
        detail = ", ".join(f"{k} thread{'s' * (k > 1)}: {v:.1f}" for k, v in by.items())
        rows.append(row(f"memcpy bandwidth ({what.format(size)})", "GB/s", r["gbps"], None,
                        lower_is_better=False, threads=th,
                        note=f"reference for the gather, timed in turn with it (best of {detail} "
                             "GB/s), bytes written per second"))
    return rows


def image_bandwidth_row(img: ImageSetup, mc: dict) -> dict:
    t = img.measure_sample()
    fast_bytes = 2 * BATCH * STACK * FRAME_BYTES  # uint8 obs + next_obs
    seed_bytes = img.seed.s[:BATCH].nbytes + img.seed.s_prime[:BATCH].nbytes  # float32
    fast_bw = fast_bytes / median(t["fastsac"]) / 1e9
    seed_bw = seed_bytes / median(t["seed"]) / 1e9
    large, batch = mc["large"]["gbps"], mc["batch"]["gbps"]
    return row("image gather bandwidth (obs + next_obs)", "GB/s", fast_bw, seed_bw,
               lower_is_better=False, target_text=f"ref: memcpy {batch:.1f} / {large:.1f} GB/s",
               memcpy_gbps=large, memcpy_batch_gbps=batch, fraction_of_memcpy=fast_bw / large,
               fraction_of_batch_memcpy=fast_bw / batch,
               note=f"fastsac reaches {fast_bw / batch:.0%} of the batch-sized copy and "
                    f"{fast_bw / large:.0%} of the large one ({fast_bytes / 1e6:.1f} MB uint8 "
                    f"written per batch); seed-style writes {seed_bytes / 1e6:.0f} MB float32 per "
                    "batch, so this ratio is of bytes/s, not of batches/s")


def image_memory_rows(img: ImageSetup) -> list[dict]:
    per_step = img.fast.nbytes / len(img.fast)
    rows = []
    for buf, dtype in ((img.seed, "float32"), (img.seed_u8, "uint8")):
        obs_only = (buf.s.nbytes + buf.s_prime.nbytes) / buf.max_size
        rows.append(row(f"memory per image step vs seed {dtype}", "B", per_step,
                        buf.nbytes / buf.max_size, lower_is_better=True, target=21_400.0,
                        note=f"fastsac nbytes / len on the full buffer ({len(img.fast):,} steps); "
                             f"seed: its five arrays' nbytes / capacity ({obs_only:,.0f} B of "
                             "them are s + s_prime)"))
    return rows


def image_fill_row(img: ImageSetup) -> dict:
    f, s, u = (img.fill_times[k] for k in ("fastsac", "seed", "seed_u8"))
    return row("image fill (add / store)", "steps/s", 1 / median(f), 1 / median(s),
               lower_is_better=False,
               note=f"seed-style float32 (uint8 layout: {1 / median(u):,.0f} steps/s); stacking "
                    "the seed-style frames is not timed; first fill of fresh memory "
                    "(informational)")


# -- ingest: what one learner can absorb ------------------------------------------------------
CHUNK_STEPS, CHUNK_STREAMS = 64, 8  # a worker's chunk: 64 steps of 8 env streams


def ingest_row(kind: str, quick: bool) -> dict:
    """Seconds per env step stored: ``add_chunk`` of a worker-sized chunk against one
    ``add`` call per step of the same 8 streams, frames of the seed-style kind (vector 17
    float32 or one 3x84x84 uint8 frame); episodes of 1,000 steps."""
    steps = 8 if quick else CHUNK_STEPS
    shape, dtype = ((VEC_OBS,), np.float32) if kind == "vector" else (FRAME, np.uint8)
    rng = np.random.default_rng(0)
    frames = (rng.integers(0, 256, (steps + 1, CHUNK_STREAMS, *shape)) if dtype == np.uint8
              else rng.standard_normal((steps + 1, CHUNK_STREAMS, *shape))).astype(dtype)
    action = rng.uniform(-1, 1, (steps, CHUNK_STREAMS, ACTION)).astype(np.float32)
    reward = rng.standard_normal((steps, CHUNK_STREAMS)).astype(np.float32)
    flags = np.zeros((steps, CHUNK_STREAMS), bool)
    bufs = [ReplayBuffer(CHUNK_STREAMS * 4 * (steps + 1), shape, ACTION, obs_dtype=dtype,
                         num_envs=CHUNK_STREAMS, seed=0) for _ in range(2)]

    def chunk():
        bufs[0].end_episodes()  # each call a new episode, as a new chunk of new frames is
        bufs[0].add_chunk(frames[:-1], action, reward, frames[1:], flags, flags)

    def per_step():
        bufs[1].end_episodes()
        for t in range(steps):
            bufs[1].add(frames[t], action[t], reward[t], frames[t + 1], flags[t], flags[t])
    t = interleaved({"chunk": chunk, "step": per_step}, calls=3 if quick else 20,
                    blocks=3 if quick else 15)
    us = 1e6 / (steps * CHUNK_STREAMS)
    chunk_us, step_us = median(t["chunk"]) * us, median(t["step"]) * us
    return row(f"{kind} ingest, add_chunk of {steps} steps x {CHUNK_STREAMS} streams", "us",
               chunk_us, step_us, lower_is_better=True,
               note=f"per env step stored; the baseline column is one add() call per step of "
                    f"the same {CHUNK_STREAMS} streams (not seed-style). One learner can absorb "
                    f"about {1e6 / chunk_us:,.0f} env steps/s of these with nothing else to do")


# -- the whole suite -----------------------------------------------------------------------
def run(quick: bool = False) -> list[dict]:
    """All buffer rows; ``quick`` uses tiny buffers (seconds) instead of the real sizes."""
    sizes = QUICK if quick else FULL
    t0 = time.perf_counter()
    v = VectorSetup(sizes)
    vec_rows = [vector_sample_row(v), vector_memory_row(v), vector_fill_row(v),
                vector_prefetch_rows(v)]
    del v
    img = ImageSetup(sizes)
    copies = CopyReference(sizes, threads=min(cpus(), 8))
    mc = copies.results(img.measure_sample(extra=copies.fns()))
    del copies
    rows = [vec_rows[0], image_sample_row(img), image_sample_u8_row(img),
            image_bandwidth_row(img, mc), *memcpy_rows(mc), *image_memory_rows(img), vec_rows[1],
            vec_rows[2], image_fill_row(img), *vec_rows[3]]
    del img
    log("ingest: timing add_chunk against add per step")
    rows += [ingest_row("vector", quick), ingest_row("image", quick)]
    log(f"buffer: done in {time.perf_counter() - t0:.1f}s")
    return rows


