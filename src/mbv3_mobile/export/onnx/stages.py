"""ONNX pipeline stages: export -> simplify -> (int8 QDQ) -> verify in onnxruntime. Packaging is
`package.py`."""

from __future__ import annotations

import shutil

from mbv3_mobile.export.onnx import convert as ox
from mbv3_mobile.export.onnx.runtime import run_onnx
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.pipeline.stages import load_resolved, stage_pictures, verify_against_eager

VARIANTS = ("fp32", "int8")


def check_params(spec, params: dict) -> None:
    """Preflight: the variants asked for exist (before any stage runs)."""
    from mbv3_mobile.pipeline.spec import PipelineError

    bad = [v for v in params.get("variants", []) if v not in VARIANTS]
    if bad:
        raise PipelineError(f"--variants {','.join(bad)}: not one of {', '.join(VARIANTS)}")


def export(ctx: StageContext) -> dict:
    model, pre, _ = load_resolved(ctx.inputs["resolve"])
    ox.export_onnx(model, pre.resolution, ctx.out("raw"), dynamic_batch=ctx.params["dynamic_batch"])
    return {"opset": ox.OPSET, "dynamic_batch": ctx.params["dynamic_batch"]}


def simplify(ctx: StageContext) -> dict:
    info = ox.simplify_onnx(ctx.inputs["export"].out("raw"), ctx.out("model"))
    ctx.log(f"onnxsim: {info['nodes_before']} -> {info['nodes_after']} nodes")
    return info


def quantize(ctx: StageContext) -> dict:
    src = ctx.inputs["simplify"].out("model")
    if ctx.variant == "fp32":
        shutil.copy2(src, ctx.out("model"))
        return {"quantization": "none"}
    _, pre, _ = load_resolved(ctx.inputs["resolve"])
    pics = stage_pictures(ctx, "calib", limit=ctx.params["calib_images"], seed=ctx.params.get("seed", 0))
    ctx.log(f"ORT static QDQ int8, calibrating on {len(pics)} real pictures from {pics.source}")
    info = ox.quantize_onnx_int8(src, ctx.out("model"), pics.normalized(pre))
    return {"quantization": {**info, "calibration": pics.describe()}}


def verify(ctx: StageContext) -> dict:
    """fp32: parity with eager on `parity_images` real test pictures; int8: figures on the full test set."""
    path = ctx.inputs["quantize"].out("model")
    fp32 = ctx.variant == "fp32"
    return verify_against_eager(ctx, f"ONNX {ctx.variant} (onnxruntime)", lambda x, _pre: run_onnx(path, x),
                                limit=ctx.params["parity_images"] if fp32 else None, gate=ctx.variant, artifact=path)
