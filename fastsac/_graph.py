"""CUDA only: the whole SAC update captured once in a CUDA graph and replayed, which removes
the launch overhead of its ~100 small kernels (the GPU update is launch-bound otherwise)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastsac.batch import Batch


class GraphedUpdate:
    """Replays ``update_fn`` on static device copies of the batch.

    The first call warms up on a side stream (as CUDA graph capture requires), restores every
    parameter and optimiser state it touched, captures one update and replays it, so the
    agent's trajectory is the same as without a graph. The batch shape is then fixed.
    """

    def __init__(self, update_fn: Callable[[Batch], dict], state: Callable[[], list],
                 device: torch.device, warmup: int = 3) -> None:
        self.update_fn, self.state, self.device, self.warmup = update_fn, state, device, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: Batch | None = None
        self.metrics: dict[str, torch.Tensor] = {}

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.graph is None:
            self._capture(batch)
        elif any(s.shape != b.shape for s, b in zip(self.static, batch)):
            raise ValueError("cuda_graph: every batch must have the shape of the first one "
                             f"({[tuple(s.shape) for s in self.static]})")
        for s, b in zip(self.static, batch):
            s.copy_(b, non_blocking=True)
        self.graph.replay()
        return {k: v.clone() for k, v in self.metrics.items()}  # the next replay reuses them

    def _capture(self, batch: Batch) -> None:
        self.static = Batch(*(b.to(self.device).clone() for b in batch))
        saved = {id(t): t.detach().clone() for t in self.state()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.update_fn(self.static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.no_grad():  # undo the warm-up steps, in place (the graph keeps addresses)
            for t in self.state():
                if id(t) in saved:
                    t.copy_(saved[id(t)])
                else:  # optimiser state born in the warm-up: Adam's initial state is zeros
                    t.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.metrics = self.update_fn(self.static)
