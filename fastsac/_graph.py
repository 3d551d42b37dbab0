"""CUDA only: the whole SAC update captured once in a CUDA graph and replayed, which removes
the launch overhead of its ~100 small kernels (the GPU update is launch-bound otherwise)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from fastsac.batch import Batch


class GraphedUpdate:
    """Replays ``update_fn`` on static device copies of the batch.

    The first call warms up on a side stream (as CUDA graph capture requires), then restores
    every parameter and optimiser state it touched and the CUDA random number generator,
    captures one update and replays it: the agent's trajectory, random draws included, is the
    one it would have had without a graph. The batch shape is then fixed.
    """

    def __init__(self, update_fn: Callable[[Batch], dict], state: Callable[[], list],
                 device: torch.device, warmup: int = 3) -> None:
        self.update_fn, self.state, self.device, self.warmup = update_fn, state, device, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: Batch | None = None
        self.metrics: dict[str, torch.Tensor] = {}
        self.packed: torch.Tensor | None = None  # the metrics (scalars) in one tensor

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.graph is None:
            self._capture(batch)
        elif any(s.shape != b.shape for s, b in zip(self.static, batch)):
            raise ValueError("cuda_graph: every batch must have the shape of the first one "
                             f"({[tuple(s.shape) for s in self.static]}); with "
                             "cuda_graph=False batches may change shape")
        if batch is not self.static:  # (sampled straight into the inputs: nothing to copy)
            for s, b in zip(self.static, batch):
                s.copy_(b, non_blocking=True)
        self.graph.replay()
        # The next replay overwrites the graph's outputs: one copy of the packed metrics.
        return dict(zip(self.metrics, self.packed.clone().unbind()))

    def _capture(self, batch: Batch) -> None:
        # The agent's GPU, whichever is current: streams, graph and pools belong to one device.
        with torch.cuda.device(self.device):
            self.static = Batch(*(b.to(self.device).clone() for b in batch))
            saved = {id(t): t.detach().clone() for t in self.state()}
            rng = torch.cuda.get_rng_state(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), warnings.catch_warnings():
                # Capturable optimisers warn when stepped outside a capture, as here on purpose.
                warnings.filterwarnings("ignore", message=".*capturable=True",
                                        category=UserWarning)
                for _ in range(self.warmup):
                    self.update_fn(self.static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            with torch.no_grad():  # undo the warm-up, in place (the graph keeps addresses)
                for t in self.state():
                    if id(t) in saved:
                        t.copy_(saved[id(t)])
                    else:  # optimiser state born in the warm-up: Adam's initial state is zeros
                        t.zero_()
            torch.cuda.set_rng_state(rng, self.device)
            self.graph = torch.cuda.CUDAGraph()
            # On the agent's device (torch's default capture stream belongs to the GPU current
            # when it was first made). "thread_local": a prefetch thread filling the next batch
            # meanwhile may allocate and synchronise; only this thread's calls are captured.
            with torch.cuda.graph(self.graph, stream=side, capture_error_mode="thread_local"):
                self.metrics = self.update_fn(self.static)
                self.packed = torch.stack(list(self.metrics.values()))
            # Replays draw from the generator's state when they run: start them where the
            # warm-up started, as the update without a graph would.
            torch.cuda.set_rng_state(rng, self.device)
