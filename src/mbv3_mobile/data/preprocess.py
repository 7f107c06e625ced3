"""Preprocessing as data: it travels with every checkpoint and into every artifact's manifest, so
an app reproduces exactly what the model saw in training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mbv3_mobile.core.errors import ConfigError
from mbv3_mobile.model.config import check_resolution

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


# Normalised pixels stay within a few units of 0 for any sane mean/std (ImageNet: -2.2..2.7); raw
# 0..255 pixels handed in by mistake are far above this.
_RAW_PIXEL_LIMIT = 20.0


def check_model_input(images, shape: tuple[int, ...], what: str) -> None:
    """Refuse images a model artifact cannot take, naming what is wrong and how to fix it:
    `shape` is the artifact's input (N, 3, R, R) (N is not checked). Catches another size, gray or
    RGBA channels, uint8 / raw 0..255 pixels instead of normalised floats."""
    from mbv3_mobile.core.errors import UserError

    got = tuple(images.shape)
    fix = (f"decode to RGB, resize to {shape[-2]}x{shape[-1]} and normalise with the model's preprocessing "
           "(mbv3_mobile.data.BatchTransform / Preprocessing.normalize)")
    if len(got) != 4 or got[1:] != tuple(shape[1:]):
        channels = {1: " (gray: 1 channel)", 4: " (RGBA: 4 channels)"}.get(got[1] if len(got) == 4 else 0, "")
        raise UserError(f"{what} takes images of shape (N, {', '.join(map(str, shape[1:]))}); got {got}{channels}: {fix}")
    if not (images.dtype.is_floating_point if isinstance(images, torch.Tensor) else np.issubdtype(images.dtype, np.floating)):
        raise UserError(f"{what} takes normalised float32 images; got {images.dtype} (raw pixels?): {fix}")
    peak = float(images.abs().max()) if len(images) else 0.0
    if peak > _RAW_PIXEL_LIMIT:
        raise UserError(f"{what}: image values reach {peak:.0f}, which looks like raw 0..255 pixels, not normalised ones: {fix}")
