"""FusedAdam against torch.optim.Adam: same parameters and state after every step."""

import copy

import pytest
import torch

from fastsac._optim import FusedAdam


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).requires_grad_()
            for shape in [(2, 8, 5), (2, 1, 5), (3,), ()]]


def _grads(params, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("reference", ["fused", "single_tensor"])
def test_fused_adam_matches_torch_adam(reference):
    ours, theirs = _params(0), _params(0)
    opt = FusedAdam(ours, lr=1e-2)
    kwargs = dict(fused=True) if reference == "fused" else dict(foreach=False)
    ref = torch.optim.Adam(theirs, lr=1e-2, **kwargs)
    for step in range(6):
        if step == 4:  # a state load mid-run (a resumed checkpoint) must not leave stale lists
            opt.load_state_dict(copy.deepcopy(ref.state_dict()))
            for p, q in zip(ours, theirs):
                p.data.copy_(q.data)
        opt.zero_grad(), ref.zero_grad()
        _grads(ours, step), _grads(theirs, step)
        opt.step(), ref.step()
        for p, q in zip(ours, theirs):
            if reference == "fused":
                assert torch.equal(p, q), step
            else:
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)  # (steps of ~1e-2)
    assert [s["step"].item() for s in opt.state.values()] == [6.0] * 4
    assert opt._lists is not None  # the direct path was taken after the first step


def test_fused_adam_picks_up_a_changed_lr():
    ours, theirs = _params(1), _params(1)
    opt, ref = FusedAdam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2, fused=True)
    for step in range(3):
        if step == 2:
            opt.optim.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 0.5
        _grads(ours, step), _grads(theirs, step)
        opt.step(), ref.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))


def test_fused_adam_skips_parameters_without_gradient_like_torch():
    ours, theirs = _params(2), _params(2)
    opt, ref = FusedAdam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2, fused=True)
    for step in range(6):  # the fast path before and after the step without a gradient
        _grads(ours, step), _grads(theirs, step)
        if step == 2:
            ours[0].grad = theirs[0].grad = None
        opt.step(), ref.step()
        assert all(torch.equal(p, q) for p, q in zip(ours, theirs)), step
    assert [s["step"].item() for s in opt.state.values()] == [5.0, 6.0, 6.0, 6.0]


def test_fused_adam_sees_a_state_loaded_into_the_wrapped_optimizer():
    ours, theirs = _params(3), _params(3)
    opt, ref = FusedAdam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2, fused=True)
    for step in range(5):
        if step == 3:
            opt.optim.load_state_dict(copy.deepcopy(ref.state_dict()))  # not via opt
            for p, q in zip(ours, theirs):
                p.data.copy_(q.data)
        _grads(ours, step), _grads(theirs, step)
        opt.step(), ref.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
    assert opt.state_dict()["state"][0]["step"] == ref.state_dict()["state"][0]["step"]


def test_fused_adam_refuses_several_parameter_groups():
    opt = FusedAdam(_params(4), lr=1e-2)
    opt.optim.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    with pytest.raises(ValueError, match="one parameter group"):
        opt.step()


@pytest.mark.parametrize("saved_capturable", [False, True])
def test_a_loaded_state_keeps_how_the_optimiser_runs(saved_capturable):
    """A checkpoint of a CUDA-graph run (capturable) loads into a plain agent, and back."""
    src = FusedAdam(_params(3), lr=1e-2, capturable=saved_capturable)
    _grads(src.optim.param_groups[0]["params"], 0)
    src.step()
    opt = FusedAdam(_params(3), lr=1e-3, capturable=not saved_capturable)
    opt.load_state_dict(copy.deepcopy(src.state_dict()))
    group = opt.optim.param_groups[0]
    assert group["capturable"] is (not saved_capturable) and group["fused"] is True
    assert group["lr"] == 1e-2  # hyper-parameters are loaded


@pytest.mark.parametrize("lr", [1e-2, 0.3])
def test_a_loaded_state_is_copied_into_the_existing_tensors_unless_its_lr_differs(lr):
    """A captured CUDA graph holds the addresses of Adam's state, and lr and betas as kernel
    arguments: a load with the same hyper-parameters must keep the tensors, one with others
    must give new ones (which tells SAC to capture again). Steps then use the loaded lr."""
    ours, theirs, ref_params = _params(4), _params(5), _params(5)
    opt, other = FusedAdam(ours, lr=1e-2), FusedAdam(theirs, lr=lr)
    ref = torch.optim.Adam(ref_params, lr=lr, fused=True)
    for step in range(2):
        _grads(ours, step), _grads(theirs, 10 + step), _grads(ref_params, 10 + step)
        opt.step(), other.step(), ref.step()
    before = [t for st in opt.state.values() for t in st.values()]
    opt.load_state_dict(copy.deepcopy(other.state_dict()))
    after = [t for st in opt.state.values() for t in st.values()]
    kept = [a is b for a, b in zip(before, after)]
    assert kept == [lr == 1e-2] * len(before) and len(before) == len(after)
    for p, q in zip(ours, theirs):
        p.data.copy_(q.data)
    for step in range(2, 5):  # and it goes on exactly as torch's Adam with that state
        _grads(ours, step), _grads(ref_params, step)
        opt.step(), ref.step()
        assert all(torch.equal(p, q) for p, q in zip(ours, ref_params)), step


@pytest.mark.parametrize("lr", [1e-2, 0.3])  # copied into existing tensors, or loaded anew
def test_a_loaded_state_shares_no_tensor_with_the_state_it_came_from(lr):
    """Two optimisers loaded from one live state (no deepcopy, as ``a.load_state_dict(
    b.state_dict())`` does) each step their own moments: stepping one changes neither the
    source nor the other."""
    source = FusedAdam(_params(5), lr=lr)
    _grads(source.optim.param_groups[0]["params"], 0)
    source.step()
    state = source.state_dict()
    frozen = copy.deepcopy(state)
    a, b = FusedAdam(_params(4), lr=1e-2), FusedAdam(_params(4), lr=1e-2)
    for opt in (a, b):
        _grads(opt.optim.param_groups[0]["params"], 1)
        opt.step()
        opt.load_state_dict(state)
    _grads(a.optim.param_groups[0]["params"], 2)
    a.step()
    for st in (source.state_dict(), b.state_dict()):
        for i, s in frozen["state"].items():
            for k, v in s.items():
                assert torch.equal(st["state"][i][k], v), (i, k)


def test_state_created_ahead_steps_as_torchs_own_first_step():
    """init_state (for a compiled update) makes the state torch's first fused step would."""
    ours, theirs = _params(0), _params(0)
    opt = FusedAdam(ours, lr=1e-2)
    opt.init_state()
    ref = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    for step in range(3):
        _grads(ours, step), _grads(theirs, step)
        opt.step(), ref.step()
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q), step
            for k, v in ref.state[q].items():
                assert torch.equal(opt.state[p][k], v) and opt.state[p][k].dtype == v.dtype


def test_a_compiled_step_is_torchs_adam():
    """Inside torch.compile, FusedAdam steps with torch's foreach Adam (traceable) on the same
    state; compare with torch's plain single-tensor Adam, step by step."""
    ours, theirs = _params(0), _params(0)
    opt = FusedAdam(ours, lr=1e-2)
    opt.init_state()
    ref = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    step = torch.compile(lambda: opt.step(), fullgraph=True)  # inside a graph, as in SAC's
    for i in range(4):
        _grads(ours, i), _grads(theirs, i)
        step(), ref.step()
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)  # (steps of ~1e-2)
            torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"])
        assert float(opt.state[ours[0]]["step"]) == i + 1
