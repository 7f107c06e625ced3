"""Stages every export pipeline shares: `resolve_checkpoint` (the first stage) and the verify
step's common shape (real pictures -> the task's eager reference and the format's outputs ->
figures, judged later by the runner against the pipeline's gates)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from mbv3_mobile.core.hashing import sha256_file
from mbv3_mobile.data.labels import default_labels, read_labels
from mbv3_mobile.data.pictures import Pictures
from mbv3_mobile.data.preprocess import Preprocessing, preset, preset_for_source
from mbv3_mobile.model.checkpoint import CheckpointError, checkpoint_extra
from mbv3_mobile.model.flops import profile_model
from mbv3_mobile.pipeline.contracts import EXAMPLES_FILE, ResolvedModel, ThreadsPick, VerifyFigures
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.pipeline.spec import PipelineError
from mbv3_mobile.tasks import TaskError, get_task

MODEL_FILE = "model.safetensors"  # resolve's declared output "model"
EXAMPLE_PICTURES = 4  # pictures whose outputs the model card shows (a task with `write_examples`)


def checkpoint_source(params: dict) -> tuple[Path | None, str]:
    """(the user's --checkpoint file, or None for the recipe's model; the recipe's name), with the
    one error a missing file or an unknown recipe gets, wherever it is first noticed."""
    from mbv3_mobile.train.zoo import RECIPES

    if params.get("checkpoint"):
        path = Path(params["checkpoint"])
        if not path.is_file():
            raise PipelineError(f"--checkpoint {path} does not exist; pass a .safetensors/.pth file or omit it "
                                "to use the embedded Fashion-MNIST default")
        return path, ""
    recipe = params.get("recipe") or "default"
    if recipe == "default":  # the generic default: the shipped model of the task asked for
        recipe = task_of(params).default_recipe
    if recipe not in RECIPES:
        raise PipelineError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    return None, recipe


def task_of(params: dict, extra: dict | None = None):
    """The task to export for: --task, else the checkpoint's own (its metadata), else classification."""
    try:
        return get_task(params.get("task") or (extra or {}).get("task"))
    except TaskError as exc:
        raise PipelineError(f"--task: {exc}") from None


def requested_task(params: dict):
    """The task a run exports for: --task, else the one its checkpoint names (read from the header),
    else the one of its recipe, else classification."""
    if params.get("task"):
        return task_of(params)
    path, recipe = checkpoint_source(params)
    if path is not None:
        return task_of(params, checkpoint_extra(path))
    from mbv3_mobile.train.zoo import RECIPES

    return task_of({"task": RECIPES[recipe].task})


def load_for_task(task, path: Path, params: dict):
    """The checkpoint as the task's model, or the one error saying what does not match."""
    try:
        return task.module("outputs").load_checkpoint(path, arch=params.get("arch") or None,
                                                      width=params.get("width") or None)
    except CheckpointError as exc:
        raise PipelineError(f"checkpoint does not match the request: {exc}") from None


def resolve_checkpoint_fingerprint(ctx: StageContext) -> str:
    path, recipe = checkpoint_source(ctx.params)
    if path is not None:
        return "file:" + sha256_file(path)
    from mbv3_mobile.train.zoo import recipe_fingerprint

    return recipe_fingerprint(recipe)


def resolve_preprocessing(ck, params: dict) -> Preprocessing:
    """The checkpoint's preprocessing (ours), else the preset of its origin; then the options."""
    p = params
    if ck.preprocessing is not None and not p.get("preset"):
        pre = ck.preprocessing
    else:
        name = p.get("preset") or preset_for_source(ck.source, minimal=ck.config.minimal)
        base = ck.preprocessing.resolution if ck.preprocessing else 224
        pre = preset(name, base)
        if ck.preprocessing is not None:  # ours, with a preset asked for: keep its statistics
            pre = replace(pre, mean=ck.preprocessing.mean, std=ck.preprocessing.std)
    if p.get("resolution"):
        pre = pre.with_resolution(int(p["resolution"]))
    if p.get("resize"):
        value = str(p["resize"]).strip().lower()
        if value == "none":
            pre = replace(pre, resize_shorter=None)
        elif value.isdigit():
            pre = replace(pre, resize_shorter=int(value))
        else:
            raise PipelineError(f"--resize {p['resize']!r}: give the shorter side in pixels (e.g. 256) or 'none' "
                                "(whole picture to the input size, no crop)")
    if p.get("interpolation"):
        pre = replace(pre, interpolation=p["interpolation"])
    for key in ("mean", "std"):
        if p.get(key):
            pre = replace(pre, **{key: _three_floats(p[key], key)})
    return pre


def _three_floats(values, key: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise PipelineError(f"--{key} takes three numbers, one per RGB channel (e.g. --{key} 0.485,0.456,0.406); "
                            f"got {values!r}")
    return out


def resolve_checkpoint(ctx: StageContext) -> dict:
    """The user's checkpoint, or the embedded default, normalised to our format, with the task,
    preprocessing and labels it will be exported with."""
    p = ctx.params
    path, recipe = checkpoint_source(p)
    if path is None:
        from mbv3_mobile.train.zoo import ensure_model

        path = ensure_model(recipe, progress=ctx.progress)
    task = task_of(p, checkpoint_extra(path))  # --task, else the task the checkpoint names
    ck = load_for_task(task, path, p)
    pre = resolve_preprocessing(ck, p)
    if ck.preprocessing is not None and pre.resolution != ck.preprocessing.resolution:
        ctx.log(f"warning: exporting at {pre.resolution} px, the model was trained at {ck.preprocessing.resolution} px")
    if p.get("labels"):
        labels, labels_from = read_labels(p["labels"], ck.config.num_classes), str(p["labels"])
    else:
        labels, labels_from = default_labels(ck.config.num_classes, ck.labels)
    from mbv3_mobile.model.checkpoint import save_checkpoint

    save_checkpoint(ctx.out("model"), ck.model, preprocessing=pre, labels=labels, extra={**ck.extra, "task": task.name})
    prof = profile_model(ck.model, pre.resolution)
    ctx.log(f"{ck.config.name} ({ck.source}, {task.title}) at {pre.resolution} px, {prof.params:,} params, "
            f"{prof.macs / 1e6:.1f} M MACs; preprocessing {pre.preset}; labels: {labels_from}")
    return ResolvedModel(
        task=task.name, model_name=ck.config.name, config=ck.config.to_dict(), preprocessing=pre,
        preprocessing_rule=pre.describe(), labels=tuple(labels), labels_from=labels_from, source=str(path),
        source_format=ck.source, source_sha256=sha256_file(path), params=prof.params, macs=prof.macs,
        train_summary={k: ck.extra.get(k) for k in ("val_top1", "epochs")}
        | {k: ck.extra[k] for k in ("val_miou", "val_pixel_accuracy") if k in ck.extra},
        weights=str(ck.extra.get("weights", ""))).to_meta()


def stage_pictures(ctx: StageContext, purpose: str, *, limit: int | None = None, seed: int = 0) -> Pictures:
    """The pictures a stage uses, by the pipelines' defaults (`data.selection.choose`):
    purpose "eval" (gates), "calib" (calibration) or "train" (QAT, labelled)."""
    resolved = ctx.resolved
    p = ctx.params
    given = {"eval": p.get("eval_data", ""), "calib": p.get("calib_data", ""), "train": p.get("train_data", "")}[purpose]
    what = {"eval": "--eval-data" if given else "--images", "calib": "--calib-data" if given else "--images",
            "train": "--train-data"}[purpose]
    return get_task(resolved.task).module("outputs").pictures(
        given=given, images=p.get("images", ""), labels=list(resolved.labels), pre=resolved.preprocessing,
        purpose=purpose, split="test" if purpose == "eval" else "train", limit=limit, seed=seed, what=what)


def gate_table(ctx: StageContext, base: str, labelled: bool) -> str:
    """The task's table `<task>.<base>` (e.g. classification.ptq) for labelled pictures; its
    label-free form `..._unlabelled` otherwise, where the pipeline declares one; `..._random` for a
    checkpoint that says its weights are random (`tasks.TaskSpec.gate_table`)."""
    return get_task(ctx.resolved.task).gate_table(base, labelled, ctx.gates,
                                                  random_weights=ctx.resolved.weights == "random")


def verify_against_eager(ctx: StageContext, what: str, run: Callable, *, limit: int | None, gate: str,
                         artifact: Path, hint: str | None = None) -> dict:
    """Real pictures -> the task's eager fp32 reference and the format's outputs (`run(images, pre)`)
    -> figures. Returns the verify stage's meta (`contracts.VerifyFigures`): the runner judges the
    figures against the gate table (`gate` within the task's tables, or its label-free form for
    pictures without labels) on every run, and publishing checks `measured` (sha256 of the bytes
    measured) against the file it ships."""
    resolved = ctx.resolved
    task = get_task(resolved.task)
    model, pre, _ = resolved.load()
    pics = stage_pictures(ctx, "eval", limit=limit)
    x = pics.normalized(pre)
    kind = "labelled" if pics.labelled else "unlabelled: label-free gates"
    ctx.log(f"{what}: {len(pics)} real pictures from {pics.source} ({kind})")
    figures_of_task = task.module("figures")
    if hasattr(figures_of_task, "streamed"):  # outputs per pixel: a batch at a time, never all of them
        outputs = task.module("outputs")
        keep = None
        if hasattr(figures_of_task, "write_examples"):  # the model card's picture of a few outputs
            def keep(ref, cand):
                k = EXAMPLE_PICTURES
                figures_of_task.write_examples(ref[:k], cand[:k], pics.images[:k],
                                               None if pics.labels is None else pics.labels[:k], ctx.out_dir / EXAMPLES_FILE)
        figures = figures_of_task.streamed(lambda b: outputs.reference(model, b), lambda b: run(b, pre), x, pics.labels,
                                           num_classes=resolved.num_classes, progress=ctx.progress, desc=what,
                                           first_batch=keep)
    else:
        reference = _reference(task, ctx.upstream("resolve").key, pics, model, x)
        figures = figures_of_task.compare(reference, run(x, pre), pics.labels)
    return VerifyFigures(figures=figures, gate=gate_table(ctx, gate, pics.labelled), what=what,
                         pictures=pics.describe(), measured=measured(artifact), hint=hint).to_meta()


_REFERENCES: dict[tuple[str, str], torch.Tensor] = {}


def _reference(task, model_key: str, pics: Pictures, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The task's eager outputs, computed once per (model, pictures) in a process: every verify
    stage of a run (each variant, .onnx and .ort) compares against the same reference."""
    key = (model_key, pics.digest())
    if key not in _REFERENCES:
        if len(_REFERENCES) > 8:
            _REFERENCES.clear()
        _REFERENCES[key] = task.module("outputs").reference(model, x)
    return _REFERENCES[key]


def measured(path: Path) -> dict:
    """{file: sha256} of an artifact (a file, or every file of a folder such as an .mlpackage)."""
    if path.is_dir():
        return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}
    return {path.name: sha256_file(path)}


def time_threads(ctx: StageContext, opener: Callable, path: Path, runtime: str) -> dict:
    """A format's `threads` stage: the artifact at `path`, opened by the bench's `opener(path,
    threads, x)`, timed at 1, 2, 4 .. usable cores (`core.threads.measure_threads`); the meta the
    package stage puts in the manifest (`contracts.ThreadsPick`, `variants.<v>.threads`)."""
    import numpy as np

    from mbv3_mobile.core.threads import measure_threads

    r = ctx.resolved.resolution
    # A CNN's latency does not depend on the pixel values: a fixed normal tensor stands in for a picture.
    x = np.random.default_rng(0).standard_normal((1, 3, r, r)).astype(np.float32)

    def open_at(n: int):
        run, keep = opener(str(path), n, x)
        return lambda: (run(), keep)

    pick = ThreadsPick(**measure_threads(open_at, runtime=runtime))
    ctx.log(f"use {pick.recommended} thread(s): " + ", ".join(f"{n}: {ms:.2f} ms" for n, ms in pick.p50_ms.items()))
    return pick.to_meta()
