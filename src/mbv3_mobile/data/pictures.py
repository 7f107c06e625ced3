"""Pictures without labels: a user's folder tree of photos (`--images DIR`), or, when none is
given, real photos the project can read offline (`sample_photos`, from the scikit-image wheel).

Every picture goes through the model's `Preprocessing.geometry` (the Pillow reference), so the
pixels a verify stage compares are the pixels an app following the manifest would feed. A picture
that cannot be used (unreadable, 16-bit or float pixels that Pillow would clip to white) is an error
naming it: a check on "your pictures" must not silently check fewer of them.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mbv3_mobile.data.datasets import IMAGE_SUFFIXES, DataError
from mbv3_mobile.data.decode import _mode_problem, decode
from mbv3_mobile.data.preprocess import Preprocessing

SAMPLE_PHOTOS = Path(__file__).with_name("sample_photos.toml")
# Views per sample photo: the whole photo through the preset, and four corner crops of 3/4 of each
# side (then the preset): 16 photos give 80 pictures, more varied activations for calibration.
# They are views, not independent photos: the bounds of the label-free gates treat them as pictures.
VIEWS = ("full", "top-left", "top-right", "bottom-left", "bottom-right")
_CORNER_SHARE = 0.75


@dataclass
class Pictures:
    """uint8 RGB pictures already at the model's geometry (N, 3, R, R), with where they came from."""

    images: torch.Tensor
    names: list[str]
    source: str  # "DIR", "sample photos (scikit-image)", "fashion-mnist test", ...
    labels: torch.Tensor | None = None
    classes: tuple[str, ...] | None = None
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256 of the file it was read from

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def normalized(self, pre: Preprocessing) -> torch.Tensor:
        return pre.normalize(self.images.float().div(255.0)).contiguous()

    def subset(self, count: int | None, seed: int = 0) -> Pictures:
        """`count` pictures picked with `seed`, in their original order (all of them if count is None/too big)."""
        if count is None or count >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count].sort().values
        return Pictures(self.images[keep], [self.names[i] for i in keep], self.source,
                        None if self.labels is None else self.labels[keep], self.classes,
                        {self.names[i]: self.files[self.names[i]] for i in keep if self.names[i] in self.files})

    def digest(self) -> str:
        """sha256 of the pixels (what a test recomputes from the raw files and the manifest)."""
        return hashlib.sha256(self.images.numpy().tobytes()).hexdigest()

    def describe(self) -> dict:
        return {"source": self.source, "count": len(self), "labelled": self.labelled,
                "pixels_sha256": self.digest(), "names": self.names[:20] + (["..."] if len(self) > 20 else [])}


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def scan_pictures(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(picture files, other files) under `root`, recursively, sorted; hidden files ignored."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"--images {root} does not exist; give a folder of pictures (jpg, png, webp, ...)")
    if not root.is_dir():
        raise DataError(f"--images {root} is a file, not a folder; give the folder that holds the pictures")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))
    pictures = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not pictures:
        seen = f" ({len(others)} other file(s), e.g. {others[0].name})" if others else " (it is empty)"
        raise DataError(f"--images {root} holds no pictures{seen}; pictures are "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))} files, in any sub-folders")
    return pictures, others


def check_picture_header(path: Path) -> str | None:
    """Why `path` cannot be used (opened without decoding the pixels), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _mode_problem(im.mode)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        return f"unreadable ({type(exc).__name__}: {str(exc)[:100]})"


def load_pictures(root: str | os.PathLike, pre: Preprocessing, *, limit: int | None = None, seed: int = 0,
                  what: str = "--images") -> Pictures:
    """Every picture under `root` (or `limit` of them, picked with `seed`) at the model's geometry."""
    root = Path(root)
    files, _ = scan_pictures(root)
    if limit is not None and limit < len(files):
        keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        files = [files[i] for i in keep]
    images, names, digests, bad = [], [], {}, []
    for path in files:
        try:
            images.append(decode(path, pre))
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
            bad.append(f"{path.relative_to(root)} ({str(exc)[:120]})")
            continue
        name = str(path.relative_to(root))
        names.append(name)
        digests[name] = _sha256(path)
    if bad:
        raise DataError(f"{what} {root}: {len(bad)} picture(s) cannot be used: {'; '.join(bad[:3])}"
                        f"{' ...' if len(bad) > 3 else ''}; remove or convert them (8-bit RGB or gray)")
    return Pictures(torch.from_numpy(np.stack(images)), names, str(root), files=digests)


def sample_photo_files() -> list[tuple[Path, dict]]:
    """The scikit-image wheel's sample photos (file, entry of sample_photos.toml)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("no pictures to check the model on: pass --images DIR (a folder of your pictures), or "
                        "install scikit-image, whose wheel carries the sample photos used by default")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    entries = tomllib.loads(SAMPLE_PHOTOS.read_text())["photos"]
    found = [(data / e["file"], e) for e in entries if (data / e["file"]).is_file()]
    if not found:
        raise DataError(f"scikit-image at {data.parent} carries none of the sample photos; pass --images DIR")
    return found


def sample_photos(pre: Preprocessing) -> Pictures:
    """Views (`VIEWS`) of the sample photos at the model's geometry."""
    from PIL import Image

    images, names, digests = [], [], {}
    for path, _ in sample_photo_files():
        with Image.open(path) as im:
            im.seek(0)
            photo = im.convert("RGB")
        w, h = photo.size
        cw, ch = int(w * _CORNER_SHARE), int(h * _CORNER_SHARE)
        boxes = {"full": (0, 0, w, h), "top-left": (0, 0, cw, ch), "top-right": (w - cw, 0, w, ch),
                 "bottom-left": (0, h - ch, cw, h), "bottom-right": (w - cw, h - ch, w, h)}
        for view in VIEWS:
            images.append(np.asarray(pre.geometry(photo.crop(boxes[view])), dtype=np.uint8).transpose(2, 0, 1).copy())
            names.append(f"{path.name}#{view}")
        digests[path.name] = _sha256(path)
    return Pictures(torch.from_numpy(np.stack(images)), names, "sample photos (scikit-image wheel)", files=digests)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
