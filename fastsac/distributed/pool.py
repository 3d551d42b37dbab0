"""The learner's side of the env workers: Ray actors started, fed weights, drained of chunks
with backpressure, and restarted when they fail."""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import RayError

import fastsac
from fastsac.config import TrainConfig
from fastsac.distributed.worker import EnvWorker

IN_FLIGHT = 2  # chunks per worker: one being collected, one waiting to be
MAX_RESTARTS = 5  # replacements of a worker in a row (no chunk in between); the next failure
# stops the run with the worker's error
WAIT_S = 300.0  # a run stops with an error when no worker sends a chunk for this long
CONNECT_S = 10.0  # for a Ray address to answer


@dataclass
class _Worker:
    actor: ray.actor.ActorHandle
    streams: list[int]
    episodes: list[int]
    generation: int = 0  # starts so far: seeds the worker's random actions
    queue: deque = field(default_factory=deque)  # chunks asked for, oldest first
    started: ray.ObjectRef | None = None  # its start(): each chunk waits for it
    failures: int = 0  # in a row
    steps: int = 0  # env steps received since the last metrics row
    seconds: float = 0.0  # the worker's time collecting them
    lags: list[int] = field(default_factory=list)


def connect(address: str, num_workers: int) -> bool:
    """Join or start Ray as ``address`` says; True when this call started it."""
    if ray.is_initialized():
        return False
    if address not in ("", "auto"):
        hostport = address.removeprefix("ray://")
        host, _, port = hostport.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_S).close()
        except (OSError, ValueError) as exc:
            raise ValueError(f"ray_address {address!r}: no Ray answers there within "
                             f"{CONNECT_S:.0f} s ({exc})") from exc
    # Ray puts the working directory first on its workers' sys.path: from a source checkout
    # they would import its fastsac, without the compiled core. Start Ray from the installed
    # package's directory then.
    here = os.getcwd()
    installed = Path(fastsac.__file__).resolve().parent
    local = Path(here, "fastsac", "__init__.py")
    shadowed = local.exists() and local.resolve().parent != installed
    try:
        if shadowed:
            os.chdir(installed.parent)
        if address:
            ray.init(address=address, include_dashboard=False)
        else:  # one logical CPU per worker even where that oversubscribes the machine
            ray.init(num_cpus=max(os.cpu_count() or 1, num_workers), include_dashboard=False,
                     logging_level=logging.WARNING)  # not "Started a local Ray instance"
    except ConnectionError as exc:
        raise ValueError(f"ray_address {address!r}: {exc}") from exc
    finally:
        os.chdir(here)
    return True


