"""Configuration: ``SACConfig`` (the learner) and ``TrainConfig`` (a training run), presets,
and what a resumed run may change.

Frozen dataclasses with a docstring under each field: one source of defaults for the API, the
command line (each field is an option, its docstring the option's help; see
``fastsac._configargs``) and the docs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from fastsac._validate import check_choice

COMPILE_MODES = ("jit", "torch", "none")
LOG_STD_MODES = ("clamp", "tanh")
DEVICES = ("auto", "cpu", "cuda")
MEMORIES = ("host", "device")
VECTOR_ENVS = ("sync", "async")


@dataclass(frozen=True)
class SACConfig:
    """Hyper-parameters of the learner."""

    hidden: tuple[int, ...] = (256, 256)
    """Widths of the hidden layers of the actor and of each critic."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics (and of the pixel encoder)."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log(alpha) when alpha is tuned."""
    tau: float = 0.005
    """Polyak factor: target <- tau * online + (1 - tau) * target after every update."""
    gamma: float = 0.99
    """Discount, for the replay buffer (the update uses the batch's ``discount``, which holds
    gamma^m for an m-step window or 0 after a termination)."""
    n_step: int = 1
    """Steps per return, for the replay buffer."""
    autotune_alpha: bool = True
    """Tune alpha so that the policy's entropy tracks ``target_entropy``; False: fixed alpha."""
    init_alpha: float = 1.0
    """Alpha at the start (the fixed alpha when not tuned)."""
    target_entropy: float | None = None
    """Entropy target of the alpha tuning; None: -|A| (minus the action dimension)."""
    num_critics: int = 2
    """Q-networks in the ensemble; targets use their minimum (clipped double Q)."""
    log_std_mode: str = "clamp"
    """How the policy bounds its log-std: "clamp" to [log_std_min, log_std_max], or "tanh" of the
    raw output (std in [1/e, e])."""
    log_std_min: float = -5.0
    """Lower bound of the policy's log_std (clamp mode)."""
    log_std_max: float = 2.0
    """Upper bound of the policy's log_std (clamp mode)."""
    feature_dim: int = 50
    """Output width of the pixel encoder."""
    augment: bool = True
    """Random-shift augmentation (pad 4, random crop) of pixel obs and next_obs in updates."""
    compile: str = "jit"
    """How the update runs: "jit" (the networks as TorchScript), "torch" (the whole update,
    gradients and Adam steps included, through torch.compile: its first update compiles for
    seconds to minutes; on CUDA without cuda_graph in mode "reduce-overhead", which replays it
    as torch's own CUDA graphs; act() runs the networks eagerly) or "none" (eager). Where
    compiling fails, fastsac warns once and runs eagerly."""
    cuda_graph: bool | None = None
    """Capture the whole update in a CUDA graph and replay it (fastsac's own capture), which
    needs a CUDA device and a fixed batch shape. Not set (None): on where the device is CUDA
    (the fastest there, BENCHMARKS.md), off elsewhere and with compile="torch" (torch's CUDA
    graphs instead)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))  # JSON and argparse give lists
        check_choice("compile", self.compile, COMPILE_MODES)
        check_choice("log_std_mode", self.log_std_mode, LOG_STD_MODES)
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "init_alpha"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)}")
        if not self.log_std_min < self.log_std_max or not math.isfinite(self.log_std_min) \
                or not math.isfinite(self.log_std_max):
            raise ValueError(f"log_std_min < log_std_max must hold (finite), got "
                             f"{self.log_std_min}, {self.log_std_max}")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ValueError(f"target_entropy must be finite or None, got {self.target_entropy}")
        if self.n_step < 1 or self.feature_dim < 1:
            raise ValueError("n_step and feature_dim must be >= 1")
        if self.num_critics < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError("num_critics and every hidden width must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; ``sac`` holds the learner's hyper-parameters."""

    env: str = "Pendulum-v1"
    """gymnasium task id (vector observations, or images when ``pixels`` or the task gives
    uint8 (C, H, W) frames, like fastsac/PointMass-v0)."""
    total_steps: int = 10_000
    """Env steps to train for, summed over envs."""
    seed: int = 0
    """Seeds torch, the replay buffer, warm-up actions and every episode's reset."""
    num_envs: int = 1
    """Envs stepped together (a gymnasium vector env, see vector_env)."""
    vector_env: str = "sync"
    """How the envs step: "sync" (one after the other, in this process) or "async" (each in a
    subprocess of its own, stepping in parallel: for envs slow enough to pay for the pipes).
    Async envs run in fresh processes: a script that trains with them needs Python's
    `if __name__ == "__main__":` guard, and an env it registers itself must be registered on
    import of a module those processes import."""
    workers: int | None = None
    """Env workers on Ray (the ray extra): each is a Ray actor that steps envs_per_worker envs
    with a CPU copy of the actor and sends chunks of steps to this process, which owns the
    replay buffer and learns. None: the envs step in this process (num_envs, vector_env)."""
    envs_per_worker: int = 1
    """With workers: the envs each worker steps; the buffer has workers x envs_per_worker
    env streams."""
    chunk_steps: int = 50
    """With workers: consecutive steps of each of a worker's envs per chunk it sends (each
    worker has at most two chunks in flight)."""
    sync_every: int = 100
    """With workers: updates between sending the actor's weights to the workers (once through
    Ray's object store for all of them); they act at random until learning_starts."""
    ray_address: str = ""
    """With workers: the Ray cluster to run them on. "" starts Ray on this machine; "auto"
    joins the cluster this machine is part of; HOST:PORT or ray://HOST:PORT names one."""
    pixels: bool = False
    """Observe a MuJoCo task through its rendered RGB frames instead of its state vector."""
    image_size: int = 84
    """Side of the rendered frames with ``pixels``."""
    full_render: bool = False
    """With ``pixels``: keep MuJoCo's shadows, reflections and multisampling (off by default,
    for speed: a software renderer spends most of a frame on them)."""
    frame_stack: int = 1
    """Frames the learner sees at once (image tasks); the buffer stacks them at sample time."""
    learning_starts: int = 1_000
    """Env steps of uniformly random actions before the first update."""
    batch_size: int = 256
    """Transitions per update."""
    updates_per_step: float = 1.0
    """Gradient updates per env step (with several envs: per env step of each)."""
    buffer_size: int | None = None
    """Replay capacity in slots (an episode of T steps takes T + 1). None: 1,000,000 for
    vector observations, 100,000 for images (2.1 GB of 84x84 RGB frames)."""
    eval_every: int = 2_000
    """Env steps between evaluations (0: only at the end)."""
    eval_episodes: int = 10
    """Episodes per evaluation, deterministic actions, episode i reset with seed + 100 + i
    (0: no evaluation)."""
    log_every: int = 1_000
    """Env steps between rows of training metrics in metrics.csv."""
    checkpoint_every: int = 10_000
    """Env steps between checkpoints (0: only at the end)."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept in run_dir/checkpoints, the newest ones: when the newest cannot
    be read, a resume falls back to the one before. Each holds the agent (a few MB) and, with
    save_buffer, a copy of the replay buffer (up to its full size: 2.1 GB for 100,000 steps of
    84x84 RGB frames, 0.13 GB for 1,000,000 HalfCheetah steps; with buffer_path only its
    bookkeeping, a few KB)."""
    buffer_memory: str = "host"
    """Where the replay buffer keeps its frames: "host" (the C++ core's memory; each batch is
    gathered there and copied to the device) or "device" (a tensor on the training device,
    GPU memory with CUDA, where batches are gathered)."""
    prefetch: bool | None = None
    """Gather each update's batch in a background thread while the previous update runs (it
    is then drawn one env step earlier); needs buffer_memory="host". Not set (None): on for
    image observations on CUDA, where it hides the gather (BENCHMARKS.md), off elsewhere: a
    vector batch gathers in microseconds, less than prefetching can cost (BENCHMARKS.md)."""
    update_during_env_step: bool | None = None
    """Launch the updates that the last env step earned after choosing the next actions and
    before stepping the envs, so that a GPU runs them while the envs step. The updates see
    the same transitions; the actions come from the actor one step's updates behind, and the
    last step's updates run at the next step (a resumed run's). Not set (None): on with CUDA,
    off on the CPU, where nothing overlaps, and with workers, whose chunks the learner waits
    for while its updates run."""
    buffer_path: str = ""
    """A directory to keep the replay buffer's slots in, in a memory-mapped file allocated up
    front, so that its capacity is bounded by the disk rather than RAM (the page cache keeps
    the hot part in memory). Checkpoints then hold only its bookkeeping; keep the directory
    where it is. "": in memory."""
    save_buffer: bool = True
    """Checkpoints include the replay buffer (a resumed run then continues exactly)."""
    video_every: int = 0
    """Env steps between videos of one deterministic evaluation episode, written to
    run_dir/videos/step-STEP.mp4 at the evaluation due then (0: none; the video extra)."""
    video_size: int = 256
    """Side in pixels of the videos' frames."""
    video_observed: bool = False
    """With video_every, on an image task: also record the frames the agent saw (the newest
    of each stack), to run_dir/videos/step-STEP-observed.mp4."""
    tensorboard: bool = False
    """Also write the metrics as TensorBoard event files to run_dir/tensorboard (the tb
    extra), keys as in metrics.csv (eval/return, loss/critic, perf/steps_per_s, ...)."""
    run_dir: str = ""
    """Where config.json, metrics.csv, the plot and checkpoints go ("": runs/ENV-TIME)."""
    device: str = "auto"
    """"auto" (CUDA when there is a GPU), "cpu" or "cuda"."""
    num_threads: int = 0
    """CPU threads for torch's operations in this process (torch.set_num_threads); 0: torch's
    default, one per core. Runs that share a machine's cores run faster with their share each
    than with all of them: two runs on 2 cores, 1 each (BENCHMARKS.md)."""
    progress: bool = True
    """Show a tqdm progress bar."""
    sac: SACConfig = field(default_factory=SACConfig)
    """The learner's hyper-parameters (each one is an option of its own)."""

    def __post_init__(self) -> None:
        for name in ("total_steps", "num_envs", "image_size", "frame_stack", "batch_size",
                     "log_every", "keep_checkpoints", "video_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_starts", "eval_every", "eval_episodes", "checkpoint_every",
                     "video_every", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.buffer_size is not None and self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if not 0 <= self.updates_per_step < math.inf:
            raise ValueError(f"updates_per_step must be finite and >= 0, "
                             f"got {self.updates_per_step}")
        check_choice("device", self.device, DEVICES)
        check_choice("buffer_memory", self.buffer_memory, MEMORIES)
        check_choice("vector_env", self.vector_env, VECTOR_ENVS)
        if self.buffer_path:  # a resume from another directory must find the same file
            object.__setattr__(self, "buffer_path", os.path.abspath(self.buffer_path))
        if self.prefetch and self.buffer_memory != "host":
            raise ValueError("prefetch gathers batches in host memory: it needs "
                             "buffer_memory='host'")
        if self.buffer_path and self.buffer_memory != "host":
            raise ValueError("buffer_path keeps the frames in a file: it needs "
                             "buffer_memory='host'")
        self._check_workers()

    def _check_workers(self) -> None:
        worker_options = ("envs_per_worker", "chunk_steps", "sync_every", "ray_address")
        if self.workers is None:
            for name in worker_options:  # set, but nothing would read it
                if getattr(self, name) != getattr(TrainConfig, name):
                    raise ValueError(f"{name} is an option of env workers: set workers too")
            return
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1 (or None: no workers), got {self.workers}")
        for name in worker_options[:3]:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_envs != 1:
            raise ValueError("num_envs: with workers each worker steps envs_per_worker envs; "
                             "leave num_envs at 1")
        if self.update_during_env_step:
            raise ValueError("update_during_env_step orders the envs of this process; with "
                             "workers the updates run while the learner waits for chunks: "
                             "leave it unset")
        if self.vector_env != "sync":
            raise ValueError("vector_env='async' steps envs in subprocesses of this process; "
                             "with workers the envs step in the workers: drop one of them")

    @property
    def num_streams(self) -> int:
        """Env streams of the replay buffer: num_envs, or workers x envs_per_worker."""
        return self.workers * self.envs_per_worker if self.workers else self.num_envs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        sac = dict(d.pop("sac", {}))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        return cls(**d, sac=SACConfig(**sac))


# "seed": the HalfCheetah-v4 run of the SAC tutorial fastsac grew from, with two of its defects
# fixed: warm-up actions come from the action space (not [0, 1)), and policy actions are
# rescaled to the env's bounds.
PRESETS: dict[str, dict] = {
    "seed": dict(env="HalfCheetah-v4", total_steps=1_000_000, learning_starts=5_000,
                 batch_size=256, updates_per_step=1.0, buffer_size=1_000_000,
                 eval_every=10_000, eval_episodes=10,
                 sac=dict(hidden=(256, 256), actor_lr=1e-4, critic_lr=1e-4,
                          autotune_alpha=False, init_alpha=0.2, log_std_mode="tanh",
                          gamma=0.99, tau=0.005)),
}


def with_preset(name: str, **overrides) -> TrainConfig:
    """The preset's config, with ``overrides`` (``sac`` overrides merge into the preset's)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    d = {**PRESETS[name], **{k: v for k, v in overrides.items() if k != "sac"}}
    d["sac"] = {**PRESETS[name].get("sac", {}), **overrides.get("sac", {})}
    return TrainConfig.from_dict(d)


RESUME_MAY_CHANGE = ("total_steps", "progress", "ray_address", "keep_checkpoints",
                     "tensorboard", "video_every", "video_size", "video_observed", "num_threads")


def resumed_config(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    """``saved`` with ``given``'s values of RESUME_MAY_CHANGE; any other difference raises
    (``run_dir`` may differ: a moved run resumes where it is)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name not in (*RESUME_MAY_CHANGE, "run_dir") \
                and getattr(given, f.name) != getattr(saved, f.name):
            raise ValueError(f"resume: {f.name} was {getattr(saved, f.name)!r} in the run, "
                             f"got {getattr(given, f.name)!r}; only {RESUME_MAY_CHANGE} may change")
    return dataclasses.replace(saved, **{k: getattr(given, k) for k in RESUME_MAY_CHANGE})


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The config a run directory was started with (its config.json)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise ValueError(f"resume: {run_dir} holds no run (no config.json)")
    return TrainConfig.from_dict(json.loads(path.read_text()))
