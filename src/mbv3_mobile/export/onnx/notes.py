"""What an app using ONNX Runtime must match, for the model card (from the published manifest)."""

from __future__ import annotations


def deployment_notes(manifest: dict, export: dict) -> list[str]:
    versions = manifest.get("versions") or {}
    notes = [f"ONNX opset {manifest.get('opset', '?')}; verified with onnxruntime {versions.get('onnxruntime', '?')}"]
    dyn = manifest.get("dynamic_batch", export.get("params", {}).get("dynamic_batch"))
    if dyn is not None:
        notes.append("batch dimension is dynamic (any N)" if dyn else "batch is fixed at 1")
    return notes
