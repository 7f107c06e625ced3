"""MobileNetV3 architectures as data: the paper's Tables 1 and 2, one row per bottleneck.

Channel counts in the rows are the paper's (width 1.0); `resolve()` applies a width multiplier the
way torchvision and TF-slim do (round to a multiple of 8, never more than 10 % below the exact
value), so a width-scaled model has torchvision's exact state_dict layout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from mbv3_mobile.core.errors import ConfigError

Arch = Literal["large", "small"]
Activation = Literal["RE", "HS"]

ARCHS: tuple[str, ...] = ("large", "small")
WIDTHS: tuple[float, ...] = (0.35, 0.5, 0.75, 1.0, 1.25)
MIN_RESOLUTION = 32  # five stride-2 stages: 32 px is the smallest input that keeps a 1x1 map


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `value` to a multiple of `divisor`, never dropping more than 10 % (TF-slim's rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < MIN_RESOLUTION:
        raise ConfigError(
            f"input resolution {resolution!r} is not supported: MobileNetV3 downsamples 32x, "
            f"use an integer >= {MIN_RESOLUTION}"
        )
    return resolution


@dataclass(frozen=True)
class BlockSpec:
    """One bottleneck row of Table 1/2: `in_ch -> exp_ch -> out_ch` with a k x k depthwise conv."""

    in_ch: int
    kernel: int
    exp_ch: int
    out_ch: int
    use_se: bool
    activation: Activation
    stride: int
    dilation: int = 1  # > 1: the depthwise conv is dilated and its stride dropped (segmentation)

    def scaled(self, width: float) -> BlockSpec:
        return replace(
            self,
            in_ch=make_divisible(self.in_ch * width),
            exp_ch=make_divisible(self.exp_ch * width),
            out_ch=make_divisible(self.out_ch * width),
        )

    def minimal(self) -> BlockSpec:
        # TF-slim's "minimalistic" MobileNetV3: no SE, ReLU only, 3x3 depthwise kernels only.
        return replace(self, kernel=3, use_se=False, activation="RE")

    @property
    def se_channels(self) -> int:
        return make_divisible(self.exp_ch // 4, 8)

    @property
    def output_stride(self) -> int:
        """How much this row downsamples: its stride unless dilated in place of striding."""
        return 1 if self.dilation > 1 else self.stride


#            in  k  exp  out  SE     NL    s
LARGE_ROWS = (
    BlockSpec(16, 3, 16, 16, False, "RE", 1),
    BlockSpec(16, 3, 64, 24, False, "RE", 2),
    BlockSpec(24, 3, 72, 24, False, "RE", 1),
    BlockSpec(24, 5, 72, 40, True, "RE", 2),
    BlockSpec(40, 5, 120, 40, True, "RE", 1),
    BlockSpec(40, 5, 120, 40, True, "RE", 1),
    BlockSpec(40, 3, 240, 80, False, "HS", 2),
    BlockSpec(80, 3, 200, 80, False, "HS", 1),
    BlockSpec(80, 3, 184, 80, False, "HS", 1),
    BlockSpec(80, 3, 184, 80, False, "HS", 1),
    BlockSpec(80, 3, 480, 112, True, "HS", 1),
    BlockSpec(112, 3, 672, 112, True, "HS", 1),
    BlockSpec(112, 5, 672, 160, True, "HS", 2),
    BlockSpec(160, 5, 960, 160, True, "HS", 1),
    BlockSpec(160, 5, 960, 160, True, "HS", 1),
)
SMALL_ROWS = (
    BlockSpec(16, 3, 16, 16, True, "RE", 2),
    BlockSpec(16, 3, 72, 24, False, "RE", 2),
    BlockSpec(24, 3, 88, 24, False, "RE", 1),
    BlockSpec(24, 5, 96, 40, True, "HS", 2),
    BlockSpec(40, 5, 240, 40, True, "HS", 1),
    BlockSpec(40, 5, 240, 40, True, "HS", 1),
    BlockSpec(40, 5, 120, 48, True, "HS", 1),
    BlockSpec(48, 5, 144, 48, True, "HS", 1),
    BlockSpec(48, 5, 288, 96, True, "HS", 2),
    BlockSpec(96, 5, 576, 96, True, "HS", 1),
    BlockSpec(96, 5, 576, 96, True, "HS", 1),
)
# Stem width, last 1x1 conv (6x the last block's output, as in the paper) and the
# penultimate fully connected width (Table 1: 1280, Table 2: 1024).
_ARCH_ROWS = {"large": LARGE_ROWS, "small": SMALL_ROWS}
_HEAD_CH = {"large": 1280, "small": 1024}
# The last stage: the three rows the paper's segmentation models change (section 6.3): "reduced
# tail" halves their channels (all but the first row's input and expansion), "dilated" replaces
# their stride-2 downsampling with dilation 2 (output stride 16, as torchvision's backbones do).
TAIL_ROWS = 3


def _reduce_tail(rows: list[BlockSpec]) -> list[BlockSpec]:
    first, *rest = rows[-TAIL_ROWS:]
    tail = [replace(first, out_ch=first.out_ch // 2)]
    tail += [replace(r, in_ch=r.in_ch // 2, exp_ch=r.exp_ch // 2, out_ch=r.out_ch // 2) for r in rest]
    return rows[:-TAIL_ROWS] + tail


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes a model's layout. Serialised into every checkpoint and manifest."""

    arch: str = "small"
    width: float = 1.0
    num_classes: int = 1000
    dropout: float = 0.2
    minimal: bool = False
    dilated: bool = False  # last stage dilated instead of strided: output stride 16 (segmentation)
    reduced_tail: bool = False  # last stage at half the channels (the paper's segmentation backbone)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        if self.width not in WIDTHS:
            raise ConfigError(
                f"width {self.width} is not supported: choose one of {', '.join(map(str, WIDTHS))}"
            )
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def name(self) -> str:
        tag = "_minimal" if self.minimal else ""
        tail = ("_reduced" if self.reduced_tail else "") + ("_dilated" if self.dilated else "")
        return f"mobilenet_v3_{self.arch}{tag}_{int(round(self.width * 100)):03d}{tail}"

    def blocks(self) -> tuple[BlockSpec, ...]:
        rows = list(_ARCH_ROWS[self.arch])
        if self.reduced_tail:
            rows = _reduce_tail(rows)
        if self.dilated:
            rows = rows[:-TAIL_ROWS] + [replace(r, dilation=2) for r in rows[-TAIL_ROWS:]]
        rows = [row.scaled(self.width) for row in rows]
        if self.minimal:
            rows = [row.minimal() for row in rows]
        return tuple(rows)

    @property
    def stem_ch(self) -> int:
        return self.blocks()[0].in_ch

    @property
    def last_conv_ch(self) -> int:
        return 6 * self.blocks()[-1].out_ch

    @property
    def head_ch(self) -> int:
        # torchvision scales the penultimate FC with the width (halved with the tail); keep its layout.
        return make_divisible(_HEAD_CH[self.arch] // (2 if self.reduced_tail else 1) * self.width)

    def to_dict(self) -> dict:
        out = {
            "arch": self.arch,
            "width": self.width,
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "minimal": self.minimal,
        }
        # only when set: a classifier's config (and every file that records it) stays as it was
        out.update({k: True for k in ("dilated", "reduced_tail") if getattr(self, k)})
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {"arch", "width", "num_classes", "dropout", "minimal", "dilated", "reduced_tail"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)
