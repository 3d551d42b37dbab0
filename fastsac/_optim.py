"""Adam without torch.optim's per-step Python overhead.

Most of ``torch.optim.Adam(fused=True).step``'s time at SAC's sizes is not the kernel
(``torch._fused_adam_``) but grouping and checks redone every step (BENCHMARKS.md); an update
steps three optimisers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class FusedAdam:
    """A ``torch.optim.Adam(fused=True)`` that steps through the same kernel directly.

    The wrapped optimiser (``.optim``) owns the state, so ``state_dict``/``load_state_dict``
    and checkpoints are torch's own. The first step (and any step after a state load, or with
    a missing gradient) goes through ``optim.step()``, which creates the state; later steps
    call ``torch._fused_adam_`` on cached lists, exactly as torch's fused Adam does. With
    ``capturable=True`` (CUDA graphs) every step goes through ``optim.step()``.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, capturable: bool = False):
        self.optim = torch.optim.Adam(params, lr=lr, fused=True, capturable=capturable)
        self._fast = not capturable and hasattr(torch, "_fused_adam_")
        self._lists: tuple[list[torch.Tensor], ...] | None = None

    def __getstate__(self) -> dict:  # a copy rebuilds its cache on its own state
        return {**self.__dict__, "_lists": None}

    @property
    def state(self):
        return self.optim.state

    def zero_grad(self) -> None:
        for p in self.optim.param_groups[0]["params"]:  # cheaper than optim.zero_grad's checks
            p.grad = None

    def state_dict(self) -> dict:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state)  # step() sees the new state tensors and re-caches

    def step(self) -> None:
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
