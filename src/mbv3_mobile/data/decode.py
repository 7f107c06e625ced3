"""Decoding one picture file to the model's geometry (shared by ImageFolder trees and unlabelled
picture folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mbv3_mobile.data.preprocess import Preprocessing


def _mode_problem(mode: str) -> str | None:
    if mode in ("I", "F") or mode.startswith("I;"):
        kind = "float" if mode == "F" else "more than 8 bits per channel"
        return f"{kind} pixels (mode {mode}) would be clipped to 8 bits: convert it to 8-bit RGB or gray"
    return None


def decode(path: Path, pre: Preprocessing | int) -> np.ndarray:
    """One picture file -> uint8 (3, R, R) through the reference geometry (GIF: first frame). An
    int is a plain R x R bilinear resize (data at any size, e.g. a tiny training set)."""
    from PIL import Image

    with Image.open(path) as im:
        problem = _mode_problem(im.mode)
        if problem:
            raise ValueError(problem)
        im.seek(0)
        if isinstance(pre, int):
            out = im.convert("RGB").resize((pre, pre), Image.BILINEAR)
        else:
            out = pre.geometry(im)
        return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1).copy()


