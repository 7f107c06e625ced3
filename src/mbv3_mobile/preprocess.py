"""Preprocessing as data: it travels with every checkpoint and into every artifact's manifest, so
an app reproduces exactly what the model saw in training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .config import check_resolution
from .errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """RGB image -> float tensor NCHW: resize to `resolution` x `resolution` (bilinear, no crop),
    scale to [0, 1], subtract `mean` and divide by `std` per channel."""

    resolution: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "bilinear"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    value_range: tuple[float, float] = field(default=(0.0, 1.0))

    def __post_init__(self) -> None:
        check_resolution(self.resolution)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "value_range", tuple(float(v) for v in self.value_range))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("mean and std need one value per RGB channel (3 each)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")
        if self.resize != "bilinear":
            raise ConfigError(f"unsupported resize rule {self.resize!r}; only 'bilinear' is implemented")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(**data)

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) floats in [0, 1] -> normalised model input."""
        mean = torch.tensor(self.mean, dtype=images01.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images01.dtype).view(1, 3, 1, 1)
        return (images01 - mean) / std

    def image_to_tensor(self, image) -> torch.Tensor:
        """A PIL image (any mode) -> (3, R, R) normalised tensor, as an app should do it."""
        from PIL import Image

        rgb = image.convert("RGB").resize((self.resolution, self.resolution), Image.BILINEAR)
        array = np.asarray(rgb, dtype=np.float32) / 255.0
        return self.normalize(torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0))[0]
