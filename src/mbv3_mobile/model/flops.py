"""Params/MACs report. MACs come from `torch.utils.flop_counter` (FLOPs / 2), counting conv and
matmul/linear only, the convention of the paper and torchvision's model table (element-wise ops such
as BN, activations, SE scaling and residual adds are not counted)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mbv3_mobile.model.config import check_resolution


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    out_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class ModelProfile:
    params: int
    macs: int
    resolution: int
    rows: tuple[LayerRow, ...]

    def table(self) -> str:
        lines = [f"{'layer':<14}{'type':<18}{'output':<20}{'params':>12}{'MMACs':>10}"]
        for r in self.rows:
            shape = "x".join(map(str, r.out_shape))
            lines.append(f"{r.name:<14}{r.kind:<18}{shape:<20}{r.params:>12,}{r.macs / 1e6:>10.2f}")
        lines.append(f"{'total':<52}{self.params:>12,}{self.macs / 1e6:>10.2f}")
        return "\n".join(lines)


def _top_level_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """A classifier's `features.N`, pool and classifier; any other network (a task's: LR-ASPP's
    `backbone.N` and head) its top-level children, one level into a Sequential."""
    if isinstance(getattr(model, "features", None), nn.Sequential):
        layers = [(f"features.{i}", m) for i, m in enumerate(model.features)]
        return layers + [("avgpool", model.avgpool), ("classifier", model.classifier)]
    rows = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            rows += [(f"{name}.{i}", m) for i, m in enumerate(child)]
        else:
            rows.append((name, child))
    return rows


def profile_model(model: nn.Module, resolution: int = 224) -> ModelProfile:
    check_resolution(resolution)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, layer in _top_level_layers(model):
        hooks.append(
            layer.register_forward_hook(
                lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape)) if torch.is_tensor(out) else None
            )
        )
    counter = FlopCounterMode(display=False, depth=None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, resolution, resolution))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    rows = []
    for name, layer in _top_level_layers(model):
        flops = sum(per_module.get(f"{root}.{name}", {}).values())
        rows.append(
            LayerRow(
                name=name,
                kind=type(layer).__name__,
                out_shape=_shape(shapes.get(name)),
                params=sum(p.numel() for p in layer.parameters()),
                macs=flops // 2,
            )
        )
    return ModelProfile(
        params=sum(p.numel() for p in model.parameters()),
        macs=counter.get_total_flops() // 2,
        resolution=resolution,
        rows=tuple(rows),
    )


def _shape(out) -> tuple[int, ...]:
    return tuple(out) if out is not None else ()
