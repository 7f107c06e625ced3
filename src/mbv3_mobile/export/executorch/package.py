"""The Android package stage: the verified .pte and .bpte files, README with a Kotlin snippet,
manifest and model card, published atomically."""

from __future__ import annotations

from pathlib import Path
from string import Template

from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.export import snippets
from mbv3_mobile.pipeline.publish import input_spec, publication, publish, ship, threads_table, write_manifest
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.report.card import write_card_at_publish

ARTIFACT = {"fp32": "model_fp32", "ptq": "model_int8", "qat": "model_int8_qat"}
MANIFEST_ID = "executorch-xnnpack"


def artifact_name(params: dict, variant: str) -> str:
    return f"{ARTIFACT[variant]}.pte"


def package(ctx: StageContext) -> dict:
    pub = publication(ctx, "quant", ".pte {v} (ExecuTorch runtime)")
    resolved, variants = pub.resolved, pub.variants
    delegation = {v: ctx.inputs[f"lower[{v}]"].meta["delegation"] for v in variants}
    threads = {v: ctx.inputs[f"threads[{v}]"].meta["threads"] for v in variants}
    quant = {v: {k: val for k, val in ctx.inputs[f"quantize[{v}]"].meta.items()
                 if k in ("quantization", "calibration_images", "qat", "scheme", "fp32_layers", "mixed_precision")} for v in variants}

    def build(folder: Path) -> None:
        for v in variants:
            ship(ctx.inputs[f"verify[{v}]"], ctx.inputs[f"lower[{v}]"].out("pte"), folder / f"{ARTIFACT[v]}.pte")
            ship(ctx.inputs[f"bundle[{v}]"], ctx.inputs[f"bundle[{v}]"].out("bpte"), folder / f"{ARTIFACT[v]}.bpte")
        (folder / "README.md").write_text(_readme(pub.name, resolved, variants, pub.table, pub.pictures_text, threads))
        write_manifest(folder, fmt=MANIFEST_ID, resolved=resolved, figures=pub.figures, extra={
            "input": input_spec(resolved, name="x"),
            "output": {"shape": [1, resolved["config"]["num_classes"]], "dtype": "float32", "meaning": "logits"},
            "variants": {v: {"file": f"{ARTIFACT[v]}.pte", "pte": f"{ARTIFACT[v]}.pte", "bundled": f"{ARTIFACT[v]}.bpte",
                             **quant[v], "threads": threads[v], "bundle_check": ctx.inputs[f"bundle[{v}]"].meta["bundle"],
                             "gate": pub.verdicts[v]} for v in variants},
            "pictures": pub.pictures, "delegation": delegation, "gates": {t: [r.describe() for r in rules] for t, rules in ctx.gates.items()}})

    return publish(ctx, pub, build, after=write_card_at_publish)


def _readme(name: str, resolved: dict, variants: list[str], table: str, pictures: str, threads: dict) -> str:
    pre = Preprocessing.from_dict(resolved["preprocessing"])
    files = "\n".join(f"- `{ARTIFACT[v]}.pte` ({v}), `{ARTIFACT[v]}.bpte` (the same program + real pictures "
                      "and expected outputs, for on-device verification)" for v in variants)
    template = Template((Path(__file__).parent / "app_readme.md").read_text())
    return template.substitute(
        name=name, model_name=resolved["model_name"], params=f"{resolved['params']:,}",
        macs=f"{resolved['macs'] / 1e6:.1f}", resolution=pre.resolution, files=files, preset=pre.preset,
        rule=pre.describe(), num_classes=resolved["config"]["num_classes"], artifact=f"{ARTIFACT[variants[-1]]}.pte",
        kotlin=snippets.kotlin(pre), python=snippets.python(pre), pictures=pictures, table=table,
        threads=threads[variants[-1]]["recommended"], threads_table=threads_table({f"{ARTIFACT[v]}.pte": threads[v] for v in variants}))
