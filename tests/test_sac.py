"""The SAC update against an independent float64 reference, and its structural promises."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from fastsac import SAC, Batch, SACConfig

OBS, ACT, B = 5, 3, 64
HIDDEN = (16, 16)


def assert_same_update(a: SAC, b: SAC, batch_a: Batch, batch_b: Batch, seed: int,
                       rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """An update of each agent from the same RNG seed (so they draw the same noise) gives the
    same metrics."""
    torch.manual_seed(seed)
    m1 = a.update(batch_a)
    torch.manual_seed(seed)
    m2 = b.update(batch_b)
    for k in m1:
        torch.testing.assert_close(m1[k], m2[k], rtol=rtol, atol=atol,
                                   msg=lambda m, k=k: f"{k}, seed {seed}: {m}")


def fixed_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(obs=torch.randn(B, OBS, generator=g),
                 action=torch.rand(B, ACT, generator=g) * 2 - 1,
                 reward=torch.randn(B, generator=g),
                 next_obs=torch.randn(B, OBS, generator=g),
                 discount=torch.where(torch.rand(B, generator=g) < 0.2, 0.0, 0.99 ** 3))


# -- the reference: plain float64 formulas, one Q-network at a time, Adam's first step by hand --
def mlp64(x, layers):
    """layers: list of (W (in, out), b (out,)); ReLU between."""
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x


def actor64(obs, actor_layers, eps, cfg):
    out = mlp64(obs, actor_layers)
    mean, log_std = out[:, :ACT], out[:, ACT:]
    log_std = log_std.clamp(cfg.log_std_min, cfg.log_std_max)
    z = mean + log_std.exp() * eps
    a = torch.tanh(z)
    normal = -0.5 * eps ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_prob = (normal - torch.log(1 - a ** 2)).sum(1)  # the textbook form, in float64
    return a, log_prob


def q64(obs, action, critic_layers):
    x = torch.cat([obs, action], 1)
    return [mlp64(x, member)[:, 0] for member in critic_layers]


def params64(agent):
    """Float64 leaf copies: actor layers as (W^T, b), critic layers per member (W_i, b_i)."""
    def leaf(t):
        return t.detach().double().clone().requires_grad_(True)

    actor = [(leaf(m.weight.t()), leaf(m.bias)) for m in agent.modules["actor"].trunk
             if isinstance(m, torch.nn.Linear)]

    def members(critic):
        return [[(leaf(layer.weight[i]), leaf(layer.bias[i, 0])) for layer in critic.layers]
                for i in range(critic.n)]

    return actor, members(agent.modules["critic"]), members(agent.modules["critic_target"])


def reference_update(agent, batch, eps_next, eps):
    cfg = agent.config
    actor, critic, target = params64(agent)
    obs, action, reward, next_obs, discount = (t.double() for t in batch)
    log_alpha = torch.tensor(math.log(cfg.init_alpha), dtype=torch.float64, requires_grad=True)
    alpha = log_alpha.detach().exp()
    with torch.no_grad():
        next_a, next_lp = actor64(next_obs, actor, eps_next.double(), cfg)
        next_q = torch.min(*q64(next_obs, next_a, target))
        y = reward + discount * (next_q - alpha * next_lp)
    q = q64(obs, action, critic)
    critic_loss = sum(((qi - y) ** 2).mean() for qi in q)
    critic_params = [p for member in critic for layer in member for p in layer]
    critic_grads = torch.autograd.grad(critic_loss, critic_params)
    # Adam's first step: m_hat = g, v_hat = g^2, so p -= lr * g / (|g| + eps).
    def first_step(p, g):
        return p - cfg.critic_lr * g / (g.abs() + 1e-8)

    stepped = [[(first_step(w, gw), first_step(b, gb))
                for (w, b), (gw, gb) in zip(member, zip(grads[0::2], grads[1::2]))]
               for member, grads in zip(critic, _split(critic_grads, len(critic)))]
    stepped = [[(w.detach(), b.detach()) for w, b in member] for member in stepped]
    a, lp = actor64(obs, actor, eps.double(), cfg)
    actor_loss = (alpha * lp - torch.min(*q64(obs, a, stepped))).mean()
    actor_params = [p for layer in actor for p in layer]
    actor_grads = torch.autograd.grad(actor_loss, actor_params)
    target_entropy = -ACT
    alpha_loss = -(log_alpha * (lp.detach() + target_entropy)).mean()
    (alpha_grad,) = torch.autograd.grad(alpha_loss, [log_alpha])
    return dict(critic_loss=critic_loss, actor_loss=actor_loss, alpha_loss=alpha_loss,
                critic_grads=critic_grads, actor_grads=actor_grads, alpha_grad=alpha_grad)


def _split(grads, n):
    per = len(grads) // n
    return [grads[i * per:(i + 1) * per] for i in range(n)]


def rel_err(x, ref) -> float:
    x, ref = x.detach().double().flatten(), ref.detach().double().flatten()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-12))


@pytest.mark.parametrize("compile", ["none", "jit"])
def test_update_matches_float64_reference(compile):
    torch.manual_seed(1)
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, compile=compile))
    before = copy.deepcopy(agent)
    batch = fixed_batch()
    torch.manual_seed(123)
    metrics = agent.update(batch)
    torch.manual_seed(123)
    eps_next, eps = torch.randn(B, ACT), torch.randn(B, ACT)  # the update's two draws, in order
    ref = reference_update(before, batch, eps_next, eps)

    assert rel_err(metrics["loss/critic"], ref["critic_loss"]) < 1e-5
    assert rel_err(metrics["loss/actor"], ref["actor_loss"]) < 1e-5
    assert rel_err(metrics["loss/alpha"], ref["alpha_loss"]) < 1e-5
    critic = agent.modules["critic"]
    got = [g for i in range(critic.n) for layer in critic.layers
           for g in (layer.weight.grad[i], layer.bias.grad[i, 0])]
    for g, r in zip(got, ref["critic_grads"]):
        assert rel_err(g, r) < 1e-5
    linears = [m for m in agent.modules["actor"].trunk if isinstance(m, torch.nn.Linear)]
    got = [g for m in linears for g in (m.weight.grad.t(), m.bias.grad)]
    for g, r in zip(got, ref["actor_grads"]):
        assert rel_err(g, r) < 1e-5
    assert rel_err(agent.log_alpha.grad, ref["alpha_grad"]) < 1e-5


def test_actor_loss_leaves_critic_gradients_alone():
    """The critic's .grad after an update is the critic loss's alone: the actor's loss, which
    runs later, must not add to it (nor compute it)."""
    torch.manual_seed(2)
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, compile="none"))
    before = copy.deepcopy(agent)
    batch = fixed_batch(1)
    torch.manual_seed(5)
    agent.update(batch)
    torch.manual_seed(5)
    ref = reference_update(before, batch, torch.randn(B, ACT), torch.randn(B, ACT))
    critic = agent.modules["critic"]
    got = torch.cat([layer.weight.grad[0].flatten() for layer in critic.layers])
    want = torch.cat([g.flatten() for g in ref["critic_grads"][0:2 * len(HIDDEN) + 2:2]])
    assert rel_err(got, want) < 1e-5


def test_critic_members_are_independent():
    torch.manual_seed(3)
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, compile="none"))
    critic = agent.modules["critic"]
    for layer in critic.layers:
        assert not torch.equal(layer.weight[0], layer.weight[1])
    # A loss on member 0 only gives gradients to member 0.
    obs, action = torch.randn(8, OBS), torch.rand(8, ACT)
    critic(obs, action)[0].sum().backward()
    for layer in critic.layers:
        assert layer.weight.grad[0].abs().sum() > 0
        assert layer.weight.grad[1].abs().sum() == 0


def test_targets_move_by_exactly_tau():
    torch.manual_seed(4)
    tau = 0.05
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, tau=tau, compile="none"))
    target0 = [p.detach().clone() for p in agent.modules["critic_target"].parameters()]
    agent.update(fixed_batch(2))
    online = [p.detach() for p in agent.modules["critic"].parameters()]
    for t0, o, t1 in zip(target0, online, agent.modules["critic_target"].parameters()):
        torch.testing.assert_close(t1, t0 + tau * (o - t0), rtol=0, atol=1e-7)


def test_update_makes_no_host_sync_values_and_metrics_are_tensors():
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, compile="none"))
    metrics = agent.update(fixed_batch())
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in metrics.values())
    assert {"loss/critic", "loss/actor", "alpha", "entropy", "loss/alpha"} <= set(metrics)


def test_fixed_alpha_stays_fixed():
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, autotune_alpha=False, init_alpha=0.2,
                                          compile="none"))
    for seed in range(3):
        metrics = agent.update(fixed_batch(seed))
    assert float(metrics["alpha"]) == pytest.approx(0.2)
    assert "loss/alpha" not in metrics


@pytest.mark.parametrize("log_std_mode", ["clamp", "tanh"])
def test_jit_and_eager_networks_agree(log_std_mode):
    cfg = dict(hidden=HIDDEN, log_std_mode=log_std_mode)
    torch.manual_seed(6)
    eager = SAC((OBS,), (ACT,), SACConfig(**cfg, compile="none"))
    torch.manual_seed(6)
    jit = SAC((OBS,), (ACT,), SACConfig(**cfg, compile="jit"))
    assert isinstance(jit.actor, torch.jit.ScriptModule)
    obs = np.random.default_rng(0).standard_normal((10, OBS)).astype(np.float32)
    np.testing.assert_allclose(eager.act(obs, deterministic=True), jit.act(obs, True), atol=1e-6)
    for seed in range(3):
        batch = fixed_batch(seed)
        assert_same_update(eager, jit, batch, batch, seed, rtol=1e-5, atol=1e-6)


def test_act_shapes_and_bounds():
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN))
    one = agent.act(np.zeros(OBS, np.float32))
    many = agent.act(np.zeros((7, OBS), np.float32), deterministic=True)
    assert one.shape == (ACT,) and many.shape == (7, ACT)
    assert np.all(np.abs(many) <= 1)


def test_save_load_continues_identically(tmp_path):
    torch.manual_seed(7)
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, compile="jit"))
    agent.update(fixed_batch(0))
    agent.save(tmp_path / "agent.pt")
    loaded = SAC.load(tmp_path / "agent.pt")
    assert loaded.updates == 1 and loaded.config == agent.config
    for seed in (1, 2):
        torch.manual_seed(seed)
        m1 = agent.update(fixed_batch(seed))
        torch.manual_seed(seed)
        m2 = loaded.update(fixed_batch(seed))
        for k in m1:
            torch.testing.assert_close(m1[k], m2[k], rtol=0, atol=0)


@pytest.mark.parametrize("lr", [3e-4, 1e-3])  # copied into Adam's tensors, or loaded anew
def test_agents_loaded_from_one_live_state_train_on_their_own(lr):
    """``b.load_state_dict(a.state_dict())`` copies: two agents loaded from the same live state
    (another agent's, with its own lr) update alike, and neither changes the source."""
    torch.manual_seed(11)
    source = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, actor_lr=lr, critic_lr=lr,
                                           alpha_lr=lr), device="cpu")
    source.update(fixed_batch(3))
    state, frozen = source.state_dict(), copy.deepcopy(source.state_dict())
    agents = []
    for _ in range(2):
        torch.manual_seed(10)
        agents.append(SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN), device="cpu"))
        agents[-1].update(fixed_batch(0))
        agents[-1].load_state_dict(state)
    for seed in (5, 6):
        assert_same_update(*agents, fixed_batch(seed), fixed_batch(seed), seed, rtol=0, atol=0)
    now = source.state_dict()
    torch.testing.assert_close([now["modules"], now["optim"]],
                               [frozen["modules"], frozen["optim"]], rtol=0, atol=0)


