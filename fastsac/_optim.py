"""Adam without torch.optim's per-step Python overhead.

Most of ``torch.optim.Adam(fused=True).step``'s time at SAC's sizes is not the kernel
(``torch._fused_adam_``) but grouping and checks redone every step (BENCHMARKS.md); an update
steps three optimisers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.adam import adam as adam_step  # torch's functional Adam


# How an optimiser runs, not what it has learned: kept when a state is loaded.
_RUN_FLAGS = ("capturable", "fused", "foreach", "differentiable")


class FusedAdam:
    """A ``torch.optim.Adam(fused=True)`` that steps through the same kernel directly.

    The wrapped optimiser (``.optim``) owns the state, so ``state_dict``/``load_state_dict``
    and checkpoints are torch's own. The first step (and any step after a state load, or with
    a missing gradient) goes through ``optim.step()``, which creates the state; later steps
    call ``torch._fused_adam_`` on cached lists, exactly as torch's fused Adam does. With
    ``capturable=True`` (CUDA graphs) every step goes through ``optim.step()``.

    Inside ``torch.compile`` a step is torch's foreach Adam on the same state instead (the
    fused kernel cannot be traced; the compiler fuses the foreach ops), on the view of the
    state that :meth:`init_state` makes: call it before compiling and after each state load.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, capturable: bool = False):
        self.optim = torch.optim.Adam(params, lr=lr, fused=True, capturable=capturable)
        # Plain lists, which the compiled update reads without tracing into torch.optim.
        self._params: list[torch.Tensor] = list(self.optim.param_groups[0]["params"])
        self._traced: tuple | None = None  # init_state's view of the state, for compiling
        self._fast = not capturable and hasattr(torch, "_fused_adam_")
        self._lists: tuple[list[torch.Tensor], ...] | None = None

    def __getstate__(self) -> dict:  # a copy rebuilds its cache on its own state
        return {**self.__dict__, "_lists": None}

    @property
    def state(self):
        return self.optim.state

    @property
    def params(self) -> list[torch.Tensor]:
        return self._params

    def zero_grad(self) -> None:
        if torch.compiler.is_compiling():
            # The compiled update starts with no gradients (SAC._update_without_grads). Setting
            # .grad before a traced backward() breaks every later torch.compile in the process
            # that sets a .grad ("self missing"; torch 2.13-2.14).
            return
        for p in self.params:  # cheaper than optim.zero_grad's checks
            p.grad = None

    def state_dict(self) -> dict:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Load ``state``'s hyper-parameters, moments and step counts, but keep how this
        optimiser runs (``_RUN_FLAGS``): a checkpoint of a CUDA-graph run (capturable) loads
        into a plain agent and back.

        Where this optimiser already holds state of the same shapes and the same
        hyper-parameters, the loaded values are copied into its tensors: a captured CUDA graph
        holds their addresses and keeps stepping them. Otherwise torch's own load replaces
        them (``step`` re-caches), which tells the owner of a graph to capture again: the
        graph holds the hyper-parameters it was captured with as kernel arguments.
        """
        (group,) = self.optim.param_groups
        flags = {k: group[k] for k in _RUN_FLAGS if k in group}
        groups = [{**g, **flags} for g in state["param_groups"]]
        state = {**state, "param_groups": groups}
        if not self._copy_into_state(state):
            # torch's load keeps the given tensors where their device and dtype already fit:
            # without copies, this optimiser would step the moments of the one it loaded from
            # (and of every other optimiser loaded from the same state).
            state["state"] = {i: {k: v.clone() if isinstance(v, torch.Tensor) else v
                                  for k, v in st.items()} for i, st in state["state"].items()}
            self.optim.load_state_dict(state)

    def _copy_into_state(self, state: dict) -> bool:
        """Copy ``state`` into the existing state tensors if it matches them one for one."""
        (group,) = self.optim.param_groups
        params = group["params"]
        if len(state["param_groups"]) != 1 or state["param_groups"][0]["params"] \
                != list(range(len(params))):
            return False
        hyper = {k: v for k, v in state["param_groups"][0].items() if k != "params"}
        if hyper != {k: v for k, v in group.items() if k != "params"}:
            return False
        pairs = []
        for i, p in enumerate(params):
            mine, theirs = self.optim.state.get(p), state["state"].get(i)
            if not mine or not theirs or mine.keys() != theirs.keys():
                return False
            for k, t in mine.items():
                if not isinstance(t, torch.Tensor) or not isinstance(theirs[k], torch.Tensor) \
                        or t.shape != theirs[k].shape:
                    return False
                pairs.append((t, theirs[k]))
        with torch.no_grad():
            for t, loaded in pairs:
                t.copy_(loaded)
        return True

    def init_state(self) -> None:
        """Create the state of every parameter that has none, as torch's first fused step
        does (Adam's moments at zero, the step count a float32 tensor on the device), and the
        view of it that compiled steps read. Call it again after each state load."""
        for p in self.params:
            if not self.optim.state.get(p):
                self.optim.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32, device=p.device),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        (group,) = self.optim.param_groups
        st = [self.optim.state[p] for p in self.params]
        hyper = {k: group[k] for k in ("amsgrad", "lr", "weight_decay", "eps", "maximize")}
        beta1, beta2 = group["betas"]
        self._traced = ([s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
                        [s["step"] for s in st], dict(hyper, beta1=beta1, beta2=beta2))

    def step(self) -> None:
        if torch.compiler.is_compiling():
            self._traced_step()
            return
        if len(self.optim.param_groups) != 1:
            raise ValueError("FusedAdam steps one parameter group")
        (group,) = self.optim.param_groups
        params = group["params"]
        grads = [p.grad for p in params]
        if self._lists is None or not self._fast or any(g is None for g in grads) \
                or self.optim.state.get(params[0], {}).get("exp_avg") is not self._lists[0][0]:
            # (the last test: a state loaded into .optim, by us or directly, replaced them)
            self.optim.step()
            if self._fast and all(p in self.optim.state for p in params):
                st = [self.optim.state[p] for p in params]
                self._lists = ([s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
                               [s["step"] for s in st])
            return
        exp_avgs, exp_avg_sqs, steps = self._lists
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps,
                           amsgrad=group["amsgrad"], lr=group["lr"], beta1=beta1, beta2=beta2,
                           weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=group["maximize"])

    def _traced_step(self) -> None:
        # Capturable: the step counts stay tensors on the device (no host sync), which torch
        # allows on any device while compiling.
        exp_avgs, exp_avg_sqs, steps, hyper = self._traced
        with torch.no_grad():
            adam_step(self.params, [p.grad for p in self.params], exp_avgs, exp_avg_sqs, [],
                      steps, foreach=True, capturable=True, **hyper)
