"""``fastsac bench workers``: env workers on Ray next to the one-process loop, HalfCheetah-v5
(needs the ray and mujoco extras).

- Collection with updates off (learning never starts), 2 envs in all, vectors and 84x84
  pixels: 2 Ray workers of one env each and ``--vector-env async``, each next to the
  one-process loop with a sync vector env (the baseline column); env steps/s over blocks of
  wall time, taken in turn.
- Ray's cost per chunk: a one-step chunk fetched from a worker actor against the same
  ``collect`` call in this process.
- Learner ingest: fetching a worker's chunk and storing it (``add_chunk``), per env step, and
  so how many env steps/s one learner can take in.
- End to end after learning starts (one update per env step): 2 workers against the
  one-process loop with one env; env steps/s and updates/s. From it, how many workers saturate
  one learner.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from fastsac.bench._util import interleaved, log, median, row
from fastsac.bench.train import ENV, _trainer
from fastsac.trainer import Trainer

NEVER = 10**12  # learning_starts that collection never reaches


def _rates(trainers: dict[str, Trainer], seconds: float, blocks: int) -> dict[str, list[float]]:
    """Env steps/s of each trainer's ``train_step`` (collection, then learning as its
    config says), in blocks of ``seconds`` taken in turn."""
    out: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(blocks):
        for name, tr in trainers.items():
            tr.train_step()  # workers: takes the chunks they collected while the others ran
            s0, u0, t0 = tr.step, tr.agent.updates, time.perf_counter()
            while (t := time.perf_counter()) - t0 < seconds:
                tr.train_step()
            out[name].append((tr.step - s0) / (t - t0))
            out.setdefault(name + " updates", []).append((tr.agent.updates - u0) / (t - t0))
    return out


def _collection_rows(tmp: Path, pixels: bool, quick: bool) -> tuple[list[dict], float]:
    """The rows, and one Ray worker's env steps/s."""
    kind = "84x84 pixels" if pixels else "vectors"
    kw = dict(pixels=pixels, learning_starts=NEVER, total_steps=NEVER,
              buffer_size=20_000 if pixels else 200_000)
    trainers = {"sync": _trainer(tmp / f"sync{pixels}", num_envs=2, **kw),
                "async": _trainer(tmp / f"async{pixels}", num_envs=2, vector_env="async", **kw),
                "ray": _trainer(tmp / f"ray{pixels}", workers=2, **kw)}
    seconds, blocks = (0.3, 1) if quick else ((4.0 if pixels else 2.0), 3)
    log(f"workers: timing collection of {ENV} {kind}, {blocks} blocks of {seconds} s each")
    try:
        r = _rates(trainers, seconds, blocks)
    finally:
        for tr in trainers.values():
            tr.close()
    sync = median(r["sync"])
    note = (f"env steps/s with updates off, 2 envs in all; baseline column: the one-process "
            f"loop, sync vector env. Blocks: sync {_list(r['sync'])}, async "
            f"{_list(r['async'])}, Ray {_list(r['ray'])}")
    return [row(f"collection, 2 Ray workers x 1 env, {kind}", "1/s", median(r["ray"]), sync,
                lower_is_better=False, note=note),
            row(f"collection, --vector-env async, 2 envs, {kind}", "1/s", median(r["async"]),
                sync, lower_is_better=False, note="as above")], median(r["ray"]) / 2


def _list(xs: list[float]) -> str:
    return "/".join(f"{x:,.0f}" for x in xs)


def _chunk_rows(tmp: Path, quick: bool) -> tuple[list[dict], dict[str, float], float]:
    """Ray's cost per chunk, the learner's ingest per env step (vector and pixels), and the
    seconds of a pixel update."""
    import ray

    from fastsac.distributed import EnvWorker

    rows, ingest = [], {}
    calls, blocks, chunk = (3, 2, 10) if quick else (50, 5, 50)
    batch = 16 if quick else 256
    for pixels in (False, True):
        kind = "84x84 pixels" if pixels else "vectors"
        tr = _trainer(tmp / f"chunks{pixels}", workers=1, pixels=pixels, learning_starts=NEVER,
                      total_steps=NEVER, buffer_size=20_000 if pixels else 200_000)
        actor = tr.pool.workers[0].actor
        threads = torch.get_num_threads()
        local = EnvWorker(tr.config.to_dict(), [0])  # it sets one thread, as a worker does
        torch.set_num_threads(threads)
        local.start([-1], 0)
        ray.get(actor.start.remote([-1], 1))
        if not pixels:
            log(f"workers: timing {calls} one-step chunks, Ray and in-process, {blocks} blocks")
            t = interleaved({"ray": lambda: ray.get(actor.collect.remote([], 1)),
                             "local": lambda: local.collect([], 1)}, calls=calls, blocks=blocks)
            rows.append(row("a one-step chunk from a Ray worker (round trip)", "ms",
                            median(t["ray"]) * 1e3, median(t["local"]) * 1e3,
                            lower_is_better=True,
                            note="baseline column: the same collect() call in this process; "
                                 "the difference is Ray's cost per chunk"))
        spent = []
        for _ in range(blocks):
            ref = actor.collect.remote([], chunk)
            ray.wait([ref])  # collected: what is timed is the learner's part
            t0 = time.perf_counter()
            c = ray.get(ref)
            tr.buffer.add_chunk(c["obs"], c["action"], c["reward"], c["next_obs"],
                                c["terminated"], c["truncated"], streams=c["streams"])
            spent.append((time.perf_counter() - t0) / c["reward"].size)
        ingest[kind] = median(spent)
        rows.append(row(f"learner ingest of a {chunk}-step chunk, {kind}, per env step", "us",
                        ingest[kind] * 1e6, None, lower_is_better=True,
                        note="ray.get of a collected chunk + ReplayBuffer.add_chunk: one "
                             f"learner takes in at most {1 / ingest[kind]:,.0f} env steps/s "
                             "of these while it does nothing else"))
        if pixels:
            while tr.buffer.num_sampleable < batch:
                c = ray.get(actor.collect.remote([], chunk))
                tr.buffer.add_chunk(c["obs"], c["action"], c["reward"], c["next_obs"],
                                    c["terminated"], c["truncated"], streams=c["streams"])
            log(f"workers: timing pixel updates, batch {batch}")
            pixel_update = median(interleaved(
                {"update": lambda: tr.agent.update(tr.buffer.sample(batch))},
                calls=1, blocks=1 if quick else 3, warmup=1)["update"])
        local.close()
        tr.close()
    return rows, ingest, pixel_update


