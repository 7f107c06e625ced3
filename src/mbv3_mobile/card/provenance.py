"""Where a model and its artifacts came from: training metadata, the export command."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from mbv3_mobile.core.errors import UserError


def _checkpoint_extra(path: Path) -> dict | None:
    """The `extra` metadata of one of our .safetensors checkpoints (header only), or None."""
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return json.loads(meta.get("extra", "{}"))
    except Exception:  # noqa: BLE001 - unreadable metadata means "unknown", said so in the card
        return None


def training_info(checkpoint: Path | None, source: dict) -> dict:
    """What the checkpoint says about its training; 'unknown' with the reason when it says nothing."""
    extra = _checkpoint_extra(checkpoint) if checkpoint else None
    cfg = (extra or {}).get("train_config")
    if not cfg:
        why = (f"the source checkpoint ({source.get('format', '?')} format) carries no training metadata, so it "
               "was not trained by `mbv3 train` or its metadata was stripped") if checkpoint else (
               "the source checkpoint is no longer at its recorded path with its recorded sha256, so its metadata "
               "cannot be read")
        return {"status": "unknown", "reason": why, "data": "unknown", "reproduce": None}
    info = {"status": "known", "data": _data_description(cfg), "config": cfg,
            "val_top1": extra.get("val_top1"), "val_top5": extra.get("val_top5"), "epochs": extra.get("epochs"),
            "val_miou": extra.get("val_miou"), "val_pixel_accuracy": extra.get("val_pixel_accuracy"),
            "val_note": "top-1 on the held-out validation split of training data, not the test set"
            if not cfg.get("val_dataset") else f"top-1 on {cfg['val_dataset']}"}
    if cfg.get("dataset") == "composite":
        info["limitations"] = ("trained on the composite test bed: Fashion-MNIST garments pasted onto crops of 16 sample "
                               "photos; masks of real scenes are not measured and would be far worse. A demonstration / "
                               "pipeline-validation model: train on your own masks (`mbv3 train --task segmentation`).")
    if cfg.get("dataset") in ("fashion-mnist", "fashion_mnist"):
        info["limitations"] = ("trained on Fashion-MNIST: centred 28x28 greyscale product images on a black background, "
                               "upscaled; accuracy on camera photos of clothing is not measured and likely far lower. A demonstration / "
                               "pipeline-validation model: fine-tune on your own data (`mbv3 train --init-checkpoint`).")
    recipe = _recipe_of(cfg)
    info["recipe"] = recipe
    info["reproduce"] = f"nox -s train -- --recipe {recipe}" if recipe else _train_command(cfg)
    run = Path(source.get("path", "")).parent
    summary = run / "summary.json"
    if summary.is_file():
        try:
            s = json.loads(summary.read_text())
        except (OSError, json.JSONDecodeError):
            s = {}
        if s.get("checkpoint") and Path(s["checkpoint"]).resolve() == Path(source["path"]).resolve():
            info["summary"] = {k: s.get(k) for k in ("train_seconds", "images_per_second", "world_size", "device", "threads")}
            info["run_folder"] = str(run)
            info["curves"] = str(run / "curves.png") if (run / "curves.png").is_file() else None
    return info


def _data_description(cfg: dict) -> str:
    ds = cfg.get("dataset", "unknown")
    name = {"fashion-mnist": "Fashion-MNIST (train split, 60k 28x28 grey images, 10 classes)",
            "fashion_mnist": "Fashion-MNIST (train split, 60k 28x28 grey images, 10 classes)",
            "composite": "the composite segmentation test bed (Fashion-MNIST train garments on sample-photo crops, "
                         "background + 10 classes; docs/segmentation-data.md)"}.get(ds, ds)
    parts = [name]
    if cfg.get("max_train_images"):
        parts.append(f"class-balanced subset of {cfg['max_train_images']} images")
    parts.append(f"validation: {cfg['val_dataset']}" if cfg.get("val_dataset")
                 else f"validation: {cfg.get('val_fraction', 0):.3g} of train held out")
    return "; ".join(parts)


def _recipe_of(cfg: dict) -> str | None:
    try:
        from mbv3_mobile.train.loop import TrainConfig
        from mbv3_mobile.train.zoo import RECIPES, recipe_key

        key = recipe_key(TrainConfig(**{k: v for k, v in cfg.items() if k in TrainConfig.__dataclass_fields__}))
        return next((name for name, r in RECIPES.items() if recipe_key(r) == key), None)
    except Exception:  # noqa: BLE001 - a config from another version matches no recipe
        return None


def _train_command(cfg: dict) -> str:
    from dataclasses import MISSING, fields

    from mbv3_mobile.train.loop import TrainConfig

    flags = {"out_dir": "--out", "augment": "--no-augment", "channels_last": "--no-channels-last"}
    args = []
    for f in fields(TrainConfig):
        if f.name in ("progress", "extra", "num_workers") or f.name not in cfg:
            continue
        default = None if f.default is MISSING else f.default
        value = cfg[f.name]
        if value == default or value is None:
            continue
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        if isinstance(value, bool):
            args.append(flag)  # every bool flag flips its default
        else:
            args += [flag, str(value)]
    return "nox -s train -- " + shlex.join(args)


def _flag_args(params: dict) -> list[str]:
    args = []
    for k, v in params.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list):
            args += [flag, ",".join(map(str, v))]
        else:
            args += [flag, str(v)]
    return args


def export_info(pipeline: str, defaults: dict, effective: dict, *, exact: bool) -> dict:
    overrides = {k: v for k, v in effective.items() if k in defaults and v != defaults[k]}
    cmd = f"nox -s export_{pipeline}" + (" -- " + shlex.join(_flag_args(overrides)) if overrides else "")
    return {"pipeline": pipeline, "params": effective, "overrides": overrides, "exact": exact, "reproduce": cmd}


def export_from_context(ctx) -> dict:
    """The publishing run's effective parameters (every stage's declared ones), exactly."""
    effective: dict = {}
    for r in ctx.all_results.values():
        effective.update(r.meta.get("key_data", {}).get("params", {}))
    effective.update(ctx.params)
    return export_info(ctx.pipeline.name, ctx.pipeline.params, effective, exact=True)


def _export_from_manifest(folder: Path, manifest: dict) -> dict:
    """Best effort for a folder without a card: what the manifest records (not calibration counts)."""
    fmt = manifest.get("export_format") or {}
    pipeline = fmt.get("pipeline")
    if pipeline is None:
        return {"pipeline": None, "params": {}, "overrides": {}, "exact": False,
                "reproduce": f"unknown (format {manifest['format']!r} has no known pipeline)"}
    try:
        from mbv3_mobile.pipeline.spec import load_pipeline

        defaults = load_pipeline(pipeline).params
    except UserError:
        defaults = {}
    # Whatever the manifest does not record is assumed to have been the pipeline's default.
    effective = {**defaults, fmt["variants_param"]: list(manifest["figures"]), "out": str(folder.parent),
                 "name": folder.name if folder.name != _default_name(manifest) else ""}
    source = manifest.get("source_checkpoint", {}).get("path", "")
    recipe = _zoo_recipe_of_path(source)
    effective.update({"recipe": recipe, "checkpoint": ""} if recipe else {"checkpoint": source})
    if "fp32" in manifest["figures"]:
        effective["parity_images"] = manifest["figures"]["fp32"].get("images")
    info = export_info(pipeline, defaults, effective, exact=False)
    info["note"] = ("reconstructed from manifest.json, other settings assumed default (calibration and "
                    "evaluation settings are not recorded there)")
    return info


def _default_name(manifest: dict) -> str:
    return f"{manifest['model']['name']}_{manifest['preprocessing']['resolution']}px"


def _zoo_recipe_of_path(path: str) -> str | None:
    """The zoo recipe whose model `path` is: a shipped file, or a cached training of the recipe."""
    try:
        from mbv3_mobile.train.zoo import RECIPES, embedded, recipe_dir

        p = Path(path).resolve()
        for name in RECIPES:
            shipped = embedded(name)
            if (shipped is not None and shipped.resolve() == p) or p.parent == recipe_dir(name).resolve():
                return name
        return None
    except Exception:  # noqa: BLE001
        return None
