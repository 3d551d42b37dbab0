"""Tests of fastsac.ReplayBuffer against docs/replay.md.

The property tests drive the real buffer and the pure-Python model in replay_reference.py with
the same random add sequences. Every frame carries a unique id in its values and every action
carries the id of its step, so a sampled row can be traced back to the step it claims to be and
compared field by field with what the documentation says that step must give.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from buffer_helpers import (
    CFG,
    ENDS,
    SETTINGS,
    STARTS,
    Driver,
    action_for,
    add1,
    assert_unchanged,
    bytes_equal,
    check_against_reference,
    filled,
    frame,
    make_pair,
    names,
    snapshot,
    to_numpy,
    vec_buffer,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from replay_reference import ReplayReference

from fastsac import Batch, ReplayBuffer
from fastsac._sampling import StagingRing

# ---------------------------------------------------------------------------------------------
# property tests
# ---------------------------------------------------------------------------------------------
OBS_KINDS = [(np.uint8, (2,)), (np.float32, (2,)), (np.uint8, (1, 3, 2)),
             (np.float32, (1, 3, 2))]


@st.composite
def scenarios(draw):
    storage = draw(st.sampled_from(["episode", "transition"]))
    num_envs = draw(st.integers(1, 3))
    ring = draw(st.integers(2 if storage == "episode" else 1, 10))
    capacity = ring * num_envs + draw(st.integers(0, num_envs - 1))
    obs_dtype, obs_shape = draw(st.sampled_from(OBS_KINDS))
    cfg = dict(capacity=capacity, obs_shape=obs_shape,
               action_shape=draw(st.sampled_from([(1,), (2,), (2, 2)])),
               obs_dtype=obs_dtype, num_envs=num_envs,
               frame_stack=draw(st.integers(1, 4)), n_step=draw(st.integers(1, 5)),
               gamma=draw(st.sampled_from([0.99, 0.9, 0.5, 1.0, 0.0])), storage=storage,
               seed=draw(st.integers(0, 2**64 - 1)))
    n_adds = draw(st.integers(1, 40))
    events = draw(st.lists(
        st.lists(st.tuples(st.sampled_from(STARTS), st.sampled_from(ENDS)),
                 min_size=num_envs, max_size=num_envs),
        min_size=n_adds, max_size=n_adds))
    # Input variants: float64 obs into a float32 buffer / int64 obs into a uint8 buffer,
    # flags as 0/1 ints, and (num_envs == 1) arrays without the leading axis.
    variant = dict(obs_input_dtype=draw(st.sampled_from(
                       [None, np.float64 if obs_dtype == np.float32 else np.int64])),
                   flags_as_int=draw(st.booleans()), squeeze=draw(st.booleans()))
    checkpoints = draw(st.sets(st.integers(0, n_adds - 1), max_size=3)) | {n_adds - 1}
    return cfg, events, variant, checkpoints, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=1200, **SETTINGS)
@given(scenarios())
def test_matches_reference(scenario):
    cfg, events, variant, checkpoints, data_seed = scenario
    buf, ref = make_pair(**cfg)
    assert buf.capacity == (cfg["capacity"] // cfg["num_envs"]) * cfg["num_envs"]
    d = Driver(buf, ref, rng=np.random.default_rng(data_seed), **variant)
    for i, ev in enumerate(events):
        d.add(ev)
        assert len(buf) == len(ref)
        assert buf.num_sampleable == ref.num_sampleable
        if i in checkpoints:
            check_against_reference(buf, ref)


@settings(max_examples=300, **SETTINGS)
@given(scenarios())
def test_zero_padded_stacks_match_the_reference(scenario):
    """stack_pad="zeros" (SB3's VecFrameStack): zero frames before an episode's start."""
    cfg, events, variant, checkpoints, data_seed = scenario
    buf, ref = make_pair(**cfg, stack_pad="zeros")
    d = Driver(buf, ref, rng=np.random.default_rng(data_seed), **variant)
    for i, ev in enumerate(events):
        d.add(ev)
        if i in checkpoints:
            check_against_reference(buf, ref)


def test_stack_pad_is_checked_and_kept_in_files(tmp_path):
    with pytest.raises(ValueError, match="stack_pad"):
        vec_buffer(stack_pad="last")
    with pytest.raises(ValueError, match="stack_pad"):
        vec_buffer(stack_pad="zeros", memory="device")
    buf = vec_buffer(frame_stack=3, stack_pad="zeros")
    add1(buf, 1, 0, 1.0, 2)
    buf.save(tmp_path / "z.npz")
    loaded = ReplayBuffer.load(tmp_path / "z.npz")
    assert loaded.stack_pad == "zeros"
    assert loaded.sample(1).obs.tolist() == [[0.0, 0.0, 1.0]]
    assert "stack_pad" not in vec_buffer().config()  # default files stay as they were


@settings(max_examples=40, **SETTINGS)
@given(scenarios(), st.data())
def test_sample_batch_larger_than_sampleable_raises(scenario, data):
    cfg, events, variant, _, data_seed = scenario
    buf, ref = make_pair(**cfg)
    d = Driver(buf, ref, rng=np.random.default_rng(data_seed), **variant)
    for ev in events:
        d.add(ev)
    n = buf.num_sampleable
    assert n == ref.num_sampleable
    before = snapshot(buf)
    with pytest.raises(ValueError) as exc:
        buf.sample(n + data.draw(st.integers(1, 5)))
    assert names(str(exc.value), "batch_size")
    assert_unchanged(buf, before)
    if n:
        assert buf.sample(n).obs.shape[0] == n


@settings(max_examples=100, **SETTINGS)
@given(scenarios(), st.data())
def test_state_round_trip_continues_identically(scenario, data):
    """A buffer restored from state_dict() at any point behaves exactly like the original:
    same samples (RNG included), then the same results after further adds."""
    cfg, events, variant, _, data_seed = scenario
    buf, ref = make_pair(**cfg)
    d = Driver(buf, ref, rng=np.random.default_rng(data_seed), **variant)
    cut = data.draw(st.integers(0, len(events)))
    for ev in events[:cut]:
        d.add(ev)
    other = ReplayBuffer(**{**cfg, "seed": (cfg["seed"] + 1) % 2**64})
    other.load_state_dict(buf.state_dict())
    assert len(other) == len(buf) and other.num_sampleable == buf.num_sampleable
    assert other.nbytes == buf.nbytes
    d.also.append(other)
    for ev in events[cut:]:
        d.add(ev)
    assert snapshot(other)["storage"] == snapshot(buf)["storage"]
    n = buf.num_sampleable
    assert other.num_sampleable == n == ref.num_sampleable
    for b in sorted({1, min(3, n), n}) if n else ():
        x, y = to_numpy(buf.sample(b)), to_numpy(other.sample(b))
        for f in Batch._fields:
            assert np.array_equal(x[f], y[f]), f
    check_against_reference(other, ref)


# ---------------------------------------------------------------------------------------------
# hand-written examples
# ---------------------------------------------------------------------------------------------
def steps_by_action(buf: ReplayBuffer, draws: int = 60) -> dict[int, dict]:
    """Every sampleable step, keyed by its action value, with its sampled fields."""
    n = buf.num_sampleable
    seen: dict[int, dict] = {}
    for _ in range(draws):
        got = to_numpy(buf.sample(n))
        for r in range(n):
            row = {f: got[f][r] for f in Batch._fields}
            key = int(row["action"].reshape(-1)[0])
            if key in seen:
                for f in Batch._fields:
                    assert np.array_equal(seen[key][f], row[f]), (key, f)
            seen[key] = row
    assert len(seen) == n, f"{n} sampleable, {len(seen)} distinct steps drawn"
    return seen


@pytest.mark.parametrize("storage", ["episode", "transition"])
@pytest.mark.parametrize("flags,discounts", [
    ((False, True), (0.25, 0.5)),   # truncated: bootstrap with gamma^m from the final obs
    ((True, False), (0.0, 0.0)),    # terminated: no bootstrap
    ((True, True), (0.0, 0.0)),     # both flags count as terminated
])
def test_episode_end_flags(storage, flags, discounts):
    buf = vec_buffer(n_step=3, gamma=0.5, storage=storage)
    add1(buf, 10, 1, 1.0, 11)
    add1(buf, 11, 2, 2.0, 12, *flags)
    assert len(buf) == 2 and buf.num_sampleable == 2
    s = steps_by_action(buf)
    # t=0: m = min(3, 2 - 0) = 2; t=1: m = 1. Both windows end at the final obs 12.
    assert s[1]["reward"] == pytest.approx(1.0 + 0.5 * 2.0)
    assert s[2]["reward"] == pytest.approx(2.0)
    assert s[1]["discount"] == pytest.approx(discounts[0])
    assert s[2]["discount"] == pytest.approx(discounts[1])
    assert s[1]["next_obs"].tolist() == [12.0] and s[2]["next_obs"].tolist() == [12.0]
    assert s[1]["obs"].tolist() == [10.0] and s[2]["obs"].tolist() == [11.0]


@pytest.mark.parametrize("terminated", [True, False])
def test_n_step_window_shortened_by_episode_end(terminated):
    buf = vec_buffer(n_step=3, gamma=0.5)
    for t, r in enumerate([1.0, 2.0, 4.0, 8.0]):
        add1(buf, t, t, r, t + 1, term=terminated and t == 3, trunc=not terminated and t == 3)
    s = steps_by_action(buf)
    assert sorted(s) == [0, 1, 2, 3]
    # (reward, m, next obs) per step
    want = {0: (1 + 0.5 * 2 + 0.25 * 4, 3, 3.0), 1: (2 + 0.5 * 4 + 0.25 * 8, 3, 4.0),
            2: (4 + 0.5 * 8, 2, 4.0), 3: (8.0, 1, 4.0)}
    for t, (ret, m, nxt) in want.items():
        assert s[t]["reward"] == pytest.approx(ret)
        assert s[t]["next_obs"].tolist() == [nxt]
        ends_in_termination = terminated and t + m - 1 == 3
        assert s[t]["discount"] == pytest.approx(0.0 if ends_in_termination else 0.5 ** m)


@pytest.mark.parametrize("storage", ["episode", "transition"])
def test_running_episode_needs_complete_window(storage):
    buf = vec_buffer(n_step=3, gamma=0.5, storage=storage)
    add1(buf, 0, 0, 1.0, 1)
    add1(buf, 1, 1, 1.0, 2)
    assert len(buf) == 2 and buf.num_sampleable == 0
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(1)
    add1(buf, 2, 2, 1.0, 3)
    assert len(buf) == 3 and buf.num_sampleable == 1   # only t=0 has o_{t+3}
    s = steps_by_action(buf)
    assert s[0]["next_obs"].tolist() == [3.0] and s[0]["discount"] == pytest.approx(0.125)
    add1(buf, 3, 3, 1.0, 4, trunc=True)
    assert len(buf) == 4 and buf.num_sampleable == 4


def test_frame_stack_repeats_first_frame_and_never_mixes_episodes_or_envs():
    buf = ReplayBuffer(32, (1,), (1,), num_envs=2, frame_stack=3, seed=0)

    def add(o, a, no, trunc=False):  # env 1 mirrors env 0 with frames + 100
        buf.add(np.array([[o], [o + 100]], np.float32), np.array([[a], [a + 100]], np.float32),
                np.zeros(2), np.array([[no], [no + 100]], np.float32), [False, False],
                [trunc, trunc])

    add(1, 1, 2)
    add(2, 2, 3, trunc=True)          # episode A: o = 1, 2, 3
    add(3, 3, 21)                     # episode B starts with obs equal to A's final obs
    add(21, 4, 22)
    add(22, 5, 23, trunc=True)        # episode B: o = 3, 21, 22, 23
    s = steps_by_action(buf)
    assert sorted(s) == [1, 2, 3, 4, 5, 101, 102, 103, 104, 105]
    want = {1: ([1, 1, 1], [1, 1, 2]), 2: ([1, 1, 2], [1, 2, 3]),
            3: ([3, 3, 3], [3, 3, 21]), 4: ([3, 3, 21], [3, 21, 22]),
            5: ([3, 21, 22], [21, 22, 23])}
    for a, (o, no) in want.items():
        assert s[a]["obs"].tolist() == o, a
        assert s[a]["next_obs"].tolist() == no, a
        assert s[a + 100]["obs"].tolist() == [v + 100 for v in o], a
        assert s[a + 100]["next_obs"].tolist() == [v + 100 for v in no], a
    assert len(buf) == 10


def test_episode_continuity_is_bytewise():
    """-0.0 == 0.0 as floats but not bytewise: the add starts a new episode."""
    buf = vec_buffer(frame_stack=2, n_step=2, gamma=0.5)
    add1(buf, 1.0, 1, 1.0, 0.0)
    add1(buf, -0.0, 2, 2.0, 5.0)
    add1(buf, 5.0, 3, 4.0, 6.0)
    assert len(buf) == 3 and buf.num_sampleable == 2   # episode 2 (t=0 only) still running
    s = steps_by_action(buf)
    assert sorted(s) == [1, 2]
    # The first episode ended (as if truncated) after one step: m = 1, bootstrap from 0.0.
    assert s[1]["reward"] == pytest.approx(1.0) and s[1]["discount"] == pytest.approx(0.5)
    assert s[1]["obs"].tolist() == [1.0, 1.0] and s[1]["next_obs"].tolist() == [1.0, 0.0]
    assert np.signbit(s[1]["next_obs"]).tolist() == [False, False]
    # The new episode's stack repeats -0.0, not the previous episode's frames.
    assert s[2]["obs"].tolist() == [0.0, 0.0]
    assert np.signbit(s[2]["obs"]).tolist() == [True, True]
    assert s[2]["next_obs"].tolist() == [5.0, 6.0]
    assert s[2]["reward"] == pytest.approx(2.0 + 0.5 * 4.0)
    assert s[2]["discount"] == pytest.approx(0.25)


def test_mismatched_obs_starts_new_episode_as_truncation():
    buf = vec_buffer(n_step=3, gamma=0.5)
    add1(buf, 0, 0, 1.0, 1)
    add1(buf, 1, 1, 1.0, 2)
    add1(buf, 7, 2, 1.0, 8)            # not the last next_obs (2): new episode
    # episode 1 ended as truncated: t=0 m=2, t=1 m=1; episode 2 running, window incomplete
    assert len(buf) == 3 and buf.num_sampleable == 2
    s = steps_by_action(buf)
    assert s[0]["reward"] == pytest.approx(1.5) and s[0]["discount"] == pytest.approx(0.25)
    assert s[0]["next_obs"].tolist() == [2.0]
    assert s[1]["discount"] == pytest.approx(0.5)


@pytest.mark.parametrize("storage", ["episode", "transition"])
def test_end_episodes_splits_even_when_the_next_obs_matches(storage):
    buf = vec_buffer(frame_stack=2, n_step=3, gamma=0.5, storage=storage)
    add1(buf, 0, 0, 1.0, 1)
    add1(buf, 1, 1, 1.0, 2)
    buf.end_episodes()                 # e.g. a resumed run restarting its env
    buf.end_episodes()                 # idempotent: no episode is running now
    add1(buf, 2, 2, 4.0, 3)            # obs equals the last next_obs: still a new episode
    add1(buf, 3, 3, 8.0, 4)
    add1(buf, 4, 4, 16.0, 5, term=True)
    s = steps_by_action(buf)
    assert sorted(s) == [0, 1, 2, 3, 4]
    # episode 1 ended as truncated: its windows stop at obs 2 and bootstrap from it
    assert s[0]["reward"] == pytest.approx(1.5) and s[0]["discount"] == pytest.approx(0.25)
    assert s[1]["reward"] == pytest.approx(1.0) and s[1]["discount"] == pytest.approx(0.5)
    assert s[1]["next_obs"].tolist() == [1.0, 2.0]
    # episode 2's first stack repeats its first frame instead of reaching back to frame 1
    assert s[2]["obs"].tolist() == [2.0, 2.0]
    assert s[2]["reward"] == pytest.approx(4.0 + 0.5 * 8.0 + 0.25 * 16.0)
    assert s[2]["discount"] == 0.0


def test_episode_continuity_is_compared_after_casting():
    """float64 inputs that differ only below float32 precision are the same stored obs."""
    buf = vec_buffer(n_step=2, gamma=0.5)
    buf.add(np.array([0.0]), [1], 1.0, np.array([0.1]), False, False)
    buf.add(np.array([0.1 + 1e-12]), [2], 2.0, np.array([0.3]), False, False)  # continues
    assert len(buf) == 2 and buf.num_sampleable == 1          # one running 2-step episode
    s = steps_by_action(buf)
    assert s[1]["reward"] == pytest.approx(2.0) and s[1]["discount"] == pytest.approx(0.25)
    ubuf = vec_buffer(n_step=2, gamma=0.5, obs_dtype=np.uint8)
    ubuf.add(np.array([1], np.int64), [1], 1.0, np.array([7], np.int64), False, False)
    ubuf.add(np.array([7], np.uint8), [2], 2.0, np.array([9], np.int16), False, False)
    assert len(ubuf) == 2 and ubuf.num_sampleable == 1


def test_transition_storage_links_steps_by_flags_only():
    buf = vec_buffer(frame_stack=2, n_step=2, gamma=0.5, storage="transition")
    add1(buf, 1, 1, 1.0, 2)
    add1(buf, 5, 2, 2.0, 6)             # obs != previous next_obs: same episode anyway
    add1(buf, 7, 3, 4.0, 8, trunc=True)
    s = steps_by_action(buf)
    assert s[1]["obs"].tolist() == [1, 1] and s[1]["next_obs"].tolist() == [5, 6]
    assert s[1]["reward"] == pytest.approx(2.0) and s[1]["discount"] == pytest.approx(0.25)
    assert s[2]["obs"].tolist() == [1, 5] and s[2]["next_obs"].tolist() == [7, 8]
    assert s[3]["obs"].tolist() == [5, 7] and s[3]["next_obs"].tolist() == [7, 8]
    assert s[3]["reward"] == pytest.approx(4.0) and s[3]["discount"] == pytest.approx(0.5)


def test_overwritten_stack_makes_step_unsampleable():
    buf = vec_buffer(capacity=5, frame_stack=3)
    for t in range(6):                  # one running episode: positions 0..6, oldest held 2
        add1(buf, t, t, 1.0, t + 1)
    assert len(buf) == 4                 # steps at positions 2..5
    s = steps_by_action(buf)
    assert sorted(s) == [4, 5]          # t=2, 3 need overwritten frames; t=6 has no next obs
    assert s[4]["obs"].tolist() == [2, 3, 4] and s[5]["next_obs"].tolist() == [4, 5, 6]


def test_overwritten_first_frame_blocks_clamped_stacks():
    buf = vec_buffer(capacity=4, frame_stack=3)
    add1(buf, 100, 100, 0.0, 101, trunc=True)     # positions 0, 1
    for t in range(3):                            # episode B: o = 10, 11, 12, 13
        add1(buf, 10 + t, t, 1.0, 11 + t)
    # positions 2..5 held (o_0 of B at 2): every B step is sampleable
    assert len(buf) == 3 and sorted(steps_by_action(buf)) == [0, 1, 2]
    add1(buf, 13, 3, 1.0, 14)                     # overwrites o_0 of B
    assert len(buf) == 3                          # steps t = 1, 2, 3
    s = steps_by_action(buf)
    assert sorted(s) == [3]                       # t=1, 2 stack o_0, which is gone
    assert s[3]["obs"].tolist() == [11, 12, 13] and s[3]["next_obs"].tolist() == [12, 13, 14]


def test_image_batch_shapes_and_values():
    shape, k, n_envs = (3, 84, 84), 3, 4
    buf, ref = make_pair(4 * 24, shape, (6,), obs_dtype=np.uint8, num_envs=n_envs,
                         frame_stack=k, seed=3)
    rng = np.random.default_rng(1)
    d = Driver(buf, ref, rng=rng)
    for i in range(30):
        d.add([("normal", "trunc" if rng.random() < 0.1 else None) for _ in range(n_envs)])
    b = 32
    batch = buf.sample(b)
    assert isinstance(batch, Batch)
    assert batch.obs.shape == (b, 9, 84, 84) and batch.obs.dtype == torch.uint8
    assert batch.next_obs.shape == (b, 9, 84, 84) and batch.next_obs.dtype == torch.uint8
    assert batch.action.shape == (b, 6) and batch.action.dtype == torch.float32
    assert batch.reward.shape == (b,) and batch.reward.dtype == torch.float32
    assert batch.discount.shape == (b,) and batch.discount.dtype == torch.float32
    assert batch.obs.device.type == "cpu"
    check_against_reference(buf, ref, draws=3, batch_size=b, coverage=False)


def test_cpu_batch_staging_is_per_batch_size():
    """A CPU batch stays valid until the next sample() with the same batch_size."""
    buf, _, _ = filled()
    first = buf.sample(3)
    kept = to_numpy(first)
    for _ in range(5):
        buf.sample(4)
        buf.sample(1)
    for f in Batch._fields:
        assert np.array_equal(getattr(first, f).numpy(), kept[f]), f


@pytest.mark.parametrize("storage", ["episode", "transition"])
def test_large_batches_against_reference(storage):
    """Big rings and batches (the gather may be split across threads)."""
    buf, ref = make_pair(3 * 700, (1, 3, 2), (2,), obs_dtype=np.uint8, num_envs=3,
                         frame_stack=4, n_step=5, gamma=0.97, storage=storage, seed=11)
    rng = np.random.default_rng(2)
    d = Driver(buf, ref, rng=rng)
    for i in range(900):
        d.add([(str(rng.choice(STARTS)), None if rng.random() < 0.97 else
                str(rng.choice(["term", "trunc", "both"]))) for _ in range(3)])
    n = buf.num_sampleable
    assert n > 1500
    check_against_reference(buf, ref, draws=4, batch_size=n, coverage=False)


def test_num_envs_one_accepts_both_shapes():
    buf, ref = make_pair(8, (2,), (2,), seed=0)
    ref.add(np.zeros((1, 2)), np.ones((1, 2)), [1.0], np.ones((1, 2)), [False], [False])
    buf.add(np.zeros((1, 2)), np.ones((1, 2)), [1.0], np.ones((1, 2)), [False], [False])
    ref.add(np.ones(2), 2 * np.ones(2), 2.0, np.full(2, 2.0), False, True)
    buf.add(np.ones(2), 2 * np.ones(2), 2.0, np.full(2, 2.0), False, True)
    buf.add(np.ones(2, np.float32), [3, 3], np.float32(1), [5, 5], np.bool_(True), 0)
    ref.add(np.ones(2, np.float32), [3, 3], np.float32(1), [5, 5], np.bool_(True), 0)
    check_against_reference(buf, ref)




# ---------------------------------------------------------------------------------------------
# devices and threads
# ---------------------------------------------------------------------------------------------
def counting_buffer(device="cpu", **kw) -> ReplayBuffer:
    """Obs, action and next_obs carry the step's id: a row is consistent iff they agree."""
    buf = ReplayBuffer(64, (1,), (1,), device=device, seed=7, **kw)
    for t in range(40):
        add1(buf, [t], [t], 0.0, [t + 1], trunc=t % 10 == 9)
    return buf


def test_cpu_staging_is_not_pinned_and_pinning_needs_cuda():
    batch = counting_buffer().sample(8)
    assert not batch.obs.is_pinned()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="pin_memory"):
            ReplayBuffer(8, (1,), (1,), pin_memory=True)


