"""The ONNX package stage: the verified .onnx and .ort files, the operator config of a reduced ORT
build, README with Android / iOS / Python snippets, manifest (with EP coverage) and model card,
published atomically."""

from __future__ import annotations

from pathlib import Path
from string import Template

from mbv3_mobile.card import write_card_at_publish
from mbv3_mobile.export import snippets
from mbv3_mobile.export.onnx import SPEC, app_snippets, mobile
from mbv3_mobile.export.onnx import convert as ox
from mbv3_mobile.export.onnx.notes import coverage_table, deployment_notes, targets
from mbv3_mobile.pipeline.contracts import ThreadsPick, VerifyFigures
from mbv3_mobile.pipeline.publish import (
    figures_table,
    input_spec,
    publication,
    publish,
    ship,
    threads_table,
    write_manifest,
)
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.tasks import get_task

FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
ORT_FILES = {"fp32": "model.ort", "int8": "model_int8.ort"}


def artifact_name(params: dict, variant: str) -> str:
    return FILES[variant]


def package(ctx: StageContext) -> dict:
    pub = publication(ctx, "variants", "onnx {v} (onnxruntime)")
    resolved, variants = pub.resolved, pub.variants
    dynamic = ctx.upstream("export").meta["dynamic_batch"]
    coverage = {v: _coverage_entry(ctx.upstream("coverage", v).meta) for v in variants}
    ort = {v: _ort_entry(ctx, v) for v in variants}
    threads = {v: ThreadsPick.of(ctx.upstream("threads", v)) for v in variants}
    # the printed and README figures: every file the folder ships, .onnx and .ort
    pub.table = figures_table(resolved, {**{f"onnx {v} (onnxruntime)": pub.figures[v] for v in variants},
                                         **{f"ort {v} (.ort, onnxruntime)": ort[v]["figures"] for v in variants}})

    def build(folder: Path) -> None:
        for v in variants:
            ship(ctx.upstream("verify", v), ctx.upstream("quantize", v).out("model"), folder / FILES[v])
            ship(ctx.upstream("verify_ort", v), ctx.upstream("ort_format", v).out("model"), folder / ORT_FILES[v])
        configs = [ctx.upstream("ort_format", v).out("config") for v in variants]
        (folder / mobile.ORT_CONFIG).write_text(mobile.merged_config(configs))
        (folder / "README.md").write_text(_readme(pub, dynamic, coverage, all(o["graph_as_checked"] for o in ort.values()),
                                                  threads))
        spec = input_spec(resolved)
        batch = "N" if dynamic else 1
        write_manifest(folder, fmt=SPEC.describe(), resolved=resolved, figures=pub.figures, gates=ctx.gates,
                       notes=deployment_notes, extra={
            "input": {**spec, "shape": [batch, *spec["shape"][1:]]},
            "output": get_task(resolved.task).module("outputs").output_spec(resolved, batch=batch, name=ox.OUTPUT_NAME),
            "variants": {v: {"file": FILES[v], "ort_file": ORT_FILES[v],
                             "quantization": ctx.upstream("quantize", v).meta["quantization"],
                             "gate": pub.verdicts[v], "targets": targets(v, coverage[v]), "threads": threads[v].to_manifest()}
                         for v in variants},
            "pictures": pub.pictures, "opset": ox.OPSET, "dynamic_batch": dynamic,
            "ep_friendly": _ep_graph(ctx.upstream("ep_graph").meta),
            "simplify": ctx.upstream("simplify").meta.get("op_types"),
            "ep_coverage": coverage, "ort": {"config": mobile.ORT_CONFIG, "variants": ort}})

    return publish(ctx, pub, build, after=write_card_at_publish)


