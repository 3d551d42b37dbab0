"""compile="torch": the whole update through torch.compile against the eager update (itself
checked against a float64 reference in test_sac), its eager fallback, and on CUDA torch's
CUDA graphs and fastsac's capture of the compiled update."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from test_sac import ACT, CUDA, HIDDEN, OBS, assert_same_update, fixed_batch
from torch._dynamo.utils import counters

from fastsac import SAC, Batch, SACConfig
from fastsac._compile import CompiledUpdate

# One graph per update where this torch traces backward() into it; else a graph before, between
# and after the two backward calls.
GRAPHS_PER_UPDATE = 1 if hasattr(torch._dynamo.config, "trace_autograd_ops") else 3


@pytest.fixture
def same_noise():
    """The compiled update draws its noise from torch's generator, as the eager one does
    (inductor otherwise draws its own numbers)."""
    with torch._inductor.config.patch(fallback_random=True):
        yield


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _agents(device="cpu", obs_shape=(OBS,), **cfg) -> tuple[SAC, SAC]:
    cfg = dict(hidden=HIDDEN, **cfg)
    torch.manual_seed(20)
    eager = SAC(obs_shape, (ACT,), SACConfig(**{**cfg, "compile": "none", "cuda_graph": False}),
                device)
    torch.manual_seed(20)
    compiled = SAC(obs_shape, (ACT,), SACConfig(**cfg, compile="torch"), device)
    return eager, compiled


def test_the_agents_compared_differ_in_compile_only():
    eager, compiled = _agents(num_critics=3, cuda_graph=False)  # (as the CUDA test passes it)
    assert (eager.config.compile, compiled.config.compile) == ("none", "torch")
    assert eager.config.num_critics == compiled.config.num_critics == 3
    for p, q in zip(eager._mutable_state(), compiled._mutable_state()):
        assert torch.equal(p, q)


def _assert_same_state(a: SAC, b: SAC) -> None:
    for name in ("encoder", "actor", "critic", "critic_target"):
        for p, q in zip(a.modules[name].parameters(), b.modules[name].parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.log_alpha, b.log_alpha, rtol=1e-4, atol=1e-6)


def _pixel_batch(seed: int, device="cpu") -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=g)
    return Batch(obs.to(device), (torch.rand(16, ACT, generator=g) * 2 - 1).to(device),
                 torch.randn(16, generator=g).to(device), obs.roll(1, 0).to(device),
                 torch.full((16,), 0.99, device=device))


def test_the_compiled_update_equals_the_eager_update(same_noise):
    eager, compiled = _agents()
    before = _graphs()
    for seed in range(6):
        assert_same_update(eager, compiled, fixed_batch(seed), fixed_batch(seed), seed)
    _assert_same_state(eager, compiled)
    # Compiled once (a recompile per update would mean a guard that fails every time), and
    # not fallen back to eager.
    assert _graphs() - before == GRAPHS_PER_UPDATE
    assert not compiled._update_fn.failed
    # No gradients kept (with torch's CUDA graphs they would live in memory it reuses).
    assert all(t.grad is None for t in compiled._mutable_state())


def test_torch_compile_still_works_for_the_users_own_code_afterwards():
    """Setting .grad before a traced backward() once broke every later compile in the
    process that sets a .grad ("self missing", torch 2.13-2.14)."""
    _, compiled = _agents()
    compiled.update(fixed_batch(0))
    w = torch.zeros(3, requires_grad=True)

    def users_step():
        w.grad = torch.ones_like(w)
        with torch.no_grad():
            w.sub_(w.grad)
    torch.compile(users_step, fullgraph=True)()
    assert torch.equal(w.detach(), -torch.ones(3))


def test_the_branch_for_torchs_cuda_graphs_runs_on_the_cpu_too(same_noise):
    """mode="reduce-overhead", static addresses and cloned metrics (CUDA graphs themselves
    need CUDA tensors: on the CPU the mode compiles as the default one)."""
    eager, compiled = _agents()
    compiled._update_fn = CompiledUpdate(compiled._update_without_grads, compiled._mutable_state,
                                         compiled.device, reduce_overhead=True)
    for seed in range(3):
        assert_same_update(eager, compiled, fixed_batch(seed), fixed_batch(seed), seed)
    _assert_same_state(eager, compiled)
    assert not compiled._update_fn.failed


def test_the_compiled_pixel_update_equals_the_eager_update(same_noise):
    """Pixels: the conv encoder, channels-last, and the random shift inside the graph."""
    eager, compiled = _agents(obs_shape=(3, 16, 16), feature_dim=8)
    for seed in range(3):
        assert_same_update(eager, compiled, _pixel_batch(seed), _pixel_batch(seed), seed)
    _assert_same_state(eager, compiled)


def test_every_agent_compiles_once_with_code_of_its_own(same_noise):
    """torch.compile keeps at most ``recompile_limit`` versions per code object, then runs it
    eagerly without a word: agents must not share one."""
    config = torch._dynamo.config
    limit = getattr(config, "recompile_limit", None) or config.cache_size_limit
    for i in range(limit + 1):
        before = _graphs()
        agent = SAC((OBS,), (ACT,), SACConfig(hidden=(4,), compile="torch"))
        for seed in range(2):
            agent.update(fixed_batch(seed))
        # At least one graph of its own (none: the compiler gave up on it), and no recompile
        # at its second update. (Where backward() splits the update, a later piece can be one
        # another agent compiled already.)
        assert 1 <= _graphs() - before <= GRAPHS_PER_UPDATE, f"agent {i}"


@pytest.mark.parametrize("where", ["at torch.compile", "at the first call"])
def test_a_failing_compiler_gives_one_warning_and_the_eager_update(monkeypatch, where):
    calls = []

    def broken_compile(fn, **kwargs):
        if where == "at torch.compile":
            raise RuntimeError("backend exploded")

        def compiled(*args):  # as after a graph break: part of the update runs, then it fails
            calls.append(1)
            fn(*args)
            raise torch._dynamo.exc.InternalTorchDynamoError("backend exploded")
        return compiled
    monkeypatch.setattr(torch, "compile", broken_compile)
    flag = getattr(torch._dynamo.config, "trace_autograd_ops", None)
    with pytest.warns(RuntimeWarning, match=r"compile='torch' failed .*backend exploded") as w:
        eager, compiled = _agents()
        torch.manual_seed(0)
        compiled.update(fixed_batch(0))
    assert len(w) == 1
    assert getattr(torch._dynamo.config, "trace_autograd_ops", None) == flag  # given back
    torch.manual_seed(0)
    eager.update(fixed_batch(0))
    for p, q in zip(eager._mutable_state(), compiled._mutable_state()):
        assert torch.equal(p, q)  # one update, not a failed one and then another
    other = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, compile="none", critic_lr=1e-3))
    other.update(fixed_batch(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second compiled attempt,
        compiled.update(fixed_batch(1))
        compiled.load_state_dict(other.state_dict())  # even where a load builds the update again
        compiled.update(fixed_batch(1))
    assert len(calls) == (where == "at the first call")


def test_an_error_while_the_compiled_update_runs_is_raised_and_it_stays_compiled(monkeypatch):
    def compile_that_runs_out_of_memory(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("CUDA out of memory")
        return compiled
    monkeypatch.setattr(torch, "compile", compile_that_runs_out_of_memory)
    _, compiled = _agents()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="out of memory"):
            compiled.update(fixed_batch(0))
    assert not compiled._update_fn.failed


def test_an_error_of_the_input_is_raised_not_taken_for_a_compile_failure(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # "compiled" = the update
    _, compiled = _agents()
    bad = Batch(*(t[:, :2] if t.dim() == 2 else t for t in fixed_batch(0)))  # too few columns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError):
            compiled.update(bad)
    assert not compiled._update_fn.failed  # still compiled: the input was wrong


def test_a_loaded_state_is_what_the_compiled_update_steps(same_noise):
    """A state saved before any update (no optimiser state), then one with another learning
    rate: the compiled update must step the loaded tensors with the loaded rate."""
    eager, compiled = _agents()
    fresh = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, compile="none")).state_dict()
    for agent in (eager, compiled):
        agent.load_state_dict(fresh)
    for seed in range(2):
        assert_same_update(eager, compiled, fixed_batch(seed), fixed_batch(seed), seed)
    torch.manual_seed(11)
    other = SAC((OBS,), (ACT,), SACConfig(hidden=HIDDEN, compile="none", actor_lr=1e-3,
                                         critic_lr=1e-3, alpha_lr=1e-3))
    other.update(fixed_batch(3))
    for agent in (eager, compiled):
        agent.load_state_dict(other.state_dict())
    for seed in range(2, 5):
        assert_same_update(eager, compiled, fixed_batch(seed), fixed_batch(seed), seed)
    _assert_same_state(eager, compiled)


def test_a_copy_compiles_its_own_update(same_noise):
    _, compiled = _agents()
    compiled.update(fixed_batch(0))
    twin = copy.deepcopy(compiled)
    before = [p.detach().clone() for p in compiled.modules["critic"].parameters()]
    twin.update(fixed_batch(1))
    for p, q in zip(before, compiled.modules["critic"].parameters()):
        assert torch.equal(p, q)  # the copy stepped its own parameters, not the original's
    assert not all(torch.equal(p, q) for p, q in zip(before, twin.modules["critic"].parameters()))


@CUDA
@pytest.mark.parametrize("cuda_graph", [None, True])  # torch's CUDA graphs; fastsac's capture
def test_the_compiled_update_on_cuda_equals_the_eager_update(same_noise, cuda_graph):
    eager, compiled = _agents("cuda", cuda_graph=cuda_graph)
    assert (compiled._graphed is not None) == bool(cuda_graph)
    skips = counters["inductor"]["cudagraph_skips"]
    kept = []
    # Several replays of either kind of graph; few enough updates that the kernels' different
    # rounding, which Adam's normalised steps amplify where a gradient is near zero, stays
    # inside the tolerance.
    for seed in range(8):
        batch = Batch(*(t.cuda() for t in fixed_batch(seed % 7)))
        torch.manual_seed(seed)
        m1 = eager.update(batch)
        torch.manual_seed(seed)
        m2 = compiled.update(batch)
        kept.append((m1, m2))
    assert not compiled._update_fn.failed  # (else the eager update was compared with itself)
    # Metrics of earlier updates survive the later ones (CUDA graphs reuse their outputs).
    for m1, m2 in kept:
        for k in m1:
            torch.testing.assert_close(m1[k], m2[k], rtol=1e-4, atol=1e-5)
    _assert_same_state(eager, compiled)
    # Torch's CUDA graphs ran: none was skipped (as for inputs changed in place unmarked).
    assert counters["inductor"]["cudagraph_skips"] == skips


@CUDA
@pytest.mark.parametrize("cuda_graph", [None, True])
def test_inductors_own_noise_on_cuda_is_new_at_every_update(cuda_graph):
    """Without fallback_random the compiled update draws inductor's random numbers: a replayed
    graph must still draw new ones each time (the same state, updated twice, differs)."""
    _, compiled = _agents("cuda", cuda_graph=cuda_graph)
    batch = Batch(*(t.cuda() for t in fixed_batch(0)))
    for _ in range(5):  # compiled, captured, replayed
        compiled.update(batch)
    state = copy.deepcopy(compiled.state_dict())
    first = compiled.update(batch)["loss/actor"].item()
    compiled.load_state_dict(state)
    second = compiled.update(batch)["loss/actor"].item()
    assert math.isfinite(first) and first != second
    assert not compiled._update_fn.failed  # eager noise would differ too