def test_pinned_cpu_staging_waits_for_the_gpu_before_it_is_refilled(monkeypatch):
    """A CUDA learner copies a CPU buffer's batch out of pinned staging without blocking, and
    the next sample refills that staging: it must wait for the GPU's queued work first. (The
    pinning is faked here: a CPU build of torch cannot pin.)"""
    buf = counting_buffer()
    buf.sample(8)  # its staging, unpinned
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: events.append("wait"))
    buf.pin_memory = True  # what ReplayBuffer(pin_memory=True) holds on a GPU machine
    staging = buf._staging[8].first
    staging.pin = True
    fill = staging.fill
    staging.fill = lambda threads: events.append("fill") or fill(threads)
    for _ in range(3):
        buf.sample(8)
    assert events == ["wait", "fill"] * 3


class FakeStaging:
    """A staging whose copy out is still queued on the GPU while ``busy``."""

    def __init__(self, name: int, nbytes: int = 1) -> None:
        self.name, self.nbytes, self.busy = name, nbytes, False
        self.lock = threading.Lock()

    def copy_done(self) -> bool:
        return not self.busy


def take(ring: StagingRing, queue: bool = False) -> int:
    """The staging ``ring`` gives, released at once (as a sample releases it); ``queue``: left
    busy, as by a copy queued behind the GPU's work."""
    staging = ring.take()
    assert staging.lock.locked()
    staging.busy = staging.busy or queue
    staging.lock.release()
    return staging.name


