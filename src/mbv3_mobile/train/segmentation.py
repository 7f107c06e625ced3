"""What `train.loop` needs to train LR-ASPP: paired image + mask folders (or the composite test bed),
the model (from scratch, from a classifier's backbone, or fine-tuned from a segmentation checkpoint),
cross-entropy over labelled pixels, and per-epoch mIoU and pixel accuracy on validation pictures.
At the end it writes the per-class IoU, a confusion matrix and a sheet of predicted masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.core.paths import cache_root
from mbv3_mobile.data.datasets import FASHION_MNIST_NAMES
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.data.segmentation import (
    IGNORE_INDEX,
    SegmentationArrays,
    augment_pairs,
    composite_folder,
    load_segmentation_folder,
    scan_segmentation_folder,
)
from mbv3_mobile.tasks.segmentation.checkpoint import load_segmentation_checkpoint, save_segmentation_checkpoint
from mbv3_mobile.tasks.segmentation.figures import confusion_matrix, iou_per_class, miou, pixel_accuracy
from mbv3_mobile.tasks.segmentation.network import LRASPP, SegmentationConfig
from mbv3_mobile.tasks.segmentation.overlay import plot_masks
from mbv3_mobile.train.shipped import resolve

COMPOSITE = "composite"  # --dataset composite: the offline test bed, written to the cache on first use
COMPOSITE_PICTURES = 8000  # its training pictures, unless --max-train-images says otherwise
HEADLINE = "val_miou"
SUMMARY_KEYS = ("val_miou", "val_pixel_accuracy")
CURVES = {"loss": "cross-entropy per labelled pixel", "train": "train pixel accuracy (augmented)",
          "val": {"val_pixel_accuracy": "val pixel accuracy", "val_miou": "val mIoU"}, "axis": "%"}
SHEET_PICTURES = 6
MASKS_FILE = "masks.png"
CONFUSION_FILE = "confusion.png"


def _folder(cfg, spec: str) -> Path:
    if spec == COMPOSITE:
        return composite_folder(cache_root(), split="train", count=cfg.max_train_images or COMPOSITE_PICTURES,
                                resolution=cfg.resolution, seed=cfg.seed, progress=cfg.progress)
    return Path(spec)


def check_dataset(cfg) -> None:
    """Pairing and mask headers checked (no pixel decoded) before any worker starts."""
    if cfg.dataset in FASHION_MNIST_NAMES:
        raise UserError(f"--task segmentation needs masks: --dataset ROOT (ROOT/images/, ROOT/masks/, ROOT/labels.txt) "
                        f"or --dataset {COMPOSITE} (the offline test bed); {cfg.dataset!r} is a classification dataset")
    for spec in (cfg.dataset, cfg.val_dataset):
        if spec and spec != COMPOSITE:
            scan_segmentation_folder(spec)
    if cfg.val_dataset == COMPOSITE:
        raise UserError("--val-dataset composite: the composite test bed is made for training; validate on a split "
                        "of it (omit --val-dataset) or on a folder of your own")


def datasets(cfg) -> tuple[SegmentationArrays, SegmentationArrays, Preprocessing, list[str]]:
    check_dataset(cfg)
    composite = cfg.dataset == COMPOSITE
    data = load_segmentation_folder(_folder(cfg, cfg.dataset), cfg.resolution,
                                    limit=None if composite else cfg.max_train_images, seed=cfg.seed)
    if cfg.val_dataset:
        val = load_segmentation_folder(cfg.val_dataset, cfg.resolution)
        if val.labels != data.labels:
            raise UserError(f"{cfg.val_dataset}/labels.txt names {list(val.labels)}, but the training folder's names "
                            f"{list(data.labels)}; both need the same labels.txt")
        train_ds, val_ds = data, val
    else:
        train_ds, val_ds = data.split(cfg.val_fraction, seed=cfg.seed)
    # ImageNet statistics, as torchvision's LR-ASPP and every backbone it starts from
    return train_ds, val_ds, Preprocessing(resolution=cfg.resolution), list(data.labels)


def _config(cfg, num_classes: int) -> SegmentationConfig:
    return SegmentationConfig(arch=cfg.arch, width=cfg.width, num_classes=num_classes, minimal=cfg.minimal)


def _check_arch(cfg, path: str, flag: str, config) -> None:
    if (config.arch, config.width, config.minimal) != (cfg.arch, cfg.width, cfg.minimal):
        raise UserError(f"{flag} {path} is arch={config.arch} width={config.width} minimal={config.minimal}, but the "
                        f"run asks for arch={cfg.arch} width={cfg.width} minimal={cfg.minimal}; pass matching "
                        "--arch/--width/--minimal (the CLI takes them from the checkpoint when omitted)")


def make_model(cfg, classes: list[str]) -> LRASPP:
    """From scratch; from a classifier's backbone (`init_backbone`, new head); or fine-tuned from a
    segmentation checkpoint (`init_checkpoint`; fresh 1x1 classifiers when the labels differ)."""
    if cfg.init_backbone:
        ckpt = load_segmentation_checkpoint(resolve(cfg.init_backbone), init_backbone=True,
                                            config=_config(cfg, len(classes)))
        _check_arch(cfg, cfg.init_backbone, "--init-backbone", ckpt.config)
        return ckpt.model.train()
    if cfg.init_checkpoint:
        ckpt = load_segmentation_checkpoint(cfg.init_checkpoint)
        _check_arch(cfg, cfg.init_checkpoint, "--init-checkpoint", ckpt.config)
        model = ckpt.model
        if ckpt.config.num_classes != len(classes) or (ckpt.labels is not None and list(ckpt.labels) != classes):
            model.reset_classifier(len(classes))
        return model.train()
    return LRASPP(_config(cfg, len(classes)))


def model_from_config(config: dict) -> LRASPP:
    return LRASPP(SegmentationConfig.from_dict(config))


def backbone(model: LRASPP) -> nn.Module:
    return model.backbone


LABEL_SMOOTHING = 0.0  # the default when the run names none: torchvision's segmentation recipe uses none


def criterion(cfg) -> nn.Module:
    return nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX,
                               label_smoothing=LABEL_SMOOTHING if cfg.label_smoothing is None else cfg.label_smoothing)


def train_transform(cfg, pre: Preprocessing):
    """(uint8 images, uint8 masks, generator) -> (normalised, augmented images, int64 masks)."""

    def apply(images: torch.Tensor, masks: torch.Tensor, generator):
        x, m = images.float().div_(255.0), masks.long()
        if cfg.augment:
            x, m = augment_pairs(x, m, generator, translate=cfg.translate)
        return pre.normalize(x).contiguous(), m

    return apply


def correct(logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, counted) for the running training accuracy: labelled pixels."""
    labelled = masks != IGNORE_INDEX
    return ((logits.argmax(1) == masks) & labelled).sum(), labelled.sum()


