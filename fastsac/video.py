"""Videos of the policy (the video extra: PyAV, H.264 in MP4).

PyAV encodes in this process through FFmpeg's libraries (its wheels bundle them, libx264
included): no ffmpeg subprocess and its pipes to manage.

A video is one deterministic evaluation episode (reset with seed ``seed + 100``). The agent
acts on an evaluation env as in ``fastsac.evaluation``; a second env of the same task, reset
with the same seed and given the same actions, renders the frames at the size asked for
(MuJoCo's ``track`` camera where the model has one). Both are envs of their own, with their
own GL contexts: the training envs' frames are untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np

from fastsac.envs import FrameStack, fast_render, make_env, make_rendered, prepare_rendering
from fastsac.sac import SAC


def check_available() -> None:
    """Raise ValueError unless the video extra is installed."""
    try:
        import av  # noqa: F401
    except ImportError as exc:
        raise ValueError("videos need the video extra: pip install 'fastsac[video]'") from exc


class _Writer:
    """H.264 frames into an MP4, in this process."""

    def __init__(self, path: Path, fps: int, size: tuple[int, int]):
        check_available()
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self._av = av
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.height, self.stream.width = size
        self.stream.pix_fmt = "yuv420p"

    def write(self, frame: np.ndarray) -> None:
        video_frame = self._av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self.stream.encode(video_frame):
            self.container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self.stream.encode():  # what the encoder still holds
                self.container.mux(packet)
        finally:
            self.container.close()


def _render_env(env_id: str, size: int, full_render: bool) -> gym.Env:
    """The task rendering RGB frames of about ``size`` pixels (MuJoCo: without shadows,
    reflections and multisampling unless ``full_render``, as the pixel observations)."""
    if "mujoco" in str(gym.spec(env_id.rpartition(":")[2]).entry_point):
        prepare_rendering()
    try:
        env = make_rendered(env_id, size)
    except TypeError:  # an env that takes no width and height
        env = gym.make(env_id, render_mode="rgb_array")
    model = getattr(env.unwrapped, "model", None)
    if model is not None and not full_render:
        fast_render(model)
    return env


def _frame(env: gym.Env, size: int) -> np.ndarray:
    """The env's render as uint8 HWC RGB, enlarged by whole pixels towards ``size``."""
    f = np.asarray(env.render())
    scale = max(1, size // max(f.shape[:2]))
    if scale > 1:
        f = f.repeat(scale, axis=0).repeat(scale, axis=1)
    return np.ascontiguousarray(f[..., :3]).astype(np.uint8)


def record_episode(agent: SAC, env_id: str, path: str | os.PathLike, *, seed: int,
                   pixels: bool = False, image_size: int = 84, full_render: bool = False,
                   frame_stack: int = 1, size: int = 256,
                   observed: str | os.PathLike | None = None) -> int:
    """Write one deterministic episode to the MP4 ``path``; returns its frame count (the
    reset's and one per step). ``observed``: with ``pixels``, also write the frames the agent
    saw (``image_size``, the newest of each stack) to that MP4."""
    from fastsac.evaluation import action_scaler

    obs_env = make_env(env_id, pixels, image_size, full_render)
    space = obs_env.observation_space
    if observed is not None and not (len(space.shape) == 3 and space.shape[0] == 3):
        obs_env.close()
        raise ValueError(f"observed: {env_id} is not observed through RGB frames")
    video_env = _render_env(env_id, size, full_render)
    to_env = action_scaler(obs_env.action_space)
    obs_dtype = np.uint8 if space.dtype == np.uint8 and len(space.shape) == 3 else np.float32
    stack = FrameStack(1, space.shape, frame_stack, obs_dtype) if frame_stack > 1 else None
    fps = int(obs_env.metadata.get("render_fps") or 30)
    writer = seen = None
    try:
        frame, _ = obs_env.reset(seed=seed + 100)
        video_env.reset(seed=seed + 100)
        if stack:
            stack.reset(0, frame)
        first = _frame(video_env, size)
        writer = _Writer(Path(path), fps, first.shape[:2])
        writer.write(first)
        if observed is not None:
            seen = _Writer(Path(observed), fps, space.shape[1:])
            seen.write(np.ascontiguousarray(np.asarray(frame).transpose(1, 2, 0)))
        frames, done = 1, False
        while not done:
            obs = stack.obs[0] if stack else np.asarray(frame, obs_dtype)
            action = to_env(agent.act(obs, deterministic=True))
            frame, _, terminated, truncated, _ = obs_env.step(action)
            video_env.step(action)
            if stack:
                stack.push(frame[None])
            writer.write(_frame(video_env, size))
            if seen is not None:
                seen.write(np.ascontiguousarray(np.asarray(frame).transpose(1, 2, 0)))
            frames += 1
            done = terminated or truncated
    finally:
        for w in (writer, seen):
            if w is not None:
                w.close()
        video_env.close()
        obs_env.close()
    return frames
