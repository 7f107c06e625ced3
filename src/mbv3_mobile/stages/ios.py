"""iOS pipeline stages: Core ML conversion per variant (fp16 / fp32 / compressed) -> numerics
through the MIL reference interpreter on real images -> zipped .mlpackage -> ExecuTorch Core ML
delegate .pte -> package."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .. import export_coreml as cm
from ..pipeline import PipelineError, StageContext
from ..preprocess import check_model_input
from . import common

PACKAGE = "model.mlpackage"
SOURCE_MAP = "source_map.json"
PTE = "model_coreml.pte"


def parse_variant(variant: str) -> tuple[str, str | None]:
    """'fp16' | 'fp32' | 'fp16_int8' | 'fp16_palette6' | 'fp16_int4_block' -> (precision, compression)."""
    precision, _, compression = variant.partition("_")
    if precision not in ("fp16", "fp32") or (compression and compression not in cm.COMPRESSIONS):
        raise PipelineError(f"unknown Core ML variant {variant!r}: use fp16, fp32 or fp16_<{'|'.join(cm.COMPRESSIONS)}>")
    return precision, compression or None


def artifact_name(ctx_params: dict, variant: str) -> str:
    """What the app sees: Xcode names the generated class after the file (e.g. `MobileNetV3`)."""
    base = ctx_params["class_name"]
    return f"{base}.mlpackage" if variant == ctx_params["variants"][0] else f"{base}_{variant}.mlpackage"


def convert(ctx: StageContext) -> dict:
    model, pre, labels = common.load_resolved(ctx.inputs["resolve"])
    precision, compression = parse_variant(ctx.variant)
    meta = cm.AppMetadata(author=ctx.params["author"], license=ctx.params["license"])
    ctx.log(f"coremltools: {precision}{' + ' + compression if compression else ''}, target {ctx.params['deployment_target']}")
    result = cm.export_coreml(model, pre, labels, ctx.out_dir / PACKAGE, precision=precision, compression=compression,
                              deployment_target=ctx.params["deployment_target"], metadata=meta)
    (ctx.out_dir / SOURCE_MAP).write_text(json.dumps(result.source_map))
    return {"export": result.to_dict(), "precision": precision, "compression": compression}


def _float_pictures(images: torch.Tensor, pre) -> np.ndarray:
    """Normalised NCHW images back to the 0..255 float RGB tensor an ImageType input receives,
    unrounded, so the program sees exactly what eager saw."""
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return ((images * std + mean) * 255.0).numpy().astype(np.float32)


def run_package(package: Path, images: torch.Tensor, pre, *, batch: int = 500) -> torch.Tensor:
    """Logits of the package's program (MIL reference interpreter) for normalised images."""
    from ..mil_interpreter import load_program

    check_model_input(images, (1, 3, pre.resolution, pre.resolution), "this Core ML package")
    program = load_program(package)
    name = next(iter(program.image_inputs))
    feeds = _float_pictures(images, pre)
    outs = [program.run({name: feeds[i : i + batch]}).outputs[cm.LOGITS_OUTPUT] for i in range(0, len(feeds), batch)]
    return torch.from_numpy(np.concatenate(outs).astype(np.float32))


def verify(ctx: StageContext) -> dict:
    """Through the MIL interpreter on real test images: fp32 parity with eager; fp16 accuracy drop;
    compressed variants reported (gated by `compressed_max_drop_pts`). On macOS, the real
    MLModel.predict is compared with the interpreter too."""
    precision, compression = ctx.inputs["convert"].meta["precision"], ctx.inputs["convert"].meta["compression"]
    package = ctx.inputs["convert"].file(PACKAGE)
    exact = precision == "fp32" and not compression
    if compression:
        rules = common.drop_rules("compressed_max_drop_pts")
    else:
        rules = common.FP32_RULES if exact else common.drop_rules("fp16_max_drop_pts")
    figures = common.verify_against_eager(
        ctx, f"Core ML {ctx.variant} (MIL reference interpreter)", lambda x, pre: run_package(package, x, pre),
        limit=ctx.params["parity_images"] if exact else ctx.params["accuracy_images"] or None, rules=rules)
    result = {"figures": figures, "engine": "mbv3_mobile.mil_interpreter (numpy reference)"}
    if sys.platform == "darwin":
        _, pre, labels = common.load_resolved(ctx.inputs["resolve"])
        pictures = cm.app_pictures(common.uint8_images(ctx.params["eval_data"], labels, limit=200)[0], pre.resolution)
        native = cm.coreml_predict(package, pictures)
        interp = cm.interpreter_outputs(package, pictures)
        result["macos_predict_vs_interpreter_max_abs_logit"] = float(np.abs(native["logits"] - interp["logits"]).max())
    else:
        result["macos_predict"] = "skipped: Core ML prediction needs macOS (coremltools predicts only there)"
    return result


def executorch_coreml(ctx: StageContext) -> dict:
    """The ExecuTorch Core ML delegate .pte: built on Linux; runs only where ExecuTorch has the
    CoreMLBackend (iOS/macOS builds), not in the pip runtime here."""
    if not ctx.params["executorch_pte"]:
        return {"skipped": "executorch_pte = false"}
    model, pre, _ = common.load_resolved(ctx.inputs["resolve"])
    info = cm.build_executorch_coreml(model, ctx.out_dir / PTE, resolution=pre.resolution,
                                      deployment_target=ctx.params["deployment_target"])
    ctx.log(f"Core ML delegate .pte: {info.get('delegated_nodes')} nodes delegated")
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in info.items()}


