"""The first, cheap validation pass of an export pipeline (the `checks` of its pipeline file):
every option and input is checked before any stage runs, so a bad checkpoint, picture folder,
label file, preprocessing option or variant fails in seconds with one clear line, not after
minutes of lowering. Nothing is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.data.labels import default_labels, read_labels
from mbv3_mobile.data.selection import SAMPLES, check_picture_folder
from mbv3_mobile.pipeline.spec import PipelineSpec
from mbv3_mobile.pipeline.stages import requested_task

# Disk a run may need beyond the inputs: cached stages plus the published folder, per variant,
# as a multiple of the fp32 weights (a .pte, a bundle, a program, copies); generous on purpose.
_BYTES_PER_VARIANT = 6
_MIN_FREE = 200 << 20


def export_inputs(spec: PipelineSpec, params: dict) -> dict:
    """Checkpoint, preprocessing, labels, pictures and free space; returns what it learned."""
    ck = _checkpoint(params)
    from mbv3_mobile.pipeline.stages import resolve_preprocessing

    pre = resolve_preprocessing(ck, params)
    labels = read_labels(params["labels"], ck.config.num_classes) if params.get("labels") else \
        default_labels(ck.config.num_classes, ck.labels)[0]
    if params.get("images") and params["images"] != SAMPLES:
        check_picture_folder(params["images"], "--images")
    outputs = requested_task(params).module("outputs")
    for purpose, key in (("eval", "eval_data"), ("calib", "calib_data")):
        if key in params:
            outputs.check_pictures(given=params.get(key, ""), images=params.get("images", ""), labels=labels,
                                   purpose=purpose, what=f"--{key.replace('_', '-')}" if params.get(key) else "--images")
    variants = params.get(spec_variants(spec), [])
    if "qat" in variants:
        outputs.check_pictures(given=params.get("train_data", ""), images="", labels=labels, purpose="train",
                               what="--train-data")
    check_free_space(params, ck, len(variants) or 1)
    return {"num_classes": ck.config.num_classes, "preprocessing": pre, "labels": labels}


def spec_variants(spec: PipelineSpec) -> str:
    for st in spec.stages:
        if st.foreach:
            return st.foreach
    return ""


def _checkpoint(params: dict):
    from mbv3_mobile.pipeline.stages import checkpoint_source, load_for_task, requested_task, task_of
    from mbv3_mobile.train.zoo import embedded

    path, recipe = checkpoint_source(params)
    if path is None:
        path = embedded(recipe)
        if path is None:
            return _RecipeOnly(recipe)
    ck = load_for_task(requested_task(params), path, params)
    task_of(params, ck.extra)  # a checkpoint naming a task this version does not know fails here
    return ck


class _RecipeOnly:
    """A recipe that ships no model (trained on first use): its config is the recipe's."""

    def __init__(self, recipe: str) -> None:
        from mbv3_mobile.data.datasets import fashion_mnist_preprocessing
        from mbv3_mobile.model.config import ModelConfig
        from mbv3_mobile.train.zoo import RECIPES

        cfg = RECIPES[recipe]
        self.config = ModelConfig(arch=cfg.arch, width=cfg.width, num_classes=10, minimal=cfg.minimal)
        self.preprocessing = fashion_mnist_preprocessing(cfg.resolution)
        self.labels = None
        self.source = "mbv3-mobile"


def check_free_space(params: dict, ck, variants: int) -> None:
    """Refuse to start when the output or cache folder cannot hold the run (an estimate)."""
    weights = sum(p.numel() for p in ck.model.parameters()) * 4 if hasattr(ck, "model") else 20 << 20
    need = max(_MIN_FREE, weights * _BYTES_PER_VARIANT * variants)
    from mbv3_mobile.pipeline.runner import cache_dir

    for what, folder in (("output folder (--out)", Path(params.get("out", "dist"))), ("cache (MBV3_CACHE)", cache_dir())):
        existing = _existing_parent(folder)
        free = shutil.disk_usage(existing).free
        if free < need:
            raise UserError(f"not enough free space for the {what} {folder}: {free >> 20} MiB free on "
                            f"{existing}, this run needs about {need >> 20} MiB; free space there or choose another "
                            "--out / MBV3_CACHE")


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path
