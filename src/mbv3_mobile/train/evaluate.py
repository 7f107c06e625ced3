"""`mbv3 eval`: top-1/top-5, per-class accuracy and a confusion matrix on Fashion-MNIST's test split
or an ImageFolder tree, using the preprocessing stored in the checkpoint (the same function that
fed training), written as JSON and PNG."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mbv3_mobile.core.atomic import atomic_path, write_text_atomic
from mbv3_mobile.core.errors import UserError
from mbv3_mobile.data.datasets import (
    FASHION_MNIST_NAMES,
    ArrayDataset,
    ImageFolderDataset,
    balanced_subset,
    load_fashion_mnist,
)
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.model.checkpoint import load_checkpoint
from mbv3_mobile.train.classification import accuracy, predict_logits

REPORT_FILE = "eval.json"
CONFUSION_FILE = "confusion.png"


@dataclass
class EvalReport:
    checkpoint: str
    model: str
    dataset: str
    images: int
    top1: float
    top5: float
    labels: list[str]
    per_class: dict[str, dict]  # label -> {"images": n, "top1": acc} for labels present in the data
    confusion: list[list[int]]  # rows: true label, columns: predicted label (checkpoint's label order)
    preprocessing: dict
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        width = max(len(name) for name in self.per_class) if self.per_class else 5
        lines = [f"{self.model} on {self.dataset}: {self.images} images, top-1 {100 * self.top1:.2f} %, "
                 f"top-5 {100 * self.top5:.2f} %", f"{'class':<{width}}  images  top-1"]
        lines += [f"{name:<{width}}  {c['images']:>6}  {100 * c['top1']:5.1f} %" for name, c in self.per_class.items()]
        return "\n".join(lines)


def _label_map(data_classes: tuple[str, ...], model_labels: list[str] | None, num_classes: int,
               notes: list[str]) -> tuple[list[str], torch.Tensor]:
    """The checkpoint's label list and, per data class, its index among the model's outputs."""
    if model_labels is None:
        if len(data_classes) != num_classes:
            raise UserError(f"the checkpoint has no label names and {num_classes} outputs, but the data has "
                            f"{len(data_classes)} classes; evaluate a checkpoint trained on these classes")
        notes.append("checkpoint has no label names: data classes mapped to outputs in sorted folder order")
        return list(data_classes), torch.arange(num_classes)
    unknown = [c for c in data_classes if c not in model_labels]
    if unknown:
        raise UserError(f"data class(es) {unknown[:5]} are not among the checkpoint's labels {model_labels[:10]}; "
                        "evaluate on data whose class folders are named like the model's labels")
    return list(model_labels), torch.tensor([model_labels.index(c) for c in data_classes])


def evaluate(checkpoint: str | Path, dataset: str = "fashion-mnist", *, split: str = "test",
             max_images: int | None = None, batch_size: int = 256, strict_images: bool = False,
             resolution: int | None = None) -> EvalReport:
    """Evaluate any supported checkpoint. `resolution` only matters for checkpoints without stored
    preprocessing (torchvision/timm files: ImageNet statistics are assumed)."""
    t0 = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    notes: list[str] = []
    pre = ckpt.preprocessing
    if pre is None:
        pre = Preprocessing(resolution=resolution or 224)
        notes.append(f"checkpoint stores no preprocessing: ImageNet mean/std at {pre.resolution} px assumed")
    elif resolution and resolution != pre.resolution:
        raise UserError(f"--resolution {resolution} differs from the checkpoint's {pre.resolution} px; omit it")
    if dataset in FASHION_MNIST_NAMES:
        data: ArrayDataset = load_fashion_mnist(split)
        name = f"fashion-mnist/{split}"
    else:
        data = ImageFolderDataset(dataset, pre, strict=strict_images)  # warns on skipped files
        if data.skipped:
            notes.append(f"skipped {len(data.skipped)} unreadable or non-image file(s), e.g. {data.skipped[0][0]}")
        name = str(dataset)
    labels, to_model = _label_map(data.classes, ckpt.labels, ckpt.config.num_classes, notes)
    if max_images is not None and max_images < len(data):
        data = balanced_subset(data, max(1, max_images // len(data.classes)))
        notes.append(f"class-balanced subset of {len(data)} images")
    logits, data_labels = predict_logits(ckpt.model, data, pre, batch_size=batch_size)
    target = to_model[data_labels]
    k = len(labels)
    confusion = torch.bincount(target * k + logits.argmax(1), minlength=k * k).view(k, k)
    per_class = {}
    for i, label in enumerate(labels):
        n = int(confusion[i].sum())
        if n:
            per_class[label] = {"images": n, "top1": confusion[i, i].item() / n}
    return EvalReport(
        checkpoint=str(checkpoint), model=ckpt.config.name, dataset=name, images=len(target),
        top1=accuracy(logits, target, 1), top5=accuracy(logits, target, 5), labels=labels, per_class=per_class,
        confusion=confusion.tolist(), preprocessing=pre.to_dict(), seconds=time.perf_counter() - t0, notes=notes,
    )


def plot_confusion(report: EvalReport, path: Path) -> None:
    """Row-normalised confusion matrix (recall per true class) with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.tensor(report.confusion, dtype=torch.float64)
    rows = [i for i, label in enumerate(report.labels) if label in report.per_class]
    counts = counts[rows]
    norm = counts / counts.sum(1, keepdim=True).clamp(min=1)
    k_rows, k_cols = counts.shape
    size = max(5.0, 0.55 * k_cols + 2)
    fig, ax = plt.subplots(figsize=(size, max(4.0, 0.55 * k_rows + 2)))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k_cols <= 30:
        for r in range(k_rows):
            for c in range(k_cols):
                if counts[r, c] > 0:
                    ax.text(c, r, f"{int(counts[r, c])}", ha="center", va="center", fontsize=7,
                            color="white" if norm[r, c] > 0.5 else "black")
        ax.set_xticks(range(k_cols), report.labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k_rows), [report.labels[i] for i in rows], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report.model} on {report.dataset}: top-1 {100 * report.top1:.2f} %", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(report: EvalReport, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = write_text_atomic(out / REPORT_FILE, json.dumps(report.to_dict(), indent=2))
    png_path = out / CONFUSION_FILE
    plot_confusion(report, png_path)
    return json_path, png_path
