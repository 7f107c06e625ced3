"""What an iOS app must match, for the model card (from the published manifest)."""

from __future__ import annotations


def deployment_notes(manifest: dict) -> list[str]:
    versions = manifest.get("versions") or {}
    notes = [f"Core ML ML program, minimum deployment target {manifest.get('deployment_target', '?')}; "
             f"converted with coremltools {versions.get('coremltools', '?')}"]
    for v, info in (manifest.get("variants") or {}).items():
        notes.append(f"{v}: `{info.get('package')}`, precision {info.get('precision')}, compression "
                     f"{info.get('compression') or 'none'}")
    et = manifest.get("executorch_coreml") or {}
    if et and "skipped" not in et:
        notes.append(f"ExecuTorch Core ML delegate .pte included (ExecuTorch {versions.get('executorch', '?')}); "
                     "not run on this host")
    return notes
