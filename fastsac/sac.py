"""The SAC learner: one update = critic step, actor step, alpha step, Polyak averaging.

Nothing here reads a tensor back to the host: ``update`` returns its metrics as tensors, which
cost a device sync only when someone reads them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastsac._graph import GraphedUpdate
from fastsac._io import atomic_write
from fastsac._optim import FusedAdam
from fastsac.batch import Batch
from fastsac.networks import (
    Actor,
    CriticEnsemble,
    Encoder,
    Identity,
    compile_module,
    random_shift,
)

FORMAT = "fastsac.SAC"
VERSION = 1


@dataclass(frozen=True)
class SACConfig:
    """Hyper-parameters of the learner; one source of defaults for the API and the CLI."""

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
    """Alpha at the start (the fixed alpha when not tuned; the seed used 0.2 fixed)."""
    target_entropy: float | None = None
    """Entropy target of the alpha tuning; None: -|A| (minus the action dimension)."""
    num_critics: int = 2
    """Q-networks in the ensemble; targets use their minimum (clipped double Q)."""
    log_std_mode: str = "clamp"
    """"clamp": log_std clamped to [log_std_min, log_std_max]; "tanh": the seed's tanh."""
    log_std_min: float = -5.0
    """Lower bound of the policy's log_std (clamp mode)."""
    log_std_max: float = 2.0
    """Upper bound of the policy's log_std (clamp mode)."""
    feature_dim: int = 50
    """Output width of the pixel encoder."""
    augment: bool = True
    """Random-shift augmentation (pad 4, random crop) of pixel obs and next_obs in updates."""
    compile: str = "jit"
    """How the networks run: "jit" (TorchScript), "torch" (torch.compile) or "none" (eager)."""
    cuda_graph: bool = False
    """CUDA only: capture the whole update in a CUDA graph and replay it (fixed batch shape)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))  # JSON and argparse give lists
        if self.compile not in ("jit", "torch", "none"):
            raise ValueError(f"compile must be 'jit', 'torch' or 'none', got {self.compile!r}")
        if self.log_std_mode not in ("clamp", "tanh"):
            raise ValueError(f"log_std_mode must be 'clamp' or 'tanh', got {self.log_std_mode!r}")
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


def check_state(state) -> None:
    """Raise ValueError unless ``state`` is a ``SAC.state_dict()`` this fastsac reads."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError("no fastsac.SAC format tag")
    if state.get("version") != VERSION:
        raise ValueError(f"format version {state.get('version')}, expected {VERSION}")


