"""Bad input to fastsac.ReplayBuffer: a clear error naming the argument, nothing changed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from buffer_helpers import (
    CFG,
    assert_unchanged,
    check_against_reference,
    filled,
    make_pair,
    names,
    snapshot,
    vec_buffer,
)

from fastsac import ReplayBuffer

# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
N_ENVS = 2
OBS_SHAPE = (2,)
ACT_SHAPE = (3,)


def good_args(dtype):
    """Valid add() arguments for a N_ENVS-env buffer of OBS_SHAPE frames."""
    return dict(obs=np.zeros((N_ENVS, *OBS_SHAPE), dtype), action=np.zeros((N_ENVS, *ACT_SHAPE)),
                reward=np.zeros(N_ENVS), next_obs=np.ones((N_ENVS, *OBS_SHAPE), dtype),
                terminated=np.zeros(N_ENVS, bool), truncated=np.zeros(N_ENVS, bool))


def nan_in_last_row(shape, value=np.nan, dtype=np.float32):
    a = np.zeros(shape, dtype)
    a.reshape(a.shape[0], -1)[-1, -1] = value
    return a


U8, F32 = np.uint8, np.float32
OBS2 = (N_ENVS, *OBS_SHAPE)
BAD_ADDS = [
    # (buffer dtype, argument, bad value, exception)
    # shapes
    (F32, "obs", np.zeros((N_ENVS, 3), F32), ValueError),
    (F32, "obs", np.zeros((N_ENVS + 1, 2), F32), ValueError),      # leading axis != num_envs
    (F32, "obs", np.zeros((1, 2), F32), ValueError),
    (F32, "obs", np.zeros(2, F32), ValueError),                    # no leading axis
    (F32, "obs", np.zeros((N_ENVS, 2, 1), F32), ValueError),
    (F32, "next_obs", np.zeros((N_ENVS + 1, 2), F32), ValueError),
    (F32, "next_obs", np.zeros((N_ENVS,), F32), ValueError),
    (U8, "obs", np.zeros((N_ENVS, 2, 2), U8), ValueError),
    (F32, "action", np.zeros((N_ENVS, 2)), ValueError),
    (F32, "action", np.zeros((N_ENVS + 1, 3)), ValueError),
    (F32, "action", np.zeros(3), ValueError),
    (F32, "action", 0.0, ValueError),
    (F32, "reward", np.zeros(N_ENVS + 1), ValueError),
    (F32, "reward", 0.0, ValueError),
    (F32, "reward", np.zeros((N_ENVS, 1)), ValueError),
    (F32, "terminated", np.zeros(N_ENVS + 1, bool), ValueError),
    (F32, "terminated", False, ValueError),
    (F32, "truncated", np.zeros(1, bool), ValueError),
    (F32, "truncated", np.zeros((N_ENVS, 1), bool), ValueError),
    # obs dtype
    (U8, "obs", np.zeros(OBS2, F32), TypeError),                   # float into uint8
    (U8, "obs", np.zeros(OBS2, np.float64), TypeError),
    (U8, "next_obs", np.ones(OBS2, np.float16), TypeError),
    (U8, "obs", nan_in_last_row(OBS2), TypeError),
    (U8, "obs", np.full(OBS2, 256, np.int64), ValueError),         # out of range ints
    (U8, "obs", nan_in_last_row(OBS2, 256, np.int64), ValueError),
    (U8, "next_obs", nan_in_last_row(OBS2, -1, np.int64), ValueError),
    (U8, "obs", nan_in_last_row(OBS2, -1, np.int8), ValueError),
    (U8, "next_obs", nan_in_last_row(OBS2, 300, np.int16), ValueError),
    (U8, "obs", np.zeros(OBS2, np.complex64), TypeError),
    (U8, "obs", np.full(OBS2, "a"), TypeError),
    (F32, "obs", np.zeros(OBS2, np.complex64), TypeError),
    (F32, "next_obs", np.zeros(OBS2, np.complex128), TypeError),
    (F32, "obs", np.full(OBS2, "1.0"), TypeError),
    (F32, "obs", np.zeros(OBS2, object), TypeError),
    (F32, "obs", nan_in_last_row(OBS2), ValueError),               # non-finite float obs
    (F32, "obs", nan_in_last_row(OBS2, np.inf), ValueError),
    (F32, "next_obs", nan_in_last_row(OBS2), ValueError),
    (F32, "next_obs", nan_in_last_row(OBS2, -np.inf, np.float64), ValueError),
    # action and reward
    (F32, "action", nan_in_last_row((N_ENVS, 3)), ValueError),
    (F32, "action", nan_in_last_row((N_ENVS, 3), np.inf, np.float64), ValueError),
    (F32, "action", np.zeros((N_ENVS, 3), np.complex64), TypeError),
    (F32, "action", np.full((N_ENVS, 3), "0"), TypeError),
    (U8, "action", nan_in_last_row((N_ENVS, 3)), ValueError),
    (F32, "reward", nan_in_last_row(N_ENVS), ValueError),
    (F32, "reward", nan_in_last_row(N_ENVS, np.inf), ValueError),
    (F32, "reward", nan_in_last_row(N_ENVS, -np.inf, np.float64), ValueError),
    (F32, "reward", np.zeros(N_ENVS, np.complex128), TypeError),
    (F32, "reward", np.array(["1", "2"]), TypeError),
    (F32, "reward", np.array([None, None]), TypeError),
    # flags
    (F32, "terminated", np.array([0, 2]), TypeError),
    (F32, "terminated", np.array([0, -1]), TypeError),
    (F32, "terminated", np.array([0.0, 1.0]), TypeError),
    (F32, "terminated", np.array([0.5, 0.0]), TypeError),
    (F32, "terminated", np.array(["True", "False"]), TypeError),
    (F32, "truncated", np.array([1, 2], np.uint8), TypeError),
    (F32, "truncated", np.array([1.0, 0.0], np.float32), TypeError),
    (F32, "truncated", np.array([None, None]), TypeError),
]


def filled_for_bad_input(dtype) -> ReplayBuffer:
    """A wrapped buffer with open episodes, so that a partial write would show."""
    buf = ReplayBuffer(2 * 5, OBS_SHAPE, ACT_SHAPE, obs_dtype=dtype, num_envs=N_ENVS,
                       frame_stack=2, n_step=2, seed=0)
    for t in range(12):
        end = t % 5 == 4
        buf.add(np.full(OBS2, t, dtype), np.full((N_ENVS, 3), t), np.full(N_ENVS, 0.5),
                np.full(OBS2, t + 1, dtype), np.full(N_ENVS, end), np.zeros(N_ENVS, bool))
    return buf


@pytest.mark.parametrize("dtype,arg,value,exc", BAD_ADDS,
                         ids=[f"{np.dtype(c[0])}-{c[1]}-{i}" for i, c in enumerate(BAD_ADDS)])
def test_bad_add_rejected_and_buffer_unchanged(dtype, arg, value, exc):
    buf = filled_for_bad_input(dtype)
    before = snapshot(buf)
    assert before["num_sampleable"] > 0
    args = good_args(dtype)
    # continue the running episodes, so that a good call would change the buffer
    args["obs"] = np.full(OBS2, 12, dtype)
    args[arg] = value
    with pytest.raises(exc) as info:
        buf.add(**args)
    assert names(str(info.value), arg), f"message does not name {arg!r}: {info.value}"
    assert_unchanged(buf, before)
    # and the buffer still works as before: a good add goes through
    buf.add(**{**good_args(dtype), "obs": np.full(OBS2, 12, dtype)})


def overflow_args(arg):
    args = good_args(F32)
    args["obs"] = np.full(OBS2, 12, F32)
    shape = {"obs": OBS2, "next_obs": OBS2, "action": (N_ENVS, 3), "reward": (N_ENVS,)}[arg]
    args[arg] = nan_in_last_row(shape, 1e300, np.float64)
    return args


@pytest.mark.parametrize("arg", ["obs", "next_obs", "action", "reward"])
def test_float64_overflowing_float32_is_rejected(arg):
    """1e300 is finite in float64 but inf once cast to float32: ValueError naming the
    argument, buffer unchanged (a RuntimeWarning on the way is tolerated here)."""
    buf = filled_for_bad_input(F32)
    before = snapshot(buf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError) as info:
            buf.add(**overflow_args(arg))
    assert names(str(info.value), arg)
    assert_unchanged(buf, before)


@pytest.mark.parametrize("arg", ["obs", "next_obs", "action", "reward"])
def test_float64_overflow_rejection_emits_no_warning(arg):
    """The project runs with warnings as errors: rejecting an input must raise the documented
    ValueError, not leak numpy's 'overflow encountered in cast' RuntimeWarning."""
    buf = filled_for_bad_input(F32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError):
            buf.add(**overflow_args(arg))
    assert not caught, [str(w.message) for w in caught]


