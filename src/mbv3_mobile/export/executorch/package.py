"""The Android package stage: the verified .pte and .bpte files, README with a Kotlin snippet,
manifest and model card, published atomically."""

from __future__ import annotations

from pathlib import Path
from string import Template

from mbv3_mobile.card import write_card_at_publish
from mbv3_mobile.export import snippets
from mbv3_mobile.export.executorch import SPEC
from mbv3_mobile.export.executorch.notes import deployment_notes
from mbv3_mobile.pipeline.contracts import ThreadsPick
from mbv3_mobile.pipeline.publish import input_spec, publication, publish, ship, threads_table, write_manifest
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.tasks import get_task

ARTIFACT = {"fp32": "model_fp32", "ptq": "model_int8", "qat": "model_int8_qat"}


def artifact_name(params: dict, variant: str) -> str:
    return f"{ARTIFACT[variant]}.pte"


def package(ctx: StageContext) -> dict:
    pub = publication(ctx, "quant", ".pte {v} (ExecuTorch runtime)")
    resolved, variants = pub.resolved, pub.variants
    delegation = {v: ctx.upstream("lower", v).meta["delegation"] for v in variants}
    threads = {v: ThreadsPick.of(ctx.upstream("threads", v)) for v in variants}
    quant = {v: {k: val for k, val in ctx.upstream("quantize", v).meta.items() if k in QUANT_KEYS} for v in variants}

    def build(folder: Path) -> None:
        for v in variants:
            ship(ctx.upstream("verify", v), ctx.upstream("lower", v).out("pte"), folder / f"{ARTIFACT[v]}.pte")
            ship(ctx.upstream("bundle", v), ctx.upstream("bundle", v).out("bpte"), folder / f"{ARTIFACT[v]}.bpte")
        (folder / "README.md").write_text(_readme(pub, threads))
        task = get_task(resolved.task)
        write_manifest(folder, fmt=SPEC.describe(), resolved=resolved, figures=pub.figures, gates=ctx.gates,
                       notes=deployment_notes, extra={
            "input": input_spec(resolved, name="x"),
            "output": task.module("outputs").output_spec(resolved),
            "variants": {v: {"file": f"{ARTIFACT[v]}.pte", "pte": f"{ARTIFACT[v]}.pte", "bundled": f"{ARTIFACT[v]}.bpte",
                             **quant[v], "threads": threads[v].to_manifest(),
                             "bundle_check": ctx.upstream("bundle", v).meta["bundle"], "gate": pub.verdicts[v]}
                         for v in variants},
            "pictures": pub.pictures, "delegation": delegation})

    return publish(ctx, pub, build, after=write_card_at_publish)


QUANT_KEYS = ("quantization", "calibration_images", "qat", "scheme", "fp32_layers", "mixed_precision")


def _readme(pub, threads: dict[str, ThreadsPick]) -> str:
    resolved, variants = pub.resolved, pub.variants
    pre = resolved.preprocessing
    snippets_of_task = get_task(resolved.task).module("snippets")
    files = "\n".join(f"- `{ARTIFACT[v]}.pte` ({v}), `{ARTIFACT[v]}.bpte` (the same program + real pictures "
                      "and expected outputs, for on-device verification)" for v in variants)
    template = Template((Path(__file__).parent / "app_readme.md").read_text())
    return template.substitute(
        name=pub.name, model_name=resolved.model_name, params=f"{resolved.params:,}",
        macs=f"{resolved.macs / 1e6:.1f}", resolution=pre.resolution, files=files, preset=pre.preset,
        rule=pre.describe(), output=snippets_of_task.output_text(resolved), result=snippets_of_task.kotlin_result("logits"),
        function=snippets_of_task.KOTLIN_FUNCTION[0], returns=snippets_of_task.KOTLIN_FUNCTION[1],
        overlay=snippets_of_task.kotlin_overlay(),
        artifact=f"{ARTIFACT[variants[-1]]}.pte", kotlin=snippets.kotlin(pre), python=snippets.python(pre),
        pictures=pub.pictures_text, table=pub.table, threads=threads[variants[-1]].recommended,
        threads_table=threads_table({f"{ARTIFACT[v]}.pte": threads[v] for v in variants}))
