"""SAC's networks: the encoders, the squashed-Gaussian actor and the twin-Q critic ensemble.

Every module here is written so that ``torch.jit.script`` compiles it (no
``torch.distributions``, no Python-side loops over parameters), and is equally valid eager.
:class:`NumpyActor` is the actor's acting path in numpy, for one observation on the CPU.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastsac._validate import check_choice
from fastsac.config import COMPILE_MODES


def mlp(sizes: list[int], out: int) -> nn.Sequential:
    """Linear + ReLU layers of the given widths, then a linear output layer."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]  # Linear keeps no copy of its output
    layers.append(nn.Linear(sizes[-1], out))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """DrQ-style pixel encoder: uint8 (C, H, W) in, ``/255 - 0.5`` inside, four 3x3 convs
    (the first with stride 2), then a linear layer with LayerNorm and tanh."""

    def __init__(self, obs_shape: tuple[int, ...], feature_dim: int = 50, channels: int = 32):
        super().__init__()
        c, h, w = obs_shape
        self.convs = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3), nn.ReLU(),
            nn.Conv2d(channels, channels, 3), nn.ReLU(),
            nn.Conv2d(channels, channels, 3), nn.ReLU())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, c, h, w)).numel()
        self.head = nn.Sequential(nn.Linear(flat, feature_dim), nn.LayerNorm(feature_dim),
                                  nn.Tanh())
        self.out_dim = feature_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # Channels-last (NHWC) activations, which oneDNN's CPU convolutions run faster
        # (BENCHMARKS.md, encoder row); SAC lays the weights out the same way. One copy (cast
        # and layout together), then in place: each pass over a full batch here costs about as
        # much as gathering it.
        x = obs.to(dtype=torch.float32, memory_format=torch.channels_last, copy=True)
        x = x.div_(255.0).sub_(0.5)
        return self.head(self.convs(x).flatten(1))


class Flatten(nn.Module):
    """The encoder of vector observations: float32, one row per observation."""

    def __init__(self, obs_shape: tuple[int, ...]):
        super().__init__()
        self.out_dim = math.prod(obs_shape)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.float().flatten(1)


def random_shift(obs: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """DrQ's augmentation: replicate-pad by ``pad`` pixels, then crop back at a random offset
    per sample (integer shifts, done as one gather). Keeps ``obs``'s dtype."""
    n, c, h, w = obs.shape
    padded = F.pad(obs, (pad, pad, pad, pad), mode="replicate")  # in uint8: 4x fewer bytes
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=obs.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=obs.device)
    rows = (torch.arange(h, device=obs.device).view(1, h, 1) + dy)  # (n, h, 1)
    cols = (torch.arange(w, device=obs.device).view(1, 1, w) + dx)  # (n, 1, w)
    index = (rows * (w + 2 * pad) + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, index).view(n, c, h, w)


class LogStd(nn.Module):
    """The policy's log-std from its trunk's raw output: clamped to [low, high], or squashed by
    tanh (std in [1/e, e]). ``numpy`` is the same function for :class:`NumpyActor`."""

    def __init__(self, tanh: bool = False, low: float = -5.0, high: float = 2.0):
        super().__init__()
        self.tanh, self.low, self.high = tanh, low, high

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        if self.tanh:
            return torch.tanh(raw)
        return raw.clamp(self.low, self.high)

    @torch.jit.ignore
    def numpy(self, raw: np.ndarray) -> np.ndarray:
        if self.tanh:
            return np.tanh(raw)
        return np.minimum(np.maximum(raw, self.low), self.high)  # np.clip's overhead is larger


