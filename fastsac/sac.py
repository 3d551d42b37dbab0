"""The SAC learner: one update = critic step, actor step, alpha step, Polyak averaging.

Nothing here reads a tensor back to the host: ``update`` returns its metrics as tensors, which
cost a device sync only when someone reads them.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from fastsac._compile import CompiledUpdate
from fastsac._graph import GraphedUpdate
from fastsac._io import atomic_write
from fastsac._optim import FusedAdam
from fastsac._validate import torch_device
from fastsac.batch import Batch
from fastsac.config import SACConfig
from fastsac.networks import (
    Actor,
    CriticEnsemble,
    Encoder,
    Flatten,
    LogStd,
    NumpyActor,
    compile_module,
    random_shift,
)

FORMAT = "fastsac.SAC"
VERSION = 1


def check_state(state) -> None:
    """Raise ValueError unless ``state`` is a ``SAC.state_dict()`` this fastsac reads."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError("no fastsac.SAC format tag")
    if state.get("version") != VERSION:
        raise ValueError(f"format version {state.get('version')}, expected {VERSION}")


class _ActStaging:
    """Pinned host memory for one observation batch shape of ``act`` on CUDA."""

    def __init__(self, shape: tuple[int, ...], obs_dtype: torch.dtype, action_dim: int):
        self.obs = torch.empty(shape, dtype=obs_dtype, pin_memory=True)
        self.action = torch.empty((shape[0], action_dim), pin_memory=True)
        self.done = torch.cuda.Event()