def test_accepted_casts():
    """Safe casts named in the input rules are accepted and store the right values."""
    buf, ref = make_pair(8, (2,), (1,), obs_dtype=np.uint8, seed=0)
    for args in [(np.array([1, 2], np.int64), [1], np.int32(1), np.array([3, 255], np.int16),
                  np.int64(0), np.uint8(0)),
                 (np.array([3, 255], np.uint16), [2.0], 1.5, np.array([True, False]), 0, 1)]:
        buf.add(*args)
        ref.add(*args)
    fbuf, fref = make_pair(8, (2,), (1,), obs_dtype=np.float32, seed=0)
    for args in [(np.array([1, 2], np.int64), [1], 1, np.array([0.1, 2], np.float64), 0, 0),
                 (np.array([0.1, 2.0]), np.array([2], np.int8), np.float16(2), [5, 6], 0, 1)]:
        fbuf.add(*args)
        fref.add(*args)
    check_against_reference(buf, ref)
    check_against_reference(fbuf, fref)


BAD_CTORS = [
    ("capacity", dict(capacity=0), ValueError),
    ("capacity", dict(capacity=-3), ValueError),
    ("capacity", dict(capacity=True), TypeError),
    ("capacity", dict(capacity=8.0), TypeError),
    ("capacity", dict(capacity="8"), TypeError),
    ("capacity", dict(capacity=1), ValueError),                   # episode storage: ring >= 2
    ("capacity", dict(capacity=3, num_envs=2), ValueError),       # 3 // 2 == 1 < 2
    ("num_envs", dict(num_envs=0), ValueError),
    ("num_envs", dict(num_envs=-1), ValueError),
    ("num_envs", dict(num_envs=True), TypeError),
    ("num_envs", dict(num_envs=2.0), TypeError),
    ("frame_stack", dict(frame_stack=0), ValueError),
    ("frame_stack", dict(frame_stack=-2), ValueError),
    ("frame_stack", dict(frame_stack=1.5), TypeError),
    ("frame_stack", dict(frame_stack=False), TypeError),
    ("n_step", dict(n_step=0), ValueError),
    ("n_step", dict(n_step=-1), ValueError),
    ("n_step", dict(n_step=True), TypeError),
    ("n_step", dict(n_step=3.0), TypeError),
    ("gamma", dict(gamma=-0.01), ValueError),
    ("gamma", dict(gamma=1.01), ValueError),
    ("gamma", dict(gamma=float("nan")), ValueError),
    ("gamma", dict(gamma=float("inf")), ValueError),
    ("storage", dict(storage="episodes"), ValueError),
    ("storage", dict(storage="Episode"), ValueError),
    ("storage", dict(storage="ring"), ValueError),
    ("storage", dict(storage=None), ValueError),
    ("obs_dtype", dict(obs_dtype=object), (TypeError, ValueError)),
    ("obs_dtype", dict(obs_dtype="U3"), (TypeError, ValueError)),
    ("obs_dtype", dict(obs_dtype="M8[s]"), (TypeError, ValueError)),
]


