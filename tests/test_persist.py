"""Reproducibility and persistence of fastsac.ReplayBuffer: same seed, state_dict, save/load."""

from __future__ import annotations

import gc
import json
import os
import warnings
import zipfile

import numpy as np
import pytest
import torch
from buffer_helpers import (
    CFG,
    assert_unchanged,
    check_against_reference,
    filled,
    snapshot,
    to_numpy,
)

from fastsac import Batch, ReplayBuffer


# ---------------------------------------------------------------------------------------------
# reproducibility and persistence
# ---------------------------------------------------------------------------------------------
def assert_same_samples(a: ReplayBuffer, b: ReplayBuffer, sizes=(1, 5, 5, 0, 0)) -> None:
    """Identical batches from both buffers (size 0 stands for num_sampleable)."""
    n = a.num_sampleable
    assert n >= 5 and b.num_sampleable == n
    for size in sizes:
        size = size or n
        x, y = to_numpy(a.sample(size)), to_numpy(b.sample(size))
        for f in Batch._fields:
            assert np.array_equal(x[f], y[f]), f"{f} differs for batch_size {size}"


@pytest.mark.parametrize("storage", ["episode", "transition"])
def test_same_seed_same_samples(storage):
    a, _, _ = filled(storage, seed=7)
    b, _, _ = filled(storage, seed=7)
    assert_same_samples(a, b)


def assert_continues_identically(buf, restored, ref, d) -> None:
    """``restored`` holds ``buf``'s exact state, samples alike, and keeps doing so (and
    matching the reference) while both receive the same further adds."""
    assert len(restored) == len(buf) and restored.num_sampleable == buf.num_sampleable
    assert_unchanged(restored, {k: v for k, v in snapshot(buf).items() if k != "config"})
    assert_same_samples(buf, restored)
    d.also.append(restored)
    for _ in range(9):
        d.add([("normal", None)] * buf.num_envs)
    assert_same_samples(buf, restored)
    check_against_reference(restored, ref)


@pytest.mark.parametrize("storage", ["episode", "transition"])
def test_state_dict_round_trip(storage):
    buf, ref, d = filled(storage)
    other = ReplayBuffer(**CFG, storage=storage, seed=999)
    sd = buf.state_dict()
    other.load_state_dict(sd)
    assert_continues_identically(buf, other, ref, d)


@pytest.mark.parametrize("storage", ["episode", "transition"])
def test_save_load_round_trip(tmp_path, storage):
    buf, ref, d = filled(storage)
    assert len(buf) < sum(len(s.positions) for s in ref.streams)  # the rings have wrapped
    assert any(s.running() is not None for s in ref.streams)       # episodes are open
    path = tmp_path / "replay.npz"
    buf.save(path)
    assert sorted(os.listdir(tmp_path)) == ["replay.npz"]           # no temporary file left
    with zipfile.ZipFile(path) as z:                                # uncompressed npz
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    loaded = ReplayBuffer.load(path)
    assert loaded.config() == buf.config()
    assert loaded.nbytes == buf.nbytes
    assert_continues_identically(buf, loaded, ref, d)


def test_save_writes_exactly_the_path_and_replaces(tmp_path):
    buf, _, d = filled()
    path = tmp_path / "replay"                  # no .npz suffix added
    buf.save(path)
    d.add([("normal", None)] * buf.num_envs)
    buf.save(str(path))                         # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["replay"]
    loaded = ReplayBuffer.load(str(path))
    assert len(loaded) == len(buf)
    assert_same_samples(buf, loaded)


def test_failed_save_leaves_no_temporary_file(tmp_path):
    buf, _, _ = filled()
    (tmp_path / "adir").mkdir()
    with pytest.raises(OSError):
        buf.save(tmp_path / "adir")          # cannot replace a directory by a file
    assert sorted(os.listdir(tmp_path)) == ["adir"]
    assert os.listdir(tmp_path / "adir") == []


@pytest.fixture
def saved(tmp_path):
    buf, _, _ = filled()
    path = tmp_path / "good.npz"
    buf.save(path)
    return path


