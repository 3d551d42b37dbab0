"""Shared helpers of the buffer tests: frames that carry their identity, snapshots."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck
from replay_reference import ReplayReference

from fastsac import Batch, ReplayBuffer

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def frame(fid: int, dtype, shape) -> np.ndarray:
    """A frame whose values encode ``fid`` (unique per frame), for uint8 or float obs."""
    dtype = np.dtype(dtype)
    i = np.arange(math.prod(shape))
    if dtype == np.uint8:
        assert 0 <= fid < 65536
        vals = np.where(i % 2 == 0, fid >> 8, fid & 255) + 37 * (i // 2)
        return (vals % 256).astype(np.uint8).reshape(shape)
    assert dtype.kind == "f"
    return (fid + i / 8).astype(dtype).reshape(shape)


def action_for(step_id: int, action_shape) -> np.ndarray:
    """An action whose first value is the step id (exact in float32)."""
    size = math.prod(action_shape)
    return (step_id + np.arange(size) / 4).astype(np.float32).reshape(action_shape)


def to_numpy(batch: Batch) -> dict[str, np.ndarray]:
    """Copies of a batch (it is a view of staging memory reused by the next sample)."""
    return {f: getattr(batch, f).detach().cpu().numpy().copy() for f in Batch._fields}


def snapshot(buf: ReplayBuffer) -> dict:
    sd = buf.state_dict()
    return dict(len=len(buf), num_sampleable=buf.num_sampleable, nbytes=buf.nbytes,
                storage=np.array(sd["storage"], copy=True).tobytes(),
                streams=np.array(sd["streams"], copy=True).tobytes(),
                rng=np.array(sd["rng"], copy=True).tobytes(), config=sd["config"])


def assert_unchanged(buf: ReplayBuffer, before: dict) -> None:
    after = snapshot(buf)
    for key in before:
        assert after[key] == before[key], f"{key} changed by a rejected call"


def names(msg: str, arg: str) -> bool:
    """Whether ``msg`` names ``arg`` as a word (``obs`` does not match inside ``next_obs``)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(arg)}(?![A-Za-z0-9_])", msg) is not None


