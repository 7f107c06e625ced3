"""What parity and the bench run for this format: ONNX Runtime (CPU EP) fp32 and int8 QDQ."""

from __future__ import annotations

from mbv3_mobile.export.onnx.runtime import module_outputs, module_scopes, ort_session, run_onnx
from mbv3_mobile.verify.compare import Candidate

FORMAT = "onnx"


def parity_entries(results: dict) -> list[Candidate]:
    """Rows for the parity matrix: ORT fp32 (with drift localisation) and ORT int8."""
    raw = results["export"].out("raw")
    entries = []
    for variant in ("fp32", "int8"):
        key = f"quantize[{variant}]"
        if key not in results:
            continue
        path = results[key].out("model")
        session = ort_session(path)
        entries.append(Candidate(
            name=f"onnx {variant} (onnxruntime)", gate="fp32" if variant == "fp32" else "int8", format=FORMAT,
            run=lambda x, s=session: run_onnx(s, x),
            module_outputs=(lambda img, p=path: module_outputs(p, img, module_scopes(raw))) if variant == "fp32" else None,
            note="static QDQ, per-channel weights" if variant == "int8" else "",
        ))
    return entries


def bench_runtimes(results: dict) -> list[dict]:
    rows = []
    for variant in ("fp32", "int8"):
        key = f"quantize[{variant}]"
        if key in results:
            rows.append({"key": f"ort_{variant}", "precision": variant, "file": results[key].out("model"),
                         "label": "ONNX Runtime fp32" if variant == "fp32" else "ONNX Runtime int8 (QDQ)",
                         "opener": "mbv3_mobile.export.onnx.bench_open:open_session"})
    return rows
