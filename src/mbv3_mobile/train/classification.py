"""What `train.loop` needs to train a classifier: its data (Fashion-MNIST or an ImageFolder tree),
its model (from scratch or fine-tuned from any checkpoint layout), the loss, the per-epoch
validation figures and the checkpoint it writes."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import DataLoader

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.data.datasets import (
    FASHION_MNIST_NAMES,
    BatchTransform,
    ImageFolderDataset,
    balanced_subset,
    fashion_mnist_preprocessing,
    load_fashion_mnist,
    train_val_split,
)
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.model.checkpoint import load_checkpoint, save_checkpoint
from mbv3_mobile.model.config import ModelConfig
from mbv3_mobile.model.network import MobileNetV3, build_model

HEADLINE = "val_top1"  # the figure a run is summarised by
SUMMARY_KEYS = ("val_top1", "val_top5")
CURVES = {"loss": "cross-entropy loss", "train": "train top-1 (augmented)", "val": {"val_top1": "val top-1"},
          "axis": "accuracy (%)"}


def datasets(cfg):
    """(train, validation, preprocessing, class names)."""
    if cfg.dataset in FASHION_MNIST_NAMES:
        full = load_fashion_mnist("train")
        train_ds, val_ds = train_val_split(full, cfg.val_fraction, seed=cfg.seed)
        pre = fashion_mnist_preprocessing(cfg.resolution)
    else:
        folder = ImageFolderDataset(cfg.dataset, cfg.resolution, strict=cfg.strict_images)
        if cfg.val_dataset:
            val = ImageFolderDataset(cfg.val_dataset, cfg.resolution, strict=cfg.strict_images)
            if val.classes != folder.classes:
                raise UserError(f"validation classes {list(val.classes)} differ from training classes "
                                f"{list(folder.classes)}; both trees need the same class folders")
            train_ds, val_ds = folder.to_arrays(), val.to_arrays()
        else:
            train_ds, val_ds = train_val_split(folder.to_arrays(), cfg.val_fraction, seed=cfg.seed)
        # ImageNet statistics: the usual choice for natural RGB images (and for transfer learning).
        pre = Preprocessing(resolution=cfg.resolution)
    if cfg.max_train_images and cfg.max_train_images < len(train_ds):
        train_ds = balanced_subset(train_ds, max(1, cfg.max_train_images // len(train_ds.classes)), seed=cfg.seed)
    if len(val_ds) == 0:
        raise UserError(f"no validation images: {cfg.dataset} is too small to split off a validation set; "
                        "add images or pass --val-dataset")
    return train_ds, val_ds, pre, list(train_ds.classes)


def make_model(cfg, classes: list[str]) -> MobileNetV3:
    """From scratch, or from `init_checkpoint` with a new head when the classes differ."""
    if not cfg.init_checkpoint:
        return build_model(arch=cfg.arch, width=cfg.width, num_classes=len(classes), dropout=cfg.dropout,
                           minimal=cfg.minimal)
    ckpt = load_checkpoint(cfg.init_checkpoint)
    c = ckpt.config
    if (c.arch, c.width, c.minimal) != (cfg.arch, cfg.width, cfg.minimal):
        raise UserError(
            f"--init-checkpoint {cfg.init_checkpoint} is {c.name} (arch={c.arch}, width={c.width}, "
            f"minimal={c.minimal}), but the run asks for arch={cfg.arch} width={cfg.width} minimal={cfg.minimal}; "
            "pass matching --arch/--width/--minimal (the CLI takes them from the checkpoint when omitted)"
        )
    model = ckpt.model
    same_classes = c.num_classes == len(classes) and (ckpt.labels is None or list(ckpt.labels) == list(classes))
    if not same_classes:
        model.reset_classifier(len(classes))  # transfer learning: a fresh last layer for the new classes
    model.config = replace(model.config, dropout=cfg.dropout)
    model.classifier[2].p = cfg.dropout
    return model.train()


def model_from_config(config: dict) -> MobileNetV3:
    """The architecture a resumed state names (its weights come from the state)."""
    return build_model(ModelConfig.from_dict(config))


def backbone(model: MobileNetV3) -> nn.Module:
    return model.features


LABEL_SMOOTHING = 0.1  # the default when the run names none


def criterion(cfg) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING if cfg.label_smoothing is None else cfg.label_smoothing)


def train_transform(cfg, pre: Preprocessing):
    """(uint8 images, labels, generator) -> (normalised, augmented batch, labels)."""
    transform = BatchTransform(pre, augment=cfg.augment, translate=cfg.translate, random_erasing=cfg.random_erasing)
    return lambda images, labels, generator: (transform(images, generator), labels)


def correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(correct, counted) for the running training accuracy: pictures."""
    return (logits.argmax(1) == labels).sum(), len(labels)


@torch.no_grad()
def predict_logits(model: nn.Module, dataset, preprocessing: Preprocessing, *, batch_size: int = 256,
                   device: torch.device | str = "cpu", channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for a whole dataset, in dataset order."""
    model.eval()
    transform = BatchTransform(preprocessing)
    outs, labels = [], []
    for images, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = transform(images).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs.append(model(x).float().cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    k = min(k, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    return (topk == labels.view(-1, 1)).any(dim=1).float().mean().item()


def validate(model: nn.Module, val_ds, pre: Preprocessing, device) -> dict:
    logits, labels = predict_logits(model, val_ds, pre, device=device)
    return {"val_loss": nn.functional.cross_entropy(logits, labels).item(), "val_top1": accuracy(logits, labels, 1),
            "val_top5": accuracy(logits, labels, 5)}


def finish(out, model: nn.Module, val_ds, pre: Preprocessing, classes: list[str]) -> dict:
    """Nothing beyond the curves: `mbv3 eval` writes a classifier's confusion matrix."""
    return {}


def save(path, model: MobileNetV3, *, preprocessing: Preprocessing, labels: list[str], extra: dict) -> None:
    save_checkpoint(path, model, preprocessing=preprocessing, labels=labels, extra=extra)


def load(path) -> MobileNetV3:
    return load_checkpoint(path).model


def check_dataset(cfg) -> None:
    """The common mistake, reported before any worker starts."""
    for folder in (cfg.dataset, cfg.val_dataset):
        if folder and folder not in FASHION_MNIST_NAMES and not _is_dir(folder):
            raise UserError(f"dataset {folder!r} is neither 'fashion-mnist' nor an ImageFolder directory")


def _is_dir(folder: str) -> bool:
    from pathlib import Path

    return Path(folder).is_dir()
