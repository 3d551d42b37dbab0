"""fastsac: Soft Actor-Critic with a C++ replay-memory core."""

__version__ = "0.1.0"

try:
    from fastsac import _core  # noqa: F401
except ImportError as exc:  # a source checkout without a build, or a broken install
    raise ImportError(
        "fastsac's compiled core (fastsac._core) could not be imported. Install the package "
        "with `pip install .` (it builds the C++ extension) rather than importing it from "
        f"the source tree. Original error: {exc}") from exc

from fastsac import envs  # noqa: F401  (registers fastsac/PointMass-v0 with gymnasium)
from fastsac._process import tune_process
from fastsac.batch import Batch
from fastsac.buffers import ReplayBuffer
from fastsac.config import SACConfig, TrainConfig
from fastsac.sac import SAC
from fastsac.trainer import TrainResult, train

__all__ = ["SAC", "Batch", "ReplayBuffer", "SACConfig", "TrainConfig", "TrainResult",
           "__version__", "train", "tune_process"]
