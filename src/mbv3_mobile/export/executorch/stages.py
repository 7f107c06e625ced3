"""Android pipeline stages: quantize (none / PT2E PTQ / PT2E QAT) -> torch.export -> lower to
XNNPACK -> to_executorch (.pte) -> verify in the ExecuTorch runtime -> BundledProgram around the
same .pte bytes. Packaging is `package.py`."""

from __future__ import annotations

import re

import numpy as np
import torch

from mbv3_mobile.data.datasets import ArrayDataset
from mbv3_mobile.export.executorch import bundle as bpte
from mbv3_mobile.export.executorch.lower import lower as lower_program
from mbv3_mobile.export.executorch.lower import write_pte
from mbv3_mobile.export.executorch.runtime import run_pte
from mbv3_mobile.graph import export_program
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.pipeline.spec import PipelineError
from mbv3_mobile.pipeline.stages import gate_table, requested_task, stage_pictures, verify_against_eager
from mbv3_mobile.quantize import pt2e as q
from mbv3_mobile.tasks import get_task

QUANT_CHOICES = ("fp32", "ptq", "qat")
STREAM_BATCH = 16  # the largest batch `verify_against_eager` streams per call


def check_params(spec, params: dict) -> None:
    """Preflight: the task and the variants asked for exist (before any stage runs)."""
    from mbv3_mobile.export.executorch import SPEC

    SPEC.require_task(requested_task(params).name)
    bad = [v for v in params.get("quant", []) if v not in QUANT_CHOICES]
    if bad:
        raise PipelineError(f"--quant {','.join(bad)}: not one of {', '.join(QUANT_CHOICES)}")
    mode = str(params.get("int8_fallback", "off"))
    names = [n.strip() for n in mode.split(",")]
    if mode not in ("off", "auto") and not all(re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", n) for n in names):
        raise PipelineError(f"--int8-fallback {mode!r}: use auto, off, or comma-separated layer paths "
                            "of convolutions or linears (e.g. features.0.0,features.1.block.0.0; `mbv3 parity --sensitivity` "
                            "shows where error enters)")
    if str(params.get("int8_stem", "float")) not in ("float", "int8"):
        raise PipelineError(f"--int8-stem {params.get('int8_stem')!r}: use float (the stem and the first block's first "
                            "conv in fp32, the default) or int8 (every conv and linear int8)")
    if params.get("int8_fallback_max", 1) < 1 or params.get("fallback_images", 10) < 10:
        raise PipelineError("--int8-fallback-max must be >= 1 and --fallback-images >= 10")


def load_program(path) -> torch.export.ExportedProgram:
    """A saved (quantized) ExportedProgram. An int8 program holds quantized_decomposed ops, which
    deserialize only once their library is registered: in a fresh process with every stage cached
    (`nox -s parity` run twice) nothing else has imported it."""
    import torchao.quantization.pt2e  # noqa: F401 - registers quantized_decomposed.*

    return torch.export.load(path)


def quantize(ctx: StageContext) -> dict:
    """fp32: the eager model; ptq/qat: the converted PT2E int8 graph. Saved as an ExportedProgram."""
    if ctx.variant not in QUANT_CHOICES:
        raise PipelineError(f"--quant {ctx.variant!r} is not one of {', '.join(QUANT_CHOICES)}")
    model, pre, _ = ctx.resolved.load()
    info: dict = {"quantization": ctx.variant}
    if ctx.variant != "fp32":
        calib_pics = stage_pictures(ctx, "calib", limit=ctx.params["calib_images"], seed=ctx.params["seed"])
        calib = calib_pics.normalized(pre)
        ctx.log(f"PT2E {ctx.variant.upper()} with XNNPACKQuantizer, {len(calib)} real calibration pictures "
                f"from {calib_pics.source}")
        float_stem = ctx.params["int8_stem"] == "float"
        if ctx.variant == "ptq":
            prepared = q.calibrate_ptq(model, calib, float_stem=float_stem, progress=ctx.progress)
            model, info["mixed_precision"] = _int8_fallback(ctx, model, prepared)
        else:
            train = stage_pictures(ctx, "train")
            cfg = q.QATConfig(steps=ctx.params["qat_steps"], lr=ctx.params["qat_lr"], seed=ctx.params["seed"],
                              float_stem=float_stem)
            data = ArrayDataset(train.images, train.labels, train.classes)
            model = q.quantize_qat(model, data, pre, calib, cfg, progress=ctx.progress)
            info["qat"] = {"steps": cfg.steps, "lr": cfg.lr, "batch_size": cfg.batch_size, "train_data": train.source,
                           "train_pictures": len(train)}
        fp32 = q.float_layers(model)
        ctx.log(f"int8 {ctx.variant.upper()}: layers in fp32: {', '.join(fp32) if fp32 else 'none'}")
        info.update(calibration_images=len(calib), calibration=calib_pics.describe(), fp32_layers=fp32,
                    scheme="int8 per-channel symmetric weights, per-tensor affine activations"
                    + (f"; in fp32: {', '.join(fp32)}" if fp32 else ""))
    with torch.no_grad():
        program = export_program(model, torch.zeros(1, 3, pre.resolution, pre.resolution))
    torch.export.save(program, ctx.out("program"))
    return info


def _int8_fallback(ctx: StageContext, model, prepared):
    """--int8-fallback: all int8, or the fewest layers in fp32 that bring the PTQ model inside its
    gate on held-out calibration-source pictures (a seed apart from calibration's)."""
    from mbv3_mobile.quantize import mixed

    mode = ctx.params["int8_fallback"]
    if mode == "off":
        return mixed.fallback(prepared, model, None, None, (), "off")
    pre = ctx.resolved.preprocessing
    held = stage_pictures(ctx, "calib", limit=ctx.params["fallback_images"], seed=ctx.params["seed"] + 1)
    rules = ctx.gates.get(gate_table(ctx, "ptq", held.labelled), ())
    compare = get_task(ctx.resolved.task).module("figures").compare
    try:
        graph, info = mixed.fallback(prepared, model, held.normalized(pre), held.labels, rules, mode,
                                     max_layers=ctx.params["int8_fallback_max"], log=ctx.log, compare=compare)
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    return graph, {**info, "held_out": held.describe()}


def quantize_fingerprint(ctx: StageContext):
    """The automatic fallback judges with the PTQ gate tables: a changed gate re-decides the layers."""
    if ctx.variant == "ptq" and ctx.params.get("int8_fallback") == "auto":
        return {t: [r.describe() for r in rules] for t, rules in sorted(ctx.gates.items())
                if t.rpartition(".")[2] in ("ptq", "ptq_unlabelled")}
    return None


def lower(ctx: StageContext) -> dict:
    program = load_program(ctx.upstream("quantize").out("program"))
    lowered = lower_program(program, require_full_delegation=True)
    write_pte(lowered, ctx.out("pte"))
    ctx.log(f"lowered in {lowered.lowering_seconds:.1f} s; {lowered.delegation.summary()}")
    return {"delegation": lowered.delegation.to_dict(), "lowering_seconds": lowered.lowering_seconds,
            "bytes": ctx.out("pte").stat().st_size}


def verify(ctx: StageContext) -> dict:
    """fp32: parity with eager on `parity_images` real test pictures; int8: figures on the whole
    test set vs eager fp32. Judged by the runner against [gates.<variant>]."""
    pte = ctx.upstream("lower").out("pte")
    fp32 = ctx.variant == "fp32"
    hint = {"ptq": "to recover int8 fidelity: --int8-fallback auto (the fewest most sensitive layers in fp32, chosen "
                   "on held-out pictures), more --calib-images, or --quant qat; `mbv3 parity --sensitivity` shows "
                   "where error enters"}.get(ctx.variant)
    return verify_against_eager(ctx, f".pte {ctx.variant} (ExecuTorch runtime)",
                                # batches a streamed comparison hands in get no bar of their own
                                lambda x, _pre: run_pte(pte, x, progress=ctx.progress and len(x) > STREAM_BATCH),
                                limit=ctx.params["parity_images"] if fp32 else None, gate=ctx.variant, artifact=pte,
                                hint=hint)


def bundle(ctx: StageContext) -> dict:
    """BundledProgram around the published .pte bytes (asserted identical) plus `bundle_images`
    real test pictures and their expected outputs, checked once here in the ExecuTorch runtime.

    fp32: expected outputs are eager PyTorch's logits, so the check is a verification. int8: there is
    no independent reference with the same rounding, so the expected outputs are this runtime's own
    and the check is self-consistency (golden values a device must reproduce), labelled as such."""
    model, pre, _ = ctx.resolved.load()
    x = stage_pictures(ctx, "eval", limit=ctx.params["bundle_images"]).normalized(pre)
    pte = ctx.upstream("lower").out("pte")
    fp32 = ctx.variant == "fp32"
    with torch.no_grad():
        expected = model(x) if fp32 else run_pte(pte, x)
    bpte.write_bundled_program(ctx.out("bpte"), pte, x, expected)
    np.save(ctx.out("inputs"), x.numpy())  # the same pictures, for the bench's in-process runtimes
    if bpte.bundled_program_bytes(ctx.out("bpte")) != pte.read_bytes():
        raise PipelineError(f"the .bpte does not wrap the published .pte bytes ({pte}); refusing to publish it")
    tol = {"rtol": 1e-5, "atol": 1e-4} if fp32 else {"rtol": 1e-3, "atol": 1e-3}
    check = bpte.verify_bundled_program(ctx.out("bpte"), **tol)
    check["kind"] = ("verification: expected outputs are eager PyTorch fp32 logits" if fp32 else
                     "self-consistency: expected outputs are this runtime's own int8 outputs (golden values)")
    check["wraps_pte_sha256"] = ctx.upstream("lower").meta["files"]["model.pte"]
    return {"bundle": check}
