"""What parity and the bench run for this format: ONNX Runtime (CPU EP) fp32 and int8, each as
.onnx and as the ORT-format .ort an app ships."""

from __future__ import annotations

from mbv3_mobile.export.onnx.runtime import module_outputs, module_scopes, ort_session, run_onnx
from mbv3_mobile.pipeline.runner import PipelineResults
from mbv3_mobile.verify.compare import Candidate

FORMAT = "onnx"


def parity_entries(results: PipelineResults) -> list[Candidate]:
    """Rows for the parity matrix: ORT fp32 (with drift localisation) and int8, .onnx then .ort."""
    raw = results.stage("export").out("raw")
    entries = []
    for stage, suffix in (("quantize", ""), ("ort_format", " .ort")):
        for variant, result in results.variants(stage).items():
            path = result.out("model")
            session = ort_session(path)
            localise = stage == "quantize"  # node taps need the .onnx graph (the .ort is the same graph)
            entries.append(Candidate(
                name=f"onnx {variant}{suffix} (onnxruntime)", gate=variant, format=FORMAT,
                run=lambda x, s=session: run_onnx(s, x),
                module_outputs=(lambda img, p=path: module_outputs(p, img, module_scopes(raw))) if localise else None,
                note="; ".join(n for n in (_quantization(results, variant), "ORT format" if suffix else "") if n),
            ))
    return entries


def bench_runtimes(results: PipelineResults) -> list[dict]:
    rows = []
    for variant, result in results.variants("quantize").items():
        q = result.meta.get("quantization")
        rows.append({"key": f"ort_{variant}", "precision": variant, "file": result.out("model"),
                     "label": f"ONNX Runtime {variant}" + (f" ({q['format']})" if isinstance(q, dict) else ""),
                     "opener": "mbv3_mobile.export.onnx.bench_open:open_session"})
    if any((results.stage("ep_graph").meta.get("rewritten") or {}).values()):
        # The fair CPU peer: the same graph before the mobile-EP rewrite (ORT's x86 NCHWc path fuses
        # HardSigmoid/HardSwish that the rewrite spells out), what a server or desktop app would ship.
        rows.append({"key": "ort_fp32_server", "precision": "fp32", "file": results.stage("simplify").out("model"),
                     "label": "ONNX Runtime fp32 (server graph: no EP rewrite)",
                     "opener": "mbv3_mobile.export.onnx.bench_open:open_session"})
    for variant, result in results.variants("ort_format").items():
        # ORT format for arm: no x86 NCHWc layout, so slower than the .onnx on an x86 host
        rows.append({"key": f"ort_{variant}_ortformat", "precision": variant, "file": result.out("model"),
                     "label": f"ONNX Runtime {variant} .ort (ORT format, arm layout)",
                     "opener": "mbv3_mobile.export.onnx.bench_open:open_ort_session"})
    return rows


def _quantization(results: PipelineResults, variant: str) -> str:
    q = results.stage("quantize", variant).meta.get("quantization")
    return f"static {q['format']}, {q['weights']} weights" if isinstance(q, dict) else ""