@pytest.mark.parametrize("arg,kw,exc", BAD_CTORS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CTORS)])
def test_bad_constructor_args(arg, kw, exc):
    kw = {"capacity": 8, **kw}
    capacity = kw.pop("capacity")
    with pytest.raises(exc) as info:
        ReplayBuffer(capacity, (2,), (1,), **kw)
    msg = str(info.value)
    assert names(msg, arg) or (arg == "capacity" and names(msg, "num_envs")), msg


def test_smallest_valid_capacities():
    assert ReplayBuffer(1, (2,), (1,), storage="transition").capacity == 1
    assert ReplayBuffer(2, (2,), (1,), storage="episode").capacity == 2
    assert ReplayBuffer(5, (2,), (1,), num_envs=2).capacity == 4


@pytest.mark.parametrize("batch_size,exc", [(0, ValueError), (-1, ValueError),
                                            (True, TypeError), (2.0, TypeError),
                                            ("2", TypeError), (10**6, ValueError)])
def test_bad_batch_size(batch_size, exc):
    buf = filled_for_bad_input(F32)
    before = snapshot(buf)
    with pytest.raises(exc) as info:
        buf.sample(batch_size)
    assert names(str(info.value), "batch_size"), str(info.value)
    assert_unchanged(buf, before)


def test_batch_size_just_above_num_sampleable():
    buf = filled_for_bad_input(F32)
    n = buf.num_sampleable
    before = snapshot(buf)
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(n + 1)
    assert_unchanged(buf, before)
    assert buf.sample(n).reward.shape == (n,)