def bytes_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise bytewise equality of two arrays with the same leading axis."""
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    return (a.reshape(len(a), -1).view(np.uint8) == b.reshape(len(b), -1).view(np.uint8)).all(1)


def check_against_reference(buf: ReplayBuffer, ref: ReplayReference, *, draws: int = 40,
                            batch_size: int | None = None, coverage: bool = True) -> None:
    """Draw ``draws`` batches (of ``num_sampleable`` steps unless ``batch_size`` is given) and
    check every row against the reference; with ``coverage``, also that every sampleable step
    was drawn and that the counts look uniform."""
    expected = ref.sampleable()
    assert len(buf) == len(ref), "len(buf) differs from the held steps"
    assert buf.num_sampleable == len(expected), (
        f"num_sampleable {buf.num_sampleable}, reference {len(expected)}: "
        f"{sorted(expected)}")
    n = len(expected)
    if n == 0:
        with pytest.raises(ValueError, match="batch_size"):
            buf.sample(1)
        return
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(n + 1)
    keys = sorted(expected)
    ids = [int(expected[k].action.reshape(-1)[0]) for k in keys]
    assert len(set(ids)) == len(ids), "test bug: action ids are not unique"
    index_of = {i: j for j, i in enumerate(ids)}
    # batch_size may not exceed num_sampleable, so draw `draws` batches of up to n steps.
    b = min(batch_size or n, n)
    parts = [to_numpy(buf.sample(b)) for _ in range(draws)]
    got = {f: np.concatenate([p[f] for p in parts]) for f in Batch._fields}
    for p in parts:
        assert p["obs"].shape == (b, *buf.stacked_obs_shape)
    b = b * draws

    assert got["obs"].shape == (b, *buf.stacked_obs_shape)
    assert got["next_obs"].shape == (b, *buf.stacked_obs_shape)
    assert got["obs"].dtype == buf.obs_dtype and got["next_obs"].dtype == buf.obs_dtype
    assert got["action"].shape == (b, *buf.action_shape) and got["action"].dtype == np.float32
    assert got["reward"].shape == (b,) and got["reward"].dtype == np.float32
    assert got["discount"].shape == (b,) and got["discount"].dtype == np.float32

    claimed = got["action"].reshape(b, -1)[:, 0]
    rows = []
    for r, c in enumerate(claimed):
        c = float(c)
        assert c == int(c) and int(c) in index_of, (
            f"row {r} claims step id {c}, which is not a sampleable step; sampleable "
            f"(env, pos) -> id: {dict(zip(keys, ids))}")
        rows.append(index_of[int(c)])
    rows = np.array(rows)
    exp = [expected[k] for k in keys]
    e_obs = np.stack([x.obs for x in exp])[rows]
    e_next = np.stack([x.next_obs for x in exp])[rows]
    e_act = np.stack([x.action for x in exp])[rows]
    e_rew = np.array([x.reward for x in exp])[rows]
    e_disc = np.array([x.discount for x in exp])[rows]

    def where(mask: np.ndarray, field: str) -> str:
        r = int(np.flatnonzero(~mask)[0])
        x = exp[rows[r]]
        return (f"{field} wrong for step env={x.env} pos={x.position} t={x.t} m={x.m}: got "
                f"{got[field][r]!r}, expected {getattr(x, field)!r}")

    ok = bytes_equal(got["obs"], e_obs)
    assert ok.all(), where(ok, "obs")
    ok = bytes_equal(got["next_obs"], e_next)
    assert ok.all(), where(ok, "next_obs")
    ok = bytes_equal(got["action"], e_act)
    assert ok.all(), where(ok, "action")
    ok = np.isclose(got["reward"].astype(np.float64), e_rew, rtol=2e-6, atol=1e-5)
    assert ok.all(), where(ok, "reward")
    ok = np.isclose(got["discount"].astype(np.float64), e_disc, rtol=2e-6, atol=1e-7)
    assert ok.all(), where(ok, "discount")

    if coverage:
        counts = np.bincount(rows, minlength=n)
        mean = b / n
        # P(a given step is never drawn) = (1 - 1/n)^b <= exp(-draws): e^-40 per step.
        missing = [keys[j] for j in np.flatnonzero(counts == 0)]
        assert not missing, f"sampleable steps never drawn in {b} draws: {missing}"
        # Loose uniformity checks (false alarm probability far below 1e-9).
        assert counts.max() <= mean + 10 * math.sqrt(mean) + 10, (counts, mean)
        chi2 = float(((counts - mean) ** 2 / mean).sum())
        df = n - 1
        assert chi2 <= df + 12 * math.sqrt(2 * df + 1) + 30, f"chi2 {chi2} for df {df}"


class Driver:
    """Feeds the same steps to a buffer and the reference, with ids encoded in the data."""

    def __init__(self, buf: ReplayBuffer, ref: ReplayReference, *, rng=None,
                 obs_input_dtype=None, flags_as_int=False, squeeze=False):
        self.buf, self.ref = buf, ref
        self.n = buf.num_envs
        self.next_frame = 1
        self.next_step = 1
        self.last_next = [None] * self.n   # frame id of each stream's last next_obs
        self.ended = [True] * self.n       # whether the stream's last step had a flag
        self.rng = rng or np.random.default_rng(0)
        self.obs_input_dtype = obs_input_dtype
        self.flags_as_int = flags_as_int
        self.squeeze = squeeze and self.n == 1
        self.also = []                     # more buffers fed exactly the same arguments

    def fresh(self) -> int:
        self.next_frame += 1
        return self.next_frame - 1

    def frames(self, ids) -> np.ndarray:
        a = np.stack([frame(i, self.buf.obs_dtype, self.buf.obs_shape) for i in ids])
        if self.obs_input_dtype is not None:
            a = a.astype(self.obs_input_dtype)
        return a

    def add(self, events) -> list[int]:
        """``events[e] = (start, end)``: start in {"normal", "break", "reuse"}, end in
        {None, "term", "trunc", "both"}. Returns the step ids written."""
        obs_ids, next_ids, step_ids = [], [], []
        term = np.zeros(self.n, bool)
        trunc = np.zeros(self.n, bool)
        for e, (start, end) in enumerate(events):
            last = self.last_next[e]
            if start == "break" or last is None:
                o = self.fresh()                 # never equal to the last next_obs
            elif start == "reuse" or not self.ended[e]:
                o = last                         # continues unless the episode ended
            else:
                o = self.fresh()
            no = self.fresh()
            obs_ids.append(o)
            next_ids.append(no)
            step_ids.append(self.next_step)
            self.next_step += 1
            term[e] = end in ("term", "both")
            trunc[e] = end in ("trunc", "both")
            self.last_next[e] = no
            self.ended[e] = end is not None
        obs = self.frames(obs_ids)
        next_obs = self.frames(next_ids)
        action = np.stack([action_for(i, self.buf.action_shape) for i in step_ids])
        reward = self.rng.uniform(-3, 3, size=self.n)
        te, tr = (term.astype(np.int64), trunc.astype(np.int64)) if self.flags_as_int else \
            (term, trunc)
        args = [obs, action, reward, next_obs, te, tr]
        self.ref.add(*args)
        if self.squeeze:
            args = [a[0] for a in args]
        for b in [self.buf, *self.also]:
            b.add(*args)
        return step_ids


def make_pair(capacity, obs_shape, action_shape=(2,), **kw):
    ref_kw = {k: v for k, v in kw.items() if k not in ("seed", "path")}
    buf = ReplayBuffer(capacity, obs_shape, action_shape, **kw)
    ref = ReplayReference(capacity, obs_shape, action_shape, **ref_kw)
    return buf, ref


STARTS = ["normal"] * 6 + ["break", "reuse"]
ENDS = [None] * 5 + ["term", "trunc", "both"]
def vec_buffer(capacity=16, **kw) -> ReplayBuffer:
    """A float32 buffer of scalar-valued frames of shape (1,) and actions of shape (1,)."""
    kw.setdefault("seed", 0)
    return ReplayBuffer(capacity, (1,), (1,), **kw)


def add1(buf: ReplayBuffer, o, a, r, no, term=False, trunc=False) -> None:
    buf.add(np.array([o], np.float32), np.array([a], np.float32), r,
            np.array([no], np.float32), term, trunc)


CFG = dict(capacity=3 * 7 + 1, obs_shape=(1, 3, 2), action_shape=(2,), obs_dtype=np.uint8,
           num_envs=3, frame_stack=3, n_step=2, gamma=0.9)


def filled(storage="episode", seed=123, adds=40, cfg=CFG, data_seed=5):
    """A buffer whose rings have wrapped, with episodes open at the end, and its reference."""
    buf, ref = make_pair(**cfg, storage=storage, seed=seed)
    d = Driver(buf, ref, rng=np.random.default_rng(data_seed))
    rng = np.random.default_rng(data_seed + 1)
    for i in range(adds):
        d.add([(str(rng.choice(STARTS)), None if i >= adds - 3 else rng.choice(ENDS))
               for _ in range(buf.num_envs)])
    return buf, ref, d
