"""Semantic segmentation data (LR-ASPP): a user's paired folders, and an offline composite test bed.

A user's folder is `ROOT/images/**/<name>.<ext>` beside `ROOT/masks/**/<name>.png` (one class index
per pixel, 255 = ignore) and `ROOT/labels.txt` (line i names class i). `scan_segmentation_folder`
checks the pairing and the headers before any pixel is decoded; `load_segmentation_folder` decodes
each pair once to R x R by the model's preprocessing geometry (masks resized NEAREST, never interpolated).

`make_composite_dataset` writes that layout from real pixels available offline: Fashion-MNIST
garments pasted onto crops of the scikit-image sample photos. See docs/segmentation-data.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mbv3_mobile.core.atomic import atomic_dir
from mbv3_mobile.data.datasets import FASHION_MNIST_LABELS, IMAGE_SUFFIXES, DataError, load_fashion_mnist
from mbv3_mobile.data.decode import _mode_problem
from mbv3_mobile.data.preprocess import Preprocessing

IGNORE_INDEX = 255  # a mask value meaning "no label here": the loss and the metrics skip it
MASK_MODES = ("L", "P")  # one 8-bit channel; for "P" the palette index itself is the class
SPLITS = ("train", "test")
CROP_SHARE = (0.4, 1.0)  # background crop side, as a share of the photo's shorter side
GARMENT_SHARE = (0.35, 0.75)  # garment side, as a share of the picture side
GARMENTS_PER_PICTURE = (1, 3)
MASK_THRESHOLD = 0.5  # a garment pixel is labelled where its (resized) silhouette is above this
OUTLINE_LEVEL = 0.05  # a Fashion-MNIST pixel above this share of white belongs to the garment's outline
SHADE_FLOOR = 0.3  # the darkest garment pixel keeps this share of its tint (dark patterns stay garment-coloured)


class SegmentationDataError(DataError):
    """A segmentation folder that cannot be used as it is; the message names the file and the fix."""


@dataclass(frozen=True)
class SegmentationScan:
    root: Path
    pairs: list[tuple[Path, Path]]  # (image, mask), sorted by the image's path under images/
    labels: tuple[str, ...]


@dataclass
class SegmentationArrays:
    images: torch.Tensor  # uint8 (N, 3, R, R) RGB
    masks: torch.Tensor  # uint8 (N, R, R): class index per pixel, IGNORE_INDEX = ignore
    labels: tuple[str, ...]
    files: list[str]  # image paths relative to the root, e.g. "images/a/x.jpg"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.masks[index]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labels

    def subset(self, indices) -> SegmentationArrays:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return SegmentationArrays(self.images[idx], self.masks[idx], self.labels, [self.files[i] for i in idx.tolist()])

    def split(self, fraction: float, seed: int = 0) -> tuple[SegmentationArrays, SegmentationArrays]:
        """(rest, held out): a seeded random `fraction` of the pictures held out, at least one."""
        if not 0.0 < fraction < 1.0:
            raise SegmentationDataError(f"validation fraction must be in (0, 1), got {fraction}")
        if len(self) < 2:
            raise SegmentationDataError(f"{len(self)} picture cannot be split into training and validation: add "
                                        "pictures or pass a validation folder")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        held = min(max(1, int(round(len(self) * fraction))), len(self) - 1)
        return self.subset(order[held:].sort().values), self.subset(order[:held].sort().values)


# ---------------------------------------------------------------- a user's folder


def _one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"


def _files(folder: Path) -> list[Path]:
    """Image-suffixed files under `folder`, sorted; hidden files and folders (.DS_Store, .git) skipped."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _read_labels(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise SegmentationDataError(f"{path} is missing: write the class names there, one per line, line 1 = "
                                    "class index 0 (e.g. background)")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SegmentationDataError(f"{path} is unreadable ({_one_line(exc)}); save it as UTF-8 text") from None
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise SegmentationDataError(f"{path} is empty: write the class names there, one per line, line 1 = "
                                    "class index 0 (e.g. background)")
    for i, name in enumerate(names):
        if not name:
            raise SegmentationDataError(f"{path} line {i + 1} is empty: line i names class index i - 1, so a blank "
                                        "line shifts every class after it; name that class or remove the line")
        if name in names[:i]:
            raise SegmentationDataError(f"{path} names {name!r} twice (lines {names.index(name) + 1} and {i + 1}): "
                                        "give each class its own name")
    if len(names) > IGNORE_INDEX:
        raise SegmentationDataError(f"{path} names {len(names)} classes, but 8-bit masks hold at most "
                                    f"{IGNORE_INDEX} ({IGNORE_INDEX} means ignore); merge classes")
    return tuple(names)


