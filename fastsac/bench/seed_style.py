"""The seed-style baseline of ``fastsac bench``: the replay buffer and SAC learner of the
tutorial fastsac grew from (a SAC implementation chapter), re-implemented as they are, defects
included, so that every speed and memory number of fastsac is a ratio against them measured in
the same run.

:class:`SeedStyleBuffer`:

- five arrays ``s, a, r, s_prime, done`` in a ring (``ptr``, ``size``); ``s``/``s_prime``
  float32 (the tutorial's code), ``a``/``r`` float32, ``done`` uint8;
- ``store()`` writes one transition per call;
- ``sample()`` draws indices with ``np.random.randint`` (the global numpy RNG) and builds five
  new ``torch.FloatTensor`` per batch from fancy-indexed copies, so images come out as float32
  whatever they are stored as (the tutorial's learner feeds them to float networks).

The only addition is ``obs_dtype`` (default float32, the tutorial's choice), so that the uint8
layout the tutorial recommends in prose can be measured too. For images the tutorial stores
observations already frame-stacked (84 x 84 x 9 per ``s`` and per ``s_prime``), so
``state_dim`` is the stacked shape.

:class:`SeedStyleSAC`: the tutorial's learner (see its docstring).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal


class SeedStyleBuffer:
    """Ring buffer of transitions ``(s, a, r, s_prime, done)``, as in the tutorial."""

    def __init__(self, state_dim, action_dim, max_size, obs_dtype=np.float32):
        if np.isscalar(state_dim):
            state_dim = (state_dim,)
        if np.isscalar(action_dim):
            action_dim = (action_dim,)

        self.s = np.zeros((max_size, *state_dim), dtype=obs_dtype)
        self.a = np.zeros((max_size, *action_dim), dtype=np.float32)
        self.r = np.zeros((max_size, 1), dtype=np.float32)
        self.s_prime = np.zeros((max_size, *state_dim), dtype=obs_dtype)
        self.done = np.zeros((max_size, 1), dtype=np.uint8)

        self.ptr = 0
        self.size = 0
        self.max_size = max_size

    def __getitem__(self, idx):
        return (
            self.s[idx],
            self.a[idx],
            self.r[idx],
            self.s_prime[idx],
            self.done[idx],
        )

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes of the five arrays (allocated for ``max_size`` transitions)."""
        arrays = (self.s, self.a, self.r, self.s_prime, self.done)
        return sum(x.nbytes for x in arrays)

    def sample(self, batch_size):
        idx = np.random.randint(0, self.size, size=batch_size)

        return (
            torch.FloatTensor(self.s[idx]),
            torch.FloatTensor(self.a[idx]),
            torch.FloatTensor(self.r[idx]),
            torch.FloatTensor(self.s_prime[idx]),
            torch.FloatTensor(self.done[idx]),
        )

    def store(self, s, a, r, s_prime, done):
        self.s[self.ptr] = s
        self.a[self.ptr] = a
        self.r[self.ptr] = r
        self.s_prime[self.ptr] = s_prime
        self.done[self.ptr] = done

        self.ptr = (self.ptr + 1) % self.max_size
        self.size = min(self.size + 1, self.max_size)


# -- the learner --------------------------------------------------------------------------
class _SeedStyleQ(nn.Module):
    def __init__(self, state_dim, action_dim, hidden_dims=(256, 256)):
        super().__init__()
        self.input_layer = nn.Linear(state_dim + action_dim, hidden_dims[0])
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b)
                                           for a, b in zip(hidden_dims[:-1], hidden_dims[1:]))
        self.output_layer = nn.Linear(hidden_dims[-1], 1)

    def forward(self, s, a):
        x = F.relu(self.input_layer(torch.cat((s, a), dim=1)))
        for layer in self.hidden_layers:
            x = F.relu(layer(x))
        return self.output_layer(x)


class _SeedStyleDoubleQ(nn.Module):
    def __init__(self, state_dim, action_dim, hidden_dims):
        super().__init__()
        self.q1 = _SeedStyleQ(state_dim, action_dim, hidden_dims)
        self.q2 = _SeedStyleQ(state_dim, action_dim, hidden_dims)

    def forward(self, s, a):
        return self.q1(s, a), self.q2(s, a)


class _SeedStylePolicy(nn.Module):
    def __init__(self, state_dim, action_dim, hidden_dims):
        super().__init__()
        self.input_layer = nn.Linear(state_dim, hidden_dims[0])
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b)
                                           for a, b in zip(hidden_dims[:-1], hidden_dims[1:]))
        self.mu_layer = nn.Linear(hidden_dims[-1], action_dim)
        self.log_std_layer = nn.Linear(hidden_dims[-1], action_dim)

    def forward(self, x):
        x = F.relu(self.input_layer(x))
        for layer in self.hidden_layers:
            x = F.relu(layer(x))
        return self.mu_layer(x), torch.tanh(self.log_std_layer(x)).exp()


class SeedStyleSAC:
    """The tutorial's SAC learner: two separate Q modules, ``torch.distributions.Normal``,
    ``log(1 - a^2 + 1e-7)``, Adam lr 1e-4, fixed alpha 0.2, ``.item()`` of both losses every
    update and a Python-loop Polyak average. ``learn`` takes a :class:`SeedStyleBuffer` batch
    and moves it to ``device``, as the tutorial's code does."""

    def __init__(self, state_dim, action_dim, hidden_dims=(256, 256), policy_lr=1e-4,
                 critic_lr=1e-4, gamma=0.99, tau=0.005, alpha=0.2, device="cpu"):
        self.gamma, self.tau, self.alpha, self.device = gamma, tau, alpha, device
        self.policy = _SeedStylePolicy(state_dim, action_dim, hidden_dims).to(device)
        self.critic = _SeedStyleDoubleQ(state_dim, action_dim, hidden_dims).to(device)
        self.target_critic = _SeedStyleDoubleQ(state_dim, action_dim, hidden_dims).to(device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=policy_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)

    @torch.no_grad()
    def act(self, s, training=True):
        s = torch.as_tensor(s, dtype=torch.float, device=self.device)
        mu, std = self.policy(s)
        z = torch.normal(mu, std) if training else mu
        return torch.tanh(z).cpu().numpy()

    def sample_action(self, state):
        mu, std = self.policy(state)
        m = Normal(mu, std)
        z = m.rsample()
        a = torch.tanh(z)
        log_prob = m.log_prob(z) - torch.log(1. - a.pow(2) + 1e-7)
        return a, log_prob.sum(1, keepdim=True)

    def learn(self, batch):
        s, a, r, s_prime, done = (t.to(self.device) for t in batch)
        with torch.no_grad():
            a_prime, log_prob_prime = self.sample_action(s_prime)
            next_q = torch.min(*self.target_critic(s_prime, a_prime))
            td_target = r + (1. - done) * self.gamma * (next_q - self.alpha * log_prob_prime)
        q1, q2 = self.critic(s, a)
        critic_loss = F.mse_loss(q1, td_target) + F.mse_loss(q2, td_target)
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()
        a_sampled, log_prob = self.sample_action(s)
        policy_q = torch.min(*self.critic(s, a_sampled))
        policy_loss = -(policy_q - self.alpha * log_prob).mean()
        self.policy_optimizer.zero_grad()
        policy_loss.backward()
        self.policy_optimizer.step()
        result = {"policy_loss": policy_loss.item(), "value_loss": critic_loss.item()}
        for t_p, p in zip(self.target_critic.parameters(), self.critic.parameters()):
            t_p.data.copy_(self.tau * p.data + (1 - self.tau) * t_p.data)
        return result
