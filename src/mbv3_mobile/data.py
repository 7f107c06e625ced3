"""Real image data: Fashion-MNIST from Debian's `dataset-fashion-mnist`, and ImageFolder trees.

Datasets yield uint8 images (C, H, W) at their stored size plus an int label; resizing to the model
resolution, grayscale->RGB and normalisation happen per batch in `BatchTransform`, so one in-memory
copy serves every resolution and the exact same function feeds training, calibration and parity.
"""

from __future__ import annotations

import gzip
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import UserError
from .preprocess import Preprocessing

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path(os.environ.get("MBV3_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Per-channel statistics of the Fashion-MNIST training images (gray replicated to RGB).
FASHION_MNIST_MEAN = (0.2860, 0.2860, 0.2860)
FASHION_MNIST_STD = (0.3530, 0.3530, 0.3530)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataError(UserError):
    """Missing, empty or unreadable data."""


def fashion_mnist_preprocessing(resolution: int) -> Preprocessing:
    return Preprocessing(resolution=resolution, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)


class ArrayDataset(Dataset):
    """In-memory uint8 images (N, C, H, W) with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes = images, labels.long(), tuple(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, indices) -> ArrayDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.images[idx], self.labels[idx], self.classes)


def _read_idx(path: Path, header: int, ndim_shape) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    expected_magic = 2051 if header == 16 else 2049
    if magic != expected_magic:
        raise DataError(f"{path} is not an IDX file (magic {magic}, expected {expected_magic})")
    count = int.from_bytes(raw[4:8], "big")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    return data.reshape(count, *ndim_shape)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> ArrayDataset:
    """`split` is 'train' (60k) or 'test' (10k). Images are (N, 1, 28, 28) uint8."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"unknown Fashion-MNIST split {split!r}: use 'train' or 'test'")
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [p for p in (img_path, lbl_path) if not p.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST file {missing[0]} is missing. Install Debian's package: "
            "`sudo apt-get install -y dataset-fashion-mnist` (or set MBV3_FASHION_MNIST_DIR to a folder "
            "holding the four *-ubyte.gz files)."
        )
    images = _read_idx(img_path, 16, (1, 28, 28))
    labels = _read_idx(lbl_path, 8, ())
    return ArrayDataset(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_LABELS)


def train_val_split(dataset: ArrayDataset, val_fraction: float = 1 / 12, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Stratified held-out split (5k of Fashion-MNIST's 60k at the default fraction)."""
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in range(len(dataset.classes)):
        idx = torch.nonzero(dataset.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = int(round(len(idx) * val_fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return dataset.subset(torch.cat(train_idx).sort().values), dataset.subset(torch.cat(val_idx).sort().values)


def balanced_subset(dataset: ArrayDataset, per_class: int, seed: int = 0) -> ArrayDataset:
    """The first `per_class` images of each class after a seeded shuffle (calibration, CI checks)."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(len(dataset.classes)):
        idx = torch.nonzero(dataset.labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return dataset.subset(torch.cat(picks).sort().values)


# ---------------------------------------------------------------- ImageFolder


@dataclass
class FolderScan:
    files: list[tuple[Path, int]]
    classes: tuple[str, ...]
    skipped: list[tuple[Path, str]]


def scan_image_folder(root: str | os.PathLike, *, strict: bool = False) -> FolderScan:
    """`root/<class>/*.{jpg,png,...}`. Unreadable files are skipped with a warning (or raise if strict)."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"image folder {root} has no class sub-folders (expected {root}/<class_name>/*.jpg)")
    files: list[tuple[Path, int]] = []
    skipped: list[tuple[Path, str]] = []
    empty: list[str] = []
    for label, cdir in enumerate(class_dirs):
        count = 0
        for path in sorted(p for p in cdir.rglob("*") if p.is_file()):
            reason = None
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                reason = "not an image file name"
            else:
                try:
                    with Image.open(path) as im:
                        im.verify()
                except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
                    reason = f"{type(exc).__name__}: {exc}"
            if reason:
                if strict:
                    raise DataError(f"{path}: unreadable image ({reason}); fix or remove it, or drop --strict")
                skipped.append((path, reason))
                continue
            files.append((path, label))
            count += 1
        if count == 0:
            empty.append(cdir.name)
    if empty:
        raise DataError(
            f"class folder(s) with no readable image under {root}: {', '.join(empty)}; "
            "add images or remove the folder"
        )
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable file(s) under {root}, e.g. {skipped[0][0]} ({skipped[0][1]})", stacklevel=2)
    return FolderScan(files=files, classes=tuple(d.name for d in class_dirs), skipped=skipped)


class ImageFolderDataset(Dataset):
    """Decodes with Pillow to RGB, resized to `resolution` (bilinear) so batches stack."""

    def __init__(self, root: str | os.PathLike, resolution: int, *, strict: bool = False) -> None:
        scan = scan_image_folder(root, strict=strict)
        self.files, self.classes, self.skipped = scan.files, scan.classes, scan.skipped
        self.resolution = resolution
        self.labels = torch.tensor([label for _, label in self.files], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.files[index]
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((self.resolution, self.resolution), Image.BILINEAR)
        return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1), label

    def to_arrays(self) -> ArrayDataset:
        images = torch.stack([self[i][0] for i in range(len(self))])
        return ArrayDataset(images, self.labels, self.classes)


# ---------------------------------------------------------------- batch transform


class BatchTransform:
    """uint8 (N, C, H, W) -> normalised float (N, 3, R, R); optional light augmentation.

    Resize is bilinear with half-pixel centres (`align_corners=False`), the rule Pillow's BILINEAR
    and Core ML / ExecuTorch resize ops follow, so the manifest's "bilinear" means one thing.
    """

    def __init__(self, preprocessing: Preprocessing, *, augment: bool = False) -> None:
        self.pre = preprocessing
        self.augment = augment

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        r = self.pre.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=x.shape[-1] > r)
        if self.augment:
            x = _augment(x, generator)
        return self.pre.normalize(x).contiguous()


def _augment(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random horizontal flip + random translation (pad 1/8, crop back): the usual small-image recipe.
    A few lines of torch: torchvision is unusable beside the pinned CPU torch."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, 3, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, 3, h, w)
    return out.gather(3, cols)


def load_dataset(spec: str, split: str = "train") -> ArrayDataset | ImageFolderDataset:
    """'fashion-mnist' or a folder path (ImageFolder, decoded at 'resolution' by the caller)."""
    if spec in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return load_fashion_mnist(split)
    raise DataError(f"unknown dataset {spec!r}: use 'fashion-mnist' or an ImageFolder path")
