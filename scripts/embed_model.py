"""Maintainer tool: ship a trained recipe model with the code.

    python scripts/embed_model.py RECIPE [CHECKPOINT]

CHECKPOINT defaults to the cached result of `mbv3 train --recipe RECIPE`. Writes
src/mbv3_mobile/train/zoo/RECIPE.safetensors (weights stored as float16, loaded back as float32)
and its entry in models.toml: sha256, recipe, training figures, the held-out test figure of the
fp32 source and of the fp16 file (classifiers: Fashion-MNIST test top-1; segmenters: mIoU on the
composite test split, with its bounds), so the cost of fp16 storage is measured, not assumed, and
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
from mbv3_mobile.model.checkpoint import checkpoint_extra, load_checkpoint, save_checkpoint
from mbv3_mobile.train.evaluate import evaluate
from mbv3_mobile.train.zoo import HERE, RECIPES, recipe_dir


def test_top1(path: Path) -> tuple[float, int]:
    report = evaluate(path, "fashion-mnist", split="test")
    return report.top1, report.images


def segmentation_figures(source: Path, target: Path) -> dict:
    from mbv3_mobile.train.evaluate_segmentation import evaluate_segmentation

    fp32 = evaluate_segmentation(source, "composite")
    fp16 = evaluate_segmentation(target, "composite")
    return {"test_pictures": fp32.images, "test_data": fp32.dataset, "test_miou_fp32_source": round(fp32.miou, 6),
            "test_miou_bounds_fp32_source": [round(v, 6) for v in fp32.miou_interval],
            "test_pixel_accuracy_fp32_source": round(fp32.pixel_accuracy, 6),
            "test_miou_fp16_file": round(fp16.miou, 6), "fp16_storage_cost_pts": round(100 * (fp32.miou - fp16.miou), 4),
            "test_per_class_iou_fp32_source": {k: None if v is None else round(v, 4)
                                               for k, v in fp32.per_class_iou.items()}}


def main() -> None:
    name = sys.argv[1]
    if name not in RECIPES:
        sys.exit(f"unknown recipe {name!r}: {', '.join(RECIPES)}")
    source = Path(sys.argv[2]) if len(sys.argv) > 2 else recipe_dir(name) / "model.safetensors"
    segmentation = checkpoint_extra(source).get("task") == "segmentation"
    if segmentation:
        from mbv3_mobile.tasks.segmentation.checkpoint import load_segmentation_checkpoint

        ck = load_segmentation_checkpoint(source)
    else:
        ck = load_checkpoint(source)
    target = HERE / f"{name}.safetensors"
    # the checkpoint format is the task's; its extra keeps the task
    save_checkpoint(target, ck.model, preprocessing=ck.preprocessing, labels=ck.labels,
                    extra={**ck.extra, "embedded_from": source.name}, weights_dtype=torch.float16)
    if segmentation:
        figures = segmentation_figures(source, target)
    else:
        fp32, n = test_top1(source)
        fp16, _ = test_top1(target)
        figures = {"test_images": n, "test_top1_fp32_source": round(fp32, 6), "test_top1_fp16_file": round(fp16, 6),
                   "fp16_storage_cost_pts": round(100 * (fp32 - fp16), 4)}
    summary_path = source.parent / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    entry = {
        "file": target.name,
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "weights_dtype": "float16",
        "task": "segmentation" if segmentation else "classification",
        "model": ck.config.name,
        "resolution": ck.preprocessing.resolution,
        "recipe": name,
        "reproduce": f"mbv3 train --recipe {name}  (then: python scripts/embed_model.py {name})",
        **figures,
        **({"val_miou": summary.get("val_miou"), "val_pixel_accuracy": summary.get("val_pixel_accuracy")}
           if segmentation else {"val_top1": summary.get("val_top1")}),
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
             "# sha256 is checked on every use; test figures are eager PyTorch: classifiers on the 10k Fashion-MNIST",
             "# test set, segmenters on the composite test bed's held-out split (garments and photos training never saw).",
             ""]
    for key in sorted(models):
        lines.append(f"[models.{key}]")
        for k, v in models[key].items():
            if v is None:  # TOML has no null: an unknown figure is left out
                continue
            if isinstance(v, dict):  # an inline table
                v_text = "{ " + ", ".join(f"{json.dumps(a)} = {json.dumps(b) if b is not None else 'nan'}"
                                          for a, b in v.items()) + " }"
                lines.append(f"{k} = {v_text}")
            else:
                lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    toml.write_text("\n".join(lines))
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    _ = load_fashion_mnist  # the Debian package must be installed (evaluation reads the test set)
    main()
