"""What an Android app must match, for the model card (from the published manifest)."""

from __future__ import annotations

from mbv3_mobile.pipeline.publish import threads_note


def deployment_notes(manifest: dict) -> list[str]:
    versions = manifest.get("versions") or {}
    notes = [f"ExecuTorch {versions.get('executorch', '?')} wrote these .pte files: link the app against the "
             "same ExecuTorch release (the program format and operator set follow the runtime version)"]
    for v, d in (manifest.get("delegation") or {}).items():
        left = d.get("non_delegated_compute_ops") or []
        notes.append(f"{v}: {d.get('delegated_nodes')} nodes in {d.get('delegated_subgraphs')} XNNPACK subgraph(s); "
                     f"compute ops outside XNNPACK: {', '.join(left) if left else 'none'}")
    for v, info in (manifest.get("variants") or {}).items():
        if info.get("scheme"):
            notes.append(f"{v}: {info['scheme']} ({info.get('calibration_images', '?')} calibration images)")
    for v, info in (manifest.get("variants") or {}).items():
        if info.get("threads"):
            notes.append(threads_note(info.get("file", v), info["threads"])
                         + " (`python -m mobile_harness run --target adb` picks by the same rule)")
    notes.append("each .bpte bundles real test pictures and expected outputs for an on-device self-check "
                 "(fp32: eager PyTorch's outputs; int8: this runtime's own, a self-consistency check)")
    return notes