def test_staging_ring_takes_an_idle_staging_and_grows_only_while_all_are_busy():
    """On CUDA a staging is busy while the copy out of it waits behind the GPU's updates: the
    ring hands out an idle one, makes another while all are busy, and at its limit takes the
    next in turn (whose refill then waits for its copy)."""
    made: list[FakeStaging] = []

    def new() -> FakeStaging:
        made.append(FakeStaging(len(made)))
        return made[-1]

    ring = StagingRing(new, cuda=True)
    assert [take(ring) for _ in range(3)] == [0, 0, 0] and len(made) == 1
    made[0].busy = True
    assert take(ring) == 1 and len(ring) == 2
    assert take(ring) == 1  # idle: taken again, nothing made
    made[1].busy = True
    assert take(ring) == 2 and len(ring) == 3
    made[0].busy = False
    assert take(ring) == 0  # an idle one before another is made
    for staging in made:
        staging.busy = True
    names = [take(ring, queue=True) for _ in range(12)]
    assert len(ring) == 8 and names[:5] == [3, 4, 5, 6, 7]  # grown to the limit
    assert names[5:] == [0, 1, 2, 3, 4, 5, 6]  # then in turn
    cpu = StagingRing(new, cuda=False)
    cpu.first.busy = True
    assert cpu.take() is cpu.first and len(cpu) == 1  # one staging off CUDA, whatever happens
    cpu.first.lock.release()


