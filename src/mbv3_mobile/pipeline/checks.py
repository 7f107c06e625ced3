"""The first, cheap validation pass of an export pipeline (the `checks` of its pipeline file):
every option and input is checked before any stage runs, so a bad checkpoint, picture folder,
label file, preprocessing option or variant fails in seconds with one clear line, not after
minutes of lowering. Nothing is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.data.datasets import FASHION_MNIST_NAMES, DataError, load_fashion_mnist, scan_image_folder
from mbv3_mobile.data.labels import default_labels, read_labels
from mbv3_mobile.data.pictures import check_picture_header, sample_photo_files, scan_pictures
from mbv3_mobile.data.selection import SAMPLES, choose
from mbv3_mobile.pipeline.spec import PipelineSpec

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
    for purpose, key in (("eval", "eval_data"), ("calib", "calib_data")):
        if key in params:
            source, labelled = choose(given=params.get(key, ""), images=params.get("images", ""), labels=labels,
                                      purpose=purpose)
            _check_source(source, labelled, labels, f"--{key.replace('_', '-')}" if params.get(key) else "--images")
    variants = params.get(spec_variants(spec), [])
    if "qat" in variants:
        source, labelled = choose(given=params.get("train_data", ""), images="", labels=labels, purpose="train")
        _check_source(source, labelled, labels, "--train-data")
    check_free_space(params, ck, len(variants) or 1)
    return {"num_classes": ck.config.num_classes, "preprocessing": pre, "labels": labels}


def spec_variants(spec: PipelineSpec) -> str:
    for st in spec.stages:
        if st.foreach:
            return st.foreach
    return ""


def _checkpoint(params: dict):
    from mbv3_mobile.pipeline.stages import checkpoint_source, load_for_task, task_of
    from mbv3_mobile.train.zoo import embedded

    path, recipe = checkpoint_source(params)
    if path is None:
        path = embedded(recipe)
        if path is None:
            return _RecipeOnly(recipe)
    ck = load_for_task(task_of(params), path, params)
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


def _check_source(source: str, labelled: bool, labels: list[str], what: str) -> None:
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