def test_empty_buffer_cannot_sample():
    buf = vec_buffer()
    assert len(buf) == 0 and buf.num_sampleable == 0
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(1)


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["episode", "transition"])
@pytest.mark.parametrize("cfg", [CFG, dict(capacity=10, obs_shape=(4,), action_shape=(1,)),
                                 dict(capacity=9, obs_shape=(2, 2), action_shape=(2, 3),
                                      obs_dtype=np.float64, num_envs=2)])
def test_nbytes_is_the_storage_block(storage, cfg):
    buf = ReplayBuffer(**cfg, storage=storage, seed=0)
    assert buf.nbytes == buf.state_dict()["storage"].nbytes
    full, _, _ = filled(storage, cfg=cfg)                  # wrapped rings, open episodes
    assert full.nbytes == full.state_dict()["storage"].nbytes


def test_image_buffer_bytes_per_step():
    """Episode storage holds each 3x84x84 frame once: with 1000-step episodes the cost per
    held step stays at about one frame (21,168 bytes) plus small per-slot overhead."""
    shape = (3, 84, 84)
    buf = ReplayBuffer(2000, shape, (6,), obs_dtype=np.uint8, frame_stack=3, seed=0)
    assert buf.nbytes == buf.state_dict()["storage"].nbytes
    frames = np.random.default_rng(0).integers(0, 256, (8, *shape), dtype=np.uint8)
    a = np.zeros(6, np.float32)
    fid = 0
    ratios = []
    for ep in range(3):
        for t in range(1000):
            o, no = frames[fid % 8].copy(), frames[(fid + 1) % 8].copy()
            o[0, 0, :2] = (fid >> 8) & 255, fid & 255           # unique, and continuing
            no[0, 0, :2] = ((fid + 1) >> 8) & 255, (fid + 1) & 255
            fid += 1
            buf.add(o, a, 0.0, no, False, t == 999)
            if fid > 2000 and t % 97 == 0:                        # the ring is full
                ratios.append(buf.nbytes / len(buf))
        fid += 1                                                 # next episode: fresh obs
    assert ratios and max(ratios) <= 21_400, max(ratios)
    assert buf.nbytes == buf.state_dict()["storage"].nbytes


def test_rejected_batch_size_allocates_nothing():
    buf = filled_for_bad_input(F32)
    n = buf.num_sampleable
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(10_000_000)  # would be gigabytes of staging
    assert 10_000_000 not in buf._staging
    assert buf.sample(n).reward.shape == (n,)


def test_numpy_int_batch_size_shares_the_staging_of_the_same_int():
    buf = filled_for_bad_input(F32)
    a = buf.sample(2)
    b = buf.sample(np.int64(2))
    assert a.obs.data_ptr() == b.obs.data_ptr()  # same staging: no allocation per call


def test_numpy_scalars_and_byte_order_are_accepted():
    buf = ReplayBuffer(8, (2,), (1,), gamma=np.float32(0.5), obs_dtype=">f4")
    assert buf.gamma == 0.5 and buf.obs_dtype == np.dtype("float32")
    with pytest.raises(TypeError, match="gamma"):
        ReplayBuffer(8, (2,), (1,), gamma="0.9")
    with pytest.raises(ValueError, match="obs_shape"):
        ReplayBuffer(8, (2**62,), (1,), obs_dtype=np.float64)
