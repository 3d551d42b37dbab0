"""The sampled batch: what the replay buffer returns and the learner consumes.

A leaf module (torch only), so the learner does not import the compiled replay core.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """A sampled batch; every field is a torch tensor with a leading batch axis.

    ``obs``/``next_obs`` keep the stored dtype (uint8 images stay uint8) with frames stacked
    along axis 0; ``reward`` is the n-step discounted sum; ``discount`` is ``gamma**m`` for a
    window of ``m`` steps, or 0 if the window ended in a termination.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    discount: torch.Tensor

    def clone(self) -> Batch:
        """A copy that stays valid: a CPU batch from ``ReplayBuffer.sample`` is a view of
        memory that the next ``sample`` of the same batch size overwrites."""
        return Batch(*(t.clone() for t in self))
