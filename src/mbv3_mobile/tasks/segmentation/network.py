"""LR-ASPP ("Lite Reduced Atrous Spatial Pyramid Pooling", the paper's section 6.3) on a
MobileNetV3 backbone, with torchvision's exact state_dict layout (`lraspp_mobilenet_v3_large`:
`backbone.N` = the classifier's `features.N`, `classifier.{cbr,scale,low_classifier,high_classifier}`).

The head: a 1x1 conv + BN + ReLU branch on the last stage (output stride 16, dilated), gated by a
sigmoid of its globally pooled features (torchvision's form of the paper's large-kernel pooling),
upsampled bilinearly to the 1/8 features; a 1x1 classifier on each, summed, then upsampled to the
input. `forward` returns that tensor (N x classes x H x W): torchvision's `model(x)["out"]`, as a
tensor because every export format wants one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mbv3_mobile.core.errors import ConfigError
from mbv3_mobile.model.config import ModelConfig
from mbv3_mobile.model.network import build_features, init_like_torchvision

VOC_CLASSES = 21  # torchvision's default head: Pascal VOC's 20 classes + background


@dataclass(frozen=True)
class SegmentationConfig:
    """Everything that fixes an LR-ASPP model's layout (serialised into checkpoints and manifests)."""

    arch: str = "large"
    width: float = 1.0
    num_classes: int = VOC_CLASSES
    reduced_tail: bool = False  # torchvision's lraspp_mobilenet_v3_large: full tail; the paper: reduced
    inter_channels: int = 128  # the paper's and torchvision's head width
    minimal: bool = False

    def __post_init__(self) -> None:
        self.backbone()  # arch / width checks
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.inter_channels < 1:
            raise ConfigError(f"inter_channels must be >= 1, got {self.inter_channels}")

    def backbone(self) -> ModelConfig:
        return ModelConfig(arch=self.arch, width=self.width, minimal=self.minimal, dilated=True,
                           reduced_tail=self.reduced_tail)

    @property
    def name(self) -> str:
        tag = "_minimal" if self.minimal else ""
        tail = "_reduced" if self.reduced_tail else ""
        return f"lraspp_mobilenet_v3_{self.arch}{tag}_{int(round(self.width * 100)):03d}{tail}"

    def taps(self) -> tuple[int, int]:
        """(low, high): the `backbone.N` indices whose outputs the head reads, found as torchvision
        does: the strided stages C1..C4 between the stem and the last conv; low = C2 (output stride
        8), high = the last layer (output stride 16)."""
        blocks = self.backbone().blocks()
        stages = [0] + [i + 1 for i, b in enumerate(blocks) if b.stride > 1] + [len(blocks) + 1]
        return stages[-4], stages[-1]

    def to_dict(self) -> dict:
        return {"arch": self.arch, "width": self.width, "num_classes": self.num_classes,
                "reduced_tail": self.reduced_tail, "inter_channels": self.inter_channels, "minimal": self.minimal}

    @classmethod
    def from_dict(cls, data: dict) -> SegmentationConfig:
        known = set(cls().to_dict())
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown segmentation config keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)


class LRASPPHead(nn.Module):
    def __init__(self, low_ch: int, high_ch: int, num_classes: int, inter_ch: int) -> None:
        super().__init__()
        # nn.BatchNorm2d's own eps (1e-5) here, unlike the backbone's 1e-3: torchvision's head
        self.cbr = nn.Sequential(nn.Conv2d(high_ch, inter_ch, 1, bias=False), nn.BatchNorm2d(inter_ch), nn.ReLU())
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_ch, inter_ch, 1, bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_ch, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_ch, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    def __init__(self, config: SegmentationConfig) -> None:
        super().__init__()
        self.config = config
        self.low_index, self.high_index = config.taps()
        # torchvision's IntermediateLayerGetter keeps the layers up to the last one it returns:
        # all of them here, under the same `backbone.N` names
        self.backbone = build_features(config.backbone())
        low_ch = _out_channels(self.backbone[self.low_index])
        high_ch = _out_channels(self.backbone[self.high_index])
        self.classifier = LRASPPHead(low_ch, high_ch, config.num_classes, config.inter_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torchvision initialises the backbone as a classifier does and leaves the head at
        # PyTorch's defaults; the same here, so from-scratch runs start alike.
        init_like_torchvision(self.backbone)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) backbone features: output strides 8 and 16."""
        low = x
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i == self.low_index:
                low = x
        return low, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.classifier(*self.features(x))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh 1x1 classifiers for `num_classes` (transfer learning to other labels); the rest stays."""
        head = self.classifier
        head.low_classifier = nn.Conv2d(head.low_classifier.in_channels, num_classes, 1)
        head.high_classifier = nn.Conv2d(head.high_classifier.in_channels, num_classes, 1)
        self.config = SegmentationConfig(**{**self.config.to_dict(), "num_classes": num_classes})

    def init_backbone(self, classifier_state: dict[str, torch.Tensor]) -> list[str]:
        """Load a classification checkpoint's `features.*` (ours or torchvision's: the same names)
        into the backbone; its classifier is dropped. Returns the keys it loaded. Dilation changes
        no weight's shape; a reduced tail does, and is refused with the layer that differs."""
        own = self.backbone.state_dict()
        picked = {k.removeprefix("features."): v for k, v in classifier_state.items() if k.startswith("features.")}
        missing, extra = sorted(set(own) - set(picked)), sorted(set(picked) - set(own))
        clash = [k for k in own if k in picked and picked[k].shape != own[k].shape]
        if missing or extra or clash:
            what = (f"lacks features.{missing[0]}" if missing else f"has features.{extra[0]}, which it does not"
                    if extra else f"has features.{clash[0]} of shape {tuple(picked[clash[0]].shape)}, "
                                  f"not {tuple(own[clash[0]].shape)}")
            raise ConfigError(f"that classifier cannot initialise the {self.config.name} backbone: it {what} "
                              f"(the same arch, width and tail are needed)")
        self.backbone.load_state_dict(picked, strict=True)
        return sorted(f"features.{k}" for k in own)


def _out_channels(layer: nn.Module) -> int:
    return [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def lraspp_mobilenet_v3_large(*, width: float = 1.0, num_classes: int = VOC_CLASSES, reduced_tail: bool = False,
                              minimal: bool = False) -> LRASPP:
    return LRASPP(SegmentationConfig(arch="large", width=width, num_classes=num_classes, reduced_tail=reduced_tail,
                                     minimal=minimal))


def lraspp_mobilenet_v3_small(*, width: float = 1.0, num_classes: int = VOC_CLASSES, reduced_tail: bool = False,
                              minimal: bool = False) -> LRASPP:
    return LRASPP(SegmentationConfig(arch="small", width=width, num_classes=num_classes, reduced_tail=reduced_tail,
                                     minimal=minimal))
