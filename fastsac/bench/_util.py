"""Plumbing shared by the benches: timing, row dicts, machine facts, tables.

Every row is a dict (see :func:`row`) so the CLI can print it as a table or write it as JSON.
Times are medians over blocks of calls: a block of ``calls`` calls is timed with
``time.perf_counter`` and divided by ``calls``; fastsac and the baseline alternate block by
block, so drifting machine load hits both alike. ``ratio`` is always "times better for
fastsac": baseline/fastsac for times and bytes, fastsac/baseline for rates.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from fastsac import __version__
from fastsac.networks import JIT_NOTICE


def compiled_eagerly(agent) -> bool:
    """Whether a ``compile="torch"`` SAC agent fell back to its eager update (its rows then
    time eager code under a torch.compile label, and must say so)."""
    return getattr(agent._update_fn, "failed", False)


_T0 = [time.perf_counter()]


@contextlib.contextmanager
def without_jit_notice() -> Iterator[None]:
    """The benches time TorchScript on purpose: fastsac's notice of its deprecation, which
    building a compile="jit" agent gives, is left out of their output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(JIT_NOTICE))
        yield


def start_clock() -> None:
    """Restart the seconds that :func:`log` prints (at the start of each bench)."""
    _T0[0] = time.perf_counter()


def log(msg: str) -> None:
    """Progress on stderr, with the seconds since :func:`start_clock`."""
    print(f"[bench {time.perf_counter() - _T0[0]:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- timing --------------------------------------------------------------------------------
def interleaved(fns: dict[str, Callable[[], object]], calls: int | dict[str, int], blocks: int,
                warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call for each block, the functions taking turns block by block.

    ``calls``: calls per block, one number or one per function (so that a fast and a slow
    function get blocks of similar length).
    """
    per = calls if isinstance(calls, dict) else dict.fromkeys(fns, calls)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            n = per[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out[name].append((time.perf_counter() - t0) / n)
    return out


def block(fn: Callable[[], object], n: int, device: torch.device | str = "cpu"
          ) -> Callable[[], None]:
    """``n`` calls of ``fn``, then (on CUDA) a wait for the GPU: one timed block's worth, so
    that queued GPU work is counted."""
    device = torch.device(device)

    def run() -> None:
        for _ in range(n):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float], scale: float = 1.0) -> list[float]:
    """25th and 75th percentiles (of per-call values), scaled like the median."""
    if len(xs) < 2:
        return [xs[0] * scale] * 2
    q = statistics.quantiles(xs, n=4)
    return [q[0] * scale, q[2] * scale]


def row(case: str, unit: str, fastsac: float | None, seed: float | None, *,
        lower_is_better: bool, target: float | None = None, target_text: str = "",
        note: str = "", **extra) -> dict:
    """One table row. ``ratio`` > 1 means fastsac is better; ``target`` applies to fastsac."""
    ratio = None
    if fastsac and seed:
        ratio = seed / fastsac if lower_is_better else fastsac / seed
    met = None
    if target is not None and fastsac is not None:
        met = fastsac <= target if lower_is_better else fastsac >= target
        if not target_text:
            target_text = f"{'<=' if lower_is_better else '>='} {_num(target)} {unit}"
    return dict(case=case, unit=unit, fastsac=fastsac, seed=seed, ratio=ratio, target=target,
                target_text=target_text, target_met=met, note=note, **extra)


# -- the machine ---------------------------------------------------------------------------
def _git_revision() -> str | None:
    """The source tree's commit (``+dirty`` if changed), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]  # the checkout holding fastsac/bench/
    try:
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() or None


def machine() -> dict:
    """What the numbers were measured on and with."""
    return dict(fastsac=__version__, git=_git_revision(), python=platform.python_version(),
                numpy=np.__version__, torch=torch.__version__,
                torch_threads=torch.get_num_threads(),
                cpus=cpus(), platform=platform.platform(),
                loadavg=[round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg")
                else None)  # 1, 5, 15 min: other work on the machine skews the numbers


def cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# -- printing ------------------------------------------------------------------------------
def _num(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.01 or x == 0:
        return f"{x:.2f}"
    return f"{x:.2g}"  # a small value keeps its first digits


def _ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"  # 1.49x and 1.51x must not both read 1.5x


def _cell(x: float | None, unit: str) -> str:
    return "-" if x is None else f"{_num(x)} {unit}"


def format_table(rows: list[dict]) -> str:
    """The rows as a text table, with each row's note numbered below it."""
    head = ("case", "fastsac (median)", "seed-style (median)", "ratio", "target")
    body = []
    for i, r in enumerate(rows, 1):
        target = r["target_text"]
        if r["target_met"] is not None:
            target += "  ok" if r["target_met"] else "  MISSED"
        body.append((f"{r['case']} [{i}]", _cell(r["fastsac"], r["unit"]),
                     _cell(r["seed"], r["unit"]),
                     _ratio(r["ratio"]), target))
    widths = [max(len(line[c]) for line in (head, *body)) for c in range(len(head))]
    align = ("<", ">", ">", ">", "<")

    def fmt(line: tuple) -> str:
        return "  ".join(f"{v:{a}{w}}" for v, a, w in zip(line, align, widths)).rstrip()

    out = [fmt(head), "  ".join("-" * w for w in widths)]
    out += [fmt(line) for line in body]
    out.append("ratio: times better for fastsac (seed/fastsac for times and bytes, "
               "fastsac/seed for rates)")
    out += [f"[{i}] {r['note']}" for i, r in enumerate(rows, 1) if r["note"]]
    return "\n".join(out)
