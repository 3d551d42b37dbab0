"""fastsac.envs with MuJoCo: rendered observations and MuJoCo's warnings (the built-in
PointMass task is tested in test_train.py)."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import fastsac.envs as envs
from fastsac.envs import make_env

mujoco = pytest.importorskip("mujoco", reason="the mujoco extra is not installed")


def rollout(env, seed: int = 0, steps: int = 5) -> list[np.ndarray]:
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, *env.action_space.shape))
    frames = [env.reset(seed=seed)[0]]
    frames += [env.step(a)[0] for a in actions]
    return frames


def test_frames_do_not_depend_on_other_envs_being_made_or_closed():
    """gymnasium renders into whichever GL context is current; each env must use its own."""
    lone = make_env("HalfCheetah-v5", pixels=True)
    reference = rollout(lone)
    lone.close()
    assert reference[0].std() > 10  # a real picture, not a blank frame

    after_close = make_env("HalfCheetah-v5", pixels=True)  # made after another was closed
    a, b = make_env("HalfCheetah-v5", pixels=True), make_env("Hopper-v5", pixels=True)
    b_frames = rollout(b)
    b.close()  # closing one env must leave the others' frames alone
    for env in (after_close, a):
        frames = rollout(env)
        for got, want in zip(frames, reference):
            np.testing.assert_array_equal(got, want)
        env.close()
    assert not np.array_equal(b_frames[0], reference[0])


def test_the_camera_follows_the_body():
    """20 m down the track the cheetah is still in the frame: moving a leg changes it."""
    env = make_env("HalfCheetah-v5", pixels=True)
    env.reset(seed=0)
    base = env.unwrapped
    frames = []
    for thigh in (0.0, 0.8):
        qpos = base.init_qpos.copy()
        qpos[0], qpos[3] = 20.0, thigh  # torso x; back thigh angle
        base.set_state(qpos, np.zeros_like(base.init_qvel))
        frames.append(env.observation(None).astype(int))
    env.close()
    assert np.abs(frames[0] - frames[1]).mean() > 1.0


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Reacher-v5"])  # track / free camera
def test_every_instance_of_a_task_sees_the_same_view(env_id):
    """Two instances render a seeded episode alike: no camera is aimed from a random reset."""
    first, second = (make_env(env_id, pixels=True) for _ in range(2))
    for got, want in zip(rollout(second, seed=3), rollout(first, seed=3)):
        np.testing.assert_array_equal(got, want)
    first.close()
    second.close()


def test_mujoco_warnings_go_to_stderr_once_each_and_no_log_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(envs, "_PRINTED_MUJOCO_WARNINGS", set())
    previous = mujoco.get_mju_user_warning()
    if previous is not None:
        mujoco.set_mju_user_warning(None)  # another test's handler: make_env installs its own
    try:
        make_env("HalfCheetah-v5").close()
        first_load = capsys.readouterr().err
        handler = mujoco.get_mju_user_warning()
        assert handler is not None
        for msg in ("fastsac test warning A", "fastsac test warning B", "fastsac test warning A"):
            handler(msg)
        err = capsys.readouterr().err
        assert err.count("fastsac test warning A") == 1
        assert err.count("fastsac test warning B") == 1
        make_env("HalfCheetah-v5").close()  # a second load repeats none of the first's
        second_load = capsys.readouterr().err
        assert not any(line in first_load for line in second_load.splitlines() if line)
        assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    finally:
        mujoco.set_mju_user_warning(previous)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="the crash needs triton, which CUDA builds of torch bring")
def test_pixel_env_then_torch_compiler_does_not_crash(tmp_path):
    # A torch optimizer or compile imports triton; triton loaded after Mesa's software
    # renderer crashed the process (SIGSEGV) until make_env imported it first.
    pytest.importorskip("mujoco", reason="the mujoco extra is not installed")
    code = ("from fastsac.envs import make_env; import numpy as np; "
            "env = make_env('HalfCheetah-v5', pixels=True, image_size=32); "
            "obs, _ = env.reset(seed=0); obs, *_ = env.step(np.zeros(6)); "
            "import torch._dynamo, triton; print(obs.shape)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # not the source tree (no compiled core)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(3, 32, 32)"
