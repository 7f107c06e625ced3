"""Which real pictures a verify stage, the parity matrix or the bench use, and their labels:
Fashion-MNIST (a split, a class-balanced seeded subset) or an ImageFolder tree of the model's
classes."""

from __future__ import annotations

import torch

from mbv3_mobile.data.datasets import (
    FASHION_MNIST_NAMES,
    BatchTransform,
    DataError,
    ImageFolderDataset,
    balanced_subset,
    load_fashion_mnist,
)
from mbv3_mobile.data.preprocess import Preprocessing


def labelled_images(spec: str, preprocessing: Preprocessing, labels: list[str], *, split: str = "test",
                    limit: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N, 3, R, R) and labels from Fashion-MNIST or an ImageFolder tree.

    `limit` takes a class-balanced subset. The label names must match the model's, or the accuracy
    figures would compare different classes.
    """
    ds = load_fashion_mnist(split) if spec in FASHION_MNIST_NAMES else ImageFolderDataset(spec, preprocessing.resolution).to_arrays()
    if list(ds.classes) != list(labels):
        raise DataError(
            f"the data's classes {list(ds.classes)[:5]}... do not match the model's labels {list(labels)[:5]}...; "
            "pass --eval-data / --calib-data with an ImageFolder of the model's classes"
        )
    ds = limited(ds, limit, seed)
    transform = BatchTransform(preprocessing)
    x = torch.cat([transform(ds.images[i : i + 1024]) for i in range(0, len(ds), 1024)])
    return x, ds.labels.clone()


def limited(ds, limit: int | None, seed: int):
    """Exactly `limit` images, spread evenly over the classes (seeded), in dataset order."""
    if limit is None or limit >= len(ds):
        return ds
    per_class = -(-limit // len(ds.classes))
    pool = balanced_subset(ds, per_class, seed=seed)
    keep = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:limit]
    return pool.subset(keep.sort().values)


def uint8_images(spec: str, *, split: str = "test", limit: int | None = None, seed: int = 0):
    """The same selection as `labelled_images`, as stored uint8 images (for formats that take pictures)."""
    if spec not in FASHION_MNIST_NAMES:
        raise DataError("uint8 image export is implemented for Fashion-MNIST only")
    ds = limited(load_fashion_mnist(split), limit, seed)
    return ds.images, ds.labels
