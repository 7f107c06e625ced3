"""The iOS package stage: the verified .mlpackage variants (and their zips), the ExecuTorch Core
ML delegate .pte, README with a Swift snippet, manifest and model card, published atomically."""

from __future__ import annotations

import shutil
from pathlib import Path
from string import Template

from mbv3_mobile.card import write_card_at_publish
from mbv3_mobile.export import snippets
from mbv3_mobile.export.coreml import SPEC
from mbv3_mobile.export.coreml import convert as cm
from mbv3_mobile.export.coreml.archive import zip_mlpackage
from mbv3_mobile.export.coreml.notes import deployment_notes
from mbv3_mobile.pipeline.contracts import VerifyFigures
from mbv3_mobile.pipeline.publish import publication, publish, ship, write_manifest
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.tasks import get_task


def artifact_name(params: dict, variant: str) -> str:
    """What the app sees: Xcode names the generated class after the file (e.g. `MobileNetV3`)."""
    base = params["class_name"]
    return f"{base}.mlpackage" if variant == params["variants"][0] else f"{base}_{variant}.mlpackage"


def package(ctx: StageContext) -> dict:
    pub = publication(ctx, "variants", "Core ML {v} (MIL interpreter)")
    resolved, variants = pub.resolved, pub.variants
    et = ctx.upstream("executorch_coreml")

    def build(folder: Path) -> None:
        files = {}
        for v in variants:
            target = artifact_name(ctx.params, v)
            ship(ctx.upstream("verify", v), ctx.upstream("convert", v).out("package"), folder / target)
            # Zipped after renaming: the archive's top folder is what Xcode shows once unzipped.
            zip_mlpackage(folder / target, folder / f"{target}.zip")
            files[v] = target
        if et.meta.get("file"):
            shutil.copy2(et.dir / et.meta["file"], folder / et.meta["file"])
        (folder / "README.md").write_text(_readme(pub, ctx.params, files, et.meta))
        write_manifest(folder, fmt=SPEC.describe(), resolved=resolved, figures=pub.figures, gates=ctx.gates,
                       notes=deployment_notes, extra={
            "input": {"name": cm.INPUT_NAME, "type": "ImageType", "color": "RGB", "size": [resolved.resolution] * 2,
                      "normalisation": "inside the program: x/255, then (x - mean) / std per channel",
                      "preprocessing_in_program": True},
            "outputs": get_task(resolved.task).module("snippets").COREML_OUTPUTS,
            "variants": {v: {"file": files[v], "package": files[v], **ctx.upstream("convert", v).meta["export"],
                             "gate": pub.verdicts[v], "verify": _verify_entry(VerifyFigures.of(ctx.upstream("verify", v)))}
                         for v in variants},
            "pictures": pub.pictures, "deployment_target": ctx.params["deployment_target"], "executorch_coreml": et.meta.get("file") and
            {k: val for k, val in et.meta.items() if k not in ("files", "key_data")} or {"skipped": et.meta.get("skipped")}})

    return publish(ctx, pub, build, after=write_card_at_publish)


def _verify_entry(verify: VerifyFigures) -> dict:
    """What the manifest keeps of a verify stage besides its figures: engine, pictures, gate table."""
    return {**verify.extra, "gate": verify.gate, "what": verify.what, "pictures": verify.pictures,
            "measured": verify.measured}


def _readme(pub, params, files, et_meta) -> str:
    resolved, variants = pub.resolved, pub.variants
    pre = resolved.preprocessing
    listing = "\n".join(f"- `{files[v]}` ({v}) and `{files[v]}.zip`" for v in variants)
    pte = (f"- `{et_meta['file']}`: the ExecuTorch program with the Core ML delegate ({et_meta.get('delegated_nodes')} "
           "nodes delegated) for apps that use ExecuTorch on iOS. Built on Linux, **not run here**: the pip ExecuTorch "
           "runtime has no CoreMLBackend; verify it on a device (mobile_harness).") if et_meta.get("file") else ""
    geometry = (f"resize the shorter side to {pre.resize_shorter} px, then the centre {pre.resolution}x{pre.resolution} "
                "crop (the Swift below crops, Vision scales)" if pre.resize_shorter else
                f"the whole picture to {pre.resolution}x{pre.resolution}, no crop")
    task_snippets = get_task(resolved.task).module("snippets")
    template = Template((Path(__file__).parent / "app_readme.md").read_text())
    return template.substitute(
        name=pub.name, deployment_target=params["deployment_target"], model_name=resolved.model_name,
        first_package=files[variants[0]], class_name=params["class_name"], input_name=cm.INPUT_NAME,
        resolution=pre.resolution, geometry=geometry, preset=pre.preset, mean=pre.mean, std=pre.std, listing=listing,
        pte=pte, swift_crop=snippets.swift_crop(pre), python=snippets.python(pre), pictures=pub.pictures_text,
        table=pub.table, kind=task_snippets.COREML_KIND, vision=task_snippets.vision_request(),
        outputs=", ".join(f"`{k}` ({v})" for k, v in task_snippets.COREML_OUTPUTS.items()))