def test_a_staging_that_another_thread_holds_is_not_taken():
    """take() returns its staging locked: a second thread sampling the same batch size gets
    another staging rather than waiting for the first one's fill and copy."""
    made: list[FakeStaging] = []
    ring = StagingRing(lambda: made.append(FakeStaging(len(made))) or made[-1], cuda=True)
    first = ring.take()
    second = ring.take()
    assert first is not second and first.lock.locked() and second.lock.locked()
    first.lock.release()
    second.lock.release()


def test_a_ring_of_big_stagings_stops_at_the_pinned_memory_limit():
    made: list[FakeStaging] = []
    ring = StagingRing(lambda: made.append(FakeStaging(len(made), 50 << 20)) or made[-1],
                       cuda=True)
    assert [take(ring, queue=True) for _ in range(4)] == [0, 1, 0, 1]  # 128 MiB / 50 MiB
    ring = StagingRing(lambda: made.append(FakeStaging(len(made), 1 << 30)) or made[-1],
                       cuda=True)
    assert [take(ring, queue=True) for _ in range(3)] == [2, 3, 2]  # two at least


def test_a_cpu_buffer_keeps_one_staging_per_batch_size():
    buf = counting_buffer()
    out = Batch(*(t.clone() for t in buf.sample(8)))
    for _ in range(3):
        assert buf.sample(8, out=out) is out
    ring = buf._staging[8]
    assert len(ring) == 1 and not ring.first.lock.locked()  # released after each sample


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_sampling_into_given_tensors_runs_ahead_of_the_gpu():
    """Each batch's copy into the learner's tensors queues behind the GPU's work before it;
    the next sample takes another pinned staging instead of waiting for that copy. The
    batches still equal the CPU buffer's."""
    cpu, gpu = counting_buffer("cpu"), counting_buffer("cuda")
    first = gpu.sample(8)
    cpu.sample(8)
    outs = [Batch(*(torch.zeros_like(t) for t in first)) for _ in range(4)]
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()
    torch.cuda._sleep(1_000_000_000)  # GPU work (about half a second) before the copies
    for out in outs:
        gpu.sample(8, out=out)
    assert not stream.query(), "a sample waited for the GPU"
    assert len(gpu._staging[8]) == 4
    torch.cuda.synchronize()
    for out in outs:
        for x, y in zip(cpu.sample(8), out):
            torch.testing.assert_close(x, y.cpu(), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_memory_add_does_not_wait_for_the_gpu():
    """add() with frames in GPU memory queues their copy behind the GPU's work (the updates
    the trainer launched) instead of waiting for it; what it stores is what host memory
    stores."""
    dev = ReplayBuffer(64, (1,), (1,), device="cuda", memory="device", seed=7)
    host = ReplayBuffer(64, (1,), (1,), seed=7)

    def add(t):
        for buf in (dev, host):
            add1(buf, [t], [t], 0.0, [t + 1], trunc=t % 10 == 9)

    for t in range(30):  # (loads the kernels, which waits for the GPU; fills torch's cache
        add(t)           # of pinned blocks, whose later use needs no allocation)
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()
    torch.cuda._sleep(1_000_000_000)
    for t in range(30, 40):
        add(t)
    assert not stream.query(), "an add waited for the GPU"
    torch.cuda.synchronize()
    a, b = dev.state_dict(), host.state_dict()
    for k in ("storage", "streams", "rng"):
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_equal_cpu_batches_and_stay_valid():
    cpu, gpu = counting_buffer("cpu"), counting_buffer("cuda")
    assert gpu.pin_memory
    kept = []
    for _ in range(5):
        c, g = cpu.sample(16), gpu.sample(16)
        assert g.obs.device.type == "cuda"
        for x, y in zip(c, g):
            torch.testing.assert_close(x, y.cpu(), rtol=0, atol=0)
        kept.append((tuple(x.clone() for x in c), g))
    torch.cuda.synchronize()
    for c, g in kept:  # later samples did not overwrite earlier device batches
        for x, y in zip(c, g):
            torch.testing.assert_close(x, y.cpu(), rtol=0, atol=0)


def test_concurrent_add_and_sample_never_mix_steps():
    """sample() and add() drop the GIL; the core's lock must keep a concurrent add() from
    tearing a frame or mixing steps in a batch. Large frames in a tiny ring make every sample
    overlap the writer's copies."""
    import sys
    import threading

    shape = (3, 84, 84)
    buf = ReplayBuffer(16, shape, (1,), obs_dtype=np.uint8, seed=3)
    frames = [np.full(shape, v, np.uint8) for v in range(201)]

    def add_step(t):
        o = t % 200  # episodes of 10 steps, ending at multiples of 10
        buf.add(frames[o], [o], 0.0, frames[o + 1], False, t % 10 == 9)

    for t in range(16):
        add_step(t)
    stop = threading.Event()

    def writer():
        for t in range(16, 1_000_000):
            if stop.is_set():
                return
            add_step(t)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL back and forth often
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(1000):  # without the lock this fails within a few hundred (measured)
            b = buf.sample(4)
            obs, nxt = b.obs.flatten(1), b.next_obs.flatten(1)
            assert torch.equal(obs.amin(1), obs.amax(1)), "torn obs frame"
            assert torch.equal(nxt.amin(1), nxt.amax(1)), "torn next_obs frame"
            assert torch.equal(obs[:, 0].float(), b.action[:, 0])
            assert torch.equal(nxt[:, 0], obs[:, 0] + 1)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)


