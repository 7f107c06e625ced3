"""Reading what a card is built from: the manifest, parity.json, bench.json, harness results."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from mbv3_mobile.card.common import (
    BENCH_SCHEMA,
    HARNESS_SCHEMA,
    MANIFEST,
    ModelCardError,
    sha256,
)
from mbv3_mobile.core.errors import UserError


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelCardError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCardError(f"{what} {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelCardError(f"{what} {path} is not a JSON object")
    return data


def load_manifest(folder: Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelCardError(f"{folder} is not a folder; pass a published artifact folder such as dist/onnx/<model>_<res>px")
    if not (folder / MANIFEST).is_file():
        raise ModelCardError(f"{folder} has no {MANIFEST}: not a published artifact folder "
                             "(publish one with `nox -s export_onnx` / export_android / export_ios)")
    m = _read_json(folder / MANIFEST, "manifest")
    missing = [k for k in ("format", "model", "files", "figures", "preprocessing", "labels") if k not in m]
    if missing:
        raise ModelCardError(f"{folder / MANIFEST} lacks {', '.join(missing)}; re-export the folder")
    try:
        task_figures = figures_of(m)
    except UserError as exc:
        raise ModelCardError(f"{folder / MANIFEST}: {exc}") from None
    for variant, f in m["figures"].items():
        keys = task_figures.KEYS + (task_figures.LABELLED_KEYS if (f or {}).get("labelled", True) else ())
        lacking = [k for k in keys if not isinstance((f or {}).get(k), int | float)]
        if lacking:
            raise ModelCardError(f"{folder / MANIFEST}: figures of {variant!r} lack {', '.join(lacking)}; re-export the folder")
    return m



def figures_of(manifest: dict):
    """The figures module of the manifest's task (manifests written before tasks: classification)."""
    from mbv3_mobile.tasks import get_task

    return get_task(manifest.get("task")).module("figures")


def _check_files(folder: Path, manifest: dict) -> None:
    """The card describes the manifest; refuse a folder whose files were changed after publishing."""
    for entry in manifest["files"]:
        p = folder / entry["path"]
        if not p.exists():
            raise ModelCardError(f"{p} is listed in the manifest but missing; re-export the folder")
        actual = sum(x.stat().st_size for x in p.rglob("*") if x.is_file()) if p.is_dir() else p.stat().st_size
        if actual != entry["bytes"]:
            raise ModelCardError(f"{p} is {actual} bytes, the manifest says {entry['bytes']}: the folder changed "
                                 "after publishing; re-export it")


def load_parity(path: str | os.PathLike, manifest: dict) -> dict:
    """parity.json (or a report folder holding it), checked for shape and for being about this model."""
    path = Path(path)
    if path.is_dir():
        path = path / "parity.json"
    data = _read_json(path, "parity report")
    rows = data.get("rows")
    if not isinstance(rows, dict) or not rows or not isinstance(data.get("images"), int):
        raise ModelCardError(f"parity report {path} is malformed: needs 'images' (int) and a non-empty 'rows' "
                             "object (write it with `nox -s parity`)")
    task_keys = tuple(k for k in figures_of(manifest).KEYS if k != "images")
    for name, r in rows.items():
        needed = ("precision", "skipped") if isinstance(r, dict) and "skipped" in r else ("precision", *task_keys)
        if not isinstance(r, dict) or any(k not in r for k in needed):
            raise ModelCardError(f"parity report {path}: row {name!r} is malformed (needs {', '.join(needed)})")
    if data.get("model") != manifest["model"]["name"]:
        raise ModelCardError(f"parity report {path} is for model {data.get('model')!r}, this folder holds "
                             f"{manifest['model']['name']!r}")
    out_rows = []
    for name, r in rows.items():
        if "skipped" in r:
            out_rows.append({"row": name, "format": r.get("format"), "pipeline": r.get("pipeline"), "precision": r["precision"],
                             "skipped": r["skipped"]})
            continue
        figures = figures_of(manifest)
        out_rows.append({"row": name, **{k: r.get(k) for k in dict.fromkeys((
            "format", "pipeline", "precision", "images", "top1", "top1_drop", "top1_agreement", "max_abs_dlogit",
            "mean_abs_dlogit", "min_cosine", "snr_db", "bounds", "gate", "note", *figures.KEYS, *figures.LABELLED_KEYS))}})
    return {"source": str(path.resolve()), "sha256": sha256(path), "model": data["model"], "images": data["images"],
            "data": data.get("data", "unknown"), "reference_top1": data.get("reference_top1"),
            "reference_miou": data.get("reference_miou"), "rows": out_rows,
            "failures": list(data.get("failures") or []),
            "inconclusive": list(data.get("inconclusive") or []), "params": data.get("params") or {}, "created_on": data.get("platform"),
            "command": shlex.join(map(str, data["command"])) if isinstance(data.get("command"), list) else data.get("command")}



