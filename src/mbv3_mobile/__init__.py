"""mbv3-mobile: MobileNetV3 (Howard et al. 2019) from PyTorch to phones."""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import ModelConfig
from .model import MobileNetV3, build_model, mobilenet_v3_large, mobilenet_v3_small
from .preprocess import Preprocessing

__version__ = "0.1.0"
__all__ = [
    "Checkpoint",
    "CheckpointError",
    "MobileNetV3",
    "ModelConfig",
    "Preprocessing",
    "build_model",
    "load_checkpoint",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "save_checkpoint",
]
