"""`mbv3 eval --task segmentation`: mIoU, per-class IoU, pixel accuracy and a confusion matrix of an
LR-ASPP checkpoint on a segmentation folder (or the composite test bed's held-out split), with a
one-sided 95 % bounds on the mIoU bootstrapped over pictures, written as JSON and two PNGs (the confusion
matrix and a sheet of predicted masks over their pictures)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mbv3_mobile.core.atomic import write_text_atomic
from mbv3_mobile.core.errors import UserError
from mbv3_mobile.core.paths import cache_root
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.data.segmentation import IGNORE_INDEX, composite_folder, load_segmentation_folder
from mbv3_mobile.tasks.segmentation.checkpoint import load_segmentation_checkpoint
from mbv3_mobile.tasks.segmentation.figures import confusion_matrix, iou_per_class, miou, miou_interval, pixel_accuracy
from mbv3_mobile.tasks.segmentation.overlay import plot_masks
from mbv3_mobile.train.segmentation import COMPOSITE, plot_confusion, predict_batches

COMPOSITE_TEST_PICTURES = 1000  # the held-out composite split: garments and photos training never saw
REPORT_FILE = "eval.json"
CONFUSION_FILE = "confusion.png"
MASKS_FILE = "masks.png"
SHEET_PICTURES = 6


@dataclass
class SegmentationReport:
    checkpoint: str
    model: str
    dataset: str
    images: int
    miou: float
    miou_interval: list[float]  # one-sided 95 % (lower, upper) bounds, BCa bootstrap over pictures
    pixel_accuracy: float
    labels: list[str]
    per_class_iou: dict[str, float | None]  # None: the class is absent from the masks
    confusion: list[list[int]]  # [true, predicted] pixel counts
    preprocessing: dict
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        lo, hi = self.miou_interval
        width = max(len(n) for n in self.labels)
        lines = [f"{self.model} on {self.dataset}: {self.images} pictures, mIoU {100 * self.miou:.2f} % "
                 f"[{100 * lo:.2f}, {100 * hi:.2f}], pixel accuracy {100 * self.pixel_accuracy:.2f} %",
                 f"{'class':<{width}}  IoU"]
        lines += [f"{n:<{width}}  {'absent' if v is None else f'{100 * v:5.1f} %'}" for n, v in self.per_class_iou.items()]
        return "\n".join(lines)


def _data(dataset: str, pre: Preprocessing, max_images: int | None):
    """The pictures and masks, by the checkpoint's own preprocessing geometry."""
    if dataset == COMPOSITE:
        folder = composite_folder(cache_root(), split="test", count=max_images or COMPOSITE_TEST_PICTURES,
                                  resolution=pre.resolution, seed=0)
        return load_segmentation_folder(folder, pre), f"composite test split ({max_images or COMPOSITE_TEST_PICTURES})"
    return load_segmentation_folder(dataset, pre, limit=max_images), str(dataset)


@torch.no_grad()
def evaluate_segmentation(checkpoint: str | Path, dataset: str = COMPOSITE, *, max_images: int | None = None,
                          batch_size: int = 32, resolution: int | None = None, out_dir: str | Path | None = None
                          ) -> SegmentationReport:
    """Evaluate any LR-ASPP checkpoint (ours or torchvision's). Masks whose labels.txt differs from the
    checkpoint's labels are refused; `out_dir` also gets the PNGs."""
    t0 = time.perf_counter()
    if max_images is not None and max_images < 1:
        raise UserError(f"--max-images must be >= 1, got {max_images}")
    ckpt = load_segmentation_checkpoint(checkpoint)
    notes: list[str] = []
    pre = ckpt.preprocessing
    if pre is None:
        pre = Preprocessing(resolution=resolution or 520)
        notes.append(f"checkpoint stores no preprocessing: ImageNet mean/std at {pre.resolution} px assumed")
    elif resolution and resolution != pre.resolution:
        raise UserError(f"--resolution {resolution} differs from the checkpoint's {pre.resolution} px; omit it")
    data, name = _data(str(dataset), pre, max_images)
    labels = list(ckpt.labels) if ckpt.labels else list(data.labels)
    if ckpt.labels and list(data.labels) != labels:
        raise UserError(f"{name}/labels.txt names {list(data.labels)[:6]}..., the checkpoint's labels are "
                        f"{labels[:6]}...; evaluate on masks made for this model's classes")
    if len(labels) != ckpt.config.num_classes:
        raise UserError(f"{name} has {len(labels)} classes but the checkpoint predicts {ckpt.config.num_classes}")
    c = len(labels)
    picks = np.linspace(0, len(data) - 1, min(SHEET_PICTURES, len(data))).round().astype(int)
    wanted = set(picks.tolist())
    per_picture, sheet = [], {}  # the sheet keeps only its own pictures' predictions
    for logits, masks in predict_batches(ckpt.model, data, pre, "cpu", batch=batch_size):
        predicted, s = logits.argmax(1), len(per_picture)
        for truth, guess in zip(masks, predicted):
            keep = truth != IGNORE_INDEX
            per_picture.append(confusion_matrix(truth[keep], guess[keep], c))
        sheet.update({s + i: predicted[i].to(torch.uint8) for i in range(len(predicted)) if s + i in wanted})
    stack = np.stack(per_picture)
    total = stack.sum(0)
    report = SegmentationReport(
        checkpoint=str(checkpoint), model=ckpt.config.name, dataset=name, images=len(data), miou=float(miou(total)),
        miou_interval=miou_interval(stack), pixel_accuracy=pixel_accuracy(total), labels=labels,
        per_class_iou={n: None if np.isnan(v) else float(v) for n, v in zip(labels, iou_per_class(total))},
        confusion=total.tolist(), preprocessing=pre.to_dict(), seconds=time.perf_counter() - t0, notes=notes)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / REPORT_FILE, json.dumps(report.to_dict(), indent=2))
        plot_confusion(total, labels, out / CONFUSION_FILE)
        predicted = torch.stack([sheet[int(i)] for i in picks]).numpy()
        plot_masks(data.images[picks].permute(0, 2, 3, 1).numpy(), data.masks[picks].numpy(), predicted, labels,
                   out / MASKS_FILE, title=f"{report.model} on {name}: mIoU {100 * report.miou:.1f} %")
    return report
