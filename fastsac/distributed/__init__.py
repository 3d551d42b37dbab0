"""Env workers on Ray feeding one learner (``TrainConfig.workers``, docs/distributed.md).

Importing this package imports ray (the ``ray`` extra); ``import fastsac`` does not.
"""

try:
    import ray  # noqa: F401
except ImportError as exc:
    raise ImportError("env workers run on Ray: pip install 'fastsac[ray]'") from exc

from fastsac.distributed.pool import WorkerPool
from fastsac.distributed.worker import EnvWorker

__all__ = ["EnvWorker", "WorkerPool"]
