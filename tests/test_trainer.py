"""fastsac train (fastsac.trainer, fastsac.config and the command): the loop, its outputs,
resume, autoreset, frame stacks and learning."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import fastsac.runner as runner_module
import fastsac.trainer as trainer_module
from fastsac import ReplayBuffer, SACConfig, TrainConfig, train
from fastsac._runlog import read_metrics
from fastsac.cli import build_parser, main, train_config
from fastsac.envs import FrameStack, random_policy_return
from fastsac.trainer import make_trainer

TINY = SACConfig(hidden=(16, 16))


def quick(tmp_path, **kw) -> TrainConfig:
    """A config that trains for seconds, on the CPU (where resumes repeat runs bit for bit)."""
    cfg = dict(env="Pendulum-v1", total_steps=400, learning_starts=100, batch_size=32,
               buffer_size=2_000, eval_every=0, eval_episodes=0, log_every=100,
               checkpoint_every=0, device="cpu",  # the tests read batches with .numpy()
               progress=False, run_dir=str(tmp_path / "run"), sac=TINY)
    return TrainConfig(**{**cfg, **kw})


# -- a test env whose observations say which episode and step they are ---------------------
class CounterEnv(gym.Env):
    """obs = (episode uid, t). Terminates with probability 0.15 per step; the TimeLimit cuts
    episodes at 12 steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.uid, self.t = float(self.np_random.integers(1, 2**20)), 0
        return np.array([self.uid, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = bool(self.np_random.random() < 0.15)
        return np.array([self.uid, self.t], np.float32), 1.0, terminated, False, {}


gym.register("fastsac-test/Counter-v0", entry_point=CounterEnv, max_episode_steps=12)


def check_no_transition_joins_episodes(buffer: ReplayBuffer, gamma: float) -> None:
    seen = set()
    for _ in range(200):
        b = buffer.sample(64)
        obs, nxt, disc = b.obs.numpy(), b.next_obs.numpy(), b.discount.numpy().ravel()
        assert np.array_equal(obs[:, 0], nxt[:, 0]), "a transition joins two episodes"
        assert np.array_equal(nxt[:, 1], obs[:, 1] + 1)
        assert np.all((disc == 0) | np.isclose(disc, gamma))  # 0 only after a termination
        seen.update(map(tuple, obs.tolist()))
    assert len(seen) > 0.9 * buffer.num_sampleable  # the draws covered the buffer


@pytest.mark.parametrize("num_envs", [1, 3])
def test_autoreset_stores_no_transition_joining_two_episodes(tmp_path, num_envs):
    r = train(quick(tmp_path, env="fastsac-test/Counter-v0", num_envs=num_envs,
                    total_steps=600, learning_starts=10_000, buffer_size=1_200))
    assert len(r.buffer) == 600
    check_no_transition_joins_episodes(r.buffer, TINY.gamma)


def test_async_envs_train_exactly_as_sync_envs(tmp_path):
    """--vector-env async steps each env in a subprocess; with the same seeds its episodes,
    and so the whole run, are the sync run's."""
    runs = [train(quick(tmp_path / v, num_envs=2, total_steps=300, vector_env=v))
            for v in ("sync", "async")]
    a, b = (r.buffer.state_dict() for r in runs)
    for k in ("storage", "streams", "rng"):
        assert np.array_equal(a[k], b[k]), k
    assert all(torch.equal(p, q) for p, q in zip(params(runs[0].agent), params(runs[1].agent)))


def test_terminations_and_truncations_reach_the_buffer_apart(tmp_path):
    r = train(quick(tmp_path, env="fastsac-test/Counter-v0", total_steps=600,
                    learning_starts=10_000))
    b = r.buffer.sample(512)
    t, disc = b.next_obs.numpy()[:, 1], b.discount.numpy().ravel()
    ended = t == 12  # cut by the TimeLimit unless it terminated on that very step
    assert (disc == 0).any(), "no termination was stored"
    assert (disc[ended] > 0).any(), "time-limit truncations must bootstrap"
    assert (disc[~ended] == 0).sum() > 0 and (disc[~ended] > 0).sum() > 0


# -- CLI -----------------------------------------------------------------------------------
def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for cls in (TrainConfig, SACConfig):
        for f in dataclasses.fields(cls):
            if f.name != "sac":
                assert "--" + f.name.replace("_", "-") in text, f.name
    assert "--preset" in text and "--resume" in text


@pytest.mark.parametrize("typed, want", [([], None), (["--cuda-graph"], True),
                                          (["--no-cuda-graph"], False)])
def test_cli_cuda_graph_is_on_off_or_left_to_the_device(typed, want):
    args = build_parser().parse_args(["train", *typed])
    assert train_config(args).sac.cuda_graph is want


def test_cli_vector_run_writes_outputs_that_parse(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--env", "Pendulum-v1", "--total-steps", "300",
                 "--learning-starts", "100", "--batch-size", "32", "--hidden", "16", "16",
                 "--eval-every", "200", "--eval-episodes", "1", "--log-every", "100",
                 "--run-dir", str(run), "--no-progress", "--device", "cpu"]) == 0
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.total_steps == 300 and cfg.sac.hidden == (16, 16) and cfg.env == "Pendulum-v1"
    m = read_metrics(run / "metrics.csv")
    assert [s for s, _ in m["eval/return"]] == [200, 300]
    assert all(-2000 < v < 0 for _, v in m["eval/return"])
    for key in ("loss/actor", "loss/critic", "alpha", "perf/steps_per_s"):
        assert [s for s, _ in m[key]] == [100, 200, 300], key  # updates start at step 100
    assert (run / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 300


def test_cli_pixel_run_with_several_envs_and_frame_stack(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--env", "fastsac/PointMass-v0", "--num-envs", "2",
                 "--frame-stack", "3", "--total-steps", "120", "--learning-starts", "80",
                 "--batch-size", "8", "--hidden", "16", "16", "--feature-dim", "8",
                 "--eval-episodes", "1", "--log-every", "40", "--run-dir", str(run),
                 "--no-progress", "--device", "cpu"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["num_envs"] == 2 and cfg["frame_stack"] == 3
    m = read_metrics(run / "metrics.csv")
    assert [s for s, _ in m["loss/critic"]] == [80, 120]  # updates ran
    assert [s for s, _ in m["eval/return"]] == [120]


def test_cli_mujoco_pixels(tmp_path, monkeypatch):
    pytest.importorskip("mujoco", reason="the mujoco extra is not installed")
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory
    run = tmp_path / "run"
    # an evaluation at step 20: its env must leave the training env's frames alone
    assert main(["train", "--env", "HalfCheetah-v5", "--pixels", "--frame-stack", "3",
                 "--total-steps", "40", "--learning-starts", "30", "--batch-size", "4",
                 "--buffer-size", "1000", "--hidden", "16", "16", "--feature-dim", "8",
                 "--eval-every", "20", "--eval-episodes", "1",
                 "--run-dir", str(run), "--no-progress", "--device", "cpu"]) == 0
    buf = ReplayBuffer.load(run / "checkpoints" / "buffer-40.npz")
    assert buf.obs_shape == (3, 84, 84) and buf.stacked_obs_shape == (9, 84, 84)
    frames = np.concatenate([buf.sample(32).next_obs.numpy() for _ in range(10)])
    assert frames.dtype == np.uint8
    per_frame_std = frames.reshape(-1, 3, 3 * 84 * 84).std(axis=2)
    assert per_frame_std.min() > 10  # real renders, none blank


@pytest.mark.parametrize("args, name", [
    (["--batch-size", "0"], "batch_size"), (["--updates-per-step", "inf"], "updates_per_step"),
    (["--init-alpha", "nan"], "init_alpha"), (["--log-std-min", "3"], "log_std_min"),
    (["--env", "NoSuchEnv-v0"], "NoSuchEnv"), (["--frame-stack", "2"], "frame_stack")])
def test_cli_rejects_bad_options_by_name_before_writing_anything(tmp_path, capsys, args, name):
    assert main(["train", *args, "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    assert name in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_refuses_a_run_dir_holding_a_run_and_resume_with_run_dir(tmp_path, capsys):
    run = str(tmp_path / "r")
    args = ["--total-steps", "150", "--learning-starts", "100", "--hidden", "8",
            "--eval-episodes", "0", "--run-dir", run, "--no-progress", "--device", "cpu"]
    assert main(["train", *args]) == 0
    assert main(["train", *args]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--run-dir", str(tmp_path / "x")]) == 2
    assert "--run-dir" in capsys.readouterr().err


# -- resume --------------------------------------------------------------------------------
def params(agent) -> list[torch.Tensor]:
    return [p.detach().clone() for m in agent.modules.values() for p in m.parameters()]


@pytest.mark.parametrize("num_envs, during", [(1, False), (2, False), (2, True)])
def test_resume_at_an_episode_boundary_equals_the_uninterrupted_run(tmp_path, num_envs, during):
    # Pendulum's episodes last 200 steps; with num_envs envs they all end at 200 * num_envs.
    # With the updates during the env step, the last step's are saved undone: the resumed
    # run does them where the uninterrupted one did.
    stop, total = 200 * num_envs, 300 * num_envs
    kw = dict(num_envs=num_envs, update_during_env_step=during)
    full = train(quick(tmp_path / "a", total_steps=total, **kw))
    part = quick(tmp_path / "b", total_steps=stop, **kw)
    train(part)
    resumed = train(dataclasses.replace(part, total_steps=total), resume=part.run_dir)
    for p, q in zip(params(full.agent), params(resumed.agent)):
        assert torch.equal(p, q)
    assert full.agent.updates == resumed.agent.updates
    a, b = full.buffer.state_dict(), resumed.buffer.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ma = read_metrics(tmp_path / "a" / "run" / "metrics.csv")
    mb = read_metrics(tmp_path / "b" / "run" / "metrics.csv")
    assert ma["loss/critic"] == mb["loss/critic"]  # no rows lost or doubled by the resume


def test_a_compiled_update_trains_and_resumes_exactly(tmp_path):
    """compile="torch": the compiled update's noise comes from torch's generator, which the
    checkpoint saves, and the resumed run's agent compiles the same code again."""
    kw = dict(sac=SACConfig(hidden=(16, 16), compile="torch"))
    full = train(quick(tmp_path / "a", total_steps=300, **kw))
    part = quick(tmp_path / "b", total_steps=200, **kw)
    train(part)
    resumed = train(dataclasses.replace(part, total_steps=300), resume=part.run_dir)
    assert resumed.agent.config.compile == "torch"
    assert not resumed.agent._update_fn.failed  # not fallen back to eager
    assert all(torch.equal(p, q) for p, q in zip(params(full.agent), params(resumed.agent)))


def test_resume_mid_episode_restarts_the_episodes_in_flight(tmp_path):
    cfg = quick(tmp_path, env="fastsac-test/Counter-v0", num_envs=2, total_steps=150,
                learning_starts=10_000)
    train(cfg)
    r = train(dataclasses.replace(cfg, total_steps=400), resume=cfg.run_dir)
    assert len(r.buffer) == 400
    check_no_transition_joins_episodes(r.buffer, TINY.gamma)


@pytest.mark.parametrize("during", [False, True])
def test_resume_without_a_saved_buffer_refills_one(tmp_path, during):
    cfg = quick(tmp_path, total_steps=200, save_buffer=False, update_during_env_step=during)
    before = train(cfg).agent.updates
    r = train(dataclasses.replace(cfg, total_steps=400), resume=cfg.run_dir)
    assert len(r.buffer) == 200  # only the steps after the resume
    # updates resumed once the new buffer held a batch: 200 steps minus the first 32 (with
    # the updates during the env step: the one saved undone, minus the last step's)
    assert r.agent.updates == before + 200 - 31


@pytest.mark.parametrize("updates_per_step", [1.0, 0.5, 2.0])
def test_updates_during_the_env_step_see_the_same_steps_with_the_actor_one_step_behind(
        tmp_path, monkeypatch, updates_per_step):
    """The same run, the updates after or during the env step: each update draws the same
    batch (an actor that ignores its weights keeps the buffers alike), at the same step; the
    actor that chooses each action has done the updates of the steps before the last one,
    and the log rows hold the metrics of the updates done by then."""
    starts, total = 100, 300
    monkeypatch.setattr(trainer_module.SAC, "act", lambda agent, obs: seen_acts.append(
        agent.updates) or np.tanh(obs[:, :1]).astype(np.float32))
    runs = {}
    for during in (False, True):
        seen_acts, updates = [], []
        cfg = quick(tmp_path / str(during), total_steps=total, learning_starts=starts,
                    updates_per_step=updates_per_step, update_during_env_step=during)
        trainer = make_trainer(cfg)
        update = trainer.agent.update

        def spy(batch, trainer=trainer, update=update, updates=updates):
            updates.append((trainer.step, tuple(t.clone() for t in batch)))
            return update(batch)
        trainer.agent.update = spy
        trainer.run()
        logged = [s for s, _ in read_metrics(tmp_path / str(during) / "run" / "metrics.csv")
                  ["loss/critic"]]
        runs[during] = seen_acts, updates, logged
    # The whole updates earned once s steps are counted: updates_per_step per step from the
    # one that makes learning_starts on.
    def due(s):
        return int(updates_per_step * (s - starts + 1)) if s >= starts else 0
    # Actions are chosen at steps starts .. total - 1 (counted before the step).
    assert runs[False][0] == [due(s) for s in range(starts, total)]
    assert runs[True][0] == [due(s - 1) for s in range(starts, total)]
    after, during = runs[False][1], runs[True][1]
    assert len(after) == due(total) and len(during) == due(total - 1)  # (the last step's)
    # Rows every 100 steps, from the first after an update: the step that earns it, or the next
    first = min(s for s in range(starts, total) if due(s) >= 1)
    assert runs[False][2] == [s for s in (100, 200, 300) if s >= first]
    assert runs[True][2] == [s for s in (100, 200, 300) if s >= first + 1]
    for (step_a, batch_a), (step_d, batch_d) in zip(after, during):
        assert step_a == step_d
        assert all(torch.equal(a, d) for a, d in zip(batch_a, batch_d))


def test_resume_at_a_boundary_is_exact_for_pixels_in_eager_mode(tmp_path):
    # PointMass episodes last 50 steps. With compile="jit" the encoder's gradients differ at
    # float rounding (~1e-7) between a fresh process's first TorchScript calls and later
    # ones, so this exactness is promised for compile="none" (see docs/train.md).
    kw = dict(env="fastsac/PointMass-v0", frame_stack=2, learning_starts=60, batch_size=8,
              sac=SACConfig(hidden=(16, 16), feature_dim=8, compile="none"))
    full = train(quick(tmp_path / "a", total_steps=150, **kw))
    part = quick(tmp_path / "b", total_steps=100, **kw)
    train(part)
    resumed = train(dataclasses.replace(part, total_steps=150), resume=part.run_dir)
    assert all(torch.equal(p, q) for p, q in zip(params(full.agent), params(resumed.agent)))


def test_frames_in_device_memory_train_and_resume_exactly_as_in_host_memory(tmp_path):
    """Same seed, same batches: a run with buffer_memory="device" (a CPU tensor here), cut
    and resumed, ends with the parameters of an uninterrupted host-memory run."""
    kw = dict(env="fastsac/PointMass-v0", frame_stack=2, learning_starts=60, batch_size=8,
              sac=SACConfig(hidden=(16, 16), feature_dim=8, compile="none"))
    host = train(quick(tmp_path / "host", total_steps=150, **kw))
    part = quick(tmp_path / "device", total_steps=100, buffer_memory="device", **kw)
    train(part)
    resumed = train(dataclasses.replace(part, total_steps=150), resume=part.run_dir)
    assert resumed.buffer.memory == "device"
    assert all(torch.equal(p, q) for p, q in zip(params(host.agent), params(resumed.agent)))


def test_a_run_that_never_reached_a_checkpoint_starts_over(tmp_path):
    cfg = quick(tmp_path, total_steps=200)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))  # killed before step 1
    (run / "metrics.csv").write_text("step,key,value\n5,loss/actor,1\n")
    r = train(cfg)
    assert r.agent.updates == 200 - 99
    assert "5,loss/actor" not in (run / "metrics.csv").read_text()
    r = train(dataclasses.replace(cfg, total_steps=300), resume=run)
    assert r.agent.updates == 300 - 99


def test_checkpoints_remove_only_their_own_stale_files(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / ".fastsac-dead.tmp").write_bytes(b"x" * 10)  # left by a save killed mid-write
    (ckpt / "notes").mkdir()
    (ckpt / "README.txt").write_text("mine")
    train(quick(tmp_path, total_steps=200, checkpoint_every=100))
    assert sorted(p.name for p in ckpt.iterdir()) == [  # the two newest checkpoints
        "README.txt", "agent-100.pt", "agent-200.pt", "buffer-100.npz", "buffer-200.npz",
        "checkpoint-100.json", "checkpoint-200.json", "latest.json", "notes",
        "trainer-100.json", "trainer-200.json"]


def test_resume_refuses_changed_options(tmp_path):
    cfg = quick(tmp_path, total_steps=200)
    train(cfg)
    with pytest.raises(ValueError, match="batch_size"):
        train(dataclasses.replace(cfg, batch_size=64), resume=cfg.run_dir)
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg)


def test_a_run_killed_while_saving_resumes_from_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = quick(tmp_path, total_steps=400, checkpoint_every=200)
    real_save, calls = ReplayBuffer.save, []

    def dies_on_second_save(self, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed midway through writing checkpoint 400
        real_save(self, path)
    monkeypatch.setattr(ReplayBuffer, "save", dies_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(ReplayBuffer, "save", real_save)
    ckpt = tmp_path / "run" / "checkpoints"
    assert json.loads((ckpt / "latest.json").read_text())["step"] == 200
    r = train(cfg, resume=cfg.run_dir)  # continues from step 200
    full = train(quick(tmp_path / "full", total_steps=400))
    assert all(torch.equal(p, q) for p, q in zip(params(full.agent), params(r.agent)))
    assert sorted(p.name for p in ckpt.iterdir()) == [  # no temporary file left behind
        "agent-200.pt", "agent-400.pt", "buffer-200.npz", "buffer-400.npz",
        "checkpoint-200.json", "checkpoint-400.json", "latest.json", "trainer-200.json",
        "trainer-400.json"]


def test_resume_ends_the_episodes_in_flight_even_when_the_restart_looks_the_same(tmp_path):
    """An env whose observation after 3 steps equals its reset observation, checkpointed
    then: the restarted episode must not be joined to the one left running."""
    cfg = quick(tmp_path, env="fastsac-test/Loop-v0", total_steps=3, learning_starts=10_000,
                checkpoint_every=3, sac=SACConfig(hidden=(16, 16), n_step=2))
    train(cfg)
    r = train(dataclasses.replace(cfg, total_steps=6), resume=cfg.run_dir)
    g = cfg.sac.gamma
    # rewards are 1, 2, 3 in each episode; 2-step windows: 1 + 2g, 2 + 3g, then 3 alone where
    # the first episode was cut (joined, it would read 3 + 1g); the second's last is running
    assert len(r.buffer) == 6 and r.buffer.num_sampleable == 5
    rewards = {round(float(x), 4) for _ in range(20) for x in r.buffer.sample(5).reward}
    assert rewards == {round(1 + 2 * g, 4), round(2 + 3 * g, 4), 3.0}


def test_a_file_backed_buffer_resumes_without_slots_written_after_the_checkpoint(
        tmp_path, monkeypatch):
    """A run whose buffer is in a file dies after a checkpoint, its ring having wrapped since:
    the resume drops the overwritten slots, and no stored transition joins two episodes."""
    cfg = quick(tmp_path, env="fastsac-test/Counter-v0", total_steps=600, buffer_size=500,
                checkpoint_every=300, learning_starts=10_000,
                buffer_path=str(tmp_path / "replay"))
    real_save, calls = ReplayBuffer.save, []

    def dies_at_second_save(self, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed at step 600, after 300 more steps in the file
        real_save(self, path)
    monkeypatch.setattr(ReplayBuffer, "save", dies_at_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(ReplayBuffer, "save", real_save)
    assert (tmp_path / "run" / "checkpoints" / "buffer-300.npz").stat().st_size < 4096
    with pytest.warns(UserWarning, match="overwritten after this state was saved"):
        trainer = make_trainer(cfg, resume=cfg.run_dir)
    # ~330 slots written by step 300, ~660 by 600: the oldest ~160 were taken over
    assert trainer.step == 300 and 100 < len(trainer.buffer) < 250, len(trainer.buffer)
    result = trainer.run()
    assert len(result.buffer) > 200
    check_no_transition_joins_episodes(result.buffer, TINY.gamma)


class LoopEnv(gym.Env):
    """obs = (0, t mod 3), reward t: after 3 steps the obs equals the reset obs (0, 0)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([0.0, self.t % 3], np.float32), float(self.t), False, False, {}


gym.register("fastsac-test/Loop-v0", entry_point=LoopEnv, max_episode_steps=100)


# -- what the actor sees -------------------------------------------------------------------
def test_actor_frame_stacks_equal_the_buffers():
    k, shape = 3, (1, 2, 2)
    buf = ReplayBuffer(200, shape, (1,), obs_dtype=np.uint8, frame_stack=k, seed=0)
    stack = FrameStack(1, shape, k, np.uint8)
    seen, value = set(), 0
    for length in (1, 2, 5, 7):
        value += 1
        frame = np.full(shape, value, np.uint8)
        stack.reset(0, frame)
        seen.add(stack.obs[0].tobytes())
        for t in range(length):
            value += 1
            nxt = np.full(shape, value, np.uint8)
            buf.add(frame, np.zeros(1, np.float32), 0.0, nxt, False, t == length - 1)
            stack.push(nxt[None])
            seen.add(stack.obs[0].tobytes())
            frame = nxt
    sampled = set()
    for _ in range(50):
        b = buf.sample(8)
        for o in (*b.obs.numpy(), *b.next_obs.numpy()):
            sampled.add(o.tobytes())
    assert sampled == seen  # the same stacks, the first frame repeated at each start


def test_the_trainers_policy_sees_the_stacks_the_buffer_samples(tmp_path, monkeypatch):
    """In a real pixel run (two envs, episodes of 50 steps, stack 3), every observation the
    policy acted on is a stack the buffer also returns for that step."""
    from fastsac.sac import SAC

    seen, real_act = [], SAC.act

    def recording_act(self, obs, deterministic=False):
        if not deterministic:
            seen.extend(np.array(obs).reshape(-1, 9, 32, 32))  # a copy: obs is reused
        return real_act(self, obs, deterministic)
    monkeypatch.setattr(SAC, "act", recording_act)
    r = train(quick(tmp_path, env="fastsac/PointMass-v0", num_envs=2, frame_stack=3,
                    total_steps=240, learning_starts=40, batch_size=8, log_every=1000,
                    sac=SACConfig(hidden=(8, 8), feature_dim=4)))
    assert len(seen) == 200  # 100 vector steps of 2 envs after the warm-up
    sampled = {o.tobytes() for _ in range(300) for o in r.buffer.sample(64).obs.numpy()}
    acted = {o.tobytes() for o in seen}
    # with n_step 1 every stored step is sampleable, so 300 x 64 draws over 240 steps cover
    # them all: every stack the policy acted on must be among them, episode starts included
    missing = acted - sampled
    assert not missing, f"{len(missing)} of {len(acted)} policy observations never sampled"
    firsts = [o for o in seen if np.array_equal(o[:3], o[3:6]) and np.array_equal(o[3:6], o[6:])]
    assert firsts  # episode starts (first frame repeated) were among them


# -- learning ------------------------------------------------------------------------------
def test_sac_learns_the_builtin_pixel_task(tmp_path):
    r = train(TrainConfig(env="fastsac/PointMass-v0", total_steps=2_000, learning_starts=500,
                          batch_size=64, eval_every=0, eval_episodes=10, checkpoint_every=0,
                          progress=False, run_dir=str(tmp_path / "run"), device="cpu"))
    random_return = random_policy_return("fastsac/PointMass-v0", seed=0)  # about -40
    (learned,) = r.eval_returns.values()
    assert learned > 0.5 * random_return, (learned, random_return)


def test_cli_resume_accepts_repeated_options_and_refuses_changed_ones(tmp_path, capsys):
    run = str(tmp_path / "r")
    base = ["--hidden", "8", "--learning-starts", "100", "--batch-size", "32",
            "--eval-episodes", "0", "--log-every", "100", "--no-progress", "--device", "cpu"]
    assert main(["train", "--num-envs", "2", "--total-steps", "200", "--run-dir", run,
                 *base]) == 0
    assert main(["train", "--num-envs", "3", "--resume", run, "--total-steps", "300"]) == 2
    assert "num_envs" in capsys.readouterr().err
    assert main(["train", "--num-envs", "2", "--resume", run, "--total-steps", "300"]) == 0
    steps = [s for s, _ in read_metrics(tmp_path / "r" / "metrics.csv")["loss/critic"]]
    assert steps == [100, 200, 300]
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["total_steps"] == 300 and saved["num_envs"] == 2


def test_evaluation_keeps_one_env_and_follows_the_seeds_protocol(tmp_path, monkeypatch):
    built = []
    real_make_env = trainer_module.make_env
    monkeypatch.setattr(trainer_module, "make_env",
                        lambda *a, **k: built.append(a) or real_make_env(*a, **k))
    cfg = quick(tmp_path, eval_episodes=3, seed=7)
    trainer = trainer_module.Trainer(cfg, tmp_path / "run")
    n_train_envs = len(built)
    first, second = trainer.evaluate(), trainer.evaluate()
    assert len(built) == n_train_envs + 1  # one evaluation env, kept between evaluations
    # reference: a fresh env, episode i reset with seed + 100 + i, the mean action rescaled
    env, returns = gym.make("Pendulum-v1"), []
    low, high = env.action_space.low, env.action_space.high
    for i in range(3):
        obs, _ = env.reset(seed=7 + 100 + i)
        total, done = 0.0, False
        while not done:
            a = trainer.agent.act(obs.astype(np.float32), deterministic=True)
            obs, r, terminated, truncated, _ = env.step(low + (a + 1.0) * (high - low) / 2)
            total, done = total + float(r), terminated or truncated
        returns.append(total)
    assert first == second == pytest.approx(np.mean(returns), rel=1e-9)
    trainer.close()


def test_a_run_closes_every_env_it_made(tmp_path, monkeypatch):
    made, closed = [], []
    real_make_env = trainer_module.make_env

    def recording_make_env(*args, **kwargs):
        env = real_make_env(*args, **kwargs)
        real_close = env.close
        env.close = lambda: closed.append(env) or real_close()
        made.append(env)
        return env
    monkeypatch.setattr(trainer_module, "make_env", recording_make_env)  # evaluation's
    monkeypatch.setattr(runner_module, "make_env", recording_make_env)  # the training envs'
    train(quick(tmp_path, num_envs=2, eval_every=200, eval_episodes=1))
    assert len(made) == 3  # two training envs and one evaluation env, for two evaluations
    assert all(any(e is c for c in closed) for e in made)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("env, kw, prefetch", [
    ("Pendulum-v1", {}, False), ("Pendulum-v1", dict(prefetch=True), True),
    ("fastsac/PointMass-v0", dict(frame_stack=3), True)])
def test_training_on_cuda_with_a_graph(tmp_path, env, kw, prefetch):
    """The CUDA loop as `fastsac train --device cuda` runs it: batches sampled (prefetched,
    for images by default) into the graph's inputs, the update replayed (the default on CUDA)
    during the env step, act() through pinned staging."""
    cfg = quick(tmp_path, env=env, device="cuda", total_steps=500, checkpoint_every=500,
                **kw)
    trainer = make_trainer(cfg)
    assert trainer.prefetch is prefetch and trainer.buffer.device == trainer.agent.device
    assert trainer.agent.config.cuda_graph is True and trainer.update_during_env_step is True
    result = trainer.run()
    # From the step learning starts at, the last step's left for the next (during env steps)
    updates = cfg.total_steps - cfg.learning_starts
    assert result.agent.updates == updates and result.agent.input_batch() is not None
    for p in result.agent.modules["critic"].parameters():
        assert torch.isfinite(p).all()
    logged = read_metrics(result.run_dir / "metrics.csv")["loss/critic"]
    # (rows from the first one after an update: at learning_starts none has run yet)
    assert [s for s, _ in logged] == list(range(200, cfg.total_steps + 1, cfg.log_every))
    assert np.isfinite([v for _, v in logged]).all()
    resumed = make_trainer(dataclasses.replace(cfg, total_steps=600), resume=result.run_dir)
    assert resumed.run().agent.updates == updates + 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("env, kw", [
    ("Pendulum-v1", {}), ("fastsac/PointMass-v0", dict(frame_stack=3)),
    ("fastsac/PointMass-v0", dict(frame_stack=3, buffer_memory="device"))])
def test_cuda_training_steps_wait_for_the_gpu_only_through_events(tmp_path, monkeypatch, env,
                                                                  kw):
    """Once the graph is captured, a training step on CUDA waits for the GPU only where it
    must, through events (the action act() reads, a staging's copy): no .item(), no blocking
    copy, no stream synchronisation (errors in torch's sync debug mode) and no
    torch.cuda.synchronize()."""
    cfg = quick(tmp_path, env=env, device="cuda", total_steps=10_000, **kw)
    trainer = make_trainer(cfg)
    try:
        trainer.start()
        while trainer.agent.updates < 20:  # past the capture, which synchronises
            trainer.train_step()

        def synchronize(*args, **kwargs):
            raise AssertionError("torch.cuda.synchronize() in a training step")

        monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(50):
                trainer.train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            monkeypatch.undo()
        assert trainer.agent.updates == 70
    finally:
        trainer.close()


@pytest.mark.parametrize("num_threads, calls", [(0, []), (1, [1])])
def test_num_threads_sets_torchs_threads_and_0_leaves_them(tmp_path, monkeypatch, num_threads,
                                                            calls):
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)  # not this process's own
    make_trainer(quick(tmp_path, num_threads=num_threads)).close()
    assert seen == calls


@pytest.mark.parametrize("prefetch", [None, True])
def test_prefetch_is_off_on_the_cpu_unless_asked_for(tmp_path, prefetch):
    cfg = quick(tmp_path, prefetch=prefetch, total_steps=200)
    trainer = make_trainer(cfg)
    assert trainer.prefetch is bool(prefetch)
    assert trainer.update_during_env_step is False  # (nothing overlaps on the CPU)
    assert (trainer.buffer._prefetcher is not None) is bool(prefetch)
    result = trainer.run()
    assert result.agent.updates == cfg.total_steps - cfg.learning_starts + 1


def test_these_tests_train_on_the_cpu_even_where_cuda_is_available(tmp_path, monkeypatch):
    """Their bit-exact resumes and .numpy() reads hold on the CPU; "auto" would pick a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trainer_module._resolve_device(quick(tmp_path).device).type == "cpu"