def assert_rejected(path) -> None:
    """ValueError naming the path (a leaked file handle is checked separately below)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises(ValueError) as exc:
            ReplayBuffer.load(path)
        msg = str(exc.value)
        del exc
        gc.collect()
    assert os.fspath(path) in msg, msg


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, 0.9, -1])
def test_load_rejects_truncated_file(saved, tmp_path, keep):
    data = saved.read_bytes()
    n = keep if isinstance(keep, int) and keep >= 0 else (
        len(data) - 1 if keep == -1 else int(len(data) * keep))
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[:n])
    assert_rejected(bad)


@pytest.mark.parametrize("keep", [0.5, -1])
def test_load_of_bad_file_closes_it(saved, tmp_path, keep):
    """Rejecting a truncated file must not leak its file handle (ResourceWarning, an error
    under the project's warnings-as-errors setting)."""
    data = saved.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[:len(data) - 1 if keep == -1 else int(len(data) * keep)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError):
            ReplayBuffer.load(bad)
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks


def test_load_rejects_random_bytes(tmp_path):
    bad = tmp_path / "random.npz"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    assert_rejected(bad)


def test_load_rejects_foreign_npz(tmp_path):
    bad = tmp_path / "foreign.npz"
    np.savez(bad, storage=np.zeros(10, np.uint8), streams=np.zeros(4, np.int64))
    assert_rejected(bad)
    bad2 = tmp_path / "foreign_tag.npz"
    with np.load(tmp_path / "foreign.npz") as f:
        arrays = dict(f)
    np.savez(bad2, format=np.asarray("other.Buffer"), **arrays)
    assert_rejected(bad2)


def rewrite(src, dst, **changes) -> None:
    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)


def test_load_rejects_other_version(saved, tmp_path):
    bad = tmp_path / "v99.npz"
    rewrite(saved, bad, version=np.asarray(99))
    with pytest.raises(ValueError, match="version"):
        ReplayBuffer.load(bad)
    # version 3 is a file-backed buffer's bookkeeping: an in-memory buffer's file is not one
    bad = tmp_path / "v3.npz"
    rewrite(saved, bad, version=np.asarray(3))
    with pytest.raises(ValueError, match="not a readable fastsac replay buffer file"):
        ReplayBuffer.load(bad)


