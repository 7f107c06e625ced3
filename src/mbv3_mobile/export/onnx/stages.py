"""ONNX pipeline stages: export -> simplify -> EP-friendly graph -> (int8) -> EP coverage ->
verify in onnxruntime -> ORT format -> verify the .ort. Packaging is `package.py`."""

from __future__ import annotations

import shutil

from mbv3_mobile.export.onnx import convert as ox
from mbv3_mobile.export.onnx import mobile
from mbv3_mobile.export.onnx.runtime import ort_session, run_onnx
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.pipeline.stages import requested_task, stage_pictures, verify_against_eager

VARIANTS = ("fp32", "int8")
ORT_STYLES = ("runtime", "fixed")
COVERAGE_GATE = "coreml_ep"  # the gate table judging the fp32 model's EP coverage


def check_params(spec, params: dict) -> None:
    """Preflight: the task, the variants and the choices asked for exist (before any stage runs)."""
    from mbv3_mobile.export.onnx import SPEC
    from mbv3_mobile.pipeline.spec import PipelineError

    SPEC.require_task(requested_task(params).name)
    bad = [v for v in params.get("variants", []) if v not in VARIANTS]
    if bad:
        raise PipelineError(f"--variants {','.join(bad)}: not one of {', '.join(VARIANTS)}")
    for key, allowed in (("int8_format", ox.INT8_FORMATS), ("ort_style", ORT_STYLES), ("int8_calibration", ox.INT8_CALIBRATIONS)):
        if key in params and params[key] not in allowed:
            raise PipelineError(f"--{key.replace('_', '-')} {params[key]}: not one of {', '.join(allowed)}")


def export(ctx: StageContext) -> dict:
    model, pre, _ = ctx.resolved.load()
    ox.export_onnx(model, pre.resolution, ctx.out("raw"), dynamic_batch=ctx.params["dynamic_batch"])
    return {"opset": ox.OPSET, "dynamic_batch": ctx.params["dynamic_batch"]}


def simplify(ctx: StageContext) -> dict:
    info = ox.simplify_onnx(ctx.upstream("export").out("raw"), ctx.out("model"))
    ctx.log(f"onnxsim: {info['nodes_before']} -> {info['nodes_after']} nodes")
    return info


def ep_graph(ctx: StageContext) -> dict:
    """The graph every variant starts from: the simplified one, or its EP-friendly rewrite."""
    src = ctx.upstream("simplify").out("model")
    if not ctx.params["ep_friendly"]:
        shutil.copy2(src, ctx.out("model"))
        return {"ep_friendly": False}
    info = mobile.ep_friendly(src, ctx.out("model"))
    done = ", ".join(f"{n} {op}" for op, n in info["rewritten"].items() if n)
    ctx.log(f"EP-friendly graph: rewrote {done}" if done else "EP-friendly graph: nothing to rewrite")
    return {"ep_friendly": True, **info}


def quantize(ctx: StageContext) -> dict:
    src = ctx.upstream("ep_graph").out("model")
    if ctx.variant == "fp32":
        shutil.copy2(src, ctx.out("model"))
        return {"quantization": "none"}
    pre = ctx.resolved.preprocessing
    pics = stage_pictures(ctx, "calib", limit=ctx.params["calib_images"], seed=ctx.params.get("seed", 0))
    fmt, per_channel = ctx.params["int8_format"], ctx.params["int8_per_channel"]
    reduce_range = ctx.params["int8_reduce_range"]
    weights = f"{'per-channel' if per_channel else 'per-tensor'} {'7-bit' if reduce_range else '8-bit'} weights"
    ctx.log(f"ORT static int8 ({fmt}, {weights}), calibrating on {len(pics)} real pictures from {pics.source}")
    info = ox.quantize_onnx_int8(src, ctx.out("model"), pics.normalized(pre), quant_format=fmt, per_channel=per_channel,
                                 calibration_method=ctx.params["int8_calibration"], reduce_range=reduce_range)
    return {"quantization": {**info, "calibration": pics.describe()}}


def coverage(ctx: StageContext) -> dict:
    """NNAPI / Core ML EP coverage of the model this variant publishes (ORT's usability checker).
    fp32 with a fixed batch is judged by [gates.coreml_ep]; a dynamic batch (the server option) and
    int8 (QDQ, which the Core ML EP does not take) are recorded only."""
    cov = mobile.ep_coverage(ctx.upstream("quantize").out("model"))
    for line in mobile.coverage_text(cov).splitlines():
        ctx.log(line)
    gate = COVERAGE_GATE if ctx.variant == "fp32" and not cov["dynamic_inputs"] else None
    if ctx.variant == "fp32" and gate is None:
        ctx.log("dynamic batch: EP coverage recorded, not gated (NNAPI and the Core ML EP need fixed shapes)")
    meta = {"coverage": cov, "figures": mobile.coverage_figures(cov)}
    # `what` opens the runner's gate-failure message: which EP leaves which ops on the CPU, and why
    return {**meta, "gate": gate, "what": mobile.coverage_what(cov, f"the {ctx.variant} ONNX model")} if gate else meta


def verify(ctx: StageContext) -> dict:
    """fp32: parity with eager on `parity_images` real test pictures; int8: figures on the full test set."""
    path = ctx.upstream("quantize").out("model")
    fp32 = ctx.variant == "fp32"
    return verify_against_eager(ctx, f"ONNX {ctx.variant} (onnxruntime)", lambda x, _pre: run_onnx(path, x),
                                limit=ctx.params["parity_images"] if fp32 else None, gate=ctx.variant, artifact=path)


def ort_format(ctx: StageContext) -> dict:
    """The published ONNX model in ORT format, with the operators a reduced build needs."""
    info = mobile.to_ort(ctx.upstream("quantize").out("model"), ctx.out("model"), ctx.out("config"),
                         style=ctx.params["ort_style"])
    ctx.log(f"ORT format ({info['style']} optimisations, {info['target_platform']}): "
            f"{ctx.out('model').stat().st_size / 1e6:.2f} MB, operators: {'; '.join(info['operators'])}")
    return info


def verify_ort(ctx: StageContext) -> dict:
    """The .ort in ONNX Runtime, as an app loads it, against eager with the same gates as the .onnx."""
    path = ctx.upstream("ort_format").out("model")
    session = ort_session(path)
    fp32 = ctx.variant == "fp32"
    return verify_against_eager(ctx, f"ORT format {ctx.variant} (onnxruntime)", lambda x, _pre: run_onnx(session, x),
                                limit=ctx.params["parity_images"] if fp32 else None, gate=ctx.variant, artifact=path)
