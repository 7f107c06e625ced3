"""Preprocessing as data: it travels with every checkpoint and into every artifact's manifest, so
an app reproduces exactly what the model saw in training.

Two geometries:
- `resize_shorter = None` (this project's own models): the whole picture resized to R x R, no crop;
- `resize_shorter = S`: the shorter side resized to S (aspect kept; the longer side is
  `int(S * long / short)`, torchvision's rule), then the central R x R crop (torchvision's
  `CenterCrop` rounding). torchvision's and timm's eval transforms are of this kind.

One reference implementation, `Preprocessing.picture` (Pillow, antialiased when shrinking, as
torchvision's and timm's PIL pipelines are), turns a picture file into the model's input. Every verify
stage, every runner in parity and the bench read picture files through it; the app snippets in
each published README implement the same resize + crop, and `describe()` says it in words.

Presets (`PRESETS`, `--preset NAME`) for checkpoints whose file cannot say how they were trained:
torchvision-v1 (bilinear, 256 -> 224), torchvision-v2 (bilinear, 232 -> 224), timm (bicubic,
crop_pct 0.875), timm-tf (`tf_` ports: bicubic, crop_pct 0.875, mean = std = 0.5), mbv3 (ours).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from mbv3_mobile.core.errors import ConfigError
from mbv3_mobile.model.config import check_resolution

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")


def resize_and_crop(image, shorter: int, resolution: int, resample):
    """torchvision's Resize(shorter) then CenterCrop(resolution) on a PIL image, with `resample`
    (a mask needs NEAREST: its values are class indices)."""
    w, h = image.size
    size = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)  # torchvision Resize(int)
    image = image.resize(size, resample)
    w, h = image.size
    top, left = int(round((h - resolution) / 2.0)), int(round((w - resolution) / 2.0))  # CenterCrop
    return image.crop((left, top, left + resolution, top + resolution))


@dataclass(frozen=True)
class Preprocessing:
    """Picture -> float tensor NCHW: geometry (see the module docstring), scale to [0, 1], subtract
    `mean` and divide by `std` per channel. `preset` names where the settings came from."""

    resolution: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    resize_shorter: int | None = None
    preset: str = "mbv3"
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
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"unsupported interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
        if self.resize_shorter is not None and self.resize_shorter < self.resolution:
            raise ConfigError(f"resize {self.resize_shorter} is smaller than the crop {self.resolution}: "
                              "the shorter side must be resized to at least the input size")

    @property
    def crops(self) -> bool:
        return self.resize_shorter is not None

    @property
    def crop_fraction(self) -> float:
        """Share of the resized shorter side the centre crop keeps (timm's crop_pct); 1.0 without crop."""
        return self.resolution / self.resize_shorter if self.resize_shorter else 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        data = dict(data)
        if "resize" in data:  # checkpoints written before presets: "resize" named the interpolation
            data.setdefault("interpolation", data.pop("resize"))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_resolution(self, resolution: int) -> Preprocessing:
        """The same recipe at another input size (the resize keeps its ratio to the crop)."""
        if self.resize_shorter is None:
            return replace(self, resolution=resolution)
        return replace(self, resolution=resolution, resize_shorter=int(round(resolution / self.crop_fraction)))

    def describe(self) -> str:
        """The recipe in words an app developer can follow."""
        r = self.resolution
        interp = self.interpolation
        if self.resize_shorter:
            geometry = (f"resize the shorter side to {self.resize_shorter} px keeping the aspect ratio ({interp}, "
                        f"antialiased), then take the central {r}x{r} crop")
        else:
            geometry = f"resize the whole picture to {r}x{r} ({interp}, antialiased; no crop, aspect not kept)"
        return (f"decode to 8-bit RGB; {geometry}; divide by 255; subtract mean {_fmt(self.mean)} and divide by "
                f"std {_fmt(self.std)} per channel; NCHW float32")

    # ------------------------------------------------------------ the reference implementation

    def geometry(self, image):
        """A PIL image (any 8-bit mode) -> the R x R RGB PIL image the model sees (before scaling)."""
        from PIL import Image

        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[self.interpolation]
        rgb = image.convert("RGB")
        if not self.resize_shorter:
            return rgb.resize((self.resolution, self.resolution), resample)
        return resize_and_crop(rgb, self.resize_shorter, self.resolution, resample)

    def mask_geometry(self, mask):
        """A mask (PIL "L"/"P", class index per pixel) -> R x R by the same geometry, nearest-neighbour:
        class indices are never interpolated."""
        from PIL import Image

        if not self.resize_shorter:
            return mask.resize((self.resolution, self.resolution), Image.NEAREST)
        return resize_and_crop(mask, self.resize_shorter, self.resolution, Image.NEAREST)

    def picture(self, image) -> torch.Tensor:
        """A PIL image -> (3, R, R) normalised float32 tensor: what an app must feed the model."""
        array = np.asarray(self.geometry(image), dtype=np.uint8).transpose(2, 0, 1).copy()
        return self.normalize(torch.from_numpy(array).unsqueeze(0).float().div_(255.0))[0]

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) floats in [0, 1] -> normalised model input."""
        mean = torch.tensor(self.mean, dtype=images01.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images01.dtype).view(1, 3, 1, 1)
        return (images01 - mean) / std


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _crop_pct(resolution: int, crop_pct: float) -> int:
    return int(resolution / crop_pct)  # timm: scale_size = floor(img_size / crop_pct)


# Every preset at 224 px; `preset(name, resolution)` scales the resize with the input size.
PRESETS: dict[str, Preprocessing] = {
    "torchvision-v1": Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 256, "torchvision-v1"),
    "torchvision-v2": Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 232, "torchvision-v2"),
    "timm": Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bicubic", _crop_pct(224, 0.875), "timm"),
    "timm-tf": Preprocessing(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", _crop_pct(224, 0.875), "timm-tf"),
    "mbv3": Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", None, "mbv3"),
}


def preset(name: str, resolution: int = 224) -> Preprocessing:
    if name not in PRESETS:
        raise ConfigError(f"unknown preprocessing preset {name!r}: choose one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    return base if resolution == base.resolution else base.with_resolution(resolution)


def preset_for_source(source: str, *, minimal: bool = False) -> str:
    """The preset a checkpoint of this origin was most likely trained with. A torchvision
    state_dict cannot tell V1 from V2 weights: V1 is assumed (say --preset torchvision-v2)."""
    if source == "torchvision":
        return "torchvision-v1"
    if source == "timm":
        return "timm-tf" if minimal else "timm"  # timm's minimalistic weights are the tf_ ports
    return "mbv3"


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
           "(mbv3_mobile.data.preprocess.Preprocessing.picture)")
    if len(got) != 4 or got[1:] != tuple(shape[1:]):
        channels = {1: " (gray: 1 channel)", 4: " (RGBA: 4 channels)"}.get(got[1] if len(got) == 4 else 0, "")
        raise UserError(f"{what} takes images of shape (N, {', '.join(map(str, shape[1:]))}); got {got}{channels}: {fix}")
    if not (images.dtype.is_floating_point if isinstance(images, torch.Tensor) else np.issubdtype(images.dtype, np.floating)):
        raise UserError(f"{what} takes normalised float32 images; got {images.dtype} (raw pixels?): {fix}")
    peak = float(images.abs().max()) if len(images) else 0.0
    if peak > _RAW_PIXEL_LIMIT:
        raise UserError(f"{what}: image values reach {peak:.0f}, which looks like raw 0..255 pixels, not normalised ones: {fix}")
