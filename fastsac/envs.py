"""Environments: a tiny pixel task drawn with numpy, MuJoCo tasks rendered to pixels, the
frame stack the policy sees, and each episode's reset seed.

``import fastsac`` registers ``fastsac/PointMass-v0`` with gymnasium.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces

POINT_MASS_ID = "fastsac/PointMass-v0"


class PointMassEnv(gym.Env):
    """Move a red dot to the green target at the image's centre, seen only as pixels.

    Observation: uint8 RGB image, channels first, ``(3, size, size)``. Action: a velocity in
    [-1, 1]^2; the dot moves by ``0.1 * action`` and stays in [-1, 1]^2. Reward: minus the
    distance to the centre, every step. Episodes start at a random position and are cut after
    50 steps (a truncation; there is no terminal state). A random policy scores about -40 per
    episode, one that flies straight to the target about -4.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, size: int = 32, render_mode: str | None = None):
        if size < 16:
            raise ValueError(f"size must be >= 16, got {size}")
        self.size = size
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (3, size, size), np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._pos = np.zeros(2)
        self._background = np.zeros((3, size, size), np.uint8)
        c, r = size // 2, max(1, size // 16)
        self._background[1, c - r:c + r + 1, c - r:c + r + 1] = 160  # the target, green

    def _pixel(self, x: float) -> int:
        return int(round((x + 1) / 2 * (self.size - 1)))

    def _draw(self) -> np.ndarray:
        img = self._background.copy()
        r = max(1, self.size // 16)
        x, y = self._pixel(self._pos[0]), self._pixel(self._pos[1])
        img[0, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = 255  # the dot, red
        return img

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-1, 1, 2)
        return self._draw(), {}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1, 1)
        self._pos = np.clip(self._pos + 0.1 * a, -1, 1)
        reward = -float(np.linalg.norm(self._pos))
        return self._draw(), reward, False, False, {}

    def render(self):
        return self._draw().transpose(1, 2, 0)  # HWC, as gymnasium renders


def episode_seed(seed: int, env_index: int, episode: int) -> int:
    """The reset seed of an env's episode: a function of (seed, env, episode) only."""
    return int(np.random.SeedSequence([seed, env_index, episode]).generate_state(1)[0])


class FrameStack:
    """What the learner sees of each env: its last k frames along axis 0, the first frame
    repeated at an episode's start, exactly as the replay buffer stacks them."""

    def __init__(self, num_envs: int, frame_shape: tuple[int, ...], k: int, dtype):
        self.k, self.c = k, frame_shape[0]
        self.obs = np.zeros((num_envs, k * self.c, *frame_shape[1:]), dtype)

    def reset(self, i: int, frame: np.ndarray) -> None:
        self.obs[i] = np.concatenate([frame] * self.k, axis=0)

    def push(self, frames: np.ndarray) -> None:
        self.obs[:, :-self.c] = self.obs[:, self.c:]
        self.obs[:, -self.c:] = frames