def test_load_rejects_foreign_and_corrupt_files(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN))
    agent.save(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "good.pt").read_bytes()[:200])
    for path in (foreign, junk, truncated):
        with pytest.raises(ValueError, match="not a readable fastsac SAC checkpoint"):
            SAC.load(path)


def test_pixel_updates_run_and_train_the_encoder():
    torch.manual_seed(8)
    agent = SAC((9, 84, 84), (2,), SACConfig(hidden=(32, 32), feature_dim=16, compile="jit"))
    encoder = agent.modules["encoder"]
    before = [p.detach().clone() for p in encoder.parameters()]
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        batch = Batch(obs=torch.randint(0, 256, (16, 9, 84, 84), dtype=torch.uint8, generator=g),
                      action=torch.rand(16, 2, generator=g) * 2 - 1,
                      reward=torch.randn(16, generator=g),
                      next_obs=torch.randint(0, 256, (16, 9, 84, 84), dtype=torch.uint8,
                                             generator=g),
                      discount=torch.full((16,), 0.99))
        metrics = agent.update(batch)
    assert all(torch.isfinite(v) for v in metrics.values())
    changed = [not torch.equal(b, p) for b, p in zip(before, encoder.parameters())]
    assert all(changed)
    action = agent.act(np.zeros((9, 84, 84), np.uint8))
    assert action.shape == (2,)


