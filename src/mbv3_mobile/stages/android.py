"""Android pipeline stages: quantize (none / PT2E PTQ / PT2E QAT) -> torch.export -> lower to
XNNPACK -> to_executorch (.pte) -> verify in the ExecuTorch runtime -> BundledProgram -> package."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .. import export_executorch as et
from .. import quantize as q
from ..data import load_fashion_mnist
from ..pipeline import StageContext
from . import common

PROGRAM = "program.pt2"  # the (quantized) model as an ExportedProgram, batch 1
PTE = "model.pte"
BPTE = "model.bpte"
ARTIFACT = {"fp32": "model_fp32", "ptq": "model_int8", "qat": "model_int8_qat"}
QUANT_CHOICES = tuple(ARTIFACT)


def load_program(path: Path) -> torch.export.ExportedProgram:
    """A saved (quantized) ExportedProgram. An int8 program holds quantized_decomposed ops, which
    deserialize only once their library is registered: in a fresh process with every stage cached
    (`nox -s parity` run twice) nothing else has imported it."""
    import torchao.quantization.pt2e  # noqa: F401 - registers quantized_decomposed.*

    return torch.export.load(path)


def _example(pre) -> torch.Tensor:
    return torch.zeros(1, 3, pre.resolution, pre.resolution)


def quantize(ctx: StageContext) -> dict:
    """fp32: the eager model; ptq/qat: the converted PT2E int8 graph. Saved as an ExportedProgram."""
    if ctx.variant not in QUANT_CHOICES:
        raise common.PipelineError(f"--quant {ctx.variant!r} is not one of {', '.join(QUANT_CHOICES)}")
    model, pre, labels = common.load_resolved(ctx.inputs["resolve"])
    info: dict = {"quantization": ctx.variant}
    if ctx.variant != "fp32":
        if ctx.params["calib_data"] not in ("fashion-mnist", "fashion_mnist", "fmnist"):
            raise common.PipelineError("int8 calibration/QAT data other than Fashion-MNIST is not wired yet; "
                                       "use --quant fp32 for models trained on other data")
        calib = q.calibration_images(pre, ctx.params["calib_images"], seed=ctx.params["seed"])
        ctx.log(f"PT2E {ctx.variant.upper()} with XNNPACKQuantizer, {len(calib)} real calibration images")
        if ctx.variant == "ptq":
            model = q.quantize_ptq(model, calib, progress=ctx.progress)
        else:
            cfg = q.QATConfig(steps=ctx.params["qat_steps"], lr=ctx.params["qat_lr"], seed=ctx.params["seed"])
            model = q.quantize_qat(model, load_fashion_mnist("train"), pre, calib, cfg, progress=ctx.progress)
            info["qat"] = {"steps": cfg.steps, "lr": cfg.lr, "batch_size": cfg.batch_size}
        info.update(calibration_images=len(calib), scheme="int8 per-channel symmetric weights, per-tensor affine activations")
    with torch.no_grad():
        program = et.export_program(model, _example(pre))
    torch.export.save(program, ctx.out_dir / PROGRAM)
    return info


def lower(ctx: StageContext) -> dict:
    program = load_program(ctx.inputs["quantize"].file(PROGRAM))
    lowered = et.lower(program, require_full_delegation=True)
    et.write_pte(lowered, ctx.out_dir / PTE)
    ctx.log(f"lowered in {lowered.lowering_seconds:.1f} s; {lowered.delegation.summary()}")
    return {"delegation": lowered.delegation.to_dict(), "lowering_seconds": lowered.lowering_seconds,
            "bytes": (ctx.out_dir / PTE).stat().st_size}


def verify(ctx: StageContext) -> dict:
    """fp32: parity with eager on `parity_images` real test images (top-1 agreement 100 %, max
    |dlogit| <= 1e-4). int8: accuracy on the whole test set vs eager fp32 (drop <= gate)."""
    pte = ctx.inputs["lower"].file(PTE)
    fp32 = ctx.variant == "fp32"
    figures = common.verify_against_eager(
        ctx, f".pte {ctx.variant} (ExecuTorch runtime)", lambda x, _pre: et.run_pte(pte, x, progress=ctx.progress),
        limit=ctx.params["parity_images"] if fp32 else None,
        rules=common.FP32_RULES if fp32 else common.drop_rules(f"{ctx.variant}_max_drop_pts"))
    return {"figures": figures}


def bundle(ctx: StageContext) -> dict:
    """BundledProgram: the .pte plus `bundle_images` real test images and their expected outputs
    (eager logits for fp32; the host runtime's own outputs for int8, as golden values a device
    must reproduce), verified once here in the ExecuTorch runtime."""
    model, pre, labels = common.load_resolved(ctx.inputs["resolve"])
    x, _ = common.eval_images(ctx.params["eval_data"], pre, labels, split="test", limit=ctx.params["bundle_images"])
    pte = ctx.inputs["lower"].file(PTE)
    with torch.no_grad():
        expected = model(x) if ctx.variant == "fp32" else et.run_pte(pte, x)
    program = _manager_from_pte(ctx.inputs["quantize"].file(PROGRAM))
    et.write_bundled_program(ctx.out_dir / BPTE, program, x, expected)
    tol = {"rtol": 1e-5, "atol": 1e-4} if ctx.variant == "fp32" else {"rtol": 1e-3, "atol": 1e-3}
    check = et.verify_bundled_program(ctx.out_dir / BPTE, **tol)
    return {"bundle": check}


def _manager_from_pte(program_path: Path):
    # BundledProgram needs the ExecutorchProgramManager, not bytes: re-lower the saved program
    # (deterministic, so the bundle's program is the published .pte's program).
    return et.lower(load_program(program_path), require_full_delegation=True)


def package(ctx: StageContext) -> dict:
    pub = common.publication(ctx, "quant", ".pte {v} (ExecuTorch runtime)")
    resolved, variants, figures = pub.resolved, pub.variants, pub.figures
    delegation = {v: ctx.inputs[f"lower[{v}]"].meta["delegation"] for v in variants}
    quant = {v: {k: val for k, val in ctx.inputs[f"quantize[{v}]"].meta.items() if k in ("quantization", "calibration_images", "qat", "scheme")}
             for v in variants}

    def build(folder: Path) -> None:
        for v in variants:
            shutil.copy2(ctx.inputs[f"lower[{v}]"].file(PTE), folder / f"{ARTIFACT[v]}.pte")
            shutil.copy2(ctx.inputs[f"bundle[{v}]"].file(BPTE), folder / f"{ARTIFACT[v]}.bpte")
        (folder / "README.md").write_text(_readme(pub.name, resolved, variants, pub.table))
        common.write_manifest(folder, fmt="executorch-xnnpack", resolved=resolved, figures=figures, extra={
            "input": common.input_spec(resolved, name="x"),
            "output": {"shape": [1, resolved["config"]["num_classes"]], "dtype": "float32", "meaning": "logits"},
            "variants": {v: {"pte": f"{ARTIFACT[v]}.pte", "bundled": f"{ARTIFACT[v]}.bpte", **quant[v],
                             "bundle_check": ctx.inputs[f"bundle[{v}]"].meta["bundle"]} for v in variants},
            "delegation": delegation, "gates": ctx.gates})

    return common.publish(ctx, pub, build)


def _readme(name: str, resolved: dict, variants: list[str], table: str) -> str:
    pre = resolved["preprocessing"]
    r = pre["resolution"]
    files = "\n".join(f"- `{ARTIFACT[v]}.pte` ({v}), `{ARTIFACT[v]}.bpte` (the same program + real test images "
                      "and expected outputs, for on-device verification)" for v in variants)
    fl = lambda xs: ", ".join(f"{v}f" for v in xs)  # noqa: E731
    return f"""# {name} for Android (ExecuTorch + XNNPACK)