def random_policy_return(env_id: str, seed: int, episodes: int = 10) -> float:
    """Mean return of uniformly random actions under the evaluation protocol (episode i
    reset with seed + 100 + i): the baseline a learned policy must beat."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    total = 0.0
    for i in range(episodes):
        env.reset(seed=seed + 100 + i)
        done = False
        while not done:
            _, r, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(r)
            done = terminated or truncated
    env.close()
    return total / episodes


class RenderedObservation(gym.ObservationWrapper):
    """A MuJoCo task observed through its ``rgb_array`` render, as uint8 (3, H, W).

    Unless ``full_render``, shadows, reflections and multisampling are turned off before the
    first render: with a software renderer (Mesa) they take most of a frame's time
    (``fastsac bench train`` measures both).

    The camera: ``make_env`` asks for the model's ``track`` camera, which follows the body.
    Models without one get MuJoCo's free camera, aimed here from the model's initial pose, so
    that every instance of a task sees the same view.
    """

    def __init__(self, env: gym.Env, full_render: bool = False):
        super().__init__(env)
        self.render_seconds = 0.0  # spent rendering observations, for `fastsac bench train`
        if not full_render:
            fast_render(env.unwrapped.model)
        frame = self._frame(env)
        self.observation_space = spaces.Box(0, 255, frame.shape, np.uint8)
        self._viewer = getattr(env.unwrapped.mujoco_renderer, "viewer", None)  # the render's
        self._make_current = getattr(self._viewer, "make_context_current", None)

    @staticmethod
    def _frame(env: gym.Env) -> np.ndarray:
        # The first render makes the viewer, and a free camera aims at where the bodies are
        # then: render the initial pose (qpos0), not a randomly reset one. No reset, so the
        # env's RNG is left as it was.
        import mujoco  # the mujoco extra: only MuJoCo tasks get here

        base = env.unwrapped
        mujoco.mj_forward(base.model, base.data)
        return np.ascontiguousarray(base.render().transpose(2, 0, 1))

    def observation(self, observation) -> np.ndarray:
        t0 = time.perf_counter()
        # gymnasium's offscreen viewer renders into whichever GL context is current: the one
        # made last (another env's), or none once another env closed its own, which gave
        # black frames. So each frame makes this env's context current first.
        if self._make_current is not None:
            self._make_current()
        frame = self.env.render()
        self.render_seconds += time.perf_counter() - t0
        return np.ascontiguousarray(frame.transpose(2, 0, 1))

    def close(self) -> None:
        # gymnasium frees the GL context but leaves MuJoCo's render context to the garbage
        # collector, which then deletes its GL objects in whichever context is current:
        # another env's, whose frames went black. Free it here, in its own context.
        con = getattr(self._viewer, "con", None)
        if self._make_current is not None and con is not None:
            self._make_current()
            con.free()
        self._viewer = self._make_current = None
        super().close()


_PRINTED_MUJOCO_WARNINGS: set[str] = set()


def _print_mujoco_warning(msg: str) -> None:
    """Each distinct warning once per process: a model's load warning (HalfCheetah's
    deprecated ``settotalmass`` on recent MuJoCo) would otherwise repeat at every env made."""
    if msg not in _PRINTED_MUJOCO_WARNINGS:
        _PRINTED_MUJOCO_WARNINGS.add(msg)
        print(f"MuJoCo warning: {msg}", file=sys.stderr)


def _mujoco_warnings_to_stderr() -> None:
    """MuJoCo's default warning handler also appends to MUJOCO_LOG.TXT in the working
    directory; print its warnings to stderr instead, unless the user installed a handler."""
    if importlib.util.find_spec("mujoco") is None:
        return
    import mujoco

    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_print_mujoco_warning)


def prepare_rendering() -> None:
    """Ready this process for MuJoCo's offscreen rendering: EGL unless the user chose a
    backend (``MUJOCO_GL``), and triton, where it is installed (CUDA builds of torch bring
    it), imported first. Triton's own LLVM must load before the one Mesa's software renderer
    loads: triton imported after a Mesa context (torch imports it at its first optimizer or
    compile) crashes the process with SIGSEGV."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        try:
            import triton  # noqa: F401
        except Exception:  # a broken triton is torch's to report, not the renderer's
            pass


def make_rendered(env_id: str, size: int) -> gym.Env:
    """``env_id`` rendering ``size`` x ``size`` RGB frames. The model's "track" camera follows
    the body; without a camera named, gymnasium 1.4 renders a free camera that stays where it
    started (HalfCheetah left the frame within 5 m). A model without a "track" camera, or an
    env that takes no ``camera_name``, gets the free camera."""
    kwargs = dict(render_mode="rgb_array", width=size, height=size)
    try:
        return gym.make(env_id, camera_name="track", **kwargs)
    except TypeError:  # an env that does not take camera_name
        return gym.make(env_id, **kwargs)


def fast_render(model) -> None:
    """A MuJoCo model's rendering without shadows, reflections and multisampling."""
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0  # read when the offscreen buffer is made
    model.mat_reflectance[:] = 0  # no second pass for a reflecting floor


def make_env(env_id: str, pixels: bool = False, image_size: int = 84,
             full_render: bool = False) -> gym.Env:
    """One env: ``env_id`` as gymnasium makes it ("module:id" imports the module first), or
    with ``pixels`` its rendered frames."""
    module, _, name = env_id.rpartition(":")  # "module:id": the module registers the id
    if module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"env {env_id!r}: cannot import {module!r} ({exc})") from exc
    if "mujoco" in str(gym.spec(name).entry_point):
        _mujoco_warnings_to_stderr()
    if not pixels:
        return gym.make(env_id)
    prepare_rendering()
    env = make_rendered(env_id, image_size)
    if not hasattr(env.unwrapped, "model"):
        raise ValueError(f"pixels=True renders MuJoCo tasks; {env_id} is not one")
    return RenderedObservation(env, full_render)


if POINT_MASS_ID not in gym.registry:
    gym.register(POINT_MASS_ID, entry_point=PointMassEnv, max_episode_steps=50)
