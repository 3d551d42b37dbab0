"""fastsac.sb3: fastsac's buffer behind SB3's ReplayBuffer interface, compared element by
element with SB3's own ReplayBuffer and NStepReplayBuffer fed the same steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

sb3 = pytest.importorskip("stable_baselines3", reason="the sb3 extra is not installed")
from gymnasium import spaces  # noqa: E402
from stable_baselines3.common.buffers import NStepReplayBuffer as SB3NStep  # noqa: E402
from stable_baselines3.common.buffers import ReplayBuffer as SB3Buffer  # noqa: E402

from fastsac.sb3 import NStepReplayBuffer, ReplayBuffer  # noqa: E402

OBS = spaces.Box(-1e6, 1e6, (3,), np.float32)
ACT = spaces.Box(-1.0, 1.0, (2,), np.float32)


@pytest.fixture(autouse=True)
def sb3_logs_in_tmp_path(tmp_path, monkeypatch):
    """SB3's models make a log directory when they learn, in /tmp unless told otherwise."""
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3-logs"))


def feed(buffers, n_envs: int, steps: int, seed: int = 0) -> None:
    """The same random stream into each buffer: obs = (id, env, t), action[0] = a unique id,
    episodes ending in terminations and time-limit truncations."""
    rng = np.random.default_rng(seed)
    next_id = 1
    t = np.zeros(n_envs)

    def fresh(e):
        nonlocal next_id
        next_id += 1
        return np.array([next_id - 1, e, t[e]], np.float32)
    obs = np.stack([fresh(e) for e in range(n_envs)])
    for step in range(steps):
        action = rng.uniform(-1, 1, (n_envs, 2)).astype(np.float32)
        action[:, 0] = step * n_envs + np.arange(n_envs) + 1  # ids
        reward = rng.normal(size=n_envs).astype(np.float32)
        end = rng.random(n_envs) < 0.15
        timeout = end & (rng.random(n_envs) < 0.5)
        t += 1
        next_obs = np.stack([fresh(e) for e in range(n_envs)])  # terminal obs when it ended
        infos = [{"TimeLimit.truncated": bool(timeout[e])} for e in range(n_envs)]
        for b in buffers:
            b.add(obs, next_obs, action, reward, end, infos)
        obs = next_obs.copy()
        for e in np.flatnonzero(end):
            t[e] = 0
            obs[e] = fresh(e)  # the reset observation


def sb3_row(buf, step_id: int, env=None):
    """SB3's sample of the step whose action id is ``step_id`` (its env chosen for it)."""
    idx, e = np.argwhere(buf.actions[:, :, 0] == step_id)[0]
    with mock.patch.object(np.random, "randint", lambda *a, size=None, **k: np.full(size, e)):
        return buf._get_samples(np.array([idx]), env=env)


def compare(ours, theirs, gamma: float, draws: int = 30, env=None) -> int:
    seen = set()
    for _ in range(draws):
        s = ours.sample(min(256, ours.buffer.num_sampleable), env=env)
        for i, step_id in enumerate(s.actions[:, 0].tolist()):
            if step_id in seen:
                continue
            seen.add(step_id)
            r = sb3_row(theirs, int(step_id), env)
            torch.testing.assert_close(s.observations[i], r.observations[0])
            torch.testing.assert_close(s.actions[i], r.actions[0])
            torch.testing.assert_close(s.next_observations[i], r.next_observations[0])
            torch.testing.assert_close(s.rewards[i], r.rewards[0], rtol=1e-5, atol=1e-5)
            ours_bootstrap = (1 - s.dones[i]) * (gamma if s.discounts is None else s.discounts[i])
            theirs_bootstrap = (1 - r.dones[0]) * (gamma if r.discounts is None
                                                   else r.discounts[0])
            torch.testing.assert_close(ours_bootstrap, theirs_bootstrap)
    return len(seen)


@pytest.mark.parametrize("n_envs, steps", [(1, 60), (2, 60), (3, 300)])  # 300: both wrap
def test_the_adapter_returns_what_sb3s_buffer_returns(n_envs, steps):
    ours = ReplayBuffer(300, OBS, ACT, "cpu", n_envs=n_envs, seed=0)
    theirs = SB3Buffer(300, OBS, ACT, "cpu", n_envs=n_envs)
    feed([ours, theirs], n_envs, steps)
    checked = compare(ours, theirs, gamma=0.99)
    assert checked >= 0.9 * ours.buffer.num_sampleable
    assert (ours.size(), ours.pos, ours.full) == (theirs.size(), theirs.pos, theirs.full)


@pytest.mark.parametrize("n_envs, steps", [(1, 80), (2, 300)])
def test_the_n_step_adapter_returns_what_sb3s_n_step_buffer_returns(n_envs, steps):
    ours = NStepReplayBuffer(300, OBS, ACT, "cpu", n_envs=n_envs, n_steps=3, gamma=0.9, seed=0)
    theirs = SB3NStep(300, OBS, ACT, "cpu", n_envs=n_envs, n_steps=3, gamma=0.9)
    feed([ours, theirs], n_envs, steps)
    assert compare(ours, theirs, gamma=0.9) >= 0.9 * ours.buffer.num_sampleable


