"""The ONNX package stage: the verified .onnx files, README with a Python snippet, manifest and
model card, published atomically."""

from __future__ import annotations

from pathlib import Path
from string import Template

from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.export import snippets
from mbv3_mobile.export.onnx import convert as ox
from mbv3_mobile.pipeline.publish import input_spec, publication, publish, ship, write_manifest
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.report.card import write_card_at_publish

FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
MANIFEST_ID = "onnx"


def artifact_name(params: dict, variant: str) -> str:
    return FILES[variant]


def package(ctx: StageContext) -> dict:
    pub = publication(ctx, "variants", "onnx {v} (onnxruntime)")
    resolved, variants = pub.resolved, pub.variants

    def build(folder: Path) -> None:
        for v in variants:
            ship(ctx.inputs[f"verify[{v}]"], ctx.inputs[f"quantize[{v}]"].out("model"), folder / FILES[v])
        (folder / "README.md").write_text(_readme(pub.name, resolved, variants, pub.table, pub.pictures_text))
        write_manifest(folder, fmt=MANIFEST_ID, resolved=resolved, figures=pub.figures, extra={
            "input": input_spec(resolved),
            "output": {"name": ox.OUTPUT_NAME, "shape": [1, resolved["config"]["num_classes"]]},
            "variants": {v: {"file": FILES[v], "quantization": ctx.inputs[f"quantize[{v}]"].meta["quantization"],
                             "gate": pub.verdicts[v]} for v in variants},
            "pictures": pub.pictures, "opset": ox.OPSET, "dynamic_batch": ctx.inputs["export"].meta["dynamic_batch"],
            "simplify": ctx.inputs["simplify"].meta.get("op_types"),
            "gates": {t: [r.describe() for r in rules] for t, rules in ctx.gates.items()}})

    return publish(ctx, pub, build, after=write_card_at_publish)


def _readme(name: str, resolved: dict, variants: list[str], table: str, pictures: str) -> str:
    pre = Preprocessing.from_dict(resolved["preprocessing"])
    template = Template((Path(__file__).parent / "app_readme.md").read_text())
    return template.substitute(
        name=name, opset=ox.OPSET, model_name=resolved["model_name"], files=", ".join(FILES[v] for v in variants),
        input_name=ox.INPUT_NAME, output_name=ox.OUTPUT_NAME, resolution=pre.resolution, preset=pre.preset,
        rule=pre.describe(), python=snippets.python(pre), pictures=pictures, table=table)
