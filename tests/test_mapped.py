"""Replay slots in a memory-mapped file (ReplayBuffer(path=DIR)): the same semantics as in
memory, bookkeeping-only checkpoints, slots overwritten after a checkpoint found and dropped on
resume (also after a killed process), and bad paths and files refused with nothing lost."""

from __future__ import annotations

import copy
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from buffer_helpers import CFG, ENDS, STARTS, Driver, check_against_reference, make_pair

from fastsac import ReplayBuffer


def feed(d: Driver, adds: int, rng, open_at_end: bool = True) -> None:
    for i in range(adds):
        last = open_at_end and i >= adds - 2
        d.add([(str(rng.choice(STARTS)), None if last else rng.choice(ENDS))
               for _ in range(d.n)])


@pytest.mark.parametrize("storage", ["episode", "transition"])
def test_a_file_backed_buffer_samples_as_the_reference(tmp_path, storage):
    buf, ref = make_pair(**CFG, storage=storage, seed=3, path=tmp_path / "slots")
    d = Driver(buf, ref, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for _ in range(4):  # the rings wrap
        feed(d, 12, rng)
        check_against_reference(buf, ref, draws=20)
    assert sorted(os.listdir(tmp_path / "slots")) == ["buffer.json", "slots"]


@pytest.mark.parametrize("storage", ["episode", "transition"])
@pytest.mark.parametrize("after", [0, 3, 9, 40])  # steps added after the checkpoint
def test_a_resume_drops_the_slots_written_after_its_checkpoint(tmp_path, storage, after):
    buf, ref = make_pair(**CFG, storage=storage, seed=3, path=tmp_path / "slots")
    d = Driver(buf, ref, rng=np.random.default_rng(0))
    rng = np.random.default_rng(2)
    feed(d, 30, rng)
    buf.save(tmp_path / "ckpt.npz")  # the bookkeeping only: the slots are in the file
    assert (tmp_path / "ckpt.npz").stat().st_size < 4096
    at_checkpoint = copy.deepcopy(ref)
    feed(d, after, rng)  # then the run dies without another checkpoint
    buf.close()

    # Each stream loses the oldest positions that later writes took over, and only those.
    lost = 0
    for e, s in enumerate(at_checkpoint.streams):
        written = len(ref.streams[e].positions)
        oldest = at_checkpoint.oldest(e)
        at_checkpoint.floors[e] = min(len(s.positions), max(oldest, written - ref.ring))
        lost += at_checkpoint.floors[e] - oldest
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = ReplayBuffer.load(tmp_path / "ckpt.npz")
    said = [str(w.message) for w in caught if "overwritten" in str(w.message)]
    assert said == ([f"{lost} slots of the replay file {buf.path}/slots were overwritten "
                     "after this state was saved: their steps are dropped"] if lost else [])
    check_against_reference(resumed, at_checkpoint, draws=20)
    # and it goes on as a buffer that never saw the lost steps
    d2 = Driver(resumed, at_checkpoint, rng=np.random.default_rng(5))
    d2.next_frame, d2.next_step = d.next_frame, d.next_step  # fresh ids
    resumed.end_episodes()
    at_checkpoint.end_episodes()
    feed(d2, 10, rng)
    check_against_reference(resumed, at_checkpoint, draws=20)


def test_a_file_out_of_the_page_cache_samples_the_same_batches(tmp_path):
    """Sampling from a file that is not in memory first asks for every draw's slots (read-ahead
    hints); the batches are the same as from the cached file."""
    # Frames of 192 KiB: a loaded file maps its headers' neighbourhoods (the kernel maps up
    # to 64 KiB around a fault), and the middles of such records stay out of it.
    buf = ReplayBuffer(300, (3, 256, 256), (2,), obs_dtype=np.uint8, frame_stack=2, n_step=3,
                       seed=5, path=tmp_path)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (20, 3, 256, 256), dtype=np.uint8)
    for t in range(340):  # the ring wraps: draws near both ends of the file
        buf.add(frames[t % 20], rng.uniform(-1, 1, 2), float(t), frames[(t + 1) % 20],
                False, t % 100 == 99)
    buf.save(tmp_path / "book.npz")
    buf.close()
    def evict() -> None:  # the file's pages that no mapping holds
        fd = os.open(tmp_path / "slots", os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

    batches = {}
    for cache in ("cached", "cold"):
        if cache == "cold":
            evict()
        loaded = ReplayBuffer.load(tmp_path / "book.npz")  # reads the file's headers
        if cache == "cold":
            evict()  # all but the neighbourhoods of the headers
        batches[cache] = [loaded.sample(32).clone() for _ in range(3)]
        loaded.close()
    for got, want in zip(batches["cold"], batches["cached"]):
        assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("damage", ["episode start", "ahead of the file"])
def test_a_damaged_state_changes_neither_the_file_nor_the_buffer(tmp_path, damage):
    """A checkpoint whose counters pass their own checks but not the slots' (a damaged one):
    its load is refused with the file as it was, so an older checkpoint still resumes."""
    buf = ReplayBuffer(64, (2,), (1,), path=tmp_path, seed=0)
    obs = np.zeros(2, np.float32)
    for t in range(5):  # an episode that runs on past the checkpoint
        buf.add(obs + t, [0.0], 1.0, obs + t + 1, False, False)
    older = buf.state_dict()
    buf.add(obs + 5, [0.0], 1.0, obs + 6, False, False)
    state = buf.state_dict()
    buf.add(obs + 6, [0.0], 1.0, obs + 7, True, False)  # ends it, after the checkpoint
    damaged = copy.deepcopy(state)
    words = np.asarray(damaged["streams"], dtype=np.int64).copy()
    if damage == "episode start":
        words[1] += 2  # the running episode's first position
    else:
        words[:2] += 64  # positions a ring later than the file holds
    damaged["streams"] = words
    buf.flush()
    slots = (tmp_path / "slots").read_bytes()
    counters = buf.state_dict()
    with pytest.raises(ValueError, match="corrupt"):
        buf.load_state_dict(damaged)
    buf.flush()
    assert (tmp_path / "slots").read_bytes() == slots
    after = buf.state_dict()
    assert all(np.array_equal(np.asarray(after[k]), np.asarray(counters[k]))
               for k in ("streams", "floors", "rng", "generation"))
    buf.load_state_dict(older)  # the older checkpoint: its 5 steps, the episode running
    assert len(buf) == 5 and buf.num_sampleable == 5
    batches = [buf.sample(5).clone() for _ in range(20)]
    obs = torch.cat([b.obs for b in batches])
    assert set(obs[:, 0].tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}
    assert torch.equal(torch.cat([b.next_obs for b in batches]) - obs, torch.ones_like(obs))
    assert torch.equal(torch.cat([b.discount for b in batches]), torch.full((100,), 0.99))


def test_a_killed_process_resumes_without_the_overwritten_steps(tmp_path):
    """A process fills a file-backed buffer, checkpoints, adds more (wrapping its ring), and
    is killed; the resume sees exactly the steps of the checkpoint it can still trust."""
    script = textwrap.dedent(f"""
        import os, sys, time
        import numpy as np
        from fastsac import ReplayBuffer
        buf = ReplayBuffer(100, (4,), (1,), seed=0, path={str(tmp_path / 'slots')!r})
        def add(i):  # step i: obs i, next_obs i + 1, action i; one endless episode
            buf.add(np.full(4, i, np.float32), [i], 1.0, np.full(4, i + 1, np.float32),
                    False, False)
        for i in range(80):
            add(i)
        buf.save({str(tmp_path / 'ckpt.npz')!r})
        for i in range(80, 110):
            add(i)
        print("ready", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=tmp_path)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    with pytest.warns(UserWarning, match="11 slots .* overwritten"):
        buf = ReplayBuffer.load(tmp_path / "ckpt.npz")
    # The checkpoint held steps 0..79 at positions 0..79 of one ring of 100, and o_80 at 80.
    # The 30 later steps wrote positions 81..110, the last 11 into the slots of positions
    # 0..10: the steps 0..10 are lost, 11..79 remain.
    assert len(buf) == 69 and buf.num_sampleable == 69
    batches = [buf.sample(69).clone() for _ in range(30)]  # a CPU batch is a view
    steps = np.concatenate([b.action.numpy().ravel() for b in batches])
    assert set(steps.tolist()) == set(range(11, 80))
    obs = np.concatenate([b.obs.numpy()[:, 0] for b in batches])
    next_obs = np.concatenate([b.next_obs.numpy()[:, 0] for b in batches])
    np.testing.assert_array_equal(obs, steps)
    np.testing.assert_array_equal(next_obs, steps + 1)


def test_the_slots_file_is_locked_while_a_buffer_holds_it(tmp_path):
    a = ReplayBuffer(64, (2,), (1,), path=tmp_path)
    with pytest.raises(ValueError, match="another replay buffer holds"):
        ReplayBuffer(64, (2,), (1,), path=tmp_path)
    a.close()
    ReplayBuffer(64, (2,), (1,), path=tmp_path).close()  # free again


def test_a_directory_of_another_buffer_is_refused_and_left_as_it_was(tmp_path):
    ReplayBuffer(64, (2,), (1,), path=tmp_path).close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for kw in (dict(capacity=128), dict(obs_shape=(3,)), dict(obs_dtype=np.uint8)):
        args = {**dict(capacity=64, obs_shape=(2,), action_shape=(1,)), **kw}
        with pytest.raises(ValueError, match="another buffer"):
            ReplayBuffer(**args, path=tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("damage", ["foreign", "version", "layout"])
def test_a_slots_file_that_is_not_this_buffers_is_refused_untouched(tmp_path, damage):
    slots = tmp_path / "slots"
    if damage == "foreign":
        slots.write_bytes(b"not a replay file" * 500)
    else:
        ReplayBuffer(32 if damage == "layout" else 64, (2,), (1,), path=tmp_path).close()
        (tmp_path / "buffer.json").unlink()  # only the file's own header is left to check
        if damage == "version":
            data = bytearray(slots.read_bytes())
            data[8] = 99
            slots.write_bytes(bytes(data))
    before = slots.read_bytes()
    expected = {"foreign": "not a fastsac replay file", "version": "version 99",
                "layout": "another buffer shape"}[damage]
    with pytest.raises(ValueError, match=expected):
        ReplayBuffer(64, (2,), (1,), path=tmp_path)
    assert slots.read_bytes() == before


# Kills the process right after the file's blocks are allocated, before its header is written.
KILL_AFTER_FALLOCATE = """
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <sys/types.h>
static int kill_after(const char *name, int fd, off_t offset, off_t len) {
  int (*real)(int, off_t, off_t) = (int (*)(int, off_t, off_t))dlsym(RTLD_NEXT, name);
  int r = real(fd, offset, len);
  raise(SIGKILL);
  return r;
}
int posix_fallocate(int fd, off_t o, off_t n) { return kill_after("posix_fallocate", fd, o, n); }
int posix_fallocate64(int fd, off_t o, off_t n) { return kill_after("posix_fallocate64", fd, o, n); }
"""


def test_a_process_killed_while_creating_the_file_leaves_nothing_refused(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler, to stop the creating process at the worst moment")
    (tmp_path / "kill.c").write_text(KILL_AFTER_FALLOCATE)
    shim = tmp_path / "kill.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(shim), str(tmp_path / "kill.c"), "-ldl"],
                   check=True)
    d = tmp_path / "buf"
    code = f"from fastsac import ReplayBuffer; ReplayBuffer(64, (2,), (1,), path={str(d)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, LD_PRELOAD=str(shim)), timeout=120,
                          cwd=tmp_path)  # not the source tree, which has no compiled core
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert os.listdir(d) == ["slots.new"]  # killed in the middle of making the file
    buf, ref = make_pair(**CFG, storage="episode", seed=3, path=d)  # it is made again
    dr = Driver(buf, ref, rng=np.random.default_rng(0))
    feed(dr, 12, np.random.default_rng(1))
    check_against_reference(buf, ref, draws=20)
    assert sorted(os.listdir(d)) == ["buffer.json", "slots"]


def test_a_second_name_left_by_a_killed_creator_is_never_truncated(tmp_path):
    """A creator killed between linking slots and removing slots.new leaves two names of one
    file: opening the buffer removes the spare name, and a file moved away keeps its data."""
    d = tmp_path / "buf"
    buf = ReplayBuffer(64, (2,), (1,), path=d)
    buf.add([1, 2], [0.5], 1.0, [3, 4], False, False)
    buf.close()
    os.link(d / "slots", d / "slots.new")
    ReplayBuffer(64, (2,), (1,), path=d).close()
    assert sorted(os.listdir(d)) == ["buffer.json", "slots"]
    os.link(d / "slots", d / "slots.new")
    os.rename(d / "slots", tmp_path / "kept")  # the user moves the file away
    kept = (tmp_path / "kept").read_bytes()
    ReplayBuffer(64, (2,), (1,), path=d).close()  # a new file
    assert (tmp_path / "kept").read_bytes() == kept
    assert sorted(os.listdir(d)) == ["buffer.json", "slots"]


def test_a_file_another_buffer_is_creating_is_refused(tmp_path):
    (tmp_path / "slots.new").write_bytes(b"")
    with open(tmp_path / "slots.new", "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # as a creating buffer holds it
        with pytest.raises(ValueError, match="another replay buffer holds this file"):
            ReplayBuffer(64, (2,), (1,), path=tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["slots.new"]


def test_a_full_disk_is_refused_before_anything_is_stored(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    steps = free // (84 * 84 * 3) + 1_000_000  # more slots than the disk can hold
    with pytest.raises(ValueError, match="cannot allocate") as exc:
        ReplayBuffer(steps, (3, 84, 84), (6,), obs_dtype=np.uint8, path=tmp_path / "big")
    assert str(tmp_path / "big") in str(exc.value)
    assert os.listdir(tmp_path / "big") == []  # neither slots nor slots.new


def test_a_path_that_cannot_be_a_directory_is_refused_by_name(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="path .*file/sub.*cannot create"):
        ReplayBuffer(64, (2,), (1,), path=tmp_path / "file" / "sub")
    with pytest.raises(ValueError, match="memory='host'"):
        ReplayBuffer(64, (2,), (1,), memory="device", path=tmp_path / "d")


def test_a_checkpoint_whose_slots_file_is_gone_is_refused(tmp_path):
    buf = ReplayBuffer(64, (2,), (1,), path=tmp_path / "s")
    buf.add([0, 0], [0], 1.0, [1, 1], False, False)
    buf.save(tmp_path / "ckpt.npz")
    buf.close()
    (tmp_path / "s" / "slots").unlink()
    with pytest.raises(ValueError, match="slots file is missing"):
        ReplayBuffer.load(tmp_path / "ckpt.npz")


def test_file_backed_and_in_memory_states_do_not_mix(tmp_path):
    mem = ReplayBuffer(64, (2,), (1,), seed=0)
    filed = ReplayBuffer(64, (2,), (1,), seed=0, path=tmp_path)
    with pytest.raises(ValueError):
        filed.load_state_dict(mem.state_dict())
    with pytest.raises(ValueError):
        mem.load_state_dict(filed.state_dict())
    assert Path(filed.path) == tmp_path


def test_a_fresh_buffer_on_the_file_makes_older_checkpoints_find_nothing(tmp_path):
    """Another run on the same directory writes the same positions again: a checkpoint of
    the first run must not take the second run's steps for its own."""
    first = ReplayBuffer(64, (2,), (1,), seed=0, path=tmp_path / "s")
    for i in range(10):
        first.add([i, i], [i], 1.0, [i + 1, i + 1], False, False)
    first.save(tmp_path / "first.npz")
    first.close()
    second = ReplayBuffer(64, (2,), (1,), seed=0, path=tmp_path / "s")
    for i in range(10):
        second.add([100 + i, 0], [100 + i], 1.0, [101 + i, 0], False, False)
    second.close()
    with pytest.warns(UserWarning, match="overwritten"):
        again = ReplayBuffer.load(tmp_path / "first.npz")
    assert len(again) == 0 and again.num_sampleable == 0
    again.close()
    with pytest.raises(ValueError, match="closed"):
        len(again)


def test_a_file_backed_buffer_is_not_pickled(tmp_path):
    import pickle

    buf = ReplayBuffer(64, (2,), (1,), path=tmp_path)
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(buf)
