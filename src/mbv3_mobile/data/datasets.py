"""Real image data: Fashion-MNIST from Debian's `dataset-fashion-mnist`, and ImageFolder trees.

Datasets hold uint8 images (N, C, H, W) in memory with int64 labels: Fashion-MNIST at its stored
28x28 gray, ImageFolder trees decoded once by Pillow at the model resolution. Grayscale->RGB,
resizing and normalisation happen per batch in `BatchTransform`, so the exact same function feeds
training, calibration and parity checks.
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.data.decode import decode
from mbv3_mobile.data.preprocess import Preprocessing

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist; env MBV3_FASHION_MNIST_DIR overrides
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Per-channel statistics of the Fashion-MNIST training images (gray replicated to RGB).
FASHION_MNIST_MEAN = (0.2860, 0.2860, 0.2860)
FASHION_MNIST_STD = (0.3530, 0.3530, 0.3530)
FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist", "fmnist")
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


def _read_idx(path: Path, kind: str) -> np.ndarray:
    """An IDX file (images: magic 2051, 16-byte header; labels: magic 2049, 8-byte header)."""
    magic_expected, header = {"images": (2051, 16), "labels": (2049, 8)}[kind]
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable gzip file ({exc}); reinstall it: "
                        "`sudo apt-get install --reinstall dataset-fashion-mnist`") from None
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if magic != magic_expected:
        raise DataError(f"{path} is not an IDX {kind} file (magic {magic}, expected {magic_expected})")
    count = int.from_bytes(raw[4:8], "big")
    shape = (count, int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")) if kind == "images" else (count,)
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupt: header says {shape}, file holds {len(raw) - header} bytes "
                        "of data; reinstall it: `sudo apt-get install --reinstall dataset-fashion-mnist`")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> ArrayDataset:
    """`split` is 'train' (60k) or 'test' (10k). Images are (N, 1, 28, 28) uint8."""
    root = Path(root) if root is not None else Path(os.environ.get("MBV3_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
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
    images = _read_idx(img_path, "images")
    labels = _read_idx(lbl_path, "labels")
    if len(images) != len(labels) or (len(labels) and labels.max() >= len(FASHION_MNIST_LABELS)):
        raise DataError(f"{img_path.name} ({len(images)} images) and {lbl_path.name} ({len(labels)} labels, "
                        f"max {labels.max() if len(labels) else None}) do not belong together; reinstall the package")
    return ArrayDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_LABELS)


def train_val_split(dataset: ArrayDataset, val_fraction: float = 1 / 12, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Stratified held-out split (5k of Fashion-MNIST's 60k at the default fraction).

    Every class with at least two images keeps at least one in each part, so tiny ImageFolder trees
    still get a per-class validation figure."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {val_fraction}")
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in range(len(dataset.classes)):
        idx = torch.nonzero(dataset.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return dataset.subset(torch.cat(train_idx).sort().values), dataset.subset(torch.cat(val_idx).sort().values)


def balanced_indices(dataset: ArrayDataset, per_class: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of the first `per_class` images of each class after a seeded shuffle."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(len(dataset.classes)):
        idx = torch.nonzero(dataset.labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def balanced_subset(dataset: ArrayDataset, per_class: int, seed: int = 0) -> ArrayDataset:
    """The first `per_class` images of each class after a seeded shuffle (calibration, CI checks)."""
    return dataset.subset(balanced_indices(dataset, per_class, seed))


# ---------------------------------------------------------------- ImageFolder


@dataclass
class FolderScan:
    files: list[tuple[Path, int]]
    classes: tuple[str, ...]
    skipped: list[tuple[Path, str]]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def scan_image_folder(root: str | os.PathLike, *, strict: bool = False) -> FolderScan:
    """List `root/<class>/**/*.{jpg,png,...}` without decoding. Files with other suffixes are skipped
    (or raise if `strict`); hidden files and folders (.DS_Store, .git) are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (or is not a folder); expected {root}/<class_name>/*.jpg")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"image folder {root} has no class sub-folders: put each class's images in "
                        f"{root}/<class_name>/ (e.g. {root}/cat/001.jpg)")
    files: list[tuple[Path, int]] = []
    skipped: list[tuple[Path, str]] = []
    for label, cdir in enumerate(class_dirs):
        for path in sorted(p for p in cdir.rglob("*") if p.is_file() and not _hidden(p, root)):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append((path, label))
                continue
            reason = f"not an image file name (suffix {path.suffix or 'none'!r}; images are {', '.join(sorted(IMAGE_SUFFIXES))})"
            if strict:
                raise DataError(f"{path}: {reason}; remove it, or drop strict mode (--strict-images) to skip it")
            skipped.append((path, reason))
    return FolderScan(files=files, classes=tuple(d.name for d in class_dirs), skipped=skipped)


def _decode(path: Path, pre: Preprocessing | int) -> np.ndarray:
    # convert()/resize force a full decode, so truncated files fail here rather than mid-training.
    return decode(path, pre)


class ImageFolderDataset(ArrayDataset):
    """An ImageFolder tree decoded once with Pillow to RGB at the model's geometry (`preprocessing`,
    or a plain `resolution` x `resolution` bilinear resize, no crop) and held in memory as uint8.

    Unreadable or non-image files are skipped with one warning giving the count (listed in
    `.skipped`), or raise in `strict` mode. A class left with no image, or a tree with none, is an
    error: a silently missing class would shift every label after it.
    """

    def __init__(self, root: str | os.PathLike, resolution: int | Preprocessing, *, strict: bool = False) -> None:
        pre = resolution  # a Preprocessing (the model's geometry) or a plain side length
        resolution = pre.resolution if isinstance(pre, Preprocessing) else int(pre)
        scan = scan_image_folder(root, strict=strict)
        root = Path(root)
        skipped = list(scan.skipped)
        images, labels, files = [], [], []
        for path, label in scan.files:
            try:
                images.append(_decode(path, pre))
            except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
                reason = f"{type(exc).__name__}: {str(exc)[:120]}"
                if strict:
                    raise DataError(f"{path}: unreadable image ({reason}); fix or remove it, or drop strict "
                                    "mode (--strict-images) to skip it") from None
                skipped.append((path, reason))
                continue
            labels.append(label)
            files.append((path, label))
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(scan.classes))
        empty = [name for name, n in zip(scan.classes, counts) if n == 0]
        if len(empty) == len(scan.classes):
            raise DataError(f"image folder {root} holds no readable image in any class folder "
                            f"({len(skipped)} file(s) skipped); expected {root}/<class_name>/*.jpg|png")
        if empty:
            bad = [f"{p.name} ({why})" for p, why in skipped if p.relative_to(root).parts[0] in empty]
            also = f" (skipped there: {'; '.join(bad[:3])})" if bad else ""
            raise DataError(f"class folder(s) with no readable image under {root}: {', '.join(empty)}{also}; "
                            "add images or remove the folder")
        if skipped:
            warnings.warn(f"skipped {len(skipped)} unreadable or non-image file(s) under {root}, e.g. "
                          f"{skipped[0][0]} ({skipped[0][1]})", stacklevel=2)
        super().__init__(torch.from_numpy(np.stack(images)), torch.tensor(labels), scan.classes)
        self.root, self.resolution, self.files, self.skipped = root, resolution, files, skipped

    def to_arrays(self) -> ArrayDataset:
        return ArrayDataset(self.images, self.labels, self.classes)


def load_dataset(spec: str, split: str = "train", *, resolution: int = 224, strict: bool = False) -> ArrayDataset:
    """'fashion-mnist' (its `split`) or an ImageFolder root (decoded at `resolution`)."""
    if spec in FASHION_MNIST_NAMES:
        return load_fashion_mnist(split)
    if not Path(spec).is_dir():
        raise DataError(f"unknown dataset {spec!r}: use 'fashion-mnist' or the path of an ImageFolder tree "
                        "(root/<class_name>/*.jpg)")
    return ImageFolderDataset(spec, resolution, strict=strict)


# ---------------------------------------------------------------- batch transform


class BatchTransform:
    """uint8 (N, C, H, W) -> normalised float (N, 3, R, R); optional augmentation for training.

    Resize is bilinear with half-pixel centres (`align_corners=False`), the rule Pillow's BILINEAR
    and Core ML / ExecuTorch resize ops follow, so the manifest's "bilinear" means one thing.
    """

    def __init__(self, preprocessing: Preprocessing, *, augment: bool = False, translate: float = 0.125,
                 random_erasing: float = 0.0) -> None:
        if not 0.0 <= random_erasing <= 1.0:
            raise DataError(f"random erasing probability must be in [0, 1], got {random_erasing}")
        if not 0.0 <= translate < 0.5:
            raise DataError(f"translation must be a fraction of the side in [0, 0.5), got {translate}")
        self.pre = preprocessing
        self.augment = augment
        self.translate = translate
        self.random_erasing = random_erasing

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        r = self.pre.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=x.shape[-1] > r)
        if self.augment:
            x = flip_and_translate(x, generator, self.translate)
        x = self.pre.normalize(x)
        if self.augment and self.random_erasing > 0:
            x = random_erase(x, self.random_erasing, generator)
        return x.contiguous()


def flip_and_translate(x: torch.Tensor, generator: torch.Generator | None, translate: float = 0.125) -> torch.Tensor:
    """Random horizontal flip + random translation by up to `translate` of the side (replicate-pad,
    crop back): the usual small-image recipe. Plain torch: torchvision is unusable beside the pinned torch."""
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    pad = int(round(h * translate))
    if pad == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, c, h, w)
    return out.gather(3, cols)


def random_erase(x: torch.Tensor, prob: float, generator: torch.Generator | None,
                 area: tuple[float, float] = (0.02, 0.25), max_aspect: float = 3.0) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017) on normalised images: with probability `prob`, one rectangle
    of `area` fraction and aspect in [1/max_aspect, max_aspect] is set to 0 (the dataset mean)."""
    n, _, h, w = x.shape
    frac = area[0] + (area[1] - area[0]) * torch.rand(n, generator=generator)
    log_aspect = (torch.rand(n, generator=generator) * 2 - 1) * math.log(max_aspect)
    eh = (frac * h * w * log_aspect.exp()).sqrt().round().clamp(1, h).long()
    ew = (frac * h * w / log_aspect.exp()).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
    x0 = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    apply = torch.rand(n, generator=generator) < prob
    rows = torch.arange(h).view(1, h)
    cols = torch.arange(w).view(1, w)
    in_rows = (rows >= y0.view(n, 1)) & (rows < (y0 + eh).view(n, 1))
    in_cols = (cols >= x0.view(n, 1)) & (cols < (x0 + ew).view(n, 1))
    mask = (in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)) & apply.view(n, 1, 1, 1)
    return x.masked_fill(mask, 0.0)