def test_single_observation_act_equals_the_batched_torch_path():
    """act() on one CPU vector observation runs numpy on views of the actor's weights: it must
    give the torch actor's action, also after updates and for copies of the agent."""
    torch.manual_seed(9)
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN))
    obs = np.random.default_rng(1).standard_normal((6, OBS)).astype(np.float32)

    def check(a: SAC) -> None:
        batched = a.act(obs, deterministic=True)
        single = np.stack([a.act(o, deterministic=True) for o in obs])
        np.testing.assert_allclose(single, batched, rtol=1e-5, atol=1e-6)

    check(agent)
    agent.update(fixed_batch(0))  # weights change in place
    check(agent)
    twin = copy.deepcopy(agent)
    twin.update(fixed_batch(1))
    check(twin)
    check(agent)
    assert not np.allclose(twin.act(obs[0], True), agent.act(obs[0], True))
    # stochastic actions stay in bounds and vary
    draws = np.stack([agent.act(obs[0]) for _ in range(50)])
    assert np.all(np.abs(draws) <= 1) and draws.std(0).min() > 0


def test_cuda_graph_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cuda_graph"):
        SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, cuda_graph=True), device="cpu")


def test_cuda_graph_left_to_the_device_is_off_on_the_cpu_and_saved_as_given():
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN), device="cpu")
    assert agent.config.cuda_graph is False and agent._graphed is None
    assert SACConfig().cuda_graph is None
    # Saved as given, so that a load on CUDA decides again (an explicit False stays False).
    assert agent.state_dict()["config"]["cuda_graph"] is None
    explicit = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, cuda_graph=False), device="cpu")
    assert explicit.state_dict()["config"]["cuda_graph"] is False


