"""Named, reproducible recipes for the models the pipelines use when given no checkpoint.

Nothing is downloaded: a recipe's model is trained by this project's own training code on
Fashion-MNIST the first time it is asked for and cached under `MBV3_CACHE` (default
`~/.cache/mbv3-mobile`), keyed by a hash of the recipe, so a changed recipe retrains.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from .train import FINAL_FILE, TrainConfig, train

RECIPES: dict[str, TrainConfig] = {
    # The pipelines' embedded default: MobileNetV3-Small 1.0 on Fashion-MNIST.
    "default": TrainConfig(arch="small", width=1.0, resolution=32, epochs=8, batch_size=128, lr=3e-3),
    # A small, fast model for tests and CI: trained weights (parity/int8 checks need them) in ~30 s.
    "ci": TrainConfig(arch="small", width=0.5, resolution=32, epochs=3, batch_size=128, lr=5e-3,
                      max_train_images=20000),
}


def cache_root() -> Path:
    return Path(os.environ.get("MBV3_CACHE", Path.home() / ".cache" / "mbv3-mobile"))


def recipe_key(cfg: TrainConfig) -> str:
    fields = {k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "progress", "num_workers")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def ensure_model(name: str = "default", *, progress: bool = True) -> Path:
    """Path to the recipe's trained checkpoint, training it (resumably) if it is not cached yet."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    cfg = RECIPES[name]
    out = cache_root() / "models" / f"{name}-{recipe_key(cfg)}"
    final = out / FINAL_FILE
    if final.is_file():
        return final
    resume = (out / "last.state.pt").is_file()
    print(f"[mbv3] training recipe {name!r} into {out} (first use; cached afterwards)", flush=True)
    return train(replace(cfg, out_dir=str(out), progress=progress), resume=resume).checkpoint
