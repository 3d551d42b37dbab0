"""Env workers on Ray feeding one learner (fastsac.distributed), on a local Ray of 2 CPUs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from counting_env import seed_code  # noqa: E402

from fastsac import TrainConfig  # noqa: E402
from fastsac._runlog import read_metrics  # noqa: E402
from fastsac.distributed.pool import IN_FLIGHT  # noqa: E402
from fastsac.envs import episode_seed  # noqa: E402
from fastsac.trainer import make_trainer  # noqa: E402

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray for the module; its workers import this directory's modules."""
    crash_file = tmp_path_factory.mktemp("crash") / "crashed"
    # Ray puts the working directory first on its workers' sys.path: not the checkout's
    # fastsac (no compiled core) but the installed one.
    here = os.getcwd()
    os.chdir(crash_file.parent)
    try:
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "COUNTING_CRASH_FILE": str(crash_file)}})
    finally:
        os.chdir(here)
    os.environ["COUNTING_CRASH_FILE"] = str(crash_file)
    yield crash_file
    ray.shutdown()


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(env="counting_env:Counting-v0", total_steps=1_600, workers=2, envs_per_worker=2,
                chunk_steps=10, sync_every=20, learning_starts=400, batch_size=32,
                eval_every=800, eval_episodes=1, log_every=200, checkpoint_every=0,
                run_dir=str(tmp_path / "run"), device="cpu", progress=False,
                sac=dict(hidden=(16,), compile="none"))
    base.update(kw)
    return TrainConfig.from_dict(base)


def check_transitions(buffer, cfg: TrainConfig, max_episode: int) -> None:
    """Every sampled transition is one step of one episode of one env stream."""
    owner = {seed_code(episode_seed(cfg.seed, s, e)): s
             for s in range(cfg.num_streams) for e in range(max_episode + 1)}
    n = buffer.num_sampleable  # 4n draws with replacement: each step seen with p = 0.98
    batches = [buffer.sample(n) for _ in range(4)]
    obs = np.concatenate([b.obs.numpy() for b in batches])
    next_obs = np.concatenate([b.next_obs.numpy() for b in batches])
    for o, n in zip(obs, next_obs):
        assert tuple(o[:2]) == tuple(n[:2]), (o, n)  # the same episode
        assert n[2] == o[2] + 1, (o, n)  # its next step
        assert tuple(float(x) for x in o[:2]) in owner, o  # an episode of a stream


def spy_on_chunks(trainer) -> list[dict]:
    seen = []
    receive = trainer.pool.receive

    def spy(updates):
        chunks, failed = receive(updates)
        seen.extend(dict(worker=c["streams"][0], version=c["version"], steps=c["reward"].size,
                         ids={tuple(o) for o in c["obs"].reshape(-1, 3).tolist()})
                    for c in chunks)
        return chunks, failed
    trainer.pool.receive = spy
    return seen


def test_workers_fill_their_streams_and_get_newer_weights(local_ray, tmp_path):
    cfg = config(tmp_path)
    trainer = make_trainer(cfg)
    seen = spy_on_chunks(trainer)
    # Both actors up before the run: on a loaded machine one can take longer to start than
    # the other needs to collect every step.
    trainer.start()
    ray.get([w.started for w in trainer.pool.workers])
    result = trainer.run()
    assert trainer.step >= cfg.total_steps
    assert trainer.step == sum(c["steps"] for c in seen) == len(result.buffer)
    ids = [i for c in seen for i in c["ids"]]  # (episode, t) of every step received
    assert len(ids) == len(set(ids)) == trainer.step  # each env step stored once
    check_transitions(result.buffer, cfg, max(trainer.episodes))
    # Random actions until learning starts, then weights whose version (the learner's update
    # count) grows, chunk after chunk of each worker.
    for worker in (0, 2):
        versions = [c["version"] for c in seen if c["worker"] == worker]
        assert versions[0] is None and versions[-1] is not None
        policy = [v for v in versions if v is not None]
        assert policy == sorted(policy) and policy[-1] > policy[0]
    # The lag: a chunk's weights are less than sync_every updates old when it is asked for;
    # then come the updates for the chunks that arrive before it: its worker's IN_FLIGHT - 1
    # and the others', several times their share where the machine runs the workers unevenly
    # (2 cores, 3 processes). Weights that stopped coming would lag by ~1,200 updates here.
    per_chunk = cfg.chunk_steps * cfg.envs_per_worker * cfg.updates_per_step
    bound = cfg.sync_every + 4 * per_chunk * IN_FLIGHT * cfg.workers
    assert trainer.agent.updates > 3 * bound
    lags = [v for _, v in read_metrics(result.run_dir / "metrics.csv")["workers/policy_lag_max"]]
    assert lags and max(lags) <= bound, (lags, bound)
    assert len(result.eval_returns) == 2 and max(result.eval_returns) >= 1600  # due and final