def test_a_cuda_graph_checkpoint_loads_on_the_cpu_with_the_graph_off(tmp_path):
    """A GPU-trained agent can be evaluated on a machine without CUDA."""
    torch.manual_seed(8)
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, compile="none"))
    agent.update(fixed_batch(0))
    state = agent.state_dict()
    state["config"]["cuda_graph"] = True  # as a cuda_graph agent writes it (optimiser flags
    for group in state["optim"]["critic"]["param_groups"]:  # included)
        group["capturable"] = True
    torch.save(state, tmp_path / "graphed.pt")
    loaded = SAC.load(tmp_path / "graphed.pt", "cpu")
    assert loaded.config.cuda_graph is False
    assert loaded.critic_optim.optim.param_groups[0]["capturable"] is False
    obs = np.random.default_rng(0).standard_normal((4, OBS)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(obs, True), agent.act(obs, True))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _plain_and_graphed(device="cuda", **cfg):
    cfg = dict(hidden=HIDDEN, **cfg)
    torch.manual_seed(10)
    plain = SAC((OBS,), (ACT,), SACConfig(**cfg, cuda_graph=False), device=device)
    torch.manual_seed(10)
    graphed = SAC((OBS,), (ACT,), SACConfig(**cfg, cuda_graph=True), device=device)
    return plain, graphed


def _update_both(plain, graphed, seeds, device="cuda"):
    for seed in seeds:
        batch = Batch(*(t.to(device) for t in fixed_batch(seed % 7)))
        assert_same_update(plain, graphed, batch, batch, seed)


def _assert_same_parameters(a, b):
    for name in ("actor", "critic", "critic_target"):
        for p1, p2 in zip(a.modules[name].parameters(), b.modules[name].parameters()):
            torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-5)


@CUDA
def test_cuda_graph_update_equals_the_ungraphed_update():
    """50 updates with the default (random) policy noise; the warm-up before capture must
    neither warn (pytest turns warnings into errors) nor consume the generator's numbers."""
    plain, graphed = _plain_and_graphed()
    _update_both(plain, graphed, range(50))
    _assert_same_parameters(plain, graphed)
    assert graphed.updates == 50
    # Metrics are the graphed update's own: the next replay leaves them as they were.
    metrics = graphed.update(Batch(*(t.cuda() for t in fixed_batch(0))))
    values = {k: v.item() for k, v in metrics.items()}
    assert graphed._graphed.packed is not None and len(values) == 6
    graphed.update(Batch(*(t.cuda() for t in fixed_batch(1))))
    assert {k: v.item() for k, v in metrics.items()} == values
    assert values != {k: v.item() for k, v in graphed._graphed.metrics.items()}
    with pytest.raises(ValueError, match="shape"):
        graphed.update(Batch(*(t[:8].cuda() for t in fixed_batch(0))))