class SAC:
    """Soft Actor-Critic on vector observations, or on uint8 (C, H, W) images (DrQ-style:
    a shared conv encoder trained by the critic, random-shift augmentation).

    Actions are in [-1, 1]; rescale them to the env's bounds outside.
    """

    def __init__(self, obs_shape: tuple[int, ...], action_shape: tuple[int, ...],
                 config: SACConfig = SACConfig(), device: str | torch.device = "cpu") -> None:
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.action_shape = tuple(int(d) for d in action_shape)
        self.config = config
        self.device = torch.device(device)
        self.pixels = len(self.obs_shape) == 3
        action_dim = math.prod(self.action_shape)
        hidden = list(config.hidden)

        encoder = Encoder(self.obs_shape, config.feature_dim).to(
            memory_format=torch.channels_last) if self.pixels else Identity(self.obs_shape)
        actor = Actor(encoder.out_dim, action_dim, hidden, config.log_std_mode,
                      config.log_std_min, config.log_std_max)
        critic = CriticEnsemble(encoder.out_dim, action_dim, hidden, config.num_critics)
        critic_target = CriticEnsemble(encoder.out_dim, action_dim, hidden, config.num_critics)
        critic_target.load_state_dict(critic.state_dict())
        critic_target.requires_grad_(False)
        self.modules = {"encoder": encoder, "actor": actor, "critic": critic,
                        "critic_target": critic_target}
        for m in self.modules.values():
            m.to(self.device)
        self.log_alpha = torch.tensor(math.log(config.init_alpha), device=self.device,
                                      requires_grad=config.autotune_alpha)
        self.target_entropy = (-float(action_dim) if config.target_entropy is None
                               else float(config.target_entropy))

        # Compiled views share their parameters with the modules above.
        self.encoder = compile_module(encoder, config.compile)
        self.actor = compile_module(actor, config.compile)
        self.critic = compile_module(critic, config.compile)
        self.critic_target = compile_module(critic_target, config.compile)

        # Fused Adam on the CPU too (the issue suggested foreach there): fused measured 133 vs
        # 123 updates/s for foreach (HalfCheetah shapes, eager, same run). FusedAdam steps it
        # without torch.optim's Python overhead; capturable keeps its state on the device
        # inside a CUDA graph.
        graphed = config.cuda_graph
        if graphed and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device")
        self.critic_optim = FusedAdam([*critic.parameters(), *encoder.parameters()],
                                      config.critic_lr, capturable=graphed)
        self.actor_optim = FusedAdam(actor.parameters(), config.actor_lr, capturable=graphed)
        self.alpha_optim = FusedAdam([self.log_alpha], config.alpha_lr, capturable=graphed) \
            if config.autotune_alpha else None
        # CPU, vector obs: act() on one observation runs the actor's MLP in numpy, on (W^T, b)
        # views that share memory with the parameters (optimiser steps update them in place).
        self._action_dim = action_dim
        self._numpy_actor = self._actor_views()
        self._noise = torch.empty(action_dim)
        self._noise_np = self._noise.numpy()
        self._online = list(critic.parameters())
        self._target = list(critic_target.parameters())
        self.updates = 0
        self._graphed = GraphedUpdate(self._update, self._mutable_state, self.device) \
            if graphed else None

    # -- acting ---------------------------------------------------------------------------
    def act(self, obs, deterministic: bool = False) -> np.ndarray:
        """Action(s) in [-1, 1] for one observation (shape ``obs_shape``) or a batch."""
        if self._numpy_actor is not None:
            if np.ndim(obs) == len(self.obs_shape):
                return self._act_numpy(obs, deterministic)
            if np.ndim(obs) == len(self.obs_shape) + 1 and len(obs) == 1:  # one env's batch
                return self._act_numpy(obs[0], deterministic)[None]
        with torch.inference_mode():  # every op here is per env step: kept to the minimum
            x = torch.as_tensor(obs, device=self.device)
            single = x.dim() == len(self.obs_shape)
            if single:
                x = x.unsqueeze(0)
            features = self.encoder(x) if self.pixels else x.float().flatten(1)  # one call less
            action = self.actor.act(features, deterministic).cpu().numpy()
        if len(self.action_shape) != 1:
            action = action.reshape(-1, *self.action_shape)
        return action[0] if single else action

    def _actor_views(self) -> list[tuple[np.ndarray, np.ndarray]] | None:
        if self.device.type != "cpu" or self.pixels:
            return None
        return [(m.weight.detach().numpy().T, m.bias.detach().numpy())
                for m in self.modules["actor"].trunk if isinstance(m, torch.nn.Linear)]

    # A copy (deepcopy, pickle) must not share or split parameters: it keeps the plain modules,
    # the optimisers and the rest, and rebuilds the compiled views and numpy views on them.
    _DERIVED = ("encoder", "actor", "critic", "critic_target", "_noise_np", "_numpy_actor",
                "_graphed")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._DERIVED}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for name in self._DERIVED[:4]:
            setattr(self, name, compile_module(self.modules[name], self.config.compile))
        self._noise_np = self._noise.numpy()
        self._numpy_actor = self._actor_views()
        self._graphed = GraphedUpdate(self._update, self._mutable_state, self.device) \
            if self.config.cuda_graph else None

    def _act_numpy(self, obs, deterministic: bool) -> np.ndarray:
        """One vector observation on the CPU: the actor's MLP as numpy products on views of
        its live weights. A torch call per layer costs ~8 us at batch 1 here; this path makes
        act() ~4x cheaper (see BENCHMARKS.md). Same function as Actor.act."""
        x = np.asarray(obs, dtype=np.float32).reshape(-1)
        last = len(self._numpy_actor) - 1
        for i, (w, b) in enumerate(self._numpy_actor):
            x = x @ w + b
            if i < last:
                np.maximum(x, 0.0, out=x)
        a = self._action_dim
        mean, log_std = x[:a], x[a:]
        if not deterministic:
            cfg = self.config
            if cfg.log_std_mode == "tanh":
                log_std = np.tanh(log_std)
            else:  # (np.clip costs several times more at this size)
                log_std = np.minimum(np.maximum(log_std, cfg.log_std_min), cfg.log_std_max)
            self._noise.normal_()  # torch's RNG, as in update; _noise_np is its numpy view
            mean = mean + np.exp(log_std) * self._noise_np
        return np.tanh(mean).reshape(self.action_shape)

    # -- learning -------------------------------------------------------------------------
    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on ``batch``; returns detached metric tensors (no host sync)."""
        metrics = self._graphed(batch) if self._graphed is not None else self._update(batch)
        self.updates += 1
        return metrics

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        """The encoder's output; for vector obs a cast, without a module call per update."""
        return self.encoder(obs) if self.pixels else obs.float().flatten(1)

    def _mutable_state(self) -> list[torch.Tensor]:
        """Every tensor an update changes: parameters, log_alpha, optimiser state."""
        tensors = [p for m in self.modules.values() for p in m.parameters()] + [self.log_alpha]
        for optim in (self.critic_optim, self.actor_optim, self.alpha_optim):
            if optim is not None:
                tensors += [v for st in optim.state.values() for v in st.values()
                            if isinstance(v, torch.Tensor)]
        return tensors

    def _update(self, batch: Batch) -> dict[str, torch.Tensor]:
        obs, action, reward, next_obs, discount = (t.to(self.device, non_blocking=True)
                                                   for t in batch)
        action = action.flatten(1)
        if self.pixels and self.config.augment:
            obs, next_obs = random_shift(obs), random_shift(next_obs)
        alpha = self.alpha

        # Critic (and encoder): regress every Q onto the clipped double-Q soft target.
        features = self._features(obs)
        with torch.no_grad():
            next_features = self._features(next_obs)
            next_action, next_log_prob = self.actor(next_features)
            next_q = self.critic_target(next_features, next_action).min(0).values
            target = reward + discount * (next_q - alpha * next_log_prob)
        q = self.critic(features, action)
        critic_loss = F.mse_loss(q, target.expand_as(q), reduction="sum") / q.shape[1]
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()

        # Actor: through Q to the action only (critic weights as constants, encoder detached).
        features = features.detach()
        new_action, log_prob = self.actor(features)
        q_pi = self.critic(features, new_action, True).min(0).values
        actor_loss = (alpha * log_prob - q_pi).mean()
        self.actor_optim.zero_grad()
        actor_loss.backward()
        self.actor_optim.step()

        mean_log_prob = log_prob.detach().mean()
        metrics = {"loss/critic": critic_loss.detach(), "loss/actor": actor_loss.detach(),
                   "alpha": alpha, "entropy": -mean_log_prob,
                   "q": q.detach().mean()}
        if self.alpha_optim is not None:
            # loss = -log_alpha * mean(log_prob + target_entropy); its gradient is the second
            # factor, set directly (autograd for one scalar cost ~0.15 ms per update here).
            gap = mean_log_prob + self.target_entropy
            self.log_alpha.grad = -gap.reshape(self.log_alpha.shape).to(self.log_alpha.dtype)
            metrics["loss/alpha"] = -self.log_alpha.detach() * gap
            self.alpha_optim.step()

        with torch.no_grad():  # target <- target + tau * (online - target), fused
            torch._foreach_lerp_(self._target, self._online, self.config.tau)
        return metrics

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION,
            "config": dataclasses.asdict(self.config),
            "obs_shape": list(self.obs_shape), "action_shape": list(self.action_shape),
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "log_alpha": self.log_alpha.detach().clone(),
            "optim": {"critic": self.critic_optim.state_dict(),
                      "actor": self.actor_optim.state_dict(),
                      "alpha": self.alpha_optim.state_dict() if self.alpha_optim else None},
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.critic_optim.load_state_dict(state["optim"]["critic"])
        self.actor_optim.load_state_dict(state["optim"]["actor"])
        if self.alpha_optim is not None:
            self.alpha_optim.load_state_dict(state["optim"]["alpha"])
        self.updates = int(state["updates"])

    def save(self, path: str | os.PathLike) -> None:
        """Everything needed to continue training, written atomically."""
        with atomic_write(path) as f:
            torch.save(self.state_dict(), f)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> SAC:
        """Read an agent written by :meth:`save` (``weights_only``: no code is unpickled)."""
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            check_state(state)
            agent = cls(state["obs_shape"], state["action_shape"],
                        SACConfig(**state["config"]), device)
            agent.load_state_dict(state)
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
            raise ValueError(f"{os.fspath(path)} is not a readable fastsac SAC checkpoint: "
                             f"{type(exc).__name__}: {exc}") from exc
        return agent
