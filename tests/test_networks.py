"""compile_module: a network that cannot be compiled runs eagerly, with one clear warning."""

import warnings

import pytest
import torch

from fastsac.networks import Actor, CriticEnsemble, compile_module


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


def test_torch_compile_failing_at_first_call_falls_back_to_eager_once(monkeypatch):
    calls = []

    def lazy_broken_compile(module):
        def compiled(*args, **kwargs):  # torch.compile fails when it first compiles: at a call
            calls.append(1)
            raise RuntimeError("backend exploded")
        return compiled
    monkeypatch.setattr(torch, "compile", lazy_broken_compile)
    actor = _actor()
    net = compile_module(actor, "torch")
    x = torch.randn(4, 5)
    with pytest.warns(RuntimeWarning, match=r"compile='torch' failed .*backend exploded") as w:
        torch.manual_seed(1)
        action, log_prob = net(x)
    assert len(w) == 1
    torch.manual_seed(1)
    ref_action, ref_log_prob = actor(x)
    assert torch.equal(action, ref_action) and torch.equal(log_prob, ref_log_prob)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second compiled attempt
        net(x)
    assert len(calls) == 1
    assert net.act(x, True).shape == (4, 2)  # exported methods reach the module


def test_an_error_of_the_input_is_raised_not_taken_for_a_compile_failure(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module: module)  # "compiled" = the module
    critic = CriticEnsemble(5, 2, [8], 2)
    net = compile_module(critic, "torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError):
            net(torch.randn(4, 3), torch.randn(4, 2))  # wrong feature width
    assert net._compiled is not None  # still compiled: the input was wrong, not the compiler
