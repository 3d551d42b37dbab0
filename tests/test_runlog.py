"""The run's logs: TensorBoard event files that hold what metrics.csv holds."""

from __future__ import annotations

import pytest

from fastsac import SACConfig, TrainConfig, train
from fastsac._runlog import read_metrics

pytest.importorskip("tensorboard", reason="the tb extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


def scalars(directory) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return {k: [(e.step, e.value) for e in acc.Scalars(k)] for k in acc.Tags()["scalars"]}


def config(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(env="Pendulum-v1", total_steps=400, learning_starts=100, batch_size=32,
                       eval_every=200, eval_episodes=1, log_every=100, checkpoint_every=200,
                       device="cpu", progress=False, run_dir=str(tmp_path / "run"),
                       tensorboard=True, sac=SACConfig(hidden=(16, 16)), **kw)


def test_tensorboard_holds_the_values_of_metrics_csv(tmp_path):
    cfg = config(tmp_path)
    train(cfg)
    csv = read_metrics(tmp_path / "run" / "metrics.csv")
    tb = scalars(tmp_path / "run" / "tensorboard")
    assert set(tb) == set(csv) and {"eval/return", "loss/critic", "perf/steps_per_s"} <= set(tb)
    for key, rows in csv.items():
        assert [s for s, _ in tb[key]] == [s for s, _ in rows], key
        assert [v for _, v in tb[key]] == pytest.approx([v for _, v in rows], rel=1e-5), key


def test_a_resume_drops_the_events_after_its_checkpoint(tmp_path, monkeypatch):
    """A run killed at its second checkpoint (400) resumes from 200: the rows of 300 and 400
    it logged before dying go from metrics.csv and from TensorBoard alike."""
    from fastsac import ReplayBuffer

    cfg = config(tmp_path)
    real_save, calls = ReplayBuffer.save, []

    def dies_at_second_save(self, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(self, path)
    monkeypatch.setattr(ReplayBuffer, "save", dies_at_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(ReplayBuffer, "save", real_save)
    assert max(s for s, _ in scalars(tmp_path / "run" / "tensorboard")["loss/critic"]) == 400
    train(cfg, resume=cfg.run_dir)
    csv = read_metrics(tmp_path / "run" / "metrics.csv")
    tb = scalars(tmp_path / "run" / "tensorboard")
    for key, rows in csv.items():
        assert [s for s, _ in tb[key]] == [s for s, _ in rows], key