def test_vec_normalize_hooks_apply_as_in_sb3():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1), norm_obs=True, norm_reward=True)
    venv.obs_rms.mean[:] = [1.0, 2.0, 3.0]
    venv.obs_rms.var[:] = [4.0, 9.0, 16.0]
    venv.ret_rms.var = 25.0
    ours = ReplayBuffer(100, OBS, ACT, "cpu", seed=0)
    theirs = SB3Buffer(100, OBS, ACT, "cpu")
    feed([ours, theirs], 1, 40)
    assert compare(ours, theirs, gamma=0.99, env=venv) > 20
    venv.close()


def test_timeouts_count_as_terminations_without_handle_timeout_termination():
    ours = ReplayBuffer(100, OBS, ACT, "cpu", seed=0, handle_timeout_termination=False)
    theirs = SB3Buffer(100, OBS, ACT, "cpu", handle_timeout_termination=False)
    feed([ours, theirs], 1, 60)
    assert compare(ours, theirs, gamma=0.99) > 40


def test_what_the_adapter_cannot_take_is_refused():
    with pytest.raises(TypeError, match="observation_space"):
        ReplayBuffer(100, spaces.Dict({"a": OBS}), ACT, "cpu")
    with pytest.raises(ValueError, match="optimize_memory_usage"):
        ReplayBuffer(100, OBS, ACT, "cpu", optimize_memory_usage=True)


def test_import_fastsac_does_not_import_stable_baselines3():
    code = "import sys, fastsac, fastsac.trainer; print('stable_baselines3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    assert out.stdout.strip() == "False", out.stderr


def test_sb3_sac_learns_pendulum_with_the_adapter():
    """SB3's SAC with fastsac's buffer, CI-sized: Pendulum's random policy scores about
    -1,200; the same run with SB3's own buffer is in BENCHMARKS.md."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(2)
    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=500, seed=0, device="cpu",
                replay_buffer_class=ReplayBuffer, replay_buffer_kwargs=dict(seed=0))
    model.learn(6_000)
    mean, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=5, deterministic=True)
    assert mean >= -400, mean


@pytest.mark.parametrize("n_envs", [1, 2])
def test_vec_frame_stack_observations_are_stored_once_and_rebuilt_exactly(n_envs):
    """fastsac/PointMass-v0 (3x32x32 frames) through VecFrameStack(4): the adapter stores one
    frame per step and samples the stacks SB3's buffer stored whole, zero frames included."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    venv = VecFrameStack(make_vec_env("fastsac/PointMass-v0", n_envs=n_envs, seed=0), 4,
                         channels_order="first")
    space = venv.observation_space
    ours = ReplayBuffer(400, space, ACT, "cpu", n_envs=n_envs, frame_stack=4, seed=0)
    theirs = SB3Buffer(400, space, ACT, "cpu", n_envs=n_envs)
    rng = np.random.default_rng(0)
    obs = venv.reset()
    for step in range(120):
        next_obs, reward, done, infos = venv.step(rng.uniform(-1, 1, (n_envs, 2)))
        stored_next = next_obs.copy()
        for e in np.flatnonzero(done):
            stored_next[e] = infos[e]["terminal_observation"]
        ids = np.zeros((n_envs, 2), np.float32)
        ids[:, 0] = step * n_envs + np.arange(n_envs) + 1
        for b in (ours, theirs):
            b.add(obs, stored_next, ids, reward, done, infos)
        obs = next_obs
    venv.close()
    assert ours.buffer.obs_shape == (3, 32, 32) and ours.buffer.stacked_obs_shape == space.shape
    assert compare(ours, theirs, gamma=0.99) >= 0.9 * ours.buffer.num_sampleable
    # the stacks at an episode's start hold zero frames, as VecFrameStack's do
    first = ours.sample(ours.buffer.num_sampleable)
    assert (first.observations.reshape(len(first.observations), 4, -1).amax(-1) == 0).any()
    with pytest.raises(ValueError, match="frame_stack"):
        ReplayBuffer(100, space, ACT, "cpu", frame_stack=5)


def test_sb3_saves_and_loads_the_adapter_with_its_replay_buffer(tmp_path):
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=50, seed=0, device="cpu",
                replay_buffer_class=ReplayBuffer, replay_buffer_kwargs=dict(seed=0))
    model.learn(120)
    model.save_replay_buffer(tmp_path / "rb.pkl")
    before = model.replay_buffer
    model.load_replay_buffer(tmp_path / "rb.pkl")
    after = model.replay_buffer
    assert after is not before and isinstance(after, ReplayBuffer)
    assert (after.size(), after.pos, after.full) == (before.size(), before.pos, before.full)
    assert len(after.buffer) == len(before.buffer) == 120
    a, b = before.sample(16), after.sample(16)  # same RNG state: the same batch
    torch.testing.assert_close(a.observations, b.observations)
    model.learn(20, reset_num_timesteps=False)  # and training goes on with it


def test_a_batch_larger_than_what_is_held_is_drawn_with_replacement_as_in_sb3():
    ours = ReplayBuffer(100, OBS, ACT, "cpu", seed=0)
    feed([ours], 1, 10)
    s = ours.sample(256)  # SB3's SAC samples 256 from step 100 on; here 10 steps are held
    assert s.observations.shape == (256, 3)
    assert set(s.actions[:, 0].tolist()) == set(range(1, 11))