@torch.no_grad()
def predict_batches(model: nn.Module, data: SegmentationArrays, pre: Preprocessing, device, *, batch: int = 64):
    """Per batch: (logits, masks), in order; streamed so memory is one batch of logits."""
    model.eval()
    for s in range(0, len(data), batch):
        x = pre.normalize(data.images[s : s + batch].float().div_(255.0)).to(device)
        yield model(x).float().cpu(), data.masks[s : s + batch].long()


def _confusion(model, data, pre, device) -> tuple[np.ndarray, float]:
    c = len(data.labels)
    total, loss_sum, labelled = np.zeros((c, c), np.int64), 0.0, 0
    for logits, masks in predict_batches(model, data, pre, device):
        keep = masks != IGNORE_INDEX
        loss_sum += float(F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum"))
        labelled += int(keep.sum())
        total += confusion_matrix(masks[keep], logits.argmax(1)[keep], c)
    return total, loss_sum / max(labelled, 1)


def validate(model: nn.Module, val_ds: SegmentationArrays, pre: Preprocessing, device) -> dict:
    confusion, loss = _confusion(model, val_ds, pre, device)
    return {"val_loss": loss, "val_miou": float(miou(confusion)), "val_pixel_accuracy": pixel_accuracy(confusion)}


def finish(out: Path, model: nn.Module, val_ds: SegmentationArrays, pre: Preprocessing, classes: list[str]) -> dict:
    """Per-class IoU and the confusion matrix (PNG) of the final model, and a sheet of its masks."""
    confusion, _ = _confusion(model, val_ds, pre, "cpu")
    iou = iou_per_class(confusion)
    plot_confusion(confusion, classes, out / CONFUSION_FILE)
    picks = np.linspace(0, len(val_ds) - 1, min(SHEET_PICTURES, len(val_ds))).round().astype(int)
    sample = val_ds.subset(picks)
    logits = torch.cat([lg for lg, _ in predict_batches(model, sample, pre, "cpu")])
    plot_masks(sample.images.permute(0, 2, 3, 1).numpy(), sample.masks.numpy(), logits.argmax(1).numpy().astype(np.uint8),
               classes, out / MASKS_FILE, title=f"{model.config.name}: validation pictures, mIoU "
                                                 f"{100 * float(miou(confusion)):.1f} %")
    return {"val_per_class_iou": {name: None if np.isnan(v) else float(v) for name, v in zip(classes, iou)},
            "val_confusion": confusion.tolist()}


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> None:
    """Row-normalised pixel confusion (recall per true class, in %) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mbv3_mobile.core.atomic import atomic_path

    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(classes), 0.8 + 0.5 * len(classes)))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if rows[i, j] >= 0.005:
                ax.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (share of its pixels, %)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def save(path, model: LRASPP, *, preprocessing: Preprocessing, labels: list[str], extra: dict) -> None:
    save_segmentation_checkpoint(path, model, preprocessing=preprocessing, labels=labels, extra=extra)


def load(path) -> LRASPP:
    return load_segmentation_checkpoint(path).model
