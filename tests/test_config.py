"""fastsac.config: presets, choices refused by name, what a resumed run may change."""

from __future__ import annotations

import dataclasses

import pytest

from fastsac import SACConfig, TrainConfig
from fastsac.config import RESUME_MAY_CHANGE, resumed_config, with_preset


def test_preset_seed_is_the_seeds_run():
    cfg = with_preset("seed")
    assert (cfg.env, cfg.total_steps, cfg.learning_starts, cfg.batch_size) == \
        ("HalfCheetah-v4", 1_000_000, 5_000, 256)
    assert (cfg.updates_per_step, cfg.eval_every, cfg.eval_episodes) == (1.0, 10_000, 10)
    s = cfg.sac
    assert (s.hidden, s.actor_lr, s.critic_lr, s.autotune_alpha, s.init_alpha) == \
        ((256, 256), 1e-4, 1e-4, False, 0.2)
    assert (s.gamma, s.tau, s.log_std_mode) == (0.99, 0.005, "tanh")
    assert with_preset("seed", total_steps=5, sac=dict(tau=0.01)).sac.actor_lr == 1e-4


@pytest.mark.parametrize("cls, name, value", [
    (SACConfig, "compile", "script"), (SACConfig, "log_std_mode", "softplus"),
    (TrainConfig, "device", "gpu")])
def test_a_string_option_outside_its_choices_is_refused_by_name(cls, name, value):
    with pytest.raises(ValueError, match=f"{name} must be one of .*got '{value}'"):
        cls(**{name: value})


def test_a_negative_thread_count_is_refused_by_name():
    with pytest.raises(ValueError, match="num_threads must be >= 0, got -1"):
        TrainConfig(num_threads=-1)


def test_prefetch_with_frames_in_device_memory_is_refused_by_name():
    with pytest.raises(ValueError, match="prefetch .* buffer_memory='host'"):
        TrainConfig(prefetch=True, buffer_memory="device")
    TrainConfig(prefetch=False, buffer_memory="device")  # (nothing to prefetch: allowed)


def test_a_config_survives_its_dict_and_unknown_keys_are_refused():
    cfg = TrainConfig(env="Hopper-v5", num_envs=3, sac=SACConfig(hidden=[64, 32], tau=0.01))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # hidden comes back as a tuple
    with pytest.raises(ValueError, match="unknown training options.*'envs'"):
        TrainConfig.from_dict({**cfg.to_dict(), "envs": 2})


def test_resume_may_change_only_its_listed_fields_and_the_run_dir():
    saved = TrainConfig(total_steps=1_000, run_dir="runs/a")
    given = dataclasses.replace(saved, total_steps=5_000, progress=False, run_dir="moved/a")
    resumed = resumed_config(saved, given)
    assert (resumed.total_steps, resumed.progress) == (5_000, False)
    assert resumed.run_dir == "runs/a"  # kept; make_trainer runs in the directory it resumes
    assert set(RESUME_MAY_CHANGE) == {"total_steps", "progress", "ray_address", "keep_checkpoints",
                                      "tensorboard", "video_every", "video_size",
                                      "video_observed", "num_threads"}
    for change in (dict(batch_size=64), dict(sac=SACConfig(tau=0.01))):
        with pytest.raises(ValueError, match=f"resume: {next(iter(change))} was"):
            resumed_config(saved, dataclasses.replace(saved, **change))
