"""ONNX pipeline stages: export -> simplify -> (int8 QDQ) -> verify in onnxruntime. Packaging is
`package.py`."""

from __future__ import annotations

import shutil

from mbv3_mobile.data.selection import labelled_images
from mbv3_mobile.export.onnx import convert as ox
from mbv3_mobile.export.onnx.runtime import run_onnx
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.pipeline.stages import load_resolved, verify_against_eager


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
    _, pre, labels = load_resolved(ctx.inputs["resolve"])
    calib, _ = labelled_images(ctx.params["calib_data"], pre, labels, split="train", limit=ctx.params["calib_images"])
    ctx.log(f"ORT static QDQ int8, calibrating on {len(calib)} real training pictures")
    return {"quantization": ox.quantize_onnx_int8(src, ctx.out("model"), calib)}


def verify(ctx: StageContext) -> dict:
    """fp32: parity with eager on `parity_images` real test pictures; int8: figures on the full test set."""
    path = ctx.inputs["quantize"].out("model")
    fp32 = ctx.variant == "fp32"
    return verify_against_eager(ctx, f"ONNX {ctx.variant} (onnxruntime)", lambda x, _pre: run_onnx(path, x),
                                limit=ctx.params["parity_images"] if fp32 else None, gate=ctx.variant, artifact=path)
