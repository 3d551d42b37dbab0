"""compile="torch": the whole SAC update (networks, losses, gradients, Adam steps) through
torch.compile, which fuses its element-wise work; on CUDA, in mode "reduce-overhead", torch
also replays it as CUDA graphs."""

from __future__ import annotations

import contextlib
import threading
import types
import warnings
from collections.abc import Callable

import torch

from fastsac.batch import Batch


class CompiledUpdate:
    """Calls ``torch.compile(update_fn)``, which compiles at the first call (and again where
    a guard fails: a new batch shape, a new learning rate). If compiling fails (an error of
    the compiler's own), warn once and run eagerly from then on; an error the eager update
    raises too is the input's, and is raised as it is. Errors while the compiled update runs
    (out of memory, say) are raised as they are: part of the update may have run.

    A failed first compile may follow a part of the update that ran (the graphs before a graph
    break, where this torch cannot trace backward()): the first call restores ``state()`` and
    the random generators before the eager update runs. Where torch traces backward(), the
    update is one graph, traced whole before any of it runs, so a later compile (a new shape)
    that fails has changed nothing either.
    """

    def __init__(self, update_fn: Callable[[Batch], dict], state: Callable[[], list],
                 device: torch.device, reduce_overhead: bool) -> None:
        self._eager, self._state, self._device = update_fn, state, device
        self._called = False
        # The compiler's own errors: tracing, graph breaks under fullgraph, the backend, the
        # limit of recompiles. (An input the update cannot take fails while tracing too.)
        errors = torch._dynamo.exc  # (imported here: importing it takes most of a second)
        self._compile_errors = tuple(
            e for e in (errors.TorchDynamoException,
                        getattr(errors, "FailOnRecompileLimitHit", None)) if e is not None)
        # Where this torch traces backward() into the graph, the update is one graph: any
        # break is an error before anything runs.
        self._traces_backward = hasattr(torch._dynamo.config, "trace_autograd_ops")
        try:
            self._compiled = torch.compile(
                _own_code(update_fn), fullgraph=self._traces_backward,
                mode="reduce-overhead" if reduce_overhead else None)
        except Warning:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a Python version this torch cannot compile
            self._compiled = None
            _warn_eager(exc)
        # Torch's CUDA graphs hand out outputs that the next replay overwrites.
        self._clone = reduce_overhead
        if reduce_overhead:  # else its CUDA graphs copy them in as inputs, or skip the graph
            for t in state():
                if not isinstance(t, torch.nn.Parameter):  # (optimiser state, log-alpha)
                    torch._dynamo.mark_static_address(t)

    @property
    def failed(self) -> bool:
        """Whether compiling failed (the update runs eagerly)."""
        return self._compiled is None

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self._compiled is None:
            return self._eager(batch)
        saved = None if self._called else self._snapshot()
        self._called = True
        try:
            with _TRACING_BACKWARD if self._traces_backward else contextlib.nullcontext():
                metrics = self._compiled(batch)
        except self._compile_errors as exc:
            if saved is not None:
                self._restore(saved)
            metrics = self._eager(batch)
            self._compiled = None
            _warn_eager(exc)
            return metrics
        if not self._clone:
            return metrics
        return dict(zip(metrics, torch.stack(list(metrics.values())).unbind()))  # one copy

    def _snapshot(self) -> tuple:
        cuda = self._device.type == "cuda"
        return ([t.detach().clone() for t in self._state()], torch.get_rng_state(),
                torch.cuda.get_rng_state(self._device) if cuda else None)

    def _restore(self, saved: tuple) -> None:
        tensors, cpu_rng, cuda_rng = saved
        with torch.no_grad():
            for t, v in zip(self._state(), tensors):
                t.copy_(v)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self._device)


class _TracingBackward:
    """Sets ``torch._dynamo.config.trace_autograd_ops`` (read while compiling) while any
    compiled update runs, in any thread, and gives it back its value after the last."""

    def __init__(self) -> None:
        self._lock, self._running, self._before = threading.Lock(), 0, False

    def __enter__(self) -> None:
        with self._lock:
            if self._running == 0:
                self._before = torch._dynamo.config.trace_autograd_ops
                torch._dynamo.config.trace_autograd_ops = True
            self._running += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                torch._dynamo.config.trace_autograd_ops = self._before


_TRACING_BACKWARD = _TracingBackward()


def _own_code(method: types.MethodType) -> types.MethodType:
    """``method`` on a copy of its function's code. torch.compile keeps compiled code per code
    object and guards it on the agent's identity, with at most 8 versions per code object:
    agents sharing ``SAC._update``'s code would each add one, and from the ninth on the compiler
    would give up on it."""
    f = method.__func__
    own = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__,
                             f.__closure__)
    return types.MethodType(own, method.__self__)


def _warn_eager(exc: BaseException) -> None:
    warnings.warn(f"fastsac: compile='torch' failed on torch {torch.__version__} "
                  f"({type(exc).__name__}: {exc}); running the update eagerly",
                  RuntimeWarning, stacklevel=4)