@pytest.mark.parametrize("storage", ["episode", "transition"])
def test_a_file_holds_only_the_written_slots_and_grows_as_the_buffer_fills(tmp_path, storage):
    # streams filled unequally, none wrapped: each file holds what was written, no more
    buf, ref, d = filled(storage, adds=3)
    buf.save(tmp_path / "a.npz")
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        held = z.getinfo("storage.npy").file_size
    stride = buf.nbytes // buf.capacity
    written = sum(min(len(s.positions), buf.capacity // buf.num_envs) for s in ref.streams)
    assert held - 128 == written * stride < buf.nbytes  # 128: the .npy header
    loaded = ReplayBuffer.load(tmp_path / "a.npz")
    assert_continues_identically(buf, loaded, ref, d)


@pytest.mark.parametrize("storage", ["episode", "transition"])
@pytest.mark.parametrize("adds", [5, 10, 40])  # no ring wrapped, some (episode storage), all
def test_written_spans_are_the_prefix_each_stream_has_written(tmp_path, storage, adds):
    """Counted from the adds: a step takes one slot, plus one more in episode storage when it
    starts an episode (its first observation); each ring fills from its start."""
    num_envs, ring = 3, 16
    buf = ReplayBuffer(num_envs * ring, (3,), (2,), num_envs=num_envs, storage=storage, seed=0)
    ends_every = (None, 1, 3)  # per stream: one long episode, every step ends, every third
    written, starts = [0] * num_envs, [True] * num_envs
    obs = np.zeros((num_envs, 3), np.float32)
    for t in range(1, adds + 1):
        next_obs = np.full((num_envs, 3), t, np.float32)
        ends = np.array([k is not None and t % k == 0 for k in ends_every])
        buf.add(obs, np.zeros((num_envs, 2)), np.zeros(num_envs), next_obs, ends,
                np.zeros(num_envs, bool))
        for e in range(num_envs):
            written[e] += 1 + (storage == "episode" and starts[e])
            starts[e] = ends[e]
        obs = next_obs
    assert buf._core.stream_state()[0::4] == written

    stride = buf.nbytes // buf.capacity
    expected = [(e * ring * stride, min(n, ring) * stride) for e, n in enumerate(written)]
    assert buf._core.written_spans() == expected

    buf.save(tmp_path / "b.npz")
    with np.load(tmp_path / "b.npz") as f:
        stored = f["storage"]
    whole = buf.state_dict()["storage"]
    assert stored.nbytes == sum(n for _, n in expected)
    assert np.array_equal(stored, np.concatenate([whole[o:o + n] for o, n in expected]))
    if max(written) < ring:  # partly filled: the file holds less than the whole block
        assert stored.nbytes < buf.nbytes


def test_load_state_dict_takes_a_files_written_slots_layout(tmp_path):
    buf, ref, d = filled(adds=3)  # partly filled: the written slots are less than the block
    buf.save(tmp_path / "b.npz")
    with np.load(tmp_path / "b.npz") as f:
        state = {k: f[k] for k in f.files}
    assert int(state["version"]) == 2 and state["storage"].nbytes < buf.nbytes
    state["config"] = json.loads(str(state["config"]))
    other = ReplayBuffer(**CFG, seed=999)
    other.load_state_dict(state)
    assert_continues_identically(buf, other, ref, d)


@pytest.mark.parametrize("storage", ["episode", "transition"])
def test_version_1_files_with_the_whole_block_still_load(tmp_path, storage):
    buf, ref, d = filled(storage)
    buf.save(tmp_path / "v2.npz")
    rewrite(tmp_path / "v2.npz", tmp_path / "v1.npz", version=np.asarray(1),
            storage=buf.state_dict()["storage"])
    assert_continues_identically(buf, ReplayBuffer.load(tmp_path / "v1.npz"), ref, d)


def test_load_rejects_corrupt_storage(saved, tmp_path):
    with np.load(saved) as f:
        storage = f["storage"]
    bad = tmp_path / "corrupt.npz"
    noise = np.random.default_rng(0).integers(0, 256, storage.shape, dtype=np.uint8)
    rewrite(saved, bad, storage=noise)
    with pytest.raises(ValueError):
        ReplayBuffer.load(bad)


def tampered_config(saved, **changes):
    with np.load(saved) as f:
        config = json.loads(str(f["config"]))
    config.update(changes)
    return np.asarray(json.dumps(config))


@pytest.mark.parametrize("change", [
    lambda p: dict(config=tampered_config(p, capacity=CFG["capacity"] + 6)),
    lambda p: dict(config=tampered_config(p, storage="transition")),
    lambda p: dict(config=tampered_config(p, obs_shape=[1, 3, 20])),
    lambda p: dict(config=tampered_config(p, frame_stack=0)),
    lambda p: dict(config=np.asarray("{not json")),
    lambda p: dict(streams=np.full(4 * CFG["num_envs"], 10**6, np.int64)),
    lambda p: dict(streams=np.zeros(3, np.int64)),
    lambda p: dict(storage=np.zeros(7, np.uint8)),
], ids=["capacity", "storage", "obs_shape", "frame_stack", "json", "streams", "streams_len",
        "storage_len"])
def test_load_rejects_inconsistent_file(saved, tmp_path, change):
    bad = tmp_path / "bad.npz"
    rewrite(saved, bad, **change(saved))
    with pytest.raises(ValueError):
        ReplayBuffer.load(bad)


def test_load_rejects_file_missing_a_key(saved, tmp_path):
    with np.load(saved) as f:
        arrays = {k: f[k] for k in f.files if k != "rng"}
    bad = tmp_path / "norng.npz"
    np.savez(bad, **arrays)
    assert_rejected(bad)


def test_load_state_dict_rejects_other_config_and_keeps_state():
    buf, _, _ = filled()
    other, _, _ = filled(cfg={**CFG, "n_step": 3})
    before = snapshot(buf)
    with pytest.raises(ValueError):
        buf.load_state_dict(other.state_dict())
    assert_unchanged(buf, before)


# ---------------------------------------------------------------------------------------------
# crafted states that would hang or overflow the core, and consistency under concurrency
# ---------------------------------------------------------------------------------------------
def _open_stream_state(count: int, first: int):
    """A 1-env, ring-4 buffer state with one running episode from `first` to `count - 1`."""
    buf = ReplayBuffer(4, (1,), (1,), seed=0)
    for t in range(3):
        buf.add([t], [t], 0.0, [t + 1], False, False)
    state = buf.state_dict()
    storage = state["storage"].copy()
    stride = buf._core.stride
    for pos in range(count - 4, count):
        header = np.frombuffer(storage[(pos % 4) * stride:][:16], np.int64).copy()
        header[:] = (first, np.iinfo(np.int64).max)
        storage[(pos % 4) * stride:][:16] = header.view(np.uint8)
    state.update(storage=storage, streams=np.array([count, first, 3, 1], np.int64))
    return buf, state


def test_state_with_positions_near_int64_max_is_rejected():
    count = 2**63 - 1
    buf, state = _open_stream_state(count, count - 4)
    before = snapshot(buf)
    with pytest.raises(ValueError, match="stream state"):
        buf.load_state_dict(state)
    assert_unchanged(buf, before)


def test_state_whose_running_episode_ends_on_a_step_is_rejected():
    """In episode storage the running episode's last slot is its latest observation: a step
    there would make add() count a step twice and sample() spin on a phantom step."""
    buf = ReplayBuffer(8, (1,), (1,), seed=0)
    for t in range(3):
        buf.add([t], [t], 0.0, [t + 1], False, False)
    state = buf.state_dict()
    last = (buf._core.stream_state()[0] - 1) % 8 * buf._core.stride
    flags = state["storage"][last + 20:last + 24].view(np.uint32)
    flags[0] = 1  # has a step
    state["streams"][2] += 1
    with pytest.raises(ValueError, match="running episode"):
        buf.load_state_dict(state)


def test_all_zero_rng_state_is_rejected():
    """xoshiro never leaves the zero state: sampling would loop forever."""
    buf, _, _ = filled()
    state = buf.state_dict()
    state["rng"] = np.zeros(4, np.uint64)
    with pytest.raises(ValueError, match="rng"):
        buf.load_state_dict(state)


def test_state_dict_is_a_copy():
    buf, _, d = filled()
    state = buf.state_dict()
    frozen = {k: np.array(state[k], copy=True) for k in ("storage", "streams", "rng")}
    for _ in range(5):
        d.add([("normal", None)] * buf.num_envs)
    buf.sample(1)
    for k, v in frozen.items():
        assert np.array_equal(state[k], v), k


def test_save_during_concurrent_adds_writes_loadable_files(tmp_path):
    """save() holds the core's lock, so adds from another thread wait instead of tearing it."""
    import threading

    buf = ReplayBuffer(4096, (64,), (2,), seed=0, num_envs=2)
    stop, started = threading.Event(), threading.Event()

    def writer():
        t = 0
        while not stop.is_set():
            o = np.full((2, 64), t % 1000, np.float32)
            buf.add(o, np.zeros((2, 2)), np.zeros(2), o + 1, [False, False], [t % 7 == 6] * 2)
            started.set()
            t += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        started.wait(timeout=60)  # every save then has steps to capture
        for i in range(10):
            buf.save(tmp_path / f"b{i}.npz")
    finally:
        stop.set()
        thread.join()
    for i in range(10):
        loaded = ReplayBuffer.load(tmp_path / f"b{i}.npz")
        assert len(loaded) > 0


def test_load_rejects_crafted_sizes_and_versions_with_value_error(saved, tmp_path):
    huge = tmp_path / "huge.npz"
    rewrite(saved, huge, config=tampered_config(saved, capacity=2**44))
    bad_version = tmp_path / "v2.7.npz"
    rewrite(saved, bad_version, version=np.asarray(2.7))
    for path in (huge, bad_version):
        with pytest.raises(ValueError, match="not a readable fastsac replay buffer"):
            ReplayBuffer.load(path)


@pytest.mark.parametrize("storage", ["episode", "transition"])
def test_a_pickled_buffer_samples_what_the_original_does(storage):
    import pickle

    buf, ref, d = filled(storage)
    copy = pickle.loads(pickle.dumps(buf))
    assert copy.config() == buf.config() and len(copy) == len(buf)
    for _ in range(3):
        a, b = buf.sample(8), copy.sample(8)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    check_against_reference(copy, ref, draws=10)