def test_every_sampleable_step_is_drawn_when_streams_hold_unequal_counts():
    """Streams that hold different numbers of positions (episode starts take two) must each
    be drawn in proportion; e.g. held counts 5, 4, 6 sum to 3 * 5 but are not equal."""
    import itertools

    for starts in itertools.product([False, True], repeat=9):  # new episode? per env per add
        buf = ReplayBuffer(60, (1,), (1,), num_envs=3, seed=11)
        nxt = [None] * 3
        ids = []
        for t in range(3):
            obs = []
            for e in range(3):
                new = starts[3 * t + e] or nxt[e] is None
                obs.append(e * 1000 + 100 * t + 50 if new else nxt[e])
            ids += obs
            nxt = [o + 1 for o in obs]
            o = np.array(obs, np.float32)[:, None]
            buf.add(o, o, np.zeros(3), o + 1, np.zeros(3, bool), np.zeros(3, bool))
        n = buf.num_sampleable
        assert n == 9
        seen = set()
        for _ in range(40):
            seen.update(buf.sample(n).action[:, 0].tolist())
        assert seen == set(map(float, ids)), starts


# ---------------------------------------------------------------------------------------------
# prefetching
# ---------------------------------------------------------------------------------------------
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("storage", ["episode", "transition"])
@pytest.mark.parametrize("cfg", [CFG, dict(CFG, num_envs=1, capacity=9, frame_stack=1,
                                           n_step=1, obs_dtype=np.float32)])