{resolved['model_name']} ({resolved['params']:,} params, {resolved['macs'] / 1e6:.1f} M MACs at {r} px), every compute op
inside the XNNPACK delegate. `manifest.json` has sha256 and size of each file, the input spec,
preprocessing, labels, versions, the delegation summary and the figures below; `labels.txt` one label per line.

{files}

Input: float32 NCHW 1x3x{r}x{r}, RGB, resized bilinear to {r}x{r} (no crop), then
`(pixel / 255 - mean) / std` per channel with mean {pre['mean']} and std {pre['std']}. Output: 1x{resolved['config']['num_classes']} logits.

```kotlin
import android.graphics.Bitmap
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

// Copy {ARTIFACT[variants[-1]]}.pte from assets to filesDir first: Module.load takes a file path.
val module = Module.load(context.filesDir.resolve("{ARTIFACT[variants[-1]]}.pte").absolutePath)
val labels = context.assets.open("labels.txt").bufferedReader().readLines()

fun classify(picture: Bitmap): String {{
    val size = {r}
    val bmp = Bitmap.createScaledBitmap(picture, size, size, /* filter = bilinear */ true)
    val mean = floatArrayOf({fl(pre['mean'])})
    val std = floatArrayOf({fl(pre['std'])})
    val pixels = IntArray(size * size).also {{ bmp.getPixels(it, 0, size, 0, 0, size, size) }}
    val chw = FloatArray(3 * size * size)
    for (i in pixels.indices) {{
        val p = pixels[i]
        chw[i] = (((p shr 16) and 0xFF) / 255f - mean[0]) / std[0]
        chw[size * size + i] = (((p shr 8) and 0xFF) / 255f - mean[1]) / std[1]
        chw[2 * size * size + i] = ((p and 0xFF) / 255f - mean[2]) / std[2]
    }}
    val input = Tensor.fromBlob(chw, longArrayOf(1, 3, size.toLong(), size.toLong()))
    val logits = module.forward(EValue.from(input))[0].toTensor().dataAsFloatArray
    return labels[logits.indices.maxByOrNull {{ logits[it] }}!!]
}}
```

## Figures (vs eager PyTorch fp32 on the same real test images, ExecuTorch runtime on the export host)

{table}
"""


def parity_entries(results: dict) -> list:
    """Rows for the parity matrix: eager int8 (the converted PT2E graphs) and every .pte."""
    from ..parity import FormatEntry

    entries = []
    for _, r in sorted(results.items()):
        if r.name == "quantize" and r.variant != "fp32":
            gm = load_program(r.file(PROGRAM)).module()
            entries.append(FormatEntry(f"eager int8 ({r.variant}, PT2E)", "int8",
                                       run=lambda x, m=gm: torch.cat([m(x[i : i + 1]) for i in range(len(x))]).detach()))
    for _, r in sorted(results.items()):
        if r.name == "lower":
            precision = "fp32" if r.variant == "fp32" else "int8"
            pte = r.file(PTE)
            program = results[f"quantize[{r.variant}]"].file(PROGRAM)
            entries.append(FormatEntry(f"pte {r.variant} (ExecuTorch)", precision,
                                       run=lambda x, p=pte: et.run_pte(p, x),
                                       # drift localisation: the program this .pte was lowered from, through ETDump
                                       module_outputs=lambda x, p=program: et.debug_module_outputs(load_program(p), x)))
    return entries