def _end_to_end_rows(tmp: Path, quick: bool) -> tuple[list[dict], float]:
    """The rows, and the seconds of a vector update."""
    starts, seconds, blocks = (300, 0.5, 1) if quick else (2_000, 8.0, 3)
    trainers = {"loop": _trainer(tmp / "e2e-loop", learning_starts=starts),
                "ray": _trainer(tmp / "e2e-ray", workers=2, learning_starts=starts)}
    for tr in trainers.values():
        while tr.step < starts:
            if tr.pool is None:
                tr.env_step()
            else:
                tr.receive()
    log(f"workers: timing training, 2 workers and one loop, {blocks} blocks of {seconds} s")
    try:
        r = _rates(trainers, seconds, blocks)
        ray_tr = trainers["ray"]
        update_s = ray_tr.timers["update"] / max(1, ray_tr.agent.updates)
        during = ray_tr.pool.metrics().get("workers/steps_per_s_mean", float("nan"))
    finally:
        for tr in trainers.values():
            tr.close()
    note = ("after learning starts, one update per env step, 256x256, batch 256; baseline "
            "column: the one-process loop, one env")
    return [
        row(f"training env steps/s, {ENV}, 2 Ray workers", "1/s", median(r["ray"]),
            median(r["loop"]), lower_is_better=False,
            note=f"{note}. A worker collected {during:,.0f} env steps/s of its own time "
                 "meanwhile (the learner's threads take the cores)"),
        row(f"training updates/s, {ENV}, 2 Ray workers", "1/s", median(r["ray updates"]),
            median(r["loop updates"]), lower_is_better=False, note=note)], update_s


def _saturation_row(kind: str, update_s: float, ingest_s: float, worker_rate: float) -> dict:
    learner = 1 / (update_s + ingest_s)  # env steps/s at one update per env step
    return row(f"Ray workers that saturate one learner, {ENV} {kind}", "", learner / worker_rate,
               None, lower_is_better=False,
               note=f"1 / (update {update_s * 1e3:,.1f} ms + ingest {ingest_s * 1e6:.1f} us) = "
                    f"{learner:,.1f} env steps/s the learner takes at one update per env step, "
                    f"over one worker's {worker_rate:,.0f} env steps/s (collection above): one "
                    f"worker outruns the learner {worker_rate / learner:,.0f}x")


def run(quick: bool = False) -> list[dict]:
    try:
        import mujoco  # noqa: F401
        import ray
    except ImportError as exc:
        raise SystemExit("fastsac bench workers needs Ray and MuJoCo: "
                         "pip install 'fastsac[ray,mujoco]'") from exc
    from fastsac.distributed.pool import connect

    started = connect("", 2)  # one local Ray for every case (unless one runs already)
    try:
        with tempfile.TemporaryDirectory(prefix="fastsac-bench-") as tmp:
            rows, vector_rate = _collection_rows(Path(tmp), False, quick)
            more, pixel_rate = _collection_rows(Path(tmp), True, quick)
            rows += more
            more, ingest, pixel_update = _chunk_rows(Path(tmp), quick)
            rows += more
            more, vector_update = _end_to_end_rows(Path(tmp), quick)
            rows += more
            rows.append(_saturation_row("vectors", vector_update, ingest["vectors"],
                                        vector_rate))
            rows.append(_saturation_row("84x84 pixels", pixel_update, ingest["84x84 pixels"],
                                        pixel_rate))
    finally:
        if started:
            ray.shutdown()
    return rows
