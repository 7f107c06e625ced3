"""What an app using ONNX Runtime (Mobile) must match, for the model card and the README (from the
published manifest): EP coverage as measured, which EP each file targets, the .ort's figures."""

from __future__ import annotations

from mbv3_mobile.export.onnx.mobile import EP_TITLES
from mbv3_mobile.pipeline.publish import threads_note

NNAPI_NOTE = ("NNAPI is deprecated from Android 15 (Google no longer develops it; drivers vary by vendor), so on "
              "Android the recommendation is the XNNPACK or CPU EP, with NNAPI only for older devices measured to "
              "gain from it; on iOS the Core ML EP")


def _whole(c: dict) -> bool:
    return c["supported_nodes"] == c["nodes"] and c["partitions"] <= 1


def _short(c: dict) -> str:
    return f"{c['supported_nodes']}/{c['nodes']} nodes in {c['partitions']} partition(s)"


def targets(variant: str, coverage: dict) -> str:
    """Which EP a published model is for, from its measured coverage."""
    eps = coverage["eps"]
    coreml = [EP_TITLES[e].split("(")[1].rstrip(")") for e in ("coreml_nn", "coreml_mlprogram") if _whole(eps[e])]
    if coreml:
        ios = f"iOS: the Core ML EP ({' and '.join(coreml)} take the whole graph)"
    else:
        lacking = sorted({op.split(":")[-1] for e in ("coreml_nn", "coreml_mlprogram") for op in eps[e]["unsupported_ops"]})
        why = f"it lacks {', '.join(lacking)}" if lacking else "dynamic shapes"
        ios = (f"iOS: not the Core ML EP ({why}: {_short(eps['coreml_mlprogram'])}); there, use the fp32 model with "
               "the Core ML EP, or the iOS pipeline's Core ML packages")
    nnapi = ("NNAPI takes it whole too, but is deprecated from Android 15" if _whole(eps["nnapi"])
             else f"not NNAPI ({_short(eps['nnapi'])})")
    return f"Android: the XNNPACK / CPU EP; {nnapi}. {ios[0].upper()}{ios[1:]}"


def coverage_table(coverage: dict) -> str:
    """Markdown: per published model and EP, the nodes it takes, partitions, what stays on the CPU."""
    lines = ["| model | EP | nodes taken | partitions | left on the CPU |", "|---|---|---|---|---|"]
    for v, cov in coverage.items():
        for ep, c in cov["eps"].items():
            left = ", ".join(f"{n} {op}" for op, n in c["nodes_left_on_cpu"].items()) or "nothing"
            lines.append(f"| {v} | {EP_TITLES[ep]} | {c['supported_nodes']}/{c['nodes']} | {c['partitions']} | {left} |")
    return "\n".join(lines)


def deployment_notes(manifest: dict) -> list[str]:
    versions = manifest.get("versions") or {}
    notes = [f"ONNX opset {manifest.get('opset', '?')}; verified with onnxruntime {versions.get('onnxruntime', '?')}"]
    dyn = manifest.get("dynamic_batch")
    if dyn is not None:
        notes.append("batch dimension is dynamic (any N): the server option; NNAPI and the Core ML EP want fixed shapes"
                     if dyn else "batch is fixed at 1 (every shape static, as NNAPI and the Core ML EP want)")
    graph = manifest.get("ep_friendly") or {}
    if graph.get("ep_friendly"):
        done = ", ".join(f"{n} {op}" for op, n in (graph.get("rewritten") or {}).items() if n)
        notes.append(f"EP-friendly graph ({done} rewritten, exact): HardSwish/HardSigmoid as Add + Clip(0, 6) + Div "
                     "(+ Mul), the SE's ReduceMean as GlobalAveragePool")
    for v, cov in (manifest.get("ep_coverage") or {}).items():
        eps = "; ".join(f"{EP_TITLES[ep]} {_short(c)}" + (f" (CPU keeps {', '.join(f'{n} {op}' for op, n in c['nodes_left_on_cpu'].items())})"
                                                        if c["nodes_left_on_cpu"] else "")
                        for ep, c in cov["eps"].items())
        notes.append(f"{v} EP coverage (ORT's mobile usability checker): {eps}")
    for v, entry in (manifest.get("variants") or {}).items():
        if entry.get("targets"):
            notes.append(f"{v} targets: {entry['targets']}")
        if entry.get("threads"):
            notes.append(threads_note(entry.get("ort_file", v), entry["threads"]) + " (the snippets' intra-op threads)")
    ort = manifest.get("ort") or {}
    for o in (ort.get("variants") or {}).values():
        f = o.get("figures") or {}
        fig = (f"top-1 agreement {f.get('top1_agreement', 0):.2%}, max |dlogit| {f.get('max_abs_dlogit', float('nan')):.2e}"
               + (f", top-1 drop {100 * f['top1_drop']:+.2f} pt" if "top1_drop" in f else "") + f" on {f.get('images')} pictures")
        same = "the graph the EP coverage was measured on" if o.get("graph_as_checked") else "a graph other than the one checked"
        notes.append(f"{o['file']}: ORT format ({o.get('style')} optimisations, {o.get('target_platform')}; {same}); "
                     f"{fig}; load with session.enable_saved_runtime_optimizations = 1")
    if ort.get("config"):
        notes.append(f"reduced ONNX Runtime build: build.sh --minimal_build extended --include_ops_by_config {ort['config']}")
    if manifest.get("ep_coverage"):
        notes.append(NNAPI_NOTE)
    return notes