def test_prefetched_batches_are_the_batches_drawn_one_call_earlier(storage, cfg, device):
    """At call k a prefetching buffer returns what an ordinary one with the same seed returns
    when sampled at call k-1: steps added after that are not in it, and the small rings wrap
    between its draw and its return, so a slot overwritten in between would show. (On CUDA
    its copies run on a side stream.)"""
    plain, ref = make_pair(**cfg, storage=storage, seed=9)
    pre = ReplayBuffer(**cfg, storage=storage, seed=9, prefetch=True, device=device)
    d = Driver(plain, ref, rng=np.random.default_rng(3))
    d.also.append(pre)
    rng = np.random.default_rng(4)

    def add_some(k: int) -> None:
        for _ in range(k):
            d.add([(str(rng.choice(STARTS)), rng.choice(ENDS)) for _ in range(plain.num_envs)])

    add_some(12)
    for batch_size in (4, 5):  # a new batch size: the draw in flight for the old one is dropped
        got = to_numpy(pre.sample(batch_size))  # (for 5: the loop's last want was the
        want = to_numpy(plain.sample(batch_size))  # dropped draw)
        for f in Batch._fields:
            assert bytes_equal(got[f], want[f]).all(), f
        want = to_numpy(plain.sample(batch_size))  # drawn when pre drew its next batch
        for k in range(25):
            add_some(int(rng.integers(0, 4)))
            got = to_numpy(pre.sample(batch_size))
            for f in Batch._fields:
                assert bytes_equal(got[f], want[f]).all(), (f, k)
            want = to_numpy(plain.sample(batch_size))
    check_against_reference(plain, ref)  # and plain itself is what the reference says