@CUDA
# The agents' own lr, and one the graph must adopt: after the load, the first loss/actor of an
# agent stepping 3e-4 instead of 1e-3 is off by 3e-3 relative, 30 times the tolerance.
@pytest.mark.parametrize("lr", [3e-4, 1e-3])
def test_loading_a_state_into_a_captured_graph_is_what_the_graph_steps(lr):
    plain, graphed = _plain_and_graphed()
    _update_both(plain, graphed, range(5))  # captured
    torch.manual_seed(11)
    other = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, actor_lr=lr, critic_lr=lr, alpha_lr=lr),
                device="cuda")
    other.update(Batch(*(t.cuda() for t in fixed_batch(3))))
    state = other.state_dict()
    plain.load_state_dict(state)
    graphed.load_state_dict(state)
    _update_both(plain, graphed, range(5, 15))
    _assert_same_parameters(plain, graphed)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_graph_on_a_gpu_that_is_not_the_current_one():
    torch.cuda.set_device(0)
    plain, graphed = _plain_and_graphed(device="cuda:1")
    _update_both(plain, graphed, range(5), device="cuda:1")
    _assert_same_parameters(plain, graphed)


@CUDA
def test_cuda_graph_left_to_the_device_is_on_on_cuda(tmp_path):
    agent = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN), device="cuda")
    assert agent.config.cuda_graph is True and agent._graphed is not None
    compiled = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, compile="torch"), device="cuda")
    assert compiled.config.cuda_graph is False  # torch.compile is not tested under a graph
    SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN), device="cpu").save(tmp_path / "cpu.pt")
    assert SAC.load(tmp_path / "cpu.pt", "cuda").config.cuda_graph is True


@CUDA
def test_act_on_cuda_equals_act_on_the_cpu():
    """act() on CUDA goes through pinned staging reused between calls: each call's action is
    its own, for one observation and for a batch, vector and pixels."""
    for obs_shape, dtype in (((OBS,), np.float32), ((9, 84, 84), np.uint8)):
        cfg = SACConfig(hidden=HIDDEN, feature_dim=8)
        torch.manual_seed(12)
        gpu = SAC(obs_shape, (ACT,), cfg, device="cuda")
        torch.manual_seed(12)
        cpu = SAC(obs_shape, (ACT,), cfg, device="cpu")
        rng = np.random.default_rng(0)
        obs = (rng.integers(0, 256, (5, *obs_shape)) if dtype == np.uint8
               else rng.standard_normal((5, *obs_shape))).astype(dtype)
        first, batch = gpu.act(obs[0], True), gpu.act(obs, True)
        second = gpu.act(obs[1], True)
        assert first.shape == (ACT,) and batch.shape == (5, ACT)
        # cuDNN convolutions run in TF32 by default (1e-4 off here); these observations'
        # actions differ from each other by 3.5e-3 or more, so a stale one still fails.
        atol = 5e-4 if dtype == np.uint8 else 1e-4
        np.testing.assert_allclose(first, cpu.act(obs[0], True), atol=atol)
        np.testing.assert_allclose(second, cpu.act(obs[1], True), atol=atol)
        np.testing.assert_allclose(batch, cpu.act(obs, True), atol=atol)
        assert np.all(np.abs(gpu.act(obs)) <= 1)


@CUDA
def test_a_graphed_update_on_a_batch_sampled_into_its_inputs():
    from fastsac import ReplayBuffer

    buffers = [ReplayBuffer(500, (OBS,), (ACT,), device="cuda", seed=3) for _ in range(2)]
    rng = np.random.default_rng(0)
    for t in range(300):
        o, no = rng.standard_normal((2, OBS))
        action = rng.uniform(-1, 1, ACT)
        for buf in buffers:
            buf.add(o, action, 1.0, no, False, t % 50 == 49)
    plain, graphed = _plain_and_graphed()
    assert graphed.input_batch() is None  # not captured yet
    for seed in range(10):
        batch = buffers[0].sample(B)
        into = buffers[1].sample(B, out=graphed.input_batch())
        assert seed == 0 or into is graphed.input_batch()
        assert_same_update(plain, graphed, batch, into, seed)
