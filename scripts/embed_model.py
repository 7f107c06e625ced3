"""Maintainer tool: ship a trained recipe model with the code.

    python scripts/embed_model.py RECIPE [CHECKPOINT]

CHECKPOINT defaults to the cached result of `mbv3 train --recipe RECIPE`. Writes
src/mbv3_mobile/train/zoo/RECIPE.safetensors (weights stored as float16, loaded back as float32)
and its entry in models.toml: sha256, recipe, training figures, the Fashion-MNIST test accuracy of
the fp32 source and of the fp16 file (so the cost of fp16 storage is measured, not assumed), and
the command that reproduces it.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import torch

from mbv3_mobile.core.hashing import sha256_file
from mbv3_mobile.data.datasets import load_fashion_mnist
from mbv3_mobile.model.checkpoint import load_checkpoint, save_checkpoint
from mbv3_mobile.train.evaluate import evaluate
from mbv3_mobile.train.zoo import HERE, RECIPES, recipe_dir


def test_top1(path: Path) -> tuple[float, int]:
    report = evaluate(path, "fashion-mnist", split="test")
    return report.top1, report.images


def main() -> None:
    name = sys.argv[1]
    if name not in RECIPES:
        sys.exit(f"unknown recipe {name!r}: {', '.join(RECIPES)}")
    source = Path(sys.argv[2]) if len(sys.argv) > 2 else recipe_dir(name) / "model.safetensors"
    ck = load_checkpoint(source)
    target = HERE / f"{name}.safetensors"
    save_checkpoint(target, ck.model, preprocessing=ck.preprocessing, labels=ck.labels,
                    extra={**ck.extra, "embedded_from": source.name}, weights_dtype=torch.float16)
    fp32, n = test_top1(source)
    fp16, _ = test_top1(target)
    summary_path = source.parent / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    entry = {
        "file": target.name,
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "weights_dtype": "float16",
        "model": ck.config.name,
        "resolution": ck.preprocessing.resolution,
        "recipe": name,
        "reproduce": f"mbv3 train --recipe {name}  (then: python scripts/embed_model.py {name})",
        "test_images": n,
        "test_top1_fp32_source": round(fp32, 6),
        "test_top1_fp16_file": round(fp16, 6),
        "fp16_storage_cost_pts": round(100 * (fp32 - fp16), 4),
        "val_top1": summary.get("val_top1"),
        "epochs": summary.get("epochs"),
        "train_seconds": summary.get("train_seconds"),
        "images_per_second": summary.get("images_per_second"),
        "world_size": summary.get("world_size"),
        "trained": datetime.date.today().isoformat(),
        "source_sha256": sha256_file(source),
    }
    toml = HERE / "models.toml"
    models = {}
    if toml.is_file():
        import tomllib

        models = tomllib.loads(toml.read_text()).get("models", {})
    models[name] = entry
    lines = ["# Models that ship with the code (written by scripts/embed_model.py; see mbv3_mobile.train.zoo).",
             "# sha256 is checked on every use; test accuracy is eager PyTorch on the 10k Fashion-MNIST test set.", ""]
    for key in sorted(models):
        lines.append(f"[models.{key}]")
        for k, v in models[key].items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    toml.write_text("\n".join(lines))
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    _ = load_fashion_mnist  # the Debian package must be installed (evaluation reads the test set)
    main()
