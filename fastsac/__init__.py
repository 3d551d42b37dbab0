"""fastsac: Soft Actor-Critic with a C++ replay-memory core."""

__version__ = "0.1.0"

from fastsac.buffers import Batch, ReplayBuffer

__all__ = ["Batch", "ReplayBuffer", "__version__"]