def test_a_killed_worker_and_a_broken_env_are_replaced(local_ray, tmp_path):
    cfg = config(tmp_path, env="counting_env:CountingCrash-v0")
    trainer = make_trainer(cfg)
    ended = []
    end_episodes = trainer.buffer.end_episodes
    trainer.buffer.end_episodes = lambda streams=None: ended.append(sorted(streams)) \
        or end_episodes(streams)
    trainer.start()
    while trainer.step < 600:
        trainer.train_step()
    ray.kill(trainer.pool.workers[1].actor)  # its process dies
    result = trainer.run()
    assert local_ray.exists()  # one env raised in its step
    assert trainer.pool.restarts >= 2
    assert [2, 3] in ended  # worker 1's episodes in flight ended as truncated
    assert all(e in ([0, 1], [2, 3]) for e in ended)
    assert trainer.step >= cfg.total_steps and len(result.buffer) == trainer.step
    check_transitions(result.buffer, cfg, max(trainer.episodes))
    assert len(result.eval_returns) == 2 and max(result.eval_returns) >= 1600  # due and final
    restarts = read_metrics(result.run_dir / "metrics.csv")["workers/restarts"]
    assert restarts[-1][1] == trainer.pool.restarts


def test_pixel_frames_and_stacks_from_a_worker(local_ray, tmp_path):
    cfg = config(tmp_path, env="fastsac/PointMass-v0", workers=1, envs_per_worker=1,
                 frame_stack=3, total_steps=300, learning_starts=100, eval_every=0,
                 buffer_size=1_000)
    result = make_trainer(cfg).run()
    batch = result.buffer.sample(64)
    assert batch.obs.shape == (64, 9, 32, 32) and batch.obs.dtype.is_floating_point is False
    assert int(batch.obs.max()) == 255  # the red dot is there
    assert len(result.eval_returns) == 1 and max(result.eval_returns) >= 300


def test_resume_restarts_the_workers_with_the_checkpoints_weights(local_ray, tmp_path):
    cfg = config(tmp_path, total_steps=800, checkpoint_every=800)
    first = make_trainer(cfg).run()
    trainer = make_trainer(TrainConfig.from_dict({**cfg.to_dict(), "total_steps": 1_200}),
                           resume=first.run_dir)
    assert trainer.step >= 800 and trainer.agent.updates == first.agent.updates
    seen = spy_on_chunks(trainer)
    trainer.run()
    assert all(c["version"] is not None and c["version"] >= first.agent.updates for c in seen)
    assert trainer.step >= 1_200


def test_a_failed_workers_last_chunk_is_stored_before_its_episodes_end(local_ray, tmp_path):
    """A chunk and its worker's failure in one receive: the chunk's episode in flight must end
    (else the replacement's first episode could continue it)."""
    trainer = make_trainer(config(tmp_path))
    trainer.start()
    receive = trainer.pool.receive

    def last_chunk_then_failure(updates):
        while True:
            chunks, failed = receive(updates)
            mine = [c for c in chunks if c["streams"] == [2, 3]]
            done = mine and (mine[-1]["terminated"][-1] | mine[-1]["truncated"][-1])
            if mine and not done.any():  # its episodes run on past the chunk
                return chunks, failed + [2, 3]
            trainer.pool.refill(updates, lambda: None)
    trainer.pool.receive = last_chunk_then_failure
    trainer.receive()
    running = trainer.buffer._core.stream_state()[3::4]  # per stream: an episode is open
    assert list(running[2:]) == [0, 0]
    trainer.close()


@pytest.mark.parametrize("options, name", [
    (dict(workers=0), "workers"),
    (dict(workers=2, envs_per_worker=0), "envs_per_worker"),
    (dict(workers=2, chunk_steps=0), "chunk_steps"),
    (dict(workers=2, sync_every=0), "sync_every"),
    (dict(workers=2, num_envs=2), "num_envs"),
    (dict(workers=2, vector_env="async"), "vector_env"),
    (dict(workers=2, update_during_env_step=True), "update_during_env_step"),
    (dict(envs_per_worker=2), "envs_per_worker"),
    (dict(ray_address="auto"), "ray_address"),
])
def test_bad_worker_options_are_refused_by_name(options, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**options)


def test_more_workers_than_the_cluster_has_cpus_are_refused(local_ray, tmp_path):
    with pytest.raises(ValueError, match="workers: 3 need one CPU each"):
        make_trainer(config(tmp_path, workers=3))
    assert not (tmp_path / "run").exists()


def test_an_unreachable_ray_address_is_refused_quickly_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "fastsac", "train", "--workers", "1", "--ray-address",
         "127.0.0.1:1", "--run-dir", str(run_dir)], capture_output=True, text=True,
        timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "ray_address '127.0.0.1:1'" in out.stderr
    assert time.perf_counter() - t0 < 60
    assert not run_dir.exists()


def test_import_fastsac_does_not_import_ray():
    code = "import sys, fastsac, fastsac.trainer; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=TESTS)  # not the checkout, whose fastsac has no compiled core
    assert out.stdout.strip() == "False", out.stderr
