"""mbv3-mobile: MobileNetV3 (Howard et al. 2019) from PyTorch to phones.

The curated API is resolved lazily (PEP 562), so `import mbv3_mobile.core` (what mobile_harness
uses) does not import torch and the model code.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "Checkpoint": "mbv3_mobile.model.checkpoint",
    "CheckpointError": "mbv3_mobile.model.checkpoint",
    "load_checkpoint": "mbv3_mobile.model.checkpoint",
    "save_checkpoint": "mbv3_mobile.model.checkpoint",
    "ModelConfig": "mbv3_mobile.model.config",
    "MobileNetV3": "mbv3_mobile.model.network",
    "build_model": "mbv3_mobile.model.network",
    "mobilenet_v3_large": "mbv3_mobile.model.network",
    "mobilenet_v3_small": "mbv3_mobile.model.network",
    "Preprocessing": "mbv3_mobile.data.preprocess",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mbv3_mobile' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