class _Index:
    """This folder's files by name and by sha256, for matching measured model files to it."""

    def __init__(self, manifest: dict) -> None:
        self.by_name = {Path(e["path"]).name: e for e in manifest["files"]}
        self.by_sha = {e["sha256"]: e for e in manifest["files"] if "sha256" in e}

    def match(self, model_path: str | None) -> tuple[str | None, str]:
        """(artifact path in this folder, how it was matched), or (None, why not)."""
        if not model_path:
            return None, "no model path"
        p = Path(model_path)
        if p.is_file():  # the content decides: the pipeline cache holds the same bytes under other names
            entry = self.by_sha.get(sha256(p))
            return (entry["path"], "sha256") if entry else (None, f"{p.name}: not a file of this folder (sha256)")
        entry = self.by_name.get(p.name)
        if entry is None:
            return None, f"{p.name} is not a file of this folder"
        if p.is_dir() and "files" in entry:  # an .mlpackage: every file's sha256 as in the manifest
            files = {str(x.relative_to(p)): sha256(x) for x in sorted(p.rglob("*")) if x.is_file()}
            return (entry["path"], "sha256 of every file") if files == entry["files"] else (
                None, f"{p}: other contents than this folder's {entry['path']}")
        return entry["path"], "file name (the measured file is not here to hash)"