def test_a_prefetching_buffer_saves_what_it_has_drawn(tmp_path):
    """A save waits for the draw in flight, so the file's RNG state includes it."""
    source = filled(seed=77)[0].state_dict()
    pre, plain = ReplayBuffer(**CFG, seed=1, prefetch=True), ReplayBuffer(**CFG, seed=1)
    pre.load_state_dict(source)
    plain.load_state_dict(source)
    pre.sample(4)  # returns one batch and draws the next in the background
    pre.save(tmp_path / "b.npz")
    loaded = ReplayBuffer.load(tmp_path / "b.npz")
    plain.sample(4), plain.sample(4)  # the same two draws
    for _ in range(5):
        a, b = to_numpy(loaded.sample(4)), to_numpy(plain.sample(4))
        assert all(bytes_equal(a[f], b[f]).all() for f in Batch._fields)


# ---------------------------------------------------------------------------------------------
# memory="device": frames in a torch tensor (on the CPU here), gathered with torch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=250, **SETTINGS)
@given(scenarios())
def test_device_memory_matches_the_reference_and_host_memory(device, scenario):
    """The same steps into memory="device" and memory="host" buffers with one seed: both as
    the reference says, the same batches, and byte-identical states (files load either way)."""
    cfg, events, variant, checkpoints, data_seed = scenario
    host, ref = make_pair(**cfg)
    dev = ReplayBuffer(**cfg, memory="device", device=device)
    d = Driver(dev, ref, rng=np.random.default_rng(data_seed), **variant)
    d.also.append(host)
    for i, ev in enumerate(events):
        d.add(ev)
        assert len(dev) == len(ref) and dev.num_sampleable == ref.num_sampleable
        if i in checkpoints:
            check_against_reference(dev, ref)
            check_against_reference(host, ref)  # the same draws: the two RNGs stay in step
    a, b = dev.state_dict(), host.state_dict()
    for k in ("storage", "streams", "rng"):
        assert np.array_equal(a[k], b[k]), k
    n = dev.num_sampleable
    for size in sorted({1, n}) if n else ():
        x, y = to_numpy(dev.sample(size)), to_numpy(host.sample(size))
        for f in Batch._fields:
            assert bytes_equal(x[f], y[f]).all(), f
    other, twin = ReplayBuffer(**cfg, memory="device", device=device), ReplayBuffer(**cfg)
    other.load_state_dict(b)  # a host buffer's state into device memory, and on from there
    twin.load_state_dict(b)
    d.also = [host, other, twin]
    d.add(events[-1])
    if twin.num_sampleable:
        x, y = to_numpy(other.sample(1)), to_numpy(twin.sample(1))
        assert all(bytes_equal(x[f], y[f]).all() for f in Batch._fields)


def test_device_memory_bad_input_is_refused_by_name_and_changes_nothing():
    with pytest.raises(ValueError, match="memory"):
        vec_buffer(memory="gpu")
    with pytest.raises(ValueError, match="prefetch"):
        vec_buffer(memory="device", prefetch=True)
    buf = vec_buffer(memory="device")
    add1(buf, 1.0, 0.5, 1.0, 2.0)
    before = snapshot(buf)
    for obs, next_obs, name in ((np.nan, 3.0, "obs"), (2.0, np.inf, "next_obs")):
        with pytest.raises(ValueError) as exc:
            add1(buf, obs, 0.5, 1.0, next_obs)
        assert names(str(exc.value), name)
        assert_unchanged(buf, before)
    assert buf.nbytes == buf._core.nbytes + buf.capacity * 4  # a float32 frame per slot


def test_device_memory_file_round_trip(tmp_path):
    host, ref, d = filled()
    dev = ReplayBuffer(**CFG, seed=123, memory="device")
    dev.load_state_dict(host.state_dict())
    dev.save(tmp_path / "dev.npz")
    host.save(tmp_path / "host.npz")
    for name in ("dev.npz", "host.npz"):
        for memory in ("host", "device"):
            loaded = ReplayBuffer.load(tmp_path / name, memory=memory)
            assert loaded.memory == memory
            check_against_reference(loaded, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["host", "device", "prefetch"])
def test_sampling_into_given_tensors_writes_the_same_batch(kind, device):
    kw = dict(memory="device") if kind == "device" else dict(prefetch=kind == "prefetch")
    buf = ReplayBuffer(**CFG, seed=5, device=device, **kw)
    plain = ReplayBuffer(**CFG, seed=5)
    source = filled(seed=1)[0].state_dict()
    buf.load_state_dict(source)
    plain.load_state_dict(source)
    out = Batch(*(torch.zeros_like(t) for t in buf.sample(6)))
    plain.sample(6)  # (for prefetch, the second draw is the one in flight then)
    want = to_numpy(plain.sample(6))
    assert buf.sample(6, out=out) is out
    got = to_numpy(out)
    assert all(bytes_equal(got[f], want[f]).all() for f in Batch._fields)