def _by_stem(folder: Path, what: str) -> dict[Path, Path]:
    """Relative path without suffix -> file; two files with one stem cannot both be paired."""
    found: dict[Path, Path] = {}
    for path in _files(folder):
        key = path.relative_to(folder).with_suffix("")
        if key in found:
            raise SegmentationDataError(f"{what}s {found[key]} and {path} share the name {key}: rename or remove "
                                        "one (an image and its mask are paired by name)")
        found[key] = path
    return found


def _header(path: Path, what: str) -> tuple[tuple[int, int], str, str | None]:
    """(size, mode, format) from the file's header; Pillow decodes no pixel here."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size, im.mode, im.format
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise SegmentationDataError(f"{what} {path} is unreadable ({_one_line(exc)}); re-export or remove it") from None


def _mask_problem(mode: str, fmt: str | None) -> str | None:
    from PIL import Image

    if fmt != "PNG":
        return (f"is {fmt or 'not an image'}, not PNG: masks must be lossless PNGs (JPEG and other lossy formats "
                "change class indices); save it as PNG")
    if mode in MASK_MODES:
        return None
    if Image.getmodebands(mode) > 1:
        return (f"is mode {mode}: masks must be single-channel class-index PNGs (mode L or P), not RGB: convert "
                f"colours to indices (one class index per pixel, {IGNORE_INDEX} = ignore)")
    return (f"is mode {mode}: masks must be single-channel 8-bit class-index PNGs (mode L or P); save it as "
            "8-bit gray (L) holding one class index per pixel")


def scan_segmentation_folder(root: str | os.PathLike) -> SegmentationScan:
    """Pair ROOT/images with ROOT/masks and read ROOT/labels.txt, checking every pair's headers
    (size, mode, format) without decoding pixels. Raises SegmentationDataError at the first problem."""
    root = Path(root)
    if not root.is_dir():
        raise SegmentationDataError(f"segmentation folder {root} does not exist (or is not a folder); expected "
                                    f"{root}/images/, {root}/masks/ and {root}/labels.txt")
    images_dir, masks_dir = root / "images", root / "masks"
    for folder, what in ((images_dir, "the pictures"), (masks_dir, "one class-index PNG per picture (the picture's name, .png)")):
        if not folder.is_dir():
            raise SegmentationDataError(f"{folder} is missing: a segmentation folder holds {root}/images/, "
                                        f"{root}/masks/ and {root}/labels.txt; put {what} in {folder}/")
    labels = _read_labels(root / "labels.txt")
    images, masks = _by_stem(images_dir, "image"), _by_stem(masks_dir, "mask")
    if not images:
        raise SegmentationDataError(f"{images_dir} holds no pictures ({', '.join(sorted(IMAGE_SUFFIXES))}); put "
                                    f"them there, and their masks under {masks_dir}")
    # Pairing first: it needs no file opened, and a missing mask is the commonest mistake.
    lonely = [key for key in images if key not in masks]
    if lonely:
        more = f" ({len(lonely) - 1} more image(s) lack one)" if len(lonely) > 1 else ""
        raise SegmentationDataError(f"image {images[lonely[0]]} has no mask: expected {masks_dir / lonely[0]}.png "
                                    f"(same name and sub-folders as under images/){more}")
    orphans = [key for key in masks if key not in images]
    if orphans:
        more = f" ({len(orphans) - 1} more mask(s) lack one)" if len(orphans) > 1 else ""
        raise SegmentationDataError(f"mask {masks[orphans[0]]} has no image: expected {images_dir / orphans[0]}"
                                    f".<jpg|png|...>; add the image or remove the mask{more}")
    pairs = []
    for key in sorted(images):
        image, mask = images[key], masks[key]
        size, mode, _ = _header(image, "image")
        if _mode_problem(mode):
            raise SegmentationDataError(f"image {image}: {_mode_problem(mode)}")
        mask_size, mask_mode, fmt = _header(mask, "mask")
        problem = _mask_problem(mask_mode, fmt)
        if problem:
            raise SegmentationDataError(f"mask {mask} {problem}")
        if mask_size != size:
            raise SegmentationDataError(f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                                        f"{size[0]}x{size[1]}: a mask holds one class index per image pixel; "
                                        f"re-export it at {size[0]}x{size[1]}")
        pairs.append((image, mask))
    return SegmentationScan(root=root, pairs=pairs, labels=labels)


def load_segmentation_folder(root: str | os.PathLike, preprocessing: Preprocessing | int, *, limit: int | None = None,
                             seed: int = 0) -> SegmentationArrays:
    """Every pair (or `limit` of them, picked with `seed`, in order) decoded once at R x R by the
    preprocessing's geometry (an int R: the whole picture to R x R): images by its interpolation,
    masks nearest-neighbour with the same geometry. Class indices are checked here."""
    from PIL import Image

    if isinstance(preprocessing, int):
        if preprocessing < 1:
            raise SegmentationDataError(f"resolution must be a positive number of pixels, got {preprocessing}")
        preprocessing = Preprocessing(resolution=preprocessing)
    pre, resolution = preprocessing, preprocessing.resolution
    scan = scan_segmentation_folder(root)
    pairs = scan.pairs
    if limit is not None:
        if limit < 1:
            raise SegmentationDataError(f"limit must be at least 1 picture, got {limit}")
        if limit < len(pairs):
            keep = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
            pairs = [pairs[i] for i in keep]
    n, r = len(scan.labels), resolution
    # Filled one pair at a time: memory grows with N * R * R, not with the pictures' own sizes.
    images = torch.empty((len(pairs), 3, r, r), dtype=torch.uint8)
    masks = torch.empty((len(pairs), r, r), dtype=torch.uint8)
    for i, (image_path, mask_path) in enumerate(pairs):
        try:
            with Image.open(image_path) as im:
                im.seek(0)
                rgb = im.convert("RGB")
            with Image.open(mask_path) as im:
                mask = np.asarray(im)  # L or P: the stored values; never convert("L"), which maps a palette to gray
        except Exception as exc:  # noqa: BLE001 - a truncated file fails only when decoded
            raise SegmentationDataError(f"{image_path} or its mask {mask_path} cannot be decoded ({_one_line(exc)}); "
                                        "re-export or remove the pair") from None
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
        bad = present[(present >= n) & (present != IGNORE_INDEX)]
        if len(bad):
            raise SegmentationDataError(f"mask {mask_path} holds class index {int(bad.max())} but {scan.root}/labels.txt "
                                        f"names {n} classes (indices 0..{n - 1}, {IGNORE_INDEX} = ignore): fix the "
                                        "mask, or add the missing class names to labels.txt")
        images[i] = torch.from_numpy(np.asarray(pre.geometry(rgb)).transpose(2, 0, 1).copy())
        masks[i] = torch.from_numpy(np.asarray(pre.mask_geometry(Image.fromarray(mask))).copy())
    files = [image.relative_to(scan.root).as_posix() for image, _ in pairs]
    return SegmentationArrays(images=images, masks=masks, labels=scan.labels, files=files)


# ---------------------------------------------------------------- augmentation


def augment_pairs(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None, *,
                  translate: float = 0.125, scale: tuple[float, float] = (0.75, 1.25)) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flip, zoom (`scale`) and shift (up to `translate` of the side) applied to float
    images (N, 3, H, W) and their masks (N, H, W): images bilinear with edge pixels repeated, masks
    nearest, and pixels that come from outside the picture labelled IGNORE_INDEX (no label invented).
    Plain torch (affine_grid / grid_sample): torchvision is unusable beside the pinned torch."""
    import torch.nn.functional as F

    n = len(images)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    zoom = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 2 * translate  # grid units: the side is 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip / zoom
    theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # masks shifted by one so that "outside" (zero padding) is told apart from class 0
    m = F.grid_sample((masks.float() + 1).unsqueeze(1), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    m = m.squeeze(1).long() - 1
    return x, m.masked_fill(m < 0, IGNORE_INDEX)


# ---------------------------------------------------------------- the composite test bed


def composite_labels() -> tuple[str, ...]:
    """Class 0 is the background; class k + 1 is Fashion-MNIST class k."""
    return ("background", *FASHION_MNIST_LABELS)


def garment_silhouette(gray: np.ndarray) -> np.ndarray:
    """A Fashion-MNIST garment's outline, filled (28 x 28 bool): pixels above OUTLINE_LEVEL, closed by
    one pixel (pattern gaps) and with enclosed holes filled. A mask labels the object, not its
    texture: dark patterns inside a garment are still garment, as a person labelling it would say."""
    from scipy import ndimage

    inside = np.pad(gray > OUTLINE_LEVEL * 255, 1)
    inside = ndimage.binary_closing(inside, iterations=1)[1:-1, 1:-1]
    return ndimage.binary_fill_holes(inside)


def _compose(rng: np.random.Generator, photos: list, cache: dict, garments: np.ndarray, classes: np.ndarray,
             r: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """One picture: a random square crop of a photo, then 1-3 garments, later ones on top."""
    from PIL import Image

    path = photos[int(rng.integers(len(photos)))][0]
    if path not in cache:  # decoded once per call; gray photos become RGB
        with Image.open(path) as im:
            cache[path] = im.convert("RGB")
    photo = cache[path]
    side = int(rng.uniform(*CROP_SHARE) * min(photo.size))
    x0, y0 = int(rng.integers(photo.size[0] - side + 1)), int(rng.integers(photo.size[1] - side + 1))
    canvas = np.asarray(photo.resize((r, r), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side)), np.float32).copy()
    mask = np.zeros((r, r), np.uint8)
    placed = []
    for _ in range(int(rng.integers(GARMENTS_PER_PICTURE[0], GARMENTS_PER_PICTURE[1] + 1))):
        index = int(rng.integers(len(garments)))
        s = max(2, int(round(rng.uniform(*GARMENT_SHARE) * r)))
        gx, gy = int(rng.integers(r - s + 1)), int(rng.integers(r - s + 1))
        tint = rng.integers(64, 256, size=3)  # not too dark, so a garment stays visible on dark photos
        outline = Image.fromarray(garment_silhouette(garments[index]).astype(np.uint8) * 255)
        alpha = np.asarray(outline.resize((s, s), Image.BILINEAR), np.float32)[..., None] / 255  # soft edge
        gray = np.asarray(Image.fromarray(garments[index]).resize((s, s), Image.BILINEAR), np.float32)[..., None] / 255
        region = canvas[gy:gy + s, gx:gx + s]
        # Opaque inside its outline; the garment's own gray shades the tint, so its texture is real pixels.
        region[:] = alpha * (tint.astype(np.float32) * (SHADE_FLOOR + (1 - SHADE_FLOOR) * gray)) + (1 - alpha) * region
        mask[gy:gy + s, gx:gx + s][alpha[..., 0] > MASK_THRESHOLD] = int(classes[index]) + 1
        placed.append({"index": index, "label": int(classes[index]), "box": [gx, gy, s], "tint": tint.tolist()})
    record = {"photo": path.name, "crop": [x0, y0, side], "garments": placed}
    return np.rint(canvas).clip(0, 255).astype(np.uint8), mask, record


def make_composite_dataset(out_dir: str | os.PathLike, *, count: int, resolution: int = 64, split: str = "train",
                           seed: int = 0, progress: bool = False) -> Path:
    """Write `count` composite pictures in the segmentation folder layout at `out_dir` (replacing it),
    with composite.json recording each picture's sources. The same arguments give the same bytes."""
    from PIL import Image
    from tqdm import tqdm

    from mbv3_mobile.data.pictures import sample_photo_files

    if split not in SPLITS:
        raise SegmentationDataError(f"unknown composite split {split!r}: use 'train' or 'test'")
    if count < 1 or resolution < 8 or seed < 0:
        raise SegmentationDataError(f"composite dataset needs count >= 1, resolution >= 8 and seed >= 0; got "
                                    f"count={count}, resolution={resolution}, seed={seed}")
    which = SPLITS.index(split)
    fashion = load_fashion_mnist(split)  # the test split's garments never appear in the train split's pictures
    garments, classes = fashion.images[:, 0].numpy(), fashion.labels.numpy()
    photos = sample_photo_files()[which::2]  # each split its own half of the photos: backgrounds do not repeat either
    rng = np.random.default_rng([seed, which])
    cache: dict = {}
    records = []
    with atomic_dir(out_dir) as tmp:  # an interrupted run leaves no half-written folder
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for i in tqdm(range(count), desc=f"composite {split}", disable=not progress):
            image, mask, record = _compose(rng, photos, cache, garments, classes, resolution)
            Image.fromarray(image, "RGB").save(tmp / "images" / f"{i:05d}.png")
            Image.fromarray(mask, "L").save(tmp / "masks" / f"{i:05d}.png")
            records.append({"file": f"images/{i:05d}.png", **record})
        (tmp / "labels.txt").write_text("\n".join(composite_labels()) + "\n", encoding="utf-8")
        about = {"split": split, "seed": seed, "count": count, "resolution": resolution,
                 "garments": f"Fashion-MNIST {split} split (MIT, Zalando Research); index = position in that split",
                 "photos": {e["file"]: e["licence"] for _, e in photos}, "pictures": records}
        (tmp / "composite.json").write_text(json.dumps(about, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return Path(out_dir)


def composite_folder(cache: str | os.PathLike, *, split: str, count: int, resolution: int, seed: int = 0,
                     progress: bool = False) -> Path:
    """The composite dataset for these arguments under `cache`/data, written on first use (under a
    lock: parallel training processes write it once) and reused; its name covers the generator's code."""
    import fcntl

    from mbv3_mobile.core.code import code_fingerprint

    code = code_fingerprint(__name__)[:10]
    folder = Path(cache) / "data" / f"composite-{split}-{count}x{resolution}px-seed{seed}-{code}"
    if (folder / "composite.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "composite.json").is_file():
            make_composite_dataset(folder, count=count, resolution=resolution, split=split, seed=seed, progress=progress)
    return folder