class SAC:
    """Soft Actor-Critic on vector observations, or on uint8 (C, H, W) images (DrQ-style:
    a shared conv encoder trained by the critic, random-shift augmentation).

    Actions are in [-1, 1]; rescale them to the env's bounds outside.
    """

    def __init__(self, obs_shape: tuple[int, ...], action_shape: tuple[int, ...],
                 config: SACConfig = SACConfig(), device: str | torch.device = "cpu") -> None:
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.action_shape = tuple(int(d) for d in action_shape)
        self.device = torch_device(device)
        self._graph_given = config.cuda_graph  # saved as given: None decides again on load
        if config.cuda_graph is None:
            config = dataclasses.replace(config, cuda_graph=self.device.type == "cuda"
                                         and config.compile != "torch")
        self.config = config
        if config.cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device")
        self.pixels = len(self.obs_shape) == 3
        action_dim = math.prod(self.action_shape)
        hidden = list(config.hidden)

        encoder = Encoder(self.obs_shape, config.feature_dim).to(
            memory_format=torch.channels_last) if self.pixels else Flatten(self.obs_shape)
        log_std = LogStd(config.log_std_mode == "tanh", config.log_std_min, config.log_std_max)
        actor = Actor(encoder.out_dim, action_dim, hidden, log_std)
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

        # Fused Adam on the CPU too, where it beats foreach (BENCHMARKS.md); FusedAdam steps it
        # without torch.optim's per-step overhead. Capturable keeps its state on the device
        # inside a CUDA graph.
        graphed = config.cuda_graph
        self.critic_optim = FusedAdam([*critic.parameters(), *encoder.parameters()],
                                      config.critic_lr, capturable=graphed)
        self.actor_optim = FusedAdam(actor.parameters(), config.actor_lr, capturable=graphed)
        self.alpha_optim = FusedAdam([self.log_alpha], config.alpha_lr, capturable=graphed) \
            if config.autotune_alpha else None
        self._init_compiled_state()
        self._online = list(critic.parameters())
        self._target = list(critic_target.parameters())
        self.updates = 0
        self._build_derived()

    # Views of the modules above, rebuilt rather than copied: a copy (deepcopy, pickle) must
    # not share or split parameters with the original.
    _COMPILED = ("encoder", "actor", "critic", "critic_target")
    _DERIVED = (*_COMPILED, "_numpy_actor", "_update_fn", "_graphed", "_act_staging")

    def _build_derived(self) -> None:
        for name in self._COMPILED:  # compiled views share their parameters with the modules
            setattr(self, name, compile_module(self.modules[name], self.config.compile))
        # One vector observation on the CPU: the actor in numpy (NumpyActor).
        self._numpy_actor = NumpyActor(self.modules["actor"]) \
            if self.device.type == "cpu" and not self.pixels else None
        self._new_update_fn()
        self._act_staging: dict[tuple, _ActStaging] = {}  # CUDA: by observation batch shape

    def _new_update_fn(self) -> None:
        """The update as it runs: compiled or not, captured in a CUDA graph or not. Built
        again where the optimiser state tensors change: compiled code and graphs hold them."""
        c = self.config
        before = getattr(self, "_update_fn", None)
        if c.compile != "torch":
            self._update_fn = self._update
        elif not (isinstance(before, CompiledUpdate) and before.failed):  # (failed: kept, eager)
            self._update_fn = CompiledUpdate(
                self._update_without_grads, self._mutable_state, self.device,
                reduce_overhead=self.device.type == "cuda" and not c.cuda_graph)
        # TorchScript's profiling executor compiles a function after its first calls, and
        # again for each new input signature its guards meet (2 + 10 times at most, torch's
        # default fusion strategy); no kernel may be compiled while the graph is captured.
        warmup = 12 if c.compile == "jit" else 3
        self._graphed = GraphedUpdate(self._update_fn, self._mutable_state, self.device,
                                      warmup=warmup) if c.cuda_graph else None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._DERIVED}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._build_derived()

    # -- acting ---------------------------------------------------------------------------
    def act(self, obs, deterministic: bool = False) -> np.ndarray:
        """Action(s) in [-1, 1] for one observation (shape ``obs_shape``) or a batch."""
        if self._numpy_actor is not None:
            if np.ndim(obs) == len(self.obs_shape):
                return self._numpy_actor(obs, deterministic).reshape(self.action_shape)
            if np.ndim(obs) == len(self.obs_shape) + 1 and len(obs) == 1:  # one env's batch
                return self._numpy_actor(obs[0], deterministic).reshape(1, *self.action_shape)
        if self.device.type == "cuda":
            return self._act_cuda(obs, deterministic)
        with torch.inference_mode():  # every op here is per env step: kept to the minimum
            x = torch.as_tensor(obs, device=self.device)
            single = x.dim() == len(self.obs_shape)
            if single:
                x = x.unsqueeze(0)
            action = self.actor.act(self.encoder(x), deterministic).cpu().numpy()
        if len(self.action_shape) != 1:
            action = action.reshape(-1, *self.action_shape)
        return action[0] if single else action

    def _act_cuda(self, obs, deterministic: bool) -> np.ndarray:
        """On CUDA: the observations go through pinned host memory with a non-blocking copy,
        the action comes back the same way, and the host waits once, for the action."""
        obs = np.asarray(obs)
        single = obs.ndim == len(self.obs_shape)
        rows = obs[None] if single else obs
        staging = self._act_staging.get(rows.shape)
        if staging is None:
            staging = self._act_staging[rows.shape] = _ActStaging(
                rows.shape, torch.uint8 if self.pixels else torch.float32,
                math.prod(self.action_shape))
        np.copyto(staging.obs.numpy(), rows, casting="unsafe")  # the previous copy is done
        with torch.inference_mode():
            x = staging.obs.to(self.device, non_blocking=True)
            staging.action.copy_(self.actor.act(self.encoder(x), deterministic),
                                 non_blocking=True)
            staging.done.record(torch.cuda.current_stream(self.device))
        staging.done.synchronize()
        action = staging.action.numpy().reshape(-1, *self.action_shape).copy()
        return action[0] if single else action

    # -- learning -------------------------------------------------------------------------
    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def input_batch(self) -> Batch | None:
        """With ``cuda_graph``, once captured (after the first update): the graph's input
        tensors. Sample into them (``ReplayBuffer.sample(n, out=agent.input_batch())``) and
        pass them to ``update``: the batch is then not copied again. Otherwise None."""
        return self._graphed.static if self._graphed is not None else None

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on ``batch``; returns detached metric tensors (no host sync)."""
        metrics = self._graphed(batch) if self._graphed is not None else self._update_fn(batch)
        self.updates += 1
        return metrics

    def _optimizers(self) -> list[FusedAdam]:
        return [o for o in (self.critic_optim, self.actor_optim, self.alpha_optim)
                if o is not None]

    def _init_compiled_state(self) -> None:
        if self.config.compile == "torch":  # the compiled update steps existing state
            for optim in self._optimizers():
                optim.init_state()

    def _mutable_state(self) -> list[torch.Tensor]:
        """Every tensor an update changes: parameters, log_alpha, optimiser state."""
        tensors = [p for m in self.modules.values() for p in m.parameters()] + [self.log_alpha]
        for optim in self._optimizers():
            tensors += [v for st in optim.state.values() for v in st.values()
                        if isinstance(v, torch.Tensor)]
        return tensors

    def _update_without_grads(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``_update``, then no gradients kept: compiled, they would be outputs of the graph,
        which torch's CUDA graphs overwrite at the next replay; and the compiled update
        leaves the gradients alone before its backward passes (FusedAdam.zero_grad)."""
        metrics = self._update(batch)
        for optim in self._optimizers():
            for p in optim.params:
                p.grad = None
        return metrics

    def _update(self, batch: Batch) -> dict[str, torch.Tensor]:
        obs, action, reward, next_obs, discount = (t.to(self.device, non_blocking=True)
                                                   for t in batch)
        action = action.flatten(1)
        if self.pixels and self.config.augment:
            obs, next_obs = random_shift(obs), random_shift(next_obs)
        alpha = self.alpha

        # Critic (and encoder): regress every Q onto the clipped double-Q soft target.
        features = self.encoder(obs)
        with torch.no_grad():
            next_features = self.encoder(next_obs)
            next_action, next_log_prob = self.actor(next_features)
            next_q = self.critic_target(next_features, next_action).min(0).values
            target = reward + discount * (next_q - alpha * next_log_prob)
        q = self.critic(features, action)
        critic_loss = F.mse_loss(q, target.expand_as(q), reduction="sum") / q.shape[1]
        self.critic_optim.zero_grad()
        critic_loss.backward(inputs=self.critic_optim.params)
        self.critic_optim.step()

        # Actor: through Q to the action only (critic weights as constants, encoder detached).
        features = features.detach()
        new_action, log_prob = self.actor(features)
        q_pi = self.critic(features, new_action, True).min(0).values
        actor_loss = (alpha * log_prob - q_pi).mean()
        self.actor_optim.zero_grad()
        actor_loss.backward(inputs=self.actor_optim.params)
        self.actor_optim.step()

        mean_log_prob = log_prob.detach().mean()
        metrics = {"loss/critic": critic_loss.detach(), "loss/actor": actor_loss.detach(),
                   "alpha": alpha, "entropy": -mean_log_prob,
                   "q": q.detach().mean()}
        if self.alpha_optim is not None:
            # loss = -log_alpha * mean(log_prob + target_entropy); its gradient is the second
            # factor, set directly (a backward pass for one scalar costs more than the step).
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
            "config": {**dataclasses.asdict(self.config), "cuda_graph": self._graph_given},
            "obs_shape": list(self.obs_shape), "action_shape": list(self.action_shape),
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "log_alpha": self.log_alpha.detach().clone(),
            "optim": {"critic": self.critic_optim.state_dict(),
                      "actor": self.actor_optim.state_dict(),
                      "alpha": self.alpha_optim.state_dict() if self.alpha_optim else None},
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        """Copy ``state`` into this agent's tensors; the optimisers keep how they run
        (fused, capturable), whatever agent the state comes from."""
        before = [id(t) for t in self._mutable_state()]
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.critic_optim.load_state_dict(state["optim"]["critic"])
        self.actor_optim.load_state_dict(state["optim"]["actor"])
        if self.alpha_optim is not None:
            self.alpha_optim.load_state_dict(state["optim"]["alpha"])
        self.updates = int(state["updates"])
        self._init_compiled_state()  # (a state saved before any update has none)
        if (self._graphed is not None or self.config.compile == "torch") \
                and before != [id(t) for t in self._mutable_state()]:
            # New optimiser state tensors (there were none of these shapes to copy into): a
            # captured graph would go on stepping the old ones, and torch's CUDA graphs would
            # copy the new ones in as inputs, so build the update again.
            self._new_update_fn()

    def save(self, path: str | os.PathLike) -> None:
        """Everything needed to continue training, written atomically."""
        with atomic_write(path) as f:
            torch.save(self.state_dict(), f)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> SAC:
        """Read an agent written by :meth:`save` (``weights_only``: no code is unpickled).
        An agent trained with ``cuda_graph`` loads on a device without CUDA with it off."""
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            check_state(state)
            config = SACConfig(**state["config"])
            if torch.device(device).type != "cuda":
                config = dataclasses.replace(config, cuda_graph=False)
            agent = cls(state["obs_shape"], state["action_shape"], config, device)
            agent.load_state_dict(state)
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
            raise ValueError(f"{os.fspath(path)} is not a readable fastsac SAC checkpoint: "
                             f"{type(exc).__name__}: {exc}") from exc
        return agent
