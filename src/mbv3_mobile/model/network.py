"""MobileNetV3 modules with torchvision's exact state_dict layout.

Module names mirror torchvision's `mobilenetv3.py` (features.N.block.M.{0,1}, SE fc1/fc2,
classifier.{0,3}) so its published `.pth` files load with `strict=True`. Forward passes contain
no data-dependent control flow, so every variant goes through `torch.export` unchanged.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from mbv3_mobile.model.config import BlockSpec, ModelConfig

# The paper (and torchvision, TF-slim) use BN eps 1e-3 and a slow running-stat momentum.
BatchNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


def _activation(kind: str) -> type[nn.Module]:
    return nn.Hardswish if kind == "HS" else nn.ReLU


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation, indexed 0/1/2 like torchvision."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
        dilation: int = 1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2 * dilation, dilation=dilation, groups=groups,
                      bias=False),
            BatchNorm(out_ch),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """SE with a ReLU squeeze and a hard-sigmoid gate (paper section 5.3)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class InvertedResidual(nn.Module):
    """Bottleneck: 1x1 expand (skipped when exp == in), kxk depthwise, optional SE, 1x1 project."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        act = _activation(spec.activation)
        layers: list[nn.Module] = []
        if spec.exp_ch != spec.in_ch:
            layers.append(ConvBNAct(spec.in_ch, spec.exp_ch, 1, activation=act))
        layers.append(ConvBNAct(spec.exp_ch, spec.exp_ch, spec.kernel, spec.output_stride, spec.exp_ch, activation=act,
                                dilation=spec.dilation))
        if spec.use_se:
            layers.append(SqueezeExcitation(spec.exp_ch, spec.se_channels))
        layers.append(ConvBNAct(spec.exp_ch, spec.out_ch, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = spec.stride == 1 and spec.in_ch == spec.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        # Out-of-place add: an in-place `+=` would mutate an activation that autograd/export track.
        return out + x if self.use_res_connect else out


def init_like_torchvision(module: nn.Module) -> None:
    """torchvision's MobileNetV3 initialisation of every conv, BN and linear layer in `module`, so
    from-scratch runs match the reference recipe."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def build_features(config: ModelConfig) -> nn.Sequential:
    """The backbone: stem, the bottleneck rows, the last 1x1 conv (`features.N` in torchvision);
    the classifier and the task heads sit on it."""
    blocks = config.blocks()
    hs = nn.ReLU if config.minimal else nn.Hardswish
    layers: list[nn.Module] = [ConvBNAct(3, config.stem_ch, 3, stride=2, activation=hs)]
    layers += [InvertedResidual(spec) for spec in blocks]
    layers.append(ConvBNAct(blocks[-1].out_ch, config.last_conv_ch, 1, activation=hs))
    return nn.Sequential(*layers)


class MobileNetV3(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        hs = nn.ReLU if config.minimal else nn.Hardswish
        self.features = build_features(config)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(config.last_conv_ch, config.head_ch),
            hs(),
            nn.Dropout(p=config.dropout),
            nn.Linear(config.head_ch, config.num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_like_torchvision(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last Linear for transfer learning; the rest of the head keeps its weights."""
        self.classifier[3] = nn.Linear(self.config.head_ch, num_classes)
        nn.init.normal_(self.classifier[3].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[3].bias)
        self.config = ModelConfig(**{**self.config.to_dict(), "num_classes": num_classes})


def build_model(config: ModelConfig | None = None, /, **overrides) -> MobileNetV3:
    """Build from a ModelConfig and/or keyword fields (`arch=`, `width=`, `num_classes=`, ...)."""
    base = config.to_dict() if config is not None else {}
    return MobileNetV3(ModelConfig(**{**base, **overrides}))


def mobilenet_v3_large(
    *, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2, minimal: bool = False
) -> MobileNetV3:
    return build_model(
        arch="large", width=width, num_classes=num_classes, dropout=dropout, minimal=minimal
    )


def mobilenet_v3_small(
    *, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2, minimal: bool = False
) -> MobileNetV3:
    return build_model(
        arch="small", width=width, num_classes=num_classes, dropout=dropout, minimal=minimal
    )