class WorkerPool:
    """``config.workers`` EnvWorker actors, worker i owning env streams
    [i * envs_per_worker, (i + 1) * envs_per_worker) of the buffer."""

    def __init__(self, config: TrainConfig):
        self.config = c = config
        self._owns_ray = connect(c.ray_address, c.workers)
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < c.workers:
            self._shutdown()
            raise ValueError(f"workers: {c.workers} need one CPU each, the Ray cluster has "
                             f"{cpus:g}")
        self._remote = ray.remote(num_cpus=1)(EnvWorker)
        e = c.envs_per_worker
        self.workers = []
        for i in range(c.workers):
            streams = list(range(i * e, (i + 1) * e))
            self.workers.append(_Worker(self._new_actor(streams), streams, [-1] * e))
        self._weights: list = []  # [version, ref] once there are weights
        self._synced_at: int | None = None
        self.restarts = 0

    def _new_actor(self, streams: list[int]) -> ray.actor.ActorHandle:
        return self._remote.remote(self.config.to_dict(), streams)

    @property
    def episodes(self) -> list[int]:
        """Per env stream: the episode it was in at its latest chunk."""
        return [ep for w in self.workers for ep in w.episodes]

    @episodes.setter
    def episodes(self, value: list[int]) -> None:
        e = self.config.envs_per_worker
        for i, w in enumerate(self.workers):
            w.episodes = list(value[i * e:(i + 1) * e])

    def start(self, weights: dict | None, updates: int = 0) -> None:
        """Start every worker at its streams' next episodes, with ``weights`` (None: random
        actions) tagged with ``updates``."""
        if weights is not None:
            self._put(weights, updates)
        for i in range(len(self.workers)):
            self._start(i)

    def _start(self, i: int) -> None:
        w = self.workers[i]
        w.started = w.actor.start.remote(w.episodes, w.generation)
        self._fill(i)

    def _fill(self, i: int) -> None:
        """Ask worker i for chunks until it has IN_FLIGHT to do, each with the latest
        weights (the learner waits for them in ``receive``: no queue grows unbounded)."""
        w = self.workers[i]
        while len(w.queue) < IN_FLIGHT:
            # `started` as an argument: a start() that raised fails the chunk with its error.
            w.queue.append(w.actor.collect.remote(self._weights, self.config.chunk_steps,
                                                  w.started))

    def _put(self, weights: dict, updates: int) -> None:
        self._weights = [updates, ray.put(weights)]  # one copy in the object store for all
        self._synced_at = updates

    def refill(self, updates: int, weights: Callable[[], dict | None]) -> None:
        """Ask the workers whose chunks arrived for new ones. First, when ``sync_every``
        updates have passed since the last weights were sent, send ``weights()`` (None: none
        yet) tagged ``updates``: the workers load them at their next chunk."""
        if self._synced_at is None or updates - self._synced_at >= self.config.sync_every:
            state = weights()
            if state is not None:
                self._put(state, updates)
        for i in range(len(self.workers)):
            self._fill(i)

    def receive(self, updates: int) -> tuple[list[dict], list[int]]:
        """(the chunks that arrived, each worker's in the order asked, waiting up to WAIT_S for
        one; the streams of workers that failed meanwhile, now replaced). ``updates``: the
        learner's count now, for the policy lag. Store the chunks before ending the failed
        streams' episodes; call ``refill`` after learning from them."""
        heads = self._heads()
        ready, _ = ray.wait(list(heads), num_returns=1, timeout=WAIT_S)
        if not ready:
            raise RuntimeError(f"no env worker sent a chunk in {WAIT_S:.0f} s")
        chunks, failed = [], []
        while ready:  # only a worker's oldest chunk is taken: a later one waits its turn
            for ref in ready:
                i = heads[ref]
                w = self.workers[i]
                w.queue.popleft()
                try:
                    chunk = ray.get(ref)
                except RayError as exc:
                    failed += w.streams
                    self._restart(i, exc)
                    continue
                w.failures = 0
                w.episodes = chunk["episodes"]
                w.steps += chunk["reward"].size
                w.seconds += chunk["seconds"]
                if chunk["version"] is not None:
                    w.lags.append(updates - chunk["version"])
                chunks.append(chunk)
            heads = self._heads()
            ready = ray.wait(list(heads), num_returns=len(heads), timeout=0)[0] if heads else []
        return chunks, failed

    def _heads(self) -> dict:
        return {w.queue[0]: i for i, w in enumerate(self.workers) if w.queue}

    def _restart(self, i: int, exc: BaseException) -> None:
        """Replace worker i by a new actor, started at its streams' next episodes. (Not Ray's
        own actor restart: tasks sent while an actor restarts can fail as well.)"""
        w = self.workers[i]
        w.failures += 1
        if w.failures > MAX_RESTARTS:
            raise RuntimeError(f"env worker {i} failed {w.failures} times in a row") from exc
        ray.kill(w.actor, no_restart=True)  # a live actor with a broken env, too
        w.actor = self._new_actor(w.streams)
        w.generation += 1
        w.queue.clear()  # its chunks asked of the old actor are lost
        self.restarts += 1
        self._start(i)

    def metrics(self) -> dict[str, float]:
        """Rows for metrics.csv since the last call: env steps/s of the workers (each over
        its own collecting time; mean and slowest), chunks in flight, policy lag in updates
        (mean and max over the chunks received), and restarts so far."""
        rates = [w.steps / w.seconds for w in self.workers if w.seconds > 0]
        lags = [lag for w in self.workers for lag in w.lags]
        rows = {"workers/chunks_in_flight": float(sum(len(w.queue) for w in self.workers)),
                "workers/restarts": float(self.restarts)}
        if rates:
            rows["workers/steps_per_s_mean"] = float(np.mean(rates))
            rows["workers/steps_per_s_min"] = float(np.min(rates))
        if lags:
            rows["workers/policy_lag_mean"] = float(np.mean(lags))
            rows["workers/policy_lag_max"] = float(np.max(lags))
        for w in self.workers:
            w.steps, w.seconds, w.lags = 0, 0.0, []
        return rows

    def close(self) -> None:
        try:
            for w in self.workers:
                w.queue.clear()
                ray.kill(w.actor, no_restart=True)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
