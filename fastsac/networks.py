"""SAC's networks: a pixel encoder, the squashed-Gaussian actor and the twin-Q critic ensemble.

Every module here is written so that ``torch.jit.script`` compiles it (no
``torch.distributions``, no Python-side loops over parameters), and is equally valid eager.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn


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
        # channels-last (NHWC) activations: oneDNN's convolutions ran forward + backward 2x
        # faster in it on this CPU (256 x 9x84x84 batch, same run); weights follow in SAC.
        # One copy (cast and layout together), then in place: each full-batch pass here costs
        # as much as a gather.
        x = obs.to(dtype=torch.float32, memory_format=torch.channels_last, copy=True)
        x = x.div_(255.0).sub_(0.5)
        return self.head(self.convs(x).flatten(1))


class Identity(nn.Module):
    """The encoder of vector observations: casts to float32 and flattens."""

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


class Actor(nn.Module):
    """Squashed Gaussian policy: features -> MLP -> (mean, log_std); a = tanh(mean + std*eps).

    ``log_std_mode``: "clamp" bounds log_std to [log_std_min, log_std_max]; "tanh" is the
    seed's ``tanh(layer(x))`` (std in [e^-1, e]).
    """

    def __init__(self, in_dim: int, action_dim: int, hidden: list[int],
                 log_std_mode: str = "clamp", log_std_min: float = -5.0,
                 log_std_max: float = 2.0):
        super().__init__()
        if log_std_mode not in ("clamp", "tanh"):
            raise ValueError(f"log_std_mode must be 'clamp' or 'tanh', got {log_std_mode!r}")
        self.trunk = mlp([in_dim, *hidden], 2 * action_dim)
        self.action_dim = action_dim
        self.tanh_log_std = log_std_mode == "tanh"
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max

    @torch.jit.export
    def act(self, features: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The action only: no log-prob, for acting in the env (about half the ops)."""
        mean, log_std = self.trunk(features).chunk(2, dim=-1)
        if deterministic:
            return torch.tanh(mean)
        if self.tanh_log_std:
            log_std = torch.tanh(log_std)
        else:
            log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))

    def forward(self, features: torch.Tensor,
                deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (action in [-1, 1], log pi(action | features) of shape (B,))."""
        mean, log_std = self.trunk(features).chunk(2, dim=-1)
        if self.tanh_log_std:
            log_std = torch.tanh(log_std)
        else:
            log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        eps = torch.zeros_like(mean) if deterministic else torch.randn_like(mean)
        z = torch.addcmul(mean, log_std.exp(), eps)
        # log N(z; mean, std) - log|d tanh(z)/dz|, with log(1 - tanh(z)^2) written stably as
        # 2 * (log 2 - z - softplus(-2z)).
        # The constants are summed once per row (each element-wise op here costs ~10 us on
        # the CPU at batch 256): per dimension 0.5 log(2 pi) + 2 log 2, written as a literal
        # because TorchScript cannot read module globals.
        per_dim = 2.0 * (z + F.softplus(-2.0 * z)) - log_std - 0.5 * eps * eps
        log_prob = per_dim.sum(-1) - 2.3052328943245633 * self.action_dim
        return torch.tanh(z), log_prob


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
            # A Q-value head. MKL's batched matmul with one output column (and its weight
            # gradient) ran ~4x slower than this multiply and row sum here (n=2, 256x256: 86
            # vs 25 us forward, 110 vs 22 us weight gradient): updates 1.05-1.06x faster.
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


def _warn_eager(mode: str, exc: BaseException) -> None:
    warnings.warn(f"fastsac: compile={mode!r} failed on torch {torch.__version__} "
                  f"({type(exc).__name__}: {exc}); running the networks eagerly",
                  RuntimeWarning, stacklevel=3)


class _CompiledOrEager:
    """A torch.compile'd module, which compiles at its first call (and on new shapes): if a
    call fails where the eager module succeeds, warn once and run eagerly from then on. An
    error the eager module raises too is the input's, and is raised as it is."""

    def __init__(self, module: nn.Module, compiled: nn.Module):
        self._module, self._compiled = module, compiled

    def __call__(self, *args, **kwargs):
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Warning:
                raise
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                out = self._module(*args, **kwargs)
                self._compiled = None
                _warn_eager("torch", exc)
                return out
        return self._module(*args, **kwargs)

    def __getattr__(self, name: str):  # act(), parameters(), ...: the module's own
        return getattr(self._module, name)


def compile_module(module: nn.Module, mode: str):
    """``mode``: "jit" (TorchScript), "torch" (torch.compile) or "none". If compiling fails on
    this torch (for torch.compile: at a call, where it compiles), warn once and run eagerly."""
    if mode == "none":
        return module
    try:
        if mode == "jit":
            return torch.jit.script(module)
        if mode == "torch":
            return _CompiledOrEager(module, torch.compile(module))
    except Warning:
        raise  # a warning turned into an error by the caller's filters is theirs to see
    except Exception as exc:  # noqa: BLE001 - any failure to compile means: run eager
        _warn_eager(mode, exc)
        return module
    raise ValueError(f"compile must be 'jit', 'torch' or 'none', got {mode!r}")