def _coverage_entry(meta: dict) -> dict:
    """What the manifest keeps of a coverage stage: per EP the counts, partitions and what stays on the CPU."""
    keep = ("nodes", "supported_nodes", "node_coverage", "partitions", "unsupported_ops", "nodes_left_on_cpu",
            "unsupported_by_dynamic_shape", "suitability", "caveats")
    cov = meta["coverage"]
    return {"checker": "onnxruntime.tools.mobile_helpers.usability_checker (op types and shapes; caveats unchecked)",
            "eps": {ep: {k: c[k] for k in keep} for ep, c in cov["eps"].items()},
            "dynamic_inputs": cov["dynamic_inputs"], "figures": meta["figures"], "gate": meta.get("judged")}


def _ort_entry(ctx: StageContext, v: str) -> dict:
    conv, verify = ctx.upstream("ort_format", v).meta, VerifyFigures.of(ctx.upstream("verify_ort", v))
    checked = ctx.upstream("coverage", v).meta["coverage"]["checked_op_counts"]
    return {"file": ORT_FILES[v], "style": conv["style"], "target_platform": conv["target_platform"],
            "operators": conv["operators"], "op_counts": conv["op_counts"],
            # the EP coverage above applies to the .ort when its graph is the one the checker saw
            "graph_as_checked": conv["op_counts"] == checked,
            "figures": verify.figures, "gate": verify.judged, "pictures": verify.pictures}


def _ep_graph(meta: dict) -> dict:
    return {k: meta[k] for k in ("ep_friendly", "rewritten") if k in meta}


def _readme(pub, dynamic: bool, coverage: dict, ort_as_checked: bool, threads: dict[str, ThreadsPick]) -> str:
    resolved, variants = pub.resolved, pub.variants
    pre = resolved.preprocessing
    task_snippets = get_task(resolved.task).module("snippets")
    template = Template((Path(__file__).parent / "app_readme.md").read_text())
    files = [f for v in variants for f in (FILES[v], ORT_FILES[v])] + [mobile.ORT_CONFIG]
    first = threads[variants[0]].recommended
    return template.substitute(
        name=pub.name, opset=ox.OPSET, model_name=resolved.model_name, files=", ".join(files),
        input_name=ox.INPUT_NAME, output_name=ox.OUTPUT_NAME, resolution=pre.resolution, preset=pre.preset,
        batch="N (dynamic: the server option)" if dynamic else "1 (fixed, as NNAPI and the Core ML EP want)",
        rule=pre.describe(), output=task_snippets.output_text(resolved), python=snippets.python(pre),
        python_result=task_snippets.python_result("logits"),
        python_overlay=("\n" + f"label_map = {task_snippets.python_result('logits')}\n" + task_snippets.python_overlay())
        if task_snippets.python_overlay() else "", pictures=pub.pictures_text, table=pub.table,
        kotlin=app_snippets.kotlin(pre, input_name=ox.INPUT_NAME, model=ORT_FILES[variants[0]], threads=first,
                                   int8_model=ORT_FILES["int8"] if "int8" in variants else None,
                                   result=task_snippets.kotlin_result("logits"),
                                   function=task_snippets.KOTLIN_FUNCTION, output=task_snippets.ORT_KOTLIN_OUTPUT),
        swift=app_snippets.swift(pre, input_name=ox.INPUT_NAME, output_name=ox.OUTPUT_NAME, model=ORT_FILES[variants[0]],
                                 threads=first, result=task_snippets.swift_result("logits"),
                                 function=task_snippets.SWIFT_FUNCTION),
        threads_table=threads_table({ORT_FILES[v]: threads[v] for v in variants}),
        coverage=coverage_table(coverage),
        targets="\n".join(f"- `{ORT_FILES[v]}` / `{FILES[v]}`: {targets(v, coverage[v])}" for v in variants),
        config=mobile.ORT_CONFIG,
        ort_graph="The `.ort` files hold that same graph (runtime optimisations: the CPU fusions are replayed at load)."
        if ort_as_checked else "The `.ort` files hold another graph (fixed optimisations: CPU fusions baked in, "
        "which NNAPI and the Core ML EP do not take): use the `.onnx` files with those EPs.")
