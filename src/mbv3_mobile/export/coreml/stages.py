"""iOS pipeline stages: Core ML conversion per variant (fp16 / fp32 / compressed) -> numerics
through the MIL reference interpreter on real pictures -> ExecuTorch Core ML delegate .pte.
Packaging (zips, README, manifest) is `package.py`."""

from __future__ import annotations

import json
import sys

import numpy as np

from mbv3_mobile.export.coreml import convert as cm
from mbv3_mobile.export.coreml.delegate import build_executorch_coreml
from mbv3_mobile.export.coreml.runtime import coreml_predict, interpreter_outputs, run_package
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.pipeline.spec import PipelineError
from mbv3_mobile.pipeline.stages import requested_task, stage_pictures, verify_against_eager


def parse_variant(variant: str) -> tuple[str, str | None]:
    """'fp16' | 'fp32' | 'fp16_int8' | 'fp16_palette6' | 'fp16_int4_block' -> (precision, compression)."""
    precision, _, compression = variant.partition("_")
    if precision not in ("fp16", "fp32") or (compression and compression not in cm.COMPRESSIONS):
        raise PipelineError(f"unknown Core ML variant {variant!r}: use fp16, fp32 or fp16_<{'|'.join(cm.COMPRESSIONS)}>")
    return precision, compression or None


def check_params(spec, params: dict) -> None:
    """Preflight: the task is one Core ML packages here, every variant parses and the deployment
    target supports it."""
    from mbv3_mobile.export.coreml import SPEC

    SPEC.require_task(requested_task(params).name)
    for variant in params.get("variants", []):
        _, compression = parse_variant(variant)
        cm.check_target(params["deployment_target"], compression)


def gate_table(variant: str) -> str:
    precision, compression = parse_variant(variant)
    return "compressed" if compression else precision


def convert(ctx: StageContext) -> dict:
    model, pre, labels = ctx.resolved.load()
    precision, compression = parse_variant(ctx.variant)
    meta = cm.AppMetadata(author=ctx.params["author"], license=ctx.params["license"])
    target = ctx.params["deployment_target"]
    ctx.log(f"coremltools: {precision}{' + ' + compression if compression else ''}, target {target}")
    # a classifier gets Core ML's classifier op (label + probabilities); other tasks their logits
    result = cm.export_coreml(model, pre, labels, ctx.out("package"), precision=precision, compression=compression,
                              deployment_target=target, metadata=meta, classifier=ctx.resolved.task == "classification")
    ctx.out("source_map").write_text(json.dumps(result.source_map))
    return {"export": result.to_dict(), "precision": precision, "compression": compression}


def verify(ctx: StageContext) -> dict:
    """Through the MIL interpreter on real test pictures: fp32 parity with eager; fp16 and
    compressed variants on the whole test set (or `accuracy_images`). On macOS, the real
    MLModel.predict is compared with the interpreter too."""
    package = ctx.upstream("convert").out("package")
    exact = ctx.variant == "fp32"
    result = verify_against_eager(
        ctx, f"Core ML {ctx.variant} (MIL reference interpreter)", lambda x, pre: run_package(package, x, pre),
        limit=ctx.params["parity_images"] if exact else ctx.params["accuracy_images"] or None,
        gate=gate_table(ctx.variant), artifact=package)
    result["engine"] = "mbv3_mobile.verify.mil_interpreter (numpy reference)"
    if sys.platform == "darwin":
        pictures = stage_pictures(ctx, "eval", limit=200).images.permute(0, 2, 3, 1).contiguous().numpy()
        native = coreml_predict(package, pictures)
        interp = interpreter_outputs(package, pictures)
        result["macos_predict_vs_interpreter_max_abs_logit"] = float(np.abs(native["logits"] - interp["logits"]).max())
    else:
        result["macos_predict"] = "skipped: Core ML prediction needs macOS (coremltools predicts only there)"
    return result


def executorch_coreml(ctx: StageContext) -> dict:
    """The ExecuTorch Core ML delegate .pte: built on Linux; runs only where ExecuTorch has the
    CoreMLBackend (iOS/macOS builds), not in the pip runtime here."""
    if not ctx.params["executorch_pte"]:
        return {"skipped": "executorch_pte = false"}
    model, pre, _ = ctx.resolved.load()
    info = build_executorch_coreml(model, ctx.out_dir / "model_coreml.pte", resolution=pre.resolution,
                                   deployment_target=ctx.params["deployment_target"])
    ctx.log(f"Core ML delegate .pte: {info.get('delegated_nodes')} nodes delegated")
    info.pop("path", None)
    return {"file": "model_coreml.pte", **info}
