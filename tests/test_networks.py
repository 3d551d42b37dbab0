"""The networks: compile_module's eager fallback from TorchScript (one clear warning) and the
numpy actor against a float64 reference."""

import warnings

import numpy as np
import pytest
import torch

from fastsac import networks
from fastsac.networks import Actor, LogStd, NumpyActor, compile_module


def _actor() -> Actor:
    torch.manual_seed(0)
    return Actor(5, 2, [8, 8])


def test_scripting_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken_script(module):
        raise RuntimeError("cannot script this")
    monkeypatch.setattr(torch.jit, "script", broken_script)
    actor = _actor()
    with pytest.warns(RuntimeWarning, match=r"compile='jit' failed .*cannot script this") as w:
        out = compile_module(actor, "jit")
    assert out is actor and len(w) == 1


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])  # 2.13, 2.14
def test_torchscripts_deprecation_is_said_once_in_fastsacs_words(monkeypatch, category):
    real_script = torch.jit.script

    def deprecated_script(module, *args, **kwargs):  # torch calls it on submodules too
        warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile` or "
                      "`torch.export`.", category)
        warnings.warn("another notice", UserWarning)
        return real_script(module, *args, **kwargs)
    monkeypatch.setattr(torch.jit, "script", deprecated_script)
    monkeypatch.setattr(networks, "_jit_deprecation_said", False)  # a fresh process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = compile_module(_actor(), "jit")
        compile_module(_actor(), "jit")
    said = [(w.category, str(w.message)) for w in caught]
    notice = [m for c, m in said if c is category]
    assert len(notice) == 1 and notice[0].startswith("fastsac: compile='jit' runs the networks"
                                                     " as TorchScript, which torch ")
    assert "compile='none'" in notice[0]
    assert {m for c, m in said if c is UserWarning} == {"another notice"}  # passed on as it is
    assert isinstance(first, torch.jit.ScriptModule)
    monkeypatch.setattr(networks, "_jit_deprecation_said", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", category)  # a caller's filters decide about the notice
        with pytest.raises(category, match="fastsac: compile='jit'"):
            compile_module(_actor(), "jit")


def _actor_reference(actor: Actor, obs: np.ndarray, eps: torch.Tensor | None) -> np.ndarray:
    """Actor.act in float64, written from its docstring: MLP -> (mean, raw log-std); log-std
    clamped or tanh-squashed; a = tanh(mean + exp(log_std) * eps), or tanh(mean)."""
    x = torch.from_numpy(obs).double()
    linears = [m for m in actor.trunk if isinstance(m, torch.nn.Linear)]
    for i, m in enumerate(linears):
        x = x @ m.weight.detach().double().T + m.bias.detach().double()
        if i < len(linears) - 1:
            x = torch.relu(x)
    a = actor.action_dim
    mean, raw = x[:a], x[a:]
    if eps is None:
        return torch.tanh(mean).numpy()
    head = actor.log_std
    log_std = torch.tanh(raw) if head.tanh else raw.clamp(head.low, head.high)
    return torch.tanh(mean + log_std.exp() * eps.double()).numpy()


@pytest.mark.parametrize("tanh", [False, True])
def test_numpy_actor_equals_a_float64_reference_and_follows_weight_updates(tanh):
    torch.manual_seed(0)
    actor = Actor(5, 3, [8, 8], LogStd(tanh, -1.0, 0.5))
    with torch.no_grad():  # raw log-stds far outside [-1, 0.5]: both clamp bounds are hit
        actor.trunk[-1].bias[3:] += torch.tensor([4.0, -4.0, 0.0])
    numpy_actor = NumpyActor(actor)
    obs = np.random.default_rng(1).standard_normal(5).astype(np.float32)
    for step in range(2):
        torch.manual_seed(2)
        got = numpy_actor(obs)
        torch.manual_seed(2)
        eps = torch.empty(3).normal_()  # the draw NumpyActor makes from torch's RNG
        np.testing.assert_allclose(got, _actor_reference(actor, obs, eps), atol=1e-5)
        np.testing.assert_allclose(numpy_actor(obs, deterministic=True),
                                   _actor_reference(actor, obs, None), atol=1e-5)
        with torch.no_grad():  # an in-place update, as an optimiser step makes
            for p in actor.parameters():
                p.mul_(1.5)


def test_log_std_head_is_the_same_function_in_torch_and_numpy():
    raw = torch.linspace(-8, 8, 33)
    for head in (LogStd(False, -5.0, 2.0), LogStd(True)):
        np.testing.assert_allclose(head.numpy(raw.numpy()), head(raw).numpy(), atol=1e-6)
