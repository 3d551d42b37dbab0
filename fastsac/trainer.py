"""The training loop behind ``fastsac train`` and ``fastsac.train``: acting, storing,
learning, evaluation, logs, plots and checkpoints, all driven by one :class:`TrainConfig`.

The envs step in this process (a gymnasium vector env, see ``fastsac.runner``) or, with
``workers``, in Ray actors that send chunks of steps (``fastsac.distributed``); either way no
stored transition joins two episodes. In this process an env's episodes depend only on the
seed and the actions taken: what makes a resumed run repeat an uninterrupted one (see
``docs/train.md``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from fastsac._checkpoint import Checkpoints
from fastsac._runlog import MetricsLog, plot_run
from fastsac._trainer_envs import TrainerEnvs
from fastsac._trainer_state import TrainerCheckpoints
from fastsac._validate import torch_device
from fastsac.buffers import ReplayBuffer
from fastsac.config import TrainConfig, read_run_config, resumed_config
from fastsac.envs import make_env
from fastsac.evaluation import run_episodes
from fastsac.runner import EnvRunner, make_vector_env
from fastsac.sac import SAC


@dataclass
class TrainResult:
    agent: SAC
    buffer: ReplayBuffer
    run_dir: Path
    eval_returns: dict[int, float]
    """Mean evaluation return at each evaluated step."""


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA GPU")
    return torch_device(device)


class Trainer(TrainerEnvs, TrainerCheckpoints):
    """One run: build everything from the config, or from a run directory to resume."""

    def __init__(self, config: TrainConfig, run_dir: Path, fresh: bool = True):
        """``fresh``: start metrics.csv over (else it is continued, see ``restore``)."""
        self.config = config
        self.run_dir = run_dir
        self.device = _resolve_device(config.device)
        c = config
        if c.num_threads:
            torch.set_num_threads(c.num_threads)  # process-wide, as the option says
        self.pool = None  # the env workers, with ``workers``
        self.runner: EnvRunner | None = None  # the envs in this process, without
        self._eval_env: gym.Env | None = None  # built at the first evaluation, then kept
        if c.workers:
            # The envs step in the workers; one here gives the spaces and evaluates.
            try:
                self._eval_env = make_env(c.env, c.pixels, c.image_size, c.full_render)
            except gym.error.Error as exc:  # an unknown id, a missing extra: the env option's
                raise ValueError(f"env {c.env!r}: {exc}") from exc
            spaces = self._eval_env.observation_space, self._eval_env.action_space
        else:
            envs = make_vector_env(c.env, c.num_envs, c.pixels, c.image_size, c.full_render,
                                   c.vector_env)
            spaces = envs.single_observation_space, envs.single_action_space
        try:
            if c.video_every:
                from fastsac.video import check_available
                check_available()  # before a run that would fail at its first video
            self._build(c, *spaces)
            if c.workers:
                try:
                    from fastsac.distributed import WorkerPool  # ray: only with workers
                except ImportError as exc:
                    raise ValueError(f"workers: {exc}") from exc
                self.pool = WorkerPool(c)
            else:
                self.runner = EnvRunner(envs, c.seed, range(c.num_envs), c.frame_stack,
                                        self.obs_dtype)
            run_dir.mkdir(parents=True, exist_ok=True)  # only once the run could be built
            self.log = MetricsLog(run_dir / "metrics.csv", fresh,
                                  run_dir / "tensorboard" if c.tensorboard else None)
            self.checkpoints = Checkpoints(run_dir / "checkpoints", c.keep_checkpoints)
        except BaseException:
            if self.pool is not None or self.runner is not None:
                self.close()
            elif c.workers:
                self._eval_env.close()
            else:
                envs.close()
            raise
        self.timers = dict.fromkeys(("env", "act", "buffer", "update"), 0.0)
        self._steps_per_s: float | None = None  # the latest, for the progress bar

    def _build(self, c: TrainConfig, obs_space: gym.Space, act_space: gym.Space) -> None:
        """Buffer, agent and counters for the envs' spaces."""
        if not isinstance(act_space, gym.spaces.Box) or not act_space.is_bounded():
            raise ValueError(f"{c.env}: SAC needs a bounded Box action space, got {act_space}")
        self.low = act_space.low.astype(np.float64)
        self.high = act_space.high.astype(np.float64)
        self.half_range = (self.high - self.low) / 2  # [-1, 1] <-> [low, high]
        self.action_shape = act_space.shape
        self.pixels = len(obs_space.shape) == 3 and obs_space.dtype == np.uint8
        if c.video_observed and not self.pixels:
            raise ValueError(f"video_observed records the frames the agent sees: {c.env} "
                             "gives no image observations (pixels)")
        if c.frame_stack > 1 and not self.pixels:
            raise ValueError("frame_stack > 1 needs image observations (pixels)")
        self.obs_dtype = np.uint8 if self.pixels else np.float32
        self.frame_shape = obs_space.shape
        capacity = c.buffer_size or (100_000 if self.pixels else 1_000_000)
        self.prefetch = c.prefetch if c.prefetch is not None else (
            self.pixels and self.device.type == "cuda" and c.buffer_memory == "host")
        self.buffer = ReplayBuffer(
            capacity, self.frame_shape, self.action_shape,
            obs_dtype=self.obs_dtype, num_envs=c.num_streams, frame_stack=c.frame_stack,
            n_step=c.sac.n_step, gamma=c.sac.gamma, device=self.device, seed=c.seed,
            memory=c.buffer_memory, prefetch=self.prefetch, path=c.buffer_path or None)
        torch.manual_seed(c.seed)
        self.agent = SAC(self.buffer.stacked_obs_shape, self.action_shape, c.sac, self.device)
        self.rng = np.random.default_rng(c.seed)  # warm-up actions
        self.step = 0
        self.update_debt = 0.0
        self.update_during_env_step = c.update_during_env_step \
            if c.update_during_env_step is not None else (self.device.type == "cuda"
                                                           and not c.workers)
        self._sampleable = False
        self.eval_returns: dict[int, float] = {}
        self.started = False

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> TrainResult:
        c = self.config
        if not self.started:
            self.start()
        bar = tqdm(total=c.total_steps, initial=self.step, disable=not c.progress,
                   unit="step", dynamic_ncols=True, desc=c.env)
        try:
            self._loop(bar)
        finally:
            bar.close()
            self.close()
        return TrainResult(self.agent, self.buffer, self.run_dir, dict(self.eval_returns))

    def _loop(self, bar) -> None:
        c = self.config
        finished: list[float] = []
        metrics: dict[str, torch.Tensor] = {}
        last_log = (self.step, time.perf_counter())
        while self.step < c.total_steps:
            before = self.step
            done, new_metrics = self.train_step()
            finished += done
            metrics = new_metrics or metrics
            bar.update(self.step - before)

            if self._due(c.log_every, before):
                now = time.perf_counter()
                rows = {k: float(v) for k, v in metrics.items()}  # one host sync per log row
                rows["perf/steps_per_s"] = (self.step - last_log[0]) / (now - last_log[1])
                if finished:
                    rows["train/episode_return"] = float(np.mean(finished))
                    finished = []
                if self.pool is not None:
                    rows.update(self.pool.metrics())
                self.log.write(self.step, rows)
                last_log = (self.step, now)
                bar.set_postfix(self._postfix(rows), refresh=False)
            final = self.step >= c.total_steps
            do_eval = c.eval_episodes and ((c.eval_every and self._due(c.eval_every, before))
                                           or final)
            if do_eval:
                ret = self.evaluate()
                self.eval_returns[self.step] = ret
                self.log.write(self.step, {"eval/return": ret})
                bar.set_postfix(self._postfix({}), refresh=False)
            if c.video_every and (self._due(c.video_every, before) or final):
                self.record_video()
            if do_eval or final:
                plot_run(self.log.path, self.run_dir / "progress.png", c.env)
            if (c.checkpoint_every and self._due(c.checkpoint_every, before)) or final:
                self.save_checkpoint()

    def train_step(self) -> tuple[list[float], dict[str, torch.Tensor] | None]:
        """One step of every env (with workers: the chunks that arrived) and the updates it
        earns, in the order ``update_during_env_step`` says; what ``run`` repeats. Returns the
        returns of the episodes that ended, and the metrics of the last update run (None:
        none ran)."""
        before = self.step
        if not self.update_during_env_step:  # (with workers: they run while chunks come)
            finished = self.env_step() if self.pool is None else self.receive()
            return finished, self.learn(self.step - before)
        # The updates earned so far are launched after the actions are chosen (which wait
        # for the GPU) and before the envs step, so that the GPU runs them meanwhile.
        actions = self._timed_actions()
        metrics = self._pay_updates()
        finished = self._step_envs(*actions)
        self._earn_updates(self.step - before)
        return finished, metrics

    # -- learning ---------------------------------------------------------------------------
    def learn(self, steps: int | None = None) -> dict[str, torch.Tensor] | None:
        """The updates due after ``steps`` more env steps (None: one step of every env); the
        last one's metrics (None: none)."""
        self._earn_updates(self.config.num_envs if steps is None else steps)
        return self._pay_updates()

    def _earn_updates(self, steps: int) -> None:
        """Add the updates that ``steps`` env steps, the latest ones, earn."""
        c = self.config
        if self.step < c.learning_starts or not self._can_sample():
            return
        # Only the steps from learning_starts on earn updates (where these cross it).
        self.update_debt += c.updates_per_step * min(steps, self.step - c.learning_starts + 1)

    def _pay_updates(self) -> dict[str, torch.Tensor] | None:
        """Run the updates earned so far (as many as there are whole ones); the last one's
        metrics (None: none ran)."""
        if self.update_debt < 1 or not self._can_sample():  # (a resume's buffer may refill)
            return None
        metrics = None
        t0 = time.perf_counter()
        while self.update_debt >= 1:
            batch = self.buffer.sample(self.config.batch_size, out=self.agent.input_batch())
            metrics = self.agent.update(batch)
            self.update_debt -= 1
        self.timers["update"] += time.perf_counter() - t0
        return metrics

    def _can_sample(self) -> bool:
        """Whether a batch can be drawn (checked until it can, then it stays so)."""
        if not self._sampleable:
            self._sampleable = self.buffer.num_sampleable >= self.config.batch_size
        return self._sampleable

    def _due(self, every: int, before: int) -> bool:
        """Whether the steps since ``before`` crossed a multiple of ``every``."""
        return self.step // every != before // every

    def _postfix(self, rows: dict) -> dict:
        out = {}
        if "perf/steps_per_s" in rows:
            self._steps_per_s = rows["perf/steps_per_s"]
        if self._steps_per_s is not None:
            out["steps/s"] = f"{self._steps_per_s:.0f}"
        if self.eval_returns:
            out["eval"] = f"{self.eval_returns[max(self.eval_returns)]:.1f}"
        return out

    def evaluate(self) -> float:
        """Mean return of the deterministic policy over ``eval_episodes`` episodes on a
        separate env, episode i reset with seed + 100 + i (``fastsac.evaluation``)."""
        c = self.config
        if self._eval_env is None:  # kept: a pixel env's renderer (EGL context) is costly
            self._eval_env = make_env(c.env, c.pixels, c.image_size, c.full_render)
        result = run_episodes(self.agent, self._eval_env, c.eval_episodes, c.seed,
                              c.frame_stack, self._to_env)
        return float(np.mean(result.returns))

    def record_video(self) -> Path:
        """A video of one deterministic evaluation episode: run_dir/videos/step-STEP.mp4."""
        from fastsac.video import record_episode

        c = self.config
        path = self.run_dir / "videos" / f"step-{self.step}.mp4"
        observed = path.with_name(f"step-{self.step}-observed.mp4") if c.video_observed \
            else None
        record_episode(self.agent, c.env, path, seed=c.seed, pixels=c.pixels,
                       image_size=c.image_size, full_render=c.full_render,
                       frame_stack=c.frame_stack, size=c.video_size, observed=observed)
        return path

    def close(self) -> None:
        """Close the training envs and the evaluation env (``run`` does this at its end)."""
        eval_env, self._eval_env = self._eval_env, None
        try:
            if self.pool is not None:
                self.pool.close()
            else:
                self.runner.close()
        finally:
            if eval_env is not None:
                eval_env.close()
            if getattr(self, "log", None) is not None:
                self.log.close()


