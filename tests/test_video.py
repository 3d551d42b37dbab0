"""Videos of the policy: MP4s that decode to the episode's frames, and training that a video
in the middle leaves exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastsac import SAC, SACConfig, TrainConfig, train
from fastsac.cli import main

av = pytest.importorskip("av", reason="the video extra is not installed")
from fastsac.video import record_episode  # noqa: E402


def frames_of(path) -> np.ndarray:
    """Every frame of the video, decoded."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_a_point_mass_episode_decodes_to_its_frames(tmp_path):
    agent = SAC((3, 32, 32), (2,), SACConfig(hidden=(16,), compile="none"))
    n = record_episode(agent, "fastsac/PointMass-v0", tmp_path / "pm.mp4", seed=0, size=128)
    f = frames_of(tmp_path / "pm.mp4")
    assert n == len(f) == 51  # the reset's frame and 50 steps
    assert f.shape[1:] == (128, 128, 3)
    assert f.std() > 10 and (f[0] != f[-1]).any()  # the dot moved; not blank


@pytest.mark.skipif(pytest.importorskip("mujoco") is None, reason="needs MuJoCo")
def test_a_mujoco_episode_decodes_to_its_frames(tmp_path):
    agent = SAC((17,), (6,), SACConfig(hidden=(16,), compile="none"))
    n = record_episode(agent, "HalfCheetah-v5", tmp_path / "hc.mp4", seed=0, size=64)
    f = frames_of(tmp_path / "hc.mp4")
    assert n == len(f) == 1001 and f.shape[1:] == (64, 64, 3)
    assert f.std() > 10


def test_a_video_in_the_middle_leaves_training_exactly_as_it_was(tmp_path):
    """PointMass pixels: the same run with and without videos gives the same buffer bytes
    (the training frames) and the same networks."""
    runs = []
    # A first run warms TorchScript up: its optimised graphs, made once per process, change
    # the numbers of the runs after it (two plain runs differ when one is the first).
    for name, every in (("warm-up", 0), ("plain", 0), ("video", 100)):
        runs.append(train(TrainConfig(
            env="fastsac/PointMass-v0", total_steps=300, learning_starts=100, batch_size=16,
            eval_every=100, eval_episodes=1, checkpoint_every=0, device="cpu",
            progress=False, run_dir=str(tmp_path / name), video_every=every, video_size=64,
            sac=SACConfig(hidden=(16,), feature_dim=8))))  # TorchScript, the default
    _, plain, video = runs
    assert sorted(p.name for p in (tmp_path / "video" / "videos").iterdir()) == \
        ["step-100.mp4", "step-200.mp4", "step-300.mp4"]
    assert not (tmp_path / "plain" / "videos").exists()
    a, b = plain.buffer.state_dict(), video.buffer.state_dict()
    assert np.array_equal(a["storage"], b["storage"]) and np.array_equal(a["streams"],
                                                                           b["streams"])
    for (k, x), (_, y) in zip(plain.agent.state_dict()["modules"]["actor"].items(),
                              video.agent.state_dict()["modules"]["actor"].items()):
        assert torch.equal(x, y), k
    assert plain.eval_returns == video.eval_returns


def test_evaluate_records_a_video(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(env="fastsac/PointMass-v0", total_steps=100, learning_starts=50,
                      batch_size=16, eval_every=0, eval_episodes=1, device="cpu",
                      progress=False, run_dir=str(run), sac=SACConfig(hidden=(16,),
                                                                      feature_dim=8)))
    out = tmp_path / "e.mp4"
    assert main(["evaluate", str(run), "--episodes", "1", "--video", str(out),
                 "--video-size", "64"]) == 0
    assert len(frames_of(out)) == 51
    assert "(51 frames)" in capsys.readouterr().out


def test_the_frames_the_agent_saw_can_be_recorded_too(tmp_path):
    agent = SAC((3, 32, 32), (2,), SACConfig(hidden=(16,), compile="none"))
    n = record_episode(agent, "fastsac/PointMass-v0", tmp_path / "pm.mp4", seed=0, size=64,
                       pixels=False, observed=tmp_path / "seen.mp4")
    seen = frames_of(tmp_path / "seen.mp4")
    assert n == len(seen) == 51 and seen.shape[1:] == (32, 32, 3)
    with pytest.raises(ValueError, match="observed"):
        record_episode(SAC((3,), (1,)), "Pendulum-v1", tmp_path / "p.mp4", seed=0,
                       observed=tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="video_observed"):
        train(TrainConfig(video_every=100, video_observed=True, device="cpu", progress=False,
                          run_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
