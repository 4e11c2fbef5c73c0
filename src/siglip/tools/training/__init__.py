"""Training with the sigmoid loss, or of an image classifier (`task="classify"`): `TrainConfig` and `train` (also
`siglip train` on the command line)."""

from . import classify  # noqa: F401  (registers the "classify" task with the loop)
from .data import DataError
from .trainer import TrainConfig, latest_checkpoint, train

__all__ = ["DataError", "TrainConfig", "latest_checkpoint", "train"]