def load_harness(path: str | os.PathLike, folder: Path, manifest: dict) -> tuple[str, dict, list[dict]]:
    """(section, source info, rows) from a harness results.json; section is "host" or "devices"."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    data = _read_json(path, "harness results")
    if data.get("schema") != HARNESS_SCHEMA:
        raise ModelCardError(f"harness results {path} speak {data.get('schema')!r}, expected {HARNESS_SCHEMA!r} "
                             "(write them with `nox -s harness -- --target ...`)")
    ms = data.get("measurements")
    if not isinstance(ms, list) or data.get("target") not in ("host", "adb", "ios"):
        raise ModelCardError(f"harness results {path} are malformed: need 'target' (host/adb/ios) and 'measurements'")
    dev = data.get("device") or {}
    device = ", ".join(str(x) for x in (dev.get("manufacturer"), dev.get("model"), dev.get("soc")) if x) or "unknown device"
    if dev.get("abi"):
        device += f" ({dev['abi']}, {dev.get('cpus', '?')} CPUs)"
    index = _Index(manifest)
    rows, skipped = [], []
    reproduce = _harness_command(data)
    for m in ms:
        try:
            s = m["summary"]
            artifact, how = index.match(m.get("model") or m.get("variant"))
            if artifact is None:
                skipped.append(how)
                continue
            rows.append({
                "target": data["target"], "device": device, "artifact": artifact, "matched_by": how,
                "runtime": m["runtime"], "threads": m["threads"], "p50_ms": s["p50_ms"], "p90_ms": s.get("p90_ms"),
                "min_ms": s.get("min_ms"), "load_ms": s.get("cold_load_ms"),
                "first_inference_ms": s.get("cold_first_inference_ms"), "peak_rss_mb": None,
                "reliable": bool(m.get("reliable")), "flags": list(m.get("flags") or []),
                "verified": (m.get("verification") or {}).get("status"), "source": str(path.resolve()),
                "reproduce": reproduce})
        except (KeyError, TypeError) as exc:
            raise ModelCardError(f"harness results {path}: a measurement is malformed (missing {exc})") from None
    if not rows:
        raise ModelCardError(f"harness results {path} measured none of this folder's files "
                             f"({'; '.join(sorted(set(skipped))) or 'no measurements'})")
    source = {"path": str(path.resolve()), "sha256": sha256(path), "target": data["target"], "device": device,
              "created": data.get("created"), "plan": data.get("plan"), "other_files_skipped": len(skipped)}
    return ("host" if data["target"] == "host" else "devices"), source, rows


def _harness_command(data: dict) -> str:
    plan = data.get("plan") or {}
    models = sorted({m.get("model") for m in data.get("measurements", []) if m.get("model")})
    args = ["--target", data["target"]]
    if data.get("serial"):
        args += ["--serial", data["serial"]]
    for m in models:
        args += ["--model", m]
    for key, flag in (("threads", "--threads"), ("rounds", "--rounds"), ("iters", "--iters"), ("warmup", "--warmup"),
                      ("cooldown_s", "--cooldown-s")):
        if key in plan:
            args += [flag, ",".join(map(str, plan[key])) if isinstance(plan[key], list) else str(plan[key])]
    return "nox -s harness -- " + shlex.join(args)


def load_bench(path: str | os.PathLike, folder: Path, manifest: dict, export: dict | None = None) -> tuple[dict, list[dict]]:
    """(source info, host rows) from `mbv3 bench`'s bench.json, by the keys listed in the docstring."""
    path = Path(path)
    if path.is_dir():
        path = path / "bench.json"
    data = _read_json(path, "bench results")
    index = _Index(manifest)
    not_measured = []
    if isinstance(data.get("latency"), dict) and isinstance(data.get("runtimes"), dict):
        raw, host = _bench_v1_rows(data, path)
        for rt in data["runtimes"].values():  # this folder's files the run skipped, and why
            artifact, _ = index.match(rt.get("file")) if isinstance(rt, dict) and rt.get("skipped") else (None, "")
            if artifact:
                not_measured.append({"artifact": artifact, "runtime": rt.get("label"), "reason": rt["skipped"]})
    else:
        raw = next((data[k] for k in ("rows", "results", "measurements") if isinstance(data.get(k), list)), None)
        if raw is None:
            raise ModelCardError(f"bench results {path} are malformed: neither 'latency' + 'runtimes' ({BENCH_SCHEMA}) "
                                 "nor a 'rows' / 'results' / 'measurements' list")
        host = next((data[k] for k in ("host", "machine", "device") if data.get(k)), None)
        if isinstance(host, dict):
            host = ", ".join(f"{k} {v}" for k, v in host.items() if isinstance(v, str | int | float)) or "host"
    command = data.get("command")
    if isinstance(command, list):
        command = shlex.join(map(str, command))
    reproduce = command or _bench_command(data, export or {})
    rows, skipped = [], []
    for r in raw:
        if not isinstance(r, dict):
            raise ModelCardError(f"bench results {path}: a row is not an object")
        where = next((r[k] for k in ("artifact", "file", "path", "model") if isinstance(r.get(k), str)), None)
        artifact, how = index.match(where)
        if artifact is None and not r.get("baseline"):
            skipped.append(how)
            continue
        s = r.get("summary") if isinstance(r.get("summary"), dict) else r
        if not isinstance(s.get("p50_ms"), int | float):
            raise ModelCardError(f"bench results {path}: the row for {where} has no numeric p50_ms")
        rows.append({
            "target": "host", "device": str(host or "host (unrecorded)"),
            "artifact": artifact or "(eager PyTorch fp32 reference, not shipped)", "matched_by": how if artifact else None,
            "runtime": str(r.get("runtime", "unknown")), "threads": r.get("threads"), "p50_ms": s["p50_ms"],
            "p90_ms": s.get("p90_ms"), "min_ms": s.get("min_ms"), "load_ms": r.get("load_ms", s.get("load_ms")),
            "first_inference_ms": r.get("first_inference_ms", s.get("first_inference_ms")),
            "peak_rss_mb": r.get("peak_rss_mb", r.get("rss_mb")), "ratio_vs_baseline": r.get("ratio_vs_baseline"),
            "reliable": r.get("reliable"), "flags": list(r.get("flags") or []), "verified": None,
            "recommended_threads": r.get("recommended_threads"), "source": str(path.resolve()), "reproduce": reproduce})
    if not any(r["matched_by"] for r in rows):
        raise ModelCardError(f"bench results {path} measured none of this folder's files "
                             f"({'; '.join(sorted(set(skipped))) or 'no rows'})")
    return {"path": str(path.resolve()), "sha256": sha256(path), "target": "host", "device": str(host or "host"),
            "created": data.get("created"), "other_files_skipped": len(skipped), "not_measured": not_measured}, rows



