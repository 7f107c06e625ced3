"""The card as data (model_card.json)."""

from __future__ import annotations

import datetime
import os
import shlex
from collections.abc import Iterable
from pathlib import Path

from mbv3_mobile.card.common import (
    MANIFEST,
    NOT_MEASURED,
    SCHEMA,
    sha256,
)
from mbv3_mobile.card.provenance import _export_from_manifest, training_info
from mbv3_mobile.card.sources import (
    _check_files,
    _model_args,
    figures_of,
    load_bench,
    load_harness,
    load_manifest,
    load_parity,
)


def _artifacts_of_variant(manifest: dict, variant: str) -> str:
    v = (manifest.get("variants") or {}).get(variant) or {}
    names = list(dict.fromkeys(v[k] for k in ("file", "pte", "package", "bundled") if isinstance(v.get(k), str)))
    return ", ".join(names) or "unknown"


def build_card(folder: str | os.PathLike, *, parity: str | os.PathLike | None = None,
               bench: str | os.PathLike | None = None, harness: Iterable[str | os.PathLike] = (),
               export: dict | None = None, training: dict | None = None, previous: dict | None = None,
               published_as: str | os.PathLike | None = None) -> dict:
    """The card as a dict. `export`/`training` come from the publishing run; otherwise from the
    `previous` card, otherwise from the manifest and the source checkpoint (marked inexact).
    `published_as`: the folder's final path when `folder` is the publish step's temp folder."""
    folder = Path(folder)
    final = Path(published_as) if published_as else folder
    manifest = load_manifest(folder)
    _check_files(folder, manifest)
    prev = previous or {}
    model = manifest["model"]
    pre = manifest["preprocessing"]
    source = manifest.get("source_checkpoint", {})
    if export is None:
        export = prev.get("export") or _export_from_manifest(final, manifest)
    if training is None:
        training = prev.get("training") or training_info(
            Path(source["path"]) if source.get("path") and _same_file(source) else None, source)
    export_cmd = export["reproduce"]
    pictures = manifest.get("pictures") or {}

    sizes_by_path = {e["path"]: e["bytes"] for e in manifest["files"]}
    task_figures = figures_of(manifest)
    keys = task_figures.KEYS + task_figures.LABELLED_KEYS + ("mean_abs_dlogit", "snr_db", "bounds", "counts")
    accuracy = []
    for variant, f in manifest["figures"].items():
        artifact = _artifacts_of_variant(manifest, variant)
        accuracy.append({"variant": variant, "artifact": artifact, "bytes": sizes_by_path.get(artifact.split(", ")[0]),
                         "runtime": _verify_runtime(manifest), "data": _pictures_text(pictures.get(variant)),
                         "gate_table": (pictures.get(variant) or {}).get("gate_table"),
                         **{k: f.get(k) for k in keys},
                         "gate": (manifest.get("variants") or {}).get(variant, {}).get("gate"),
                         "fp32_layers": _fp32_layers((manifest.get("variants") or {}).get(variant, {})),
                         "reproduce": export_cmd})
    # ONNX packages ship each variant twice (.onnx and ORT format), each verified on its own.
    for variant, o in ((manifest.get("ort") or {}).get("variants") or {}).items():
        f = o.get("figures") or {}
        accuracy.append({"variant": f"{variant} (.ort)", "artifact": o["file"], "bytes": sizes_by_path.get(o["file"]),
                         "runtime": "onnxruntime (ORT format)", "data": _pictures_text(o.get("pictures")),
                         "gate_table": (o.get("pictures") or {}).get("gate_table"),
                         **{k: f.get(k) for k in keys},
                         "gate": o.get("gate"), "reproduce": export_cmd})

    parity_sec = prev.get("parity")
    if parity is not None:
        parity_sec = load_parity(parity, manifest)
        parity_sec["reproduce"] = _parity_command(parity_sec, export)

    latency = prev.get("latency") or {"host": _empty_latency(), "devices": _empty_latency()}
    new: dict[str, list] = {"host": [], "devices": []}
    new_sources: dict[str, list] = {"host": [], "devices": []}
    if bench is not None:
        src, rows = load_bench(bench, folder, manifest, export)
        new["host"] += rows
        new_sources["host"].append(src)
    for h in harness:
        section, src, rows = load_harness(h, folder, manifest)
        new[section] += rows
        new_sources[section].append(src)
    for section in ("host", "devices"):
        if new[section]:  # a new measurement replaces the earlier ones of its kind (same folder, newer figures)
            latency[section] = {"status": "measured", "rows": new[section], "sources": new_sources[section]}

    manifest_path = folder / MANIFEST
    sizes = [{"path": e["path"], "bytes": e["bytes"], **({"sha256": e["sha256"]} if "sha256" in e else
                                                       {"kind": "directory", "files": len(e.get("files", {}))}),
              "reproduce": export_cmd} for e in manifest["files"]]
    manifest_sha = sha256(manifest_path)
    sizes.append({"path": MANIFEST, "bytes": manifest_path.stat().st_size, "sha256": manifest_sha, "reproduce": export_cmd})
    res = pre["resolution"]
    # From the architecture alone (no checkpoint path, which is often a local cache): same params and MACs.
    info_cmd = (f"nox -s info -- --arch {model.get('arch')} --width {model.get('width')} --resolution {res} "
                f"--num-classes {model.get('num_classes')}" + (" --minimal" if model.get("minimal") else ""))
    card = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "name": final.name,
        "format": manifest["format"],
        "task": manifest.get("task", "classification"),
        "manifest": {"path": MANIFEST, "sha256": manifest_sha, "bytes": manifest_path.stat().st_size,
                     "created": manifest.get("created")},
        "model": {"name": model["name"], "arch": model.get("arch"), "width": model.get("width"),
                  "minimal": model.get("minimal", False), "num_classes": model.get("num_classes"), "resolution": res,
                  "params": model["params"], "macs": model["macs"], "reproduce": info_cmd},
        "io": {"input": manifest.get("input"), "output": manifest.get("output") or manifest.get("outputs"),
               "preprocessing": pre, "labels": {"count": len(manifest["labels"]), "file": "labels.txt",
                                                "names": manifest["labels"]}},
        "source_checkpoint": source,
        "training": training,
        "export": export,
        "accuracy": accuracy,
        "parity": parity_sec,
        "latency": latency,
        "sizes": sizes,
        "versions": {k: manifest.get(k) for k in ("versions", "platform", "machine")},
        "deployment": deployment_info(manifest),
        "gates": manifest.get("gates", {}),
        "reproduce": {
            "export": export_cmd, "info": info_cmd,
            "parity": parity_sec["reproduce"] if parity_sec else _parity_command(None, export),
            # `mbv3 bench` times the .pte and ONNX runtimes; Core ML runs only on Apple hardware.
            "bench": _measured_command(latency["host"]) or ("nox -s bench" if _format(manifest).get("bench") else None),
            "harness": _measured_command(latency["devices"]) or _harness_hint(manifest, final),
            "card": f"nox -s card -- {shlex.quote(str(final))} [--parity P] [--bench B] [--harness H ...]",
        },
    }
    return card


