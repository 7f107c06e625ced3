"""Masks as pictures: one fixed colour per class, a mask blended over its picture, and a sheet of
pictures with their true and predicted masks (the training run's and the model card's PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IGNORE = 255
ALPHA = 0.55  # the mask's share of a blended pixel: the picture stays readable beneath it


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 RGB: class 0 (background) black, then matplotlib's tab10 colours (tab20,
    whose neighbours are pairs of one hue, beyond 10 classes)."""
    from matplotlib import colormaps

    table = colormaps["tab10" if num_classes <= 11 else "tab20"]
    colours = [(0, 0, 0)] + [tuple(int(255 * c) for c in table(i % table.N)[:3]) for i in range(num_classes - 1)]
    return np.array(colours[:num_classes], np.uint8)


def colour_mask(mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """H x W class indices -> H x W x 3 RGB; ignored pixels white."""
    out = np.full((*mask.shape, 3), 255, np.uint8)
    known = mask != IGNORE
    out[known] = colours[mask[known].clip(0, len(colours) - 1)]
    return out


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """H x W x 3 uint8 picture with its mask blended in; background (class 0) pixels left as they are."""
    blend = image.astype(np.float32)
    painted = mask != 0
    blend[painted] = (1 - alpha) * blend[painted] + alpha * colour_mask(mask, colours)[painted]
    return blend.round().clip(0, 255).astype(np.uint8)


def plot_masks(images: np.ndarray, truths: np.ndarray | None, predictions: np.ndarray, labels: list[str],
               path: Path, *, title: str = "") -> None:
    """One row per picture: the picture, the true mask over it (when known) and the predicted one.
    images N x H x W x 3 uint8; masks N x H x W."""
    columns = ([("true mask", truths)] if truths is not None else []) + [("predicted", predictions)]
    plot_mask_columns(images, columns, labels, path, title=title)


def plot_mask_columns(images: np.ndarray, columns: list[tuple[str, np.ndarray]], labels: list[str], path: Path, *,
                      title: str = "") -> None:
    """One row per picture: the picture, then each named column's mask over it; a legend of the
    classes shown. images N x H x W x 3 uint8; each column's masks N x H x W."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from mbv3_mobile.core.atomic import atomic_path

    colours = palette(len(labels))
    columns = [("picture", None), *columns]
    n = len(images)
    fig, axes = plt.subplots(n, len(columns), figsize=(2.2 * len(columns), 2.2 * n + 0.8), squeeze=False)
    for i in range(n):
        for j, (name, masks) in enumerate(columns):
            ax = axes[i][j]
            ax.imshow(images[i] if masks is None else overlay(images[i], masks[i], colours))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    shown = sorted({int(c) for _, m in columns if m is not None for c in np.unique(m)} - {IGNORE, 0})
    fig.legend(handles=[Patch(color=colours[c] / 255, label=labels[c]) for c in shown if c < len(labels)],
               loc="lower center", ncol=min(5, max(1, len(shown))), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