def _bench_v1_rows(data: dict, path: Path) -> tuple[list[dict], str]:
    """Flatten mbv3-bench/1: latency[threads].rows[runtime key] + runtimes[key] (file, label) +
    probes[key] (load time, peak RSS; one fresh process at the largest thread count)."""
    runtimes, probes = data["runtimes"], data.get("probes") or {}
    baseline = data.get("baseline")
    peak = data.get("peak") or {}
    host = ", ".join(str(x) for x in (peak.get("cpu"), f"{data.get('cores', '?')} usable cores", data.get("platform")) if x)
    out = []
    try:
        for threads, block in data["latency"].items():
            ratio = block.get("ratio_vs_eager") or {}
            for key, row in block["rows"].items():
                rt, pr = runtimes.get(key) or {}, probes.get(key) or {}
                flags = list(row.get("flags") or [])
                out.append({"file": rt.get("file") or None, "baseline": key == baseline, "runtime": rt.get("label", key),
                            "threads": int(threads), "summary": row["summary"], "flags": flags, "reliable": not flags,
                            "load_ms": pr.get("load_ms"), "first_inference_ms": pr.get("first_inference_ms"),
                            "peak_rss_mb": pr.get("peak_rss_mb"), "ratio_vs_baseline": ratio.get(key),
                            "recommended_threads": ((data.get("recommended_threads") or {}).get(key) or {}).get("threads")})
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ModelCardError(f"bench results {path} ({data.get('schema')}) are malformed: {exc!r}") from None
    return out, host


def _model_args(export: dict) -> list[str]:
    """--checkpoint / --recipe of the export a card describes, for its reproduce commands."""
    params = export.get("params", {})
    if params.get("checkpoint"):
        return ["--checkpoint", params["checkpoint"]]
    if params.get("recipe") and params["recipe"] != "default":
        return ["--recipe", params["recipe"]]
    return []


def _bench_command(data: dict, export: dict) -> str:
    args = _model_args(export)
    if data.get("threads"):
        args += ["--threads", ",".join(map(str, data["threads"]))]
    # A runtime skipped by a switch (e.g. "--no-native") was skipped on the command line.
    for rt in (data.get("runtimes") or {}).values():
        reason = rt.get("skipped") if isinstance(rt, dict) else None
        if isinstance(reason, str) and reason.startswith("--no-") and " " not in reason and reason not in args:
            args.append(reason)
    plan = data.get("plan") or {}
    if plan.get("quick"):
        args.append("--quick")
    else:
        for k in ("warmup", "rounds", "iters"):
            if k in plan:
                args += [f"--{k}", str(plan[k])]
    return "nox -s bench" + (" -- " + shlex.join(args) if args else "")