def test_cuda_means_the_current_gpu_as_the_tensors_made_on_it_say(monkeypatch):
    """Tensors on "cuda" report cuda:N, and torch.device("cuda") != torch.device("cuda:0"):
    a buffer that kept the bare name refused every out= batch made on its own device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    for name, want in (("cuda", "cuda:2"), ("cuda:1", "cuda:1"), (torch.device("cuda"), "cuda:2"),
                       ("cpu", "cpu")):
        buf = ReplayBuffer(**CFG, device=name, pin_memory=False)
        assert buf.device == torch.device(want), name
    with pytest.raises(ValueError, match="device must name a torch device, got 'gpu'"):
        ReplayBuffer(**CFG, device="gpu")


def test_sampling_into_the_wrong_tensors_is_refused_by_name_and_draws_nothing():
    buf, _, _ = filled()
    good = Batch(*(torch.zeros_like(t) for t in buf.sample(4)))
    before = snapshot(buf)
    bad = [good._replace(obs=good.obs[:3]), good._replace(reward=good.reward.double()),
           good._replace(action=good.action.t()), tuple(good)]
    for out in bad:
        with pytest.raises((ValueError, TypeError), match="out"):
            buf.sample(4, out=out)
    assert_unchanged(buf, before)


# ---------------------------------------------------------------------------------------------
# steps of some streams, and chunks of consecutive steps
# ---------------------------------------------------------------------------------------------
class StreamFeeder:
    """Steps for any streams, frames carrying their identity: an obs continues its stream's
    last next_obs unless that step ended the episode or a 'break' is drawn."""

    def __init__(self, buf: ReplayBuffer, rng):
        self.buf, self.rng, self.next_id, self.step_id = buf, rng, 1, 1
        self.last = [None] * buf.num_envs
        self.ended = [True] * buf.num_envs

    def steps(self, streams, count: int):
        b, rows = self.buf, []
        for _ in range(count):
            step = {k: [] for k in ("obs", "action", "reward", "next_obs", "term", "trunc")}
            for e in streams:
                start, end = self.rng.choice(STARTS), self.rng.choice(ENDS)
                if self.last[e] is None or start == "break" or (self.ended[e] and start != "reuse"):
                    o, self.next_id = self.next_id, self.next_id + 1
                else:
                    o = self.last[e]
                no, self.next_id = self.next_id, self.next_id + 1
                self.last[e], self.ended[e] = no, end is not None
                step["obs"].append(frame(o, b.obs_dtype, b.obs_shape))
                step["next_obs"].append(frame(no, b.obs_dtype, b.obs_shape))
                step["action"].append(action_for(self.step_id, b.action_shape))
                step["reward"].append(self.rng.uniform(-3, 3))
                step["term"].append(end in ("term", "both"))
                step["trunc"].append(end in ("trunc", "both"))
                self.step_id += 1
            rows.append(step)
        order = ("obs", "action", "reward", "next_obs", "term", "trunc")
        return [np.array([[*r[k]] for r in rows]) for k in order]


@pytest.mark.parametrize("memory", ["host", "device"])
@settings(max_examples=150, **SETTINGS)
@given(scenarios(), st.data())
def test_steps_of_some_streams_and_chunks_match_the_reference(memory, scenario, data):
    cfg, _, _, _, data_seed = scenario
    buf = ReplayBuffer(**cfg, memory=memory)
    ref = ReplayReference(**{k: v for k, v in cfg.items() if k != "seed"})
    feed = StreamFeeder(buf, np.random.default_rng(data_seed))
    n = buf.num_envs
    for _ in range(data.draw(st.integers(1, 8))):
        streams = data.draw(st.permutations(range(n)).map(
            lambda p: p[:data.draw(st.integers(1, n))]))
        steps = data.draw(st.integers(1, 6))
        obs, action, reward, next_obs, term, trunc = feed.steps(streams, steps)
        if steps == 1 and data.draw(st.booleans()):
            buf.add(obs[0], action[0], reward[0], next_obs[0], term[0], trunc[0],
                    streams=streams)
        else:
            buf.add_chunk(obs, action, reward, next_obs, term, trunc, streams=streams)
        for t in range(steps):
            ref.add_to(streams, obs[t], action[t], reward[t], next_obs[t], term[t], trunc[t])
        if data.draw(st.integers(0, 3)) == 0:  # e.g. the streams of a worker that died
            ended = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n,
                                       unique=True))
            buf.end_episodes(streams=ended)
            ref.end_episodes(ended)
            for e in ended:
                feed.ended[e] = True
        assert len(buf) == len(ref) and buf.num_sampleable == ref.num_sampleable
    check_against_reference(buf, ref)


def test_end_episodes_of_bad_streams_changes_nothing():
    buf, _, _ = filled()
    before = snapshot(buf)
    for streams in ([2, 5], [-1], [], [0.5]):
        with pytest.raises((ValueError, TypeError), match="streams"):
            buf.end_episodes(streams=streams)
        assert_unchanged(buf, before)


def test_a_chunk_with_a_bad_step_or_bad_streams_stores_nothing():
    buf, _, _ = filled()
    feed = StreamFeeder(buf, np.random.default_rng(0))
    obs, action, reward, next_obs, term, trunc = feed.steps([2, 0], 4)
    before = snapshot(buf)
    bad_reward = reward.copy()
    bad_reward[-1, -1] = np.nan  # the last step of the last stream
    for kwargs, name in ((dict(reward=bad_reward), "reward"),
                         (dict(obs=obs[:, :1]), "obs"),
                         (dict(streams=[2, 2]), "streams"), (dict(streams=[0, 3]), "streams"),
                         (dict(streams=[]), "streams"), (dict(streams=[0.0, 1.0]), "streams")):
        args = {**dict(obs=obs, action=action, reward=reward, next_obs=next_obs,
                       terminated=term, truncated=trunc, streams=[2, 0]), **kwargs}
        with pytest.raises((ValueError, TypeError)) as exc:
            buf.add_chunk(**args)
        assert names(str(exc.value), name), (name, exc.value)
        assert_unchanged(buf, before)