def default_run_dir(config: TrainConfig) -> Path:
    name = config.env.replace("/", "-") + ("-pixels" if config.pixels else "")
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_trainer(config: TrainConfig | None = None,
                 resume: str | os.PathLike | None = None) -> Trainer:
    """The Trainer ``train`` runs, with every check done; see ``train``."""
    if resume is not None:
        run_dir = Path(resume)
        saved = read_run_config(run_dir)
        config = resumed_config(saved, config or saved)
    else:
        config = config or TrainConfig()
        run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    # A run that never reached its first checkpoint starts over, resumed or not.
    fresh = not Checkpoints(run_dir / "checkpoints").exists()
    if resume is None and not fresh:
        raise ValueError(f"run_dir {run_dir} already holds a run: resume it, or pick another")
    trainer = Trainer(config, run_dir, fresh=fresh)
    try:
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        if not fresh:
            trainer.restore()
    except BaseException:
        trainer.close()
        raise
    return trainer


def train(config: TrainConfig | None = None, resume: str | os.PathLike | None = None
          ) -> TrainResult:
    """Train SAC as ``config`` says (None: the defaults). ``resume``: continue the run in that
    directory from its latest checkpoint; ``config`` (None: the run's own config.json) may then
    differ from the run's only in ``fastsac.config.RESUME_MAY_CHANGE``. A run directory whose
    run never reached a checkpoint is started over."""
    return make_trainer(config, resume).run()