class Actor(nn.Module):
    """Squashed Gaussian policy: features -> MLP -> (mean, log_std); a = tanh(mean + std*eps)."""

    def __init__(self, in_dim: int, action_dim: int, hidden: list[int],
                 log_std: LogStd | None = None):
        super().__init__()
        self.trunk = mlp([in_dim, *hidden], 2 * action_dim)
        self.log_std = log_std if log_std is not None else LogStd()
        self.action_dim = action_dim

    @torch.jit.export
    def act(self, features: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The action only: no log-prob, for acting in the env (about half the ops)."""
        mean, raw = self.trunk(features).chunk(2, dim=-1)
        if deterministic:
            return torch.tanh(mean)
        return torch.tanh(mean + self.log_std(raw).exp() * torch.randn_like(mean))

    def forward(self, features: torch.Tensor,
                deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (action in [-1, 1], log pi(action | features) of shape (B,))."""
        mean, raw = self.trunk(features).chunk(2, dim=-1)
        log_std = self.log_std(raw)
        eps = torch.zeros_like(mean) if deterministic else torch.randn_like(mean)
        z = torch.addcmul(mean, log_std.exp(), eps)
        # log N(z; mean, std) - log|d tanh(z)/dz|, with log(1 - tanh(z)^2) written stably as
        # 2 * (log 2 - z - softplus(-2z)). The constants are summed once per row rather than
        # per element: per dimension 0.5 log(2 pi) + 2 log 2, a literal because TorchScript
        # cannot read module globals.
        per_dim = 2.0 * (z + F.softplus(-2.0 * z)) - log_std - 0.5 * eps * eps
        log_prob = per_dim.sum(-1) - 2.3052328943245633 * self.action_dim
        return torch.tanh(z), log_prob


class NumpyActor:
    """``Actor.act`` on one vector observation, in numpy on the CPU: at batch 1 a torch call
    per layer costs more than the layer's arithmetic (BENCHMARKS.md, act() latency).

    It multiplies by (W^T, b) views of the actor's parameters, so optimiser steps and
    ``load_state_dict`` (which copy into the parameters) stay visible; build a new one for a
    new actor. The noise comes from torch's RNG, as in the update.
    """

    def __init__(self, actor: Actor):
        self.layers = [(m.weight.detach().numpy().T, m.bias.detach().numpy())
                       for m in actor.trunk if isinstance(m, nn.Linear)]
        self.log_std = actor.log_std
        self.action_dim = actor.action_dim
        self._noise = torch.empty(actor.action_dim)
        self._noise_np = self._noise.numpy()  # a view: normal_() fills both

    def __call__(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """The action, flat, in [-1, 1]."""
        x = np.asarray(obs, dtype=np.float32).reshape(-1)
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < last:
                np.maximum(x, 0.0, out=x)
        a = self.action_dim
        mean = x[:a]
        if not deterministic:
            self._noise.normal_()
            mean = mean + np.exp(self.log_std.numpy(x[a:])) * self._noise_np
        return np.tanh(mean)


class StackedLinear(nn.Module):
    """``n`` independent linear layers applied to ``n`` stacked inputs in one batched matmul;
    each member initialised like ``nn.Linear``."""

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default (kaiming_uniform a=sqrt(5))
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, detach_weights: bool = False) -> torch.Tensor:
        w, b = self.weight, self.bias
        if detach_weights:
            w, b = w.detach(), b.detach()
        if self.out_dim == 1:
            # A Q-value head: MKL's batched matmul with one output column, and its weight
            # gradient, run several times slower than this multiply and row sum
            # (BENCHMARKS.md, the Q head).
            return (x * w.transpose(1, 2)).sum(-1, keepdim=True) + b
        return torch.baddbmm(b, x, w)


class CriticEnsemble(nn.Module):
    """``n`` Q-networks on concat(features, action), evaluated together: each layer's weights
    are stacked to (n, in, out) and applied with one batched matmul."""

    def __init__(self, in_dim: int, action_dim: int, hidden: list[int], n: int = 2):
        super().__init__()
        sizes = [in_dim + action_dim, *hidden, 1]
        self.layers = nn.ModuleList(StackedLinear(n, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.n = n

    def forward(self, features: torch.Tensor, action: torch.Tensor,
                detach_weights: bool = False) -> torch.Tensor:
        """Q-values of shape (n, B). ``detach_weights``: use the weights as constants, so that
        a loss through Q (the actor's) computes no gradients for them."""
        x = self._first_layer(features, action, detach_weights)
        for i, layer in enumerate(self.layers):
            if i > 0:  # (in place: baddbmm's backward needs its inputs, not its output)
                x = layer(torch.relu_(x), detach_weights)
        return x.squeeze(-1)

    def _first_layer(self, features: torch.Tensor, action: torch.Tensor,
                     detach_weights: bool) -> torch.Tensor:
        first = self.layers[0]
        if detach_weights and first.out_dim > 1:
            # The actor's loss needs dQ/d(action) only: the features' half is a constant, and
            # the input gradient has |A| columns instead of |features| + |A|.
            w, b, k = first.weight.detach(), first.bias.detach(), features.shape[-1]
            h = torch.baddbmm(b, features.unsqueeze(0).expand(self.n, -1, -1), w[:, :k])
            return torch.baddbmm(h, action.unsqueeze(0).expand(self.n, -1, -1), w[:, k:])
        x = torch.cat([features, action], dim=-1).unsqueeze(0).expand(self.n, -1, -1)
        return first(x, detach_weights)


_JIT_DEPRECATED = r"`torch\.jit\.script` is deprecated"
JIT_NOTICE = "fastsac: compile='jit' runs the networks as TorchScript"
"""How fastsac's one notice of TorchScript's deprecation starts (to filter it)."""


_jit_deprecation_said = False


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script``, with torch's deprecation notice said once per process and in
    fastsac's words: the user did not call TorchScript, fastsac's default did."""
    global _jit_deprecation_said
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.filterwarnings("always", message=_JIT_DEPRECATED)  # recorded, not raised
            return torch.jit.script(module)
    finally:  # also where scripting fails: its warnings are passed on, then its error
        for w in caught:
            if not re.match(_JIT_DEPRECATED, str(w.message)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            elif not _jit_deprecation_said:
                _jit_deprecation_said = True
                warnings.warn(f"{JIT_NOTICE}, which torch {torch.__version__} deprecates; "
                              "compile='none' (eager) or 'torch' (torch.compile) does not use "
                              "it", w.category, stacklevel=3)


def compile_module(module: nn.Module, mode: str):
    """``mode``: "jit" (TorchScript), "none", or "torch", which returns the module as it is
    (SAC compiles its whole update with torch.compile instead, ``fastsac._compile``). If
    TorchScript fails on this torch, warn once and run eagerly."""
    check_choice("compile", mode, COMPILE_MODES)
    if mode != "jit":
        return module
    try:
        return _script(module)
    except Warning:
        raise  # a warning turned into an error by the caller's filters is theirs to see
    except Exception as exc:  # noqa: BLE001 - any failure to compile means: run eager
        warnings.warn(f"fastsac: compile='jit' failed on torch {torch.__version__} "
                      f"({type(exc).__name__}: {exc}); running the networks eagerly",
                      RuntimeWarning, stacklevel=2)
        return module
