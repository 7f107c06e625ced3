"""LR-ASPP checkpoints: ours (.safetensors, `extra.task = "segmentation"`), torchvision's
`lraspp_mobilenet_v3_large` state_dict (any backbone torchvision builds: the variant is read from
the shapes), and a classifier's backbone on request (`init_backbone`). Loaded weights-only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.model.checkpoint import (
    FORMAT_TAG,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
    state_layout,
)
from mbv3_mobile.model.config import ARCHS, WIDTHS
from mbv3_mobile.tasks.segmentation.network import LRASPP, SegmentationConfig

TASK = "segmentation"
_SHOW = 5


def _layout(config: SegmentationConfig) -> dict[str, tuple[int, ...]]:
    return state_layout(lambda: LRASPP(config))


def guess_config(state_dict: dict[str, torch.Tensor]) -> SegmentationConfig | None:
    """The LR-ASPP variant whose layout matches `state_dict` exactly, if any."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    head, inter = shapes.get("classifier.low_classifier.weight"), shapes.get("classifier.high_classifier.weight")
    if head is None or inter is None:
        return None
    for arch in ARCHS:
        for width in WIDTHS:
            for reduced_tail in (False, True):
                for minimal in (False, True):
                    cfg = SegmentationConfig(arch=arch, width=width, num_classes=head[0], reduced_tail=reduced_tail,
                                             inter_channels=inter[1], minimal=minimal)
                    if _layout(cfg) == shapes:
                        return cfg
    return None


def load_segmentation_checkpoint(path: str | os.PathLike, *, init_backbone: bool = False,
                                 config: SegmentationConfig | None = None) -> Checkpoint:
    """Any supported LR-ASPP checkpoint as a model in eval mode. A classifier (ours, torchvision's or
    timm's) is refused unless `init_backbone`: then its backbone initialises a new LR-ASPP of the
    same arch and width (`config`, else a full tail and 21 classes), and the head starts fresh."""
    state_dict, meta = read_state_dict(path)
    extra = json.loads(meta.get("extra", "{}")) if meta.get("format") == FORMAT_TAG else {}
    if meta.get("format") == FORMAT_TAG and extra.get("task") == TASK:
        own = SegmentationConfig.from_dict(json.loads(meta["config"]))
        _load_into(model := LRASPP(own), state_dict, path)
        return Checkpoint(model=model.eval(), config=own, extra=extra, source="mbv3-mobile",
                          preprocessing=Preprocessing.from_dict(json.loads(meta["preprocessing"]))
                          if "preprocessing" in meta else None,
                          labels=json.loads(meta["labels"]) if "labels" in meta else None)
    if "classifier.low_classifier.weight" in state_dict:
        guessed = guess_config(state_dict)
        if guessed is None:
            raise CheckpointError(f"{path}: an LR-ASPP state_dict that matches no MobileNetV3 backbone this project "
                                  f"builds (first keys: {list(state_dict)[:_SHOW]})")
        _load_into(model := LRASPP(guessed), state_dict, path)
        return Checkpoint(model=model.eval(), config=guessed, source="torchvision")
    if any(k.startswith("features.") for k in state_dict) or "conv_stem.weight" in state_dict:
        if not init_backbone:
            raise CheckpointError(f"{path} is a classification checkpoint, not a segmentation one: give it as "
                                  "--init-backbone FILE to start an LR-ASPP from its backbone (the head then trains "
                                  "from scratch)")
        classifier = load_checkpoint(path)
        base = config or SegmentationConfig()
        target = SegmentationConfig(**{**base.to_dict(), "arch": classifier.config.arch,
                                       "width": classifier.config.width, "minimal": classifier.config.minimal})
        model = LRASPP(target)
        model.init_backbone(classifier.model.state_dict())
        return Checkpoint(model=model.eval(), config=target, preprocessing=classifier.preprocessing,
                          extra={"task": TASK, "backbone_from": classifier.source}, source=classifier.source)
    raise CheckpointError(f"{path}: not an LR-ASPP or MobileNetV3 checkpoint (first keys: {list(state_dict)[:_SHOW]})")


def _load_into(model: LRASPP, state_dict: dict[str, torch.Tensor], path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    wrong = [k for k in expected if got.get(k) != expected[k]] + [k for k in got if k not in expected]
    if wrong:
        raise CheckpointError(f"{path} does not fit {model.config.name}: {len(wrong)} keys differ, first "
                              f"{', '.join(wrong[:_SHOW])}")
    model.load_state_dict(state_dict, strict=True)


def save_segmentation_checkpoint(path: str | os.PathLike, model: LRASPP, *, preprocessing: Preprocessing | None = None,
                                 labels: list[str] | None = None, extra: dict | None = None) -> Path:
    """Our .safetensors (the classifier's format), with the task in its metadata."""
    return save_checkpoint(path, model, preprocessing=preprocessing, labels=labels, extra={**(extra or {}), "task": TASK})
