"""ONNX pipeline stages: export -> simplify -> (int8 QDQ) -> verify in onnxruntime -> package."""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import export_onnx as ox
from ..pipeline import StageContext
from . import common

RAW, SIMPLE, FILES = "model_raw.onnx", "model.onnx", {"fp32": "model.onnx", "int8": "model_int8.onnx"}


def export(ctx: StageContext) -> dict:
    model, pre, _ = common.load_resolved(ctx.inputs["resolve"])
    ox.export_onnx(model, pre.resolution, ctx.out_dir / RAW, dynamic_batch=ctx.params["dynamic_batch"])
    return {"opset": ox.OPSET, "dynamic_batch": ctx.params["dynamic_batch"]}


def simplify(ctx: StageContext) -> dict:
    info = ox.simplify_onnx(ctx.inputs["export"].file(RAW), ctx.out_dir / SIMPLE)
    ctx.log(f"onnxsim: {info['nodes_before']} -> {info['nodes_after']} nodes")
    return info


def quantize(ctx: StageContext) -> dict:
    src = ctx.inputs["simplify"].file(SIMPLE)
    if ctx.variant == "fp32":
        shutil.copy2(src, ctx.out_dir / FILES["fp32"])
        return {"quantization": "none"}
    resolved = ctx.inputs["resolve"].meta
    _, pre, labels = common.load_resolved(ctx.inputs["resolve"])
    calib, _ = common.eval_images(ctx.params["calib_data"], pre, labels, split="train", limit=ctx.params["calib_images"])
    ctx.log(f"ORT static QDQ int8, calibrating on {len(calib)} real training images")
    info = ox.quantize_onnx_int8(src, ctx.out_dir / FILES["int8"], calib)
    return {"quantization": info, "model": resolved["model_name"]}


def verify(ctx: StageContext) -> dict:
    """fp32: parity with eager on `parity_images` real test images; int8: accuracy on the full test set."""
    path = ctx.inputs["quantize"].file(FILES[ctx.variant])
    fp32 = ctx.variant == "fp32"
    figures = common.verify_against_eager(
        ctx, f"ONNX {ctx.variant} (onnxruntime)", lambda x, _pre: ox.run_onnx(path, x),
        limit=ctx.params["parity_images"] if fp32 else None,
        rules=common.FP32_RULES if fp32 else common.drop_rules("int8_max_drop_pts"))
    return {"figures": figures}


def package(ctx: StageContext) -> dict:
    pub = common.publication(ctx, "variants", "onnx {v} (onnxruntime)")
    resolved, variants, figures = pub.resolved, pub.variants, pub.figures

    def build(folder: Path) -> None:
        for v in variants:
            shutil.copy2(ctx.inputs[f"quantize[{v}]"].file(FILES[v]), folder / FILES[v])
        (folder / "README.md").write_text(_readme(pub.name, resolved, variants, pub.table))
        common.write_manifest(folder, fmt="onnx", resolved=resolved, figures=figures, extra={
            "input": common.input_spec(resolved), "output": {"name": ox.OUTPUT_NAME, "shape": [1, resolved["config"]["num_classes"]]},
            "variants": {v: {"file": FILES[v]} for v in variants},  # variant -> file, as the other formats record it
            "opset": ox.OPSET, "simplify": ctx.inputs["simplify"].meta.get("op_types"), "gates": ctx.gates})

    return common.publish(ctx, pub, build)


def _readme(name: str, resolved: dict, variants: list[str], table: str) -> str:
    pre = resolved["preprocessing"]
    r = pre["resolution"]
    return f"""# {name} (ONNX, opset {ox.OPSET})

{resolved['model_name']} exported with the dynamo exporter, checked with `onnx.checker` (full) and
simplified with onnxsim. Files: {', '.join(FILES[v] for v in variants)}; `manifest.json` holds sha256,
preprocessing, labels and the figures below; `labels.txt` one label per line.

Input `{ox.INPUT_NAME}`: float32 NCHW 1x3x{r}x{r}, RGB, resized bilinear to {r}x{r}, then
`(pixel / 255 - mean) / std` with mean {pre['mean']} and std {pre['std']}. Output `{ox.OUTPUT_NAME}`: raw scores.

```python
import numpy as np, onnxruntime as ort
from PIL import Image
img = Image.open("picture.png").convert("RGB").resize(({r}, {r}), Image.BILINEAR)
x = (np.asarray(img, np.float32) / 255 - np.array({list(pre['mean'])}, np.float32)) / np.array({list(pre['std'])}, np.float32)
logits = ort.InferenceSession("model.onnx").run(None, {{"{ox.INPUT_NAME}": x.transpose(2, 0, 1)[None]}})[0]
print(open("labels.txt").read().split("\\n")[int(logits.argmax())])
```

## Figures (vs eager PyTorch fp32 on the same real test images)

{table}
"""


def parity_entries(results: dict) -> list:
    """Rows for the parity matrix: ORT fp32 (with drift localisation) and ORT int8."""
    from ..parity import FormatEntry

    raw = results["export"].file(RAW)
    entries = []
    for variant in ("fp32", "int8"):
        key = f"quantize[{variant}]"
        if key not in results:
            continue
        path = results[key].file(FILES[variant])
        session = ox.ort_session(path)
        entries.append(FormatEntry(
            name=f"onnx {variant} (onnxruntime)",
            precision="fp32" if variant == "fp32" else "int8",
            run=lambda x, s=session: ox.run_onnx(s, x),
            module_outputs=(lambda img, p=path: ox.module_outputs(p, img, ox.module_scopes(raw))) if variant == "fp32" else None,
            note="static QDQ, per-channel weights" if variant == "int8" else "",
        ))
    return entries
