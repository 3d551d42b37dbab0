"""Process-wide tuning for training on the CPU: ``tune_process`` (fastsac's commands call it;
the library never does, since it changes the whole process).

glibc malloc. An update allocates and frees dozens of 64 KiB to 512 KiB tensors. With glibc's
defaults some of them are mmap'ed, or the heap top is trimmed after each update, so their
pages fault again on every update. Raising both thresholds keeps that memory for reuse.

numpy's BLAS threads. ``SAC.act`` on one vector observation multiplies in numpy; numpy's
OpenBLAS then runs its own threads, which keep spinning on the cores torch's update needs.

BENCHMARKS.md has what each costs a training loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>


def tune_process() -> dict[str, bool]:
    """Tune this process for CPU training, as ``fastsac train`` and ``fastsac bench`` do:
    glibc keeps freed memory up to 32 MiB blocks for reuse, and numpy's BLAS runs on one
    thread. Process-wide: call it once at the top of your own training script. Returns what
    was applied."""
    return {"malloc": tune_malloc(), "numpy_blas_threads": single_thread_numpy_blas()}


def single_thread_numpy_blas() -> bool:
    """Limit numpy's BLAS (not torch's) to one thread; False if there is no BLAS to limit."""
    import numpy  # noqa: F401  (its BLAS must be loaded to be found)
    from threadpoolctl import threadpool_info, threadpool_limits

    numpy_blas = {i["prefix"] for i in threadpool_info() if i["user_api"] == "blas"
                  and "torch" not in i["filepath"]}  # a BLAS shipped inside torch stays
    if not numpy_blas:
        return False
    threadpool_limits(limits=dict.fromkeys(numpy_blas, 1))
    return True


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Keep freed memory up to these sizes in the process heap instead of returning it to the
    OS (glibc only; a no-op returning False elsewhere)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
                and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