def package(ctx: StageContext) -> dict:
    pub = common.publication(ctx, "variants", "Core ML {v} (MIL interpreter)")
    resolved, variants, figures = pub.resolved, pub.variants, pub.figures
    et_meta = ctx.inputs["executorch_coreml"].meta

    def build(folder: Path) -> None:
        files = {}
        for v in variants:
            target = artifact_name(ctx.params, v)
            shutil.copytree(ctx.inputs[f"convert[{v}]"].file(PACKAGE), folder / target)
            # Zipped after renaming: the archive's top folder is what Xcode shows once unzipped.
            cm.zip_mlpackage(folder / target, folder / f"{target}.zip")
            files[v] = target
        if (ctx.inputs["executorch_coreml"].dir / PTE).is_file():
            shutil.copy2(ctx.inputs["executorch_coreml"].file(PTE), folder / PTE)
        (folder / "README.md").write_text(_readme(pub.name, resolved, ctx.params, variants, files, pub.table, et_meta))
        common.write_manifest(folder, fmt="coreml-mlprogram", resolved=resolved, figures=figures, extra={
            "input": {"name": cm.INPUT_NAME, "type": "ImageType", "color": "RGB",
                      "size": [resolved["preprocessing"]["resolution"]] * 2,
                      "normalisation": "inside the program: x/255, then (x - mean) / std per channel"},
            "outputs": {"classLabel": "string", "classLabel_probs": "label -> probability", "logits": "float32 (1, C)"},
            "variants": {v: {"package": files[v], **ctx.inputs[f"convert[{v}]"].meta["export"],
                             "verify": {k: val for k, val in ctx.inputs[f"verify[{v}]"].meta.items() if k != "figures"}}
                         for v in variants},
            "deployment_target": ctx.params["deployment_target"], "executorch_coreml": et_meta, "gates": ctx.gates})

    return common.publish(ctx, pub, build)


def _readme(name, resolved, params, variants, files, table, et_meta) -> str:
    pre = resolved["preprocessing"]
    r = pre["resolution"]
    cls = params["class_name"]
    listing = "\n".join(f"- `{files[v]}` ({v}) and `{files[v]}.zip`" for v in variants)
    pte = (f"- `{PTE}`: the ExecuTorch program with the Core ML delegate ({et_meta.get('delegated_nodes')} nodes delegated) "
           "for apps that use ExecuTorch on iOS. Built on Linux, **not run here**: the pip ExecuTorch runtime has no "
           "CoreMLBackend; verify it on a device (mobile_harness).") if "skipped" not in et_meta else ""
    return f"""# {name} for iOS (Core ML ML program, minimum {params['deployment_target']})

{resolved['model_name']} as an app-ready classifier: drag `{files[variants[0]]}` into Xcode and it generates
the class `{cls}`. Input `{cm.INPUT_NAME}`: an RGB image of {r}x{r} (Vision scales it for you); the training
normalisation (mean {pre['mean']}, std {pre['std']}, per channel) is inside the program. Outputs:
`classLabel`, `classLabel_probs` (softmax probabilities) and `logits`.

{listing}
{pte}

`manifest.json` holds sha256 and size of every file, preprocessing, labels, versions and the figures below.

```swift
import CoreML
import Vision

let model = try VNCoreMLModel(for: {cls}(configuration: MLModelConfiguration()).model)
let request = VNCoreMLRequest(model: model) {{ request, _ in
    guard let best = (request.results as? [VNClassificationObservation])?.first else {{ return }}
    print(best.identifier, best.confidence)
}}
request.imageCropAndScaleOption = .scaleFill  // the model was trained on whole images resized to {r}x{r}
try VNImageRequestHandler(cgImage: picture, options: [:]).perform([request])
```

## Figures (vs eager PyTorch fp32 on the same real test images)

Computed on Linux by this project's MIL reference interpreter (numpy; fp16 programs round every op
to float16 as the program declares). Core ML itself predicts only on macOS, where the tests also
compare `MLModel.predict` with the interpreter.

{table}
"""


def parity_entries(results: dict) -> list:
    """Rows for the parity matrix: every Core ML variant through the MIL interpreter, with drift
    localisation from its per-op outputs mapped to nn.Module paths."""
    from ..drift import outputs_by_module
    from ..parity import FormatEntry

    _, pre, _ = common.load_resolved(results["resolve"])
    entries = []
    for _, r in sorted(results.items()):
        if r.name != "convert":
            continue
        package = r.file(PACKAGE)
        source_map = json.loads(r.file(SOURCE_MAP).read_text())

        def module_outputs(image, package=package, source_map=source_map):
            return outputs_by_module(cm.module_outputs(package, _float_pictures(image[:1], pre), source_map))

        precision = "compressed" if r.meta["compression"] else r.meta["precision"]
        entries.append(FormatEntry(f"coreml {r.variant} (MIL interp.)", precision,
                                   run=lambda x, p=package: run_package(p, x, pre), module_outputs=module_outputs))
    return entries
