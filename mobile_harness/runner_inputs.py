"""The runner's synthetic inputs, reproduced bit for bit: element j of input i is
((j * 7919 + 13 * i) % 255) / 127.5 - 1 (see mbv3_runner.cpp, synthetic_inputs)."""

from __future__ import annotations

import numpy as np


def synthetic_input(index: int, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    j = np.arange(n, dtype=np.uint64)
    values = ((j * 7919 + 13 * index) % 255).astype(np.float64) / 127.5 - 1.0
    return values.astype(dtype).reshape(shape)
