"""Which real pictures a check uses, as `Pictures` (uint8 at the model's geometry):

- "fashion-mnist" (a split; labelled; a class-balanced seeded subset when limited),
- an ImageFolder tree of the model's classes (labelled: class = folder name),
- a folder of pictures without labels (`--images DIR`),
- "samples": the photos bundled in the scikit-image wheel (`data.pictures.sample_photos`).

`choose(...)` applies the pipelines' defaults: given data first, then the user's pictures, then
Fashion-MNIST for a model trained on it, then the sample photos.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mbv3_mobile.data.datasets import (
    FASHION_MNIST_LABELS,
    FASHION_MNIST_NAMES,
    ArrayDataset,
    DataError,
    ImageFolderDataset,
    balanced_indices,
    load_fashion_mnist,
    scan_image_folder,
)
from mbv3_mobile.data.pictures import (
    Pictures,
    check_picture_header,
    load_pictures,
    sample_photo_files,
    sample_photos,
    scan_pictures,
)
from mbv3_mobile.data.preprocess import Preprocessing

SAMPLES = "samples"


def limited(ds: ArrayDataset, limit: int | None, seed: int) -> ArrayDataset:
    """Exactly `limit` images, spread evenly over the classes (seeded), in dataset order."""
    keep = chosen_indices(ds, limit, seed)
    return ds if keep is None else ds.subset(keep)


def chosen_indices(ds: ArrayDataset, limit: int | None, seed: int) -> torch.Tensor | None:
    """The indices `limited` keeps (None: all): `balanced_subset`'s pick, then `limit` of those."""
    if limit is None or limit >= len(ds):
        return None
    pool = balanced_indices(ds, -(-limit // len(ds.classes)), seed)
    keep = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:limit]
    return pool[keep.sort().values]


def _at_resolution(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Stored uint8 (N, 1|3, H, W) -> uint8 RGB at R x R (bilinear, antialiased when shrinking):
    the geometry `BatchTransform` applies in training, rounded to the 8 bits an app would feed."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > resolution)
    return x.round().clamp(0, 255).to(torch.uint8).contiguous()


def is_fashion_mnist(spec: str) -> bool:
    return spec in FASHION_MNIST_NAMES


def trained_on_fashion_mnist(labels: list[str]) -> bool:
    return list(labels) == list(FASHION_MNIST_LABELS)


def labelled_pictures(spec: str, pre: Preprocessing, labels: list[str], *, split: str = "test",
                      limit: int | None = None, seed: int = 0) -> Pictures:
    """Fashion-MNIST (a split) or an ImageFolder tree whose classes are the model's labels."""
    if is_fashion_mnist(spec):
        ds, source = load_fashion_mnist(split), f"fashion-mnist {split}"
    else:
        ds, source = ImageFolderDataset(spec, pre).to_arrays(), str(spec)
    if list(ds.classes) != list(labels):
        raise DataError(
            f"the classes of {source} {list(ds.classes)[:5]}... are not the model's labels {list(labels)[:5]}...; "
            "give labelled pictures of the model's classes (an ImageFolder: DIR/<label>/*.jpg), or unlabelled "
            "pictures with --images DIR")
    keep = chosen_indices(ds, limit, seed)
    ds = ds if keep is None else ds.subset(keep)
    # names carry each picture's index in the full split, so a manifest says which pictures were used
    index = range(len(ds)) if keep is None else keep.tolist()
    return Pictures(_at_resolution(ds.images, pre.resolution), [f"{source}#{i}" for i in index], source,
                    ds.labels.clone(), tuple(ds.classes))


def unlabelled_pictures(spec: str, pre: Preprocessing, *, limit: int | None = None, seed: int = 0,
                        what: str = "--images") -> Pictures:
    """A folder tree of pictures (labels ignored), or the sample photos."""
    pics = sample_photos(pre) if spec == SAMPLES else load_pictures(spec, pre, what=what)
    return pics.subset(limit, seed)


def choose(*, given: str, images: str, labels: list[str], purpose: str) -> tuple[str, bool]:
    """(source, labelled) by the pipelines' defaults. `purpose`: "eval" (gates), "calib"
    (calibration: labels unused) or "train" (QAT: labels needed)."""
    if given:
        if is_fashion_mnist(given):
            return given, True
        if purpose == "calib":
            return given, False  # any folder tree of pictures calibrates; labels are not used
        if not Path(given).is_dir():
            raise DataError(f"{given!r} is neither 'fashion-mnist' nor a folder of pictures")
        return given, True  # --eval-data / --train-data: labelled by folder names (checked when read)
    if purpose == "train":
        if trained_on_fashion_mnist(labels):
            return "fashion-mnist", True
        raise DataError("QAT needs labelled training pictures of the model's classes: pass --train-data DIR "
                        "(an ImageFolder: DIR/<label>/*.jpg), or use --quant ptq, which needs no labels")
    if images:
        return images, False
    if trained_on_fashion_mnist(labels):
        return "fashion-mnist", True
    return SAMPLES, False


def pictures(source: str, labelled: bool, pre: Preprocessing, labels: list[str], *, split: str,
             limit: int | None = None, seed: int = 0, what: str = "--images") -> Pictures:
    if labelled:
        return labelled_pictures(source, pre, labels, split=split, limit=limit, seed=seed)
    return unlabelled_pictures(source, pre, limit=limit, seed=seed, what=what)


def check_picture_folder(root: str, what: str) -> int:
    """The folder holds pictures and every one can be used (headers only: seconds, no decoding)."""
    try:
        files, _ = scan_pictures(root)
    except DataError as exc:
        raise DataError(str(exc).replace("--images", what)) from None
    bad = [(p, why) for p in files if (why := check_picture_header(p))]
    if bad:
        listed = "; ".join(f"{p.relative_to(root)}: {why}" for p, why in bad[:3])
        raise DataError(f"{what} {root}: {len(bad)} of {len(files)} picture(s) cannot be used ({listed}"
                        f"{' ...' if len(bad) > 3 else ''}); remove or convert them to 8-bit RGB or gray")
    return len(files)


def check_source(source: str, labelled: bool, labels: list[str], what: str) -> None:
    if source in FASHION_MNIST_NAMES:
        load_fashion_mnist("test")  # raises naming the missing Debian package
        if labelled and list(labels) != list(load_fashion_mnist("test").classes):
            raise DataError(f"{what} fashion-mnist: its classes are not the model's labels "
                            f"({list(labels)[:3]}...); give pictures of the model's classes, or unlabelled --images DIR")
        return
    if source == SAMPLES:
        sample_photo_files()
        return
    if labelled:
        scan = scan_image_folder(source)
        if list(scan.classes) != list(labels):
            raise DataError(f"{what} {source}: its class folders {list(scan.classes)[:4]}... are not the model's labels "
                            f"{list(labels)[:4]}...; labelled pictures go in DIR/<label>/ for every label (for pictures "
                            "without labels use --images DIR)")
        return
    check_picture_folder(source, what)