def _pictures_text(p: dict | None) -> str:
    if not p:
        return "unknown"
    kind = "labelled: accuracy-drop gates" if p.get("labelled") else "no labels: label-free gates (agreement, SNR)"
    return f"{p.get('count')} pictures from {p.get('source')} ({kind})"


def _format(manifest: dict) -> dict:
    """The format's facts its package step recorded (`export_format`: pipeline, verify runtime,
    harness target, whether the bench times it); empty for a manifest of an older version."""
    return manifest.get("export_format") or {}


def _verify_runtime(manifest: dict) -> str:
    return _format(manifest).get("verify_runtime") or "unknown"


def deployment_info(manifest: dict) -> dict:
    """What the app side must match: runtime/version, opset or OS minimum, delegation, precision
    (the format's notes, written into the manifest by its package step)."""
    recorded = manifest.get("deployment") or {}
    return {"runtime": recorded.get("runtime") or _verify_runtime(manifest), "notes": list(recorded.get("notes") or [])}


def _measured_command(section: dict) -> str | None:
    cmds = list(dict.fromkeys(r["reproduce"] for r in section.get("rows", []) if r.get("reproduce")))
    return "; ".join(cmds) or None


def _same_file(source: dict) -> bool:
    p = Path(source["path"])
    return p.is_file() and (not source.get("sha256") or sha256(p) == source["sha256"])


def _empty_latency() -> dict:
    return {"status": NOT_MEASURED, "rows": [], "sources": []}


def _parity_command(parity_sec: dict | None, export: dict) -> str:
    if parity_sec and parity_sec.get("command"):
        return parity_sec["command"]
    args = _model_args(export)
    used = (parity_sec or {}).get("params") or {}
    if parity_sec:  # the formats: as recorded, else from the rows (each names its pipeline), in the default order
        defaults = _parity_default_formats()
        found = used.get("formats") or list(dict.fromkeys(r["pipeline"] for r in parity_sec["rows"] if r.get("pipeline")))
        fmts = [f for f in defaults if f in found] + [f for f in found if f not in defaults]
        if fmts and fmts != defaults:
            args += ["--formats", ",".join(fmts)]
    if parity_sec and used.get("pictures", parity_sec["images"]):
        args += ["--pictures", str(used.get("pictures", parity_sec["images"]))]
    for key in ("images", "eval_data"):
        if used.get(key):
            args += ["--" + key.replace("_", "-"), str(used[key])]
    return "nox -s parity -- " + shlex.join(args)


def _parity_default_formats() -> list[str]:
    from mbv3_mobile.pipeline.spec import PipelineError, load_pipeline

    try:
        return list(load_pipeline("parity").params.get("formats", []))
    except PipelineError:
        return []


def _harness_hint(manifest: dict, folder: Path) -> str | None:
    target = _format(manifest).get("harness_target")
    if not target:
        return None  # the harness runs .pte and .mlpackage files only
    # --target ios runs on a Mac with Xcode
    return f"nox -s harness -- --target {target} --model {shlex.quote(str(folder))}"


def _fp32_layers(variant: dict) -> list[str] | None:
    """Layers an int8 variant runs in fp32: the recipe's float stem and any mixed-precision fallback
    (older manifests list only the fallback's)."""
    return variant.get("fp32_layers") or (variant.get("mixed_precision") or {}).get("fp32_layers")
