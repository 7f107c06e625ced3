"""Model card for a published artifact folder: `MODEL_CARD.md` (people) + `model_card.json` (tools).

Built from the folder's `manifest.json` (written by a package stage) plus, optionally, figures
measured later: a parity matrix (`parity.json` from `mbv3 parity`), a host benchmark
(`bench.json` from `mbv3 bench`) and device-harness results (`results.json`, schema
"mbv3-harness/1", from `python -m mobile_harness run`). The package stages write the card inside
their atomic publish; `mbv3 card FOLDER [--parity P] [--bench B] [--harness H ...]` refreshes it.
A refresh keeps the sections of the existing card that no new input replaces (the export command,
training, earlier parity/latency), so the parity and bench hooks can each add their own figures.

Nothing is invented: a latency nobody measured reads "not measured", training metadata a foreign
checkpoint does not carry reads "unknown". Every figure carries the command that reproduces it.
Bad input (no manifest, a malformed or foreign parity/bench/harness file, files that no longer
match the manifest) raises `ModelCardError` before anything is written; the two card files are each
written to a temp file and renamed into place.

model_card.json (schema "mbv3-model-card/1"), top-level keys:
  schema, created, name (folder name), format (manifest "format")
  manifest: {path, sha256, bytes, created}  -- the card is written after the manifest and pins it;
            the manifest's own file list does not include the card files
  model: {name, arch, width, minimal, num_classes, resolution, params, macs, reproduce}
  io: {input, output(s), preprocessing, labels: {count, file, names}}
  source_checkpoint: manifest's {path, sha256, format}
  training: {status: "known"|"unknown", reason?, data, recipe?, config?, val_top1?, val_top5?,
             epochs?, summary?, run_folder?, reproduce?}
  export: {pipeline, params (effective), overrides (non-default), exact (bool), reproduce}
  accuracy: [{variant, artifact, runtime, data?, images, top1, reference_top1, top1_drop_pts,
              top1_agreement, max_abs_logit_diff, mean_abs_logit_diff, min_cosine, gate?, reproduce}]
  parity: null | {source, sha256, model, images, data, reference_top1, rows: [{format, precision,
              top1, top1_drop_pts, top1_agreement, max_abs_logit_diff, mean_abs_logit_diff,
              min_cosine, gate} | {format, precision, skipped}], failures, reproduce}
  latency: {host: {status: "measured"|"not measured", rows, sources}, devices: {status, rows, sources}}
           a row: {target, device, artifact, runtime, threads, p50_ms, p90_ms, min_ms, load_ms,
                   first_inference_ms, peak_rss_mb, reliable, flags, verified, source, reproduce}
  sizes: [{path, bytes, sha256 | files (a directory), reproduce}]  (manifest.json included)
  versions: manifest's {versions, platform, machine} (the machine that exported and verified)
  gates: the pipeline's gates
  reproduce: {export, info, parity, bench, harness, card}  -- one command per kind of figure

bench.json keys read (from `mbv3 bench`, consumed defensively). Schema "mbv3-bench/1":
runtimes[key] {label, file}, latency[threads].rows[key].summary {p50_ms, p90_ms, min_ms} + flags,
latency[threads].ratio_vs_eager[key], probes[key] {load_ms, first_inference_ms, peak_rss_mb},
baseline, peak.cpu, cores, platform, threads, plan. Otherwise a generic list under "rows",
"results" or "measurements" whose rows name their file by "artifact", "file", "path" or "model"
and carry "runtime", "threads", "p50_ms" (or "summary": {"p50_ms"}), optional "p90_ms", "min_ms",
"load_ms", "peak_rss_mb"/"rss_mb"; top-level optional "host"/"machine"/"device" and "command".
A measured file is matched to this folder by sha256 when it exists (bench times the pipeline
cache's copy), else by file name; rows of other files are left out and counted.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
from collections.abc import Iterable
from pathlib import Path

from .atomic import atomic_path
from .errors import UserError

SCHEMA = "mbv3-model-card/1"
CARD_JSON, CARD_MD, MANIFEST = "model_card.json", "MODEL_CARD.md", "manifest.json"
HARNESS_SCHEMA = "mbv3-harness/1"
NOT_MEASURED = "not measured"

# Where each format's accuracy figures were computed (the verify stage's runtime), so nobody
# mistakes the MIL interpreter's numbers for Core ML on a phone.
VERIFY_RUNTIME = {
    "onnx": "onnxruntime (CPU execution provider), host",
    "executorch-xnnpack": "ExecuTorch Python runtime with the XNNPACK delegate, host CPU",
    "coreml-mlprogram": "MIL reference interpreter (numpy) on the host; Core ML itself not run",
}
PIPELINE_OF_FORMAT = {"onnx": "onnx", "executorch-xnnpack": "android", "coreml-mlprogram": "ios"}
VARIANTS_PARAM = {"onnx": "variants", "android": "quant", "ios": "variants"}
ONNX_FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx"}  # manifests before "variants" was recorded


class ModelCardError(UserError):
    """The card cannot be built from these inputs; the message says which input and why."""


# ---------------------------------------------------------------- reading inputs


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
    for variant, f in m["figures"].items():
        lacking = [k for k in FIGURE_KEYS if not isinstance((f or {}).get(k), int | float)]
        if lacking:
            raise ModelCardError(f"{folder / MANIFEST}: figures of {variant!r} lack {', '.join(lacking)}; re-export the folder")
    return m


FIGURE_KEYS = ("images", "top1", "reference_top1", "top1_drop_pts", "top1_agreement", "max_abs_logit_diff", "min_cosine")


def _sha256(path: Path) -> str:
    from .pipeline import sha256_file

    return sha256_file(path)


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
    for name, r in rows.items():
        needed = ("precision", "skipped") if isinstance(r, dict) and "skipped" in r else (
            "precision", "top1", "top1_drop_pts", "top1_agreement", "max_abs_logit_diff", "min_cosine")
        if not isinstance(r, dict) or any(k not in r for k in needed):
            raise ModelCardError(f"parity report {path}: row {name!r} is malformed (needs {', '.join(needed)})")
    if data.get("model") != manifest["model"]["name"]:
        raise ModelCardError(f"parity report {path} is for model {data.get('model')!r}, this folder holds "
                             f"{manifest['model']['name']!r}")
    out_rows = []
    for name, r in rows.items():
        if "skipped" in r:
            out_rows.append({"format": name, "precision": r["precision"], "skipped": r["skipped"]})
            continue
        out_rows.append({"format": name, **{k: r.get(k) for k in (
            "precision", "images", "top1", "top1_drop_pts", "top1_agreement", "max_abs_logit_diff",
            "mean_abs_logit_diff", "min_cosine", "gate", "note")}})
    return {"source": str(path.resolve()), "sha256": _sha256(path), "model": data["model"], "images": data["images"],
            "data": data.get("data", "unknown"), "reference_top1": data.get("reference_top1"), "rows": out_rows,
            "failures": list(data.get("failures") or []), "created_on": data.get("platform"),
            "command": shlex.join(map(str, data["command"])) if isinstance(data.get("command"), list) else data.get("command")}


# Row-name prefixes of each pipeline's parity entries (stages/*.py parity_entries).
PARITY_PREFIXES = {"android": ("pte ", "eager int8"), "ios": ("coreml ",), "onnx": ("onnx ",)}


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
            entry = self.by_sha.get(_sha256(p))
            return (entry["path"], "sha256") if entry else (None, f"{p.name}: not a file of this folder (sha256)")
        entry = self.by_name.get(p.name)
        if entry is None:
            return None, f"{p.name} is not a file of this folder"
        if p.is_dir() and "files" in entry:  # an .mlpackage: every file's sha256 as in the manifest
            files = {str(x.relative_to(p)): _sha256(x) for x in sorted(p.rglob("*")) if x.is_file()}
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
    source = {"path": str(path.resolve()), "sha256": _sha256(path), "target": data["target"], "device": device,
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
            "source": str(path.resolve()), "reproduce": reproduce})
    if not any(r["matched_by"] for r in rows):
        raise ModelCardError(f"bench results {path} measured none of this folder's files "
                             f"({'; '.join(sorted(set(skipped))) or 'no rows'})")
    return {"path": str(path.resolve()), "sha256": _sha256(path), "target": "host", "device": str(host or "host"),
            "created": data.get("created"), "other_files_skipped": len(skipped), "not_measured": not_measured}, rows


BENCH_SCHEMA = "mbv3-bench/1"


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
                            "peak_rss_mb": pr.get("peak_rss_mb"), "ratio_vs_baseline": ratio.get(key)})
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


# ---------------------------------------------------------------- training and export provenance


def _checkpoint_extra(path: Path) -> dict | None:
    """The `extra` metadata of one of our .safetensors checkpoints (header only), or None."""
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return json.loads(meta.get("extra", "{}"))
    except Exception:  # noqa: BLE001 - unreadable metadata means "unknown", said so in the card
        return None


def training_info(checkpoint: Path | None, source: dict) -> dict:
    """What the checkpoint says about its training; 'unknown' with the reason when it says nothing."""
    extra = _checkpoint_extra(checkpoint) if checkpoint else None
    cfg = (extra or {}).get("train_config")
    if not cfg:
        why = (f"the source checkpoint ({source.get('format', '?')} format) carries no training metadata, so it "
               "was not trained by `mbv3 train` or its metadata was stripped") if checkpoint else (
               "the source checkpoint is no longer at its recorded path with its recorded sha256, so its metadata "
               "cannot be read")
        return {"status": "unknown", "reason": why, "data": "unknown", "reproduce": None}
    info = {"status": "known", "data": _data_description(cfg), "config": cfg,
            "val_top1": extra.get("val_top1"), "val_top5": extra.get("val_top5"), "epochs": extra.get("epochs"),
            "val_note": "top-1 on the held-out validation split of training data, not the test set"
            if not cfg.get("val_dataset") else f"top-1 on {cfg['val_dataset']}"}
    if cfg.get("dataset") in ("fashion-mnist", "fashion_mnist"):
        info["limitations"] = ("trained on Fashion-MNIST: centred 28x28 greyscale product images on a black background, "
                               "upscaled; accuracy on camera photos of clothing is not measured and likely far lower. A demonstration / "
                               "pipeline-validation model: fine-tune on your own data (`mbv3 train --init-checkpoint`).")
    recipe = _recipe_of(cfg)
    info["recipe"] = recipe
    info["reproduce"] = f"nox -s train -- --recipe {recipe}" if recipe else _train_command(cfg)
    run = Path(source.get("path", "")).parent
    summary = run / "summary.json"
    if summary.is_file():
        try:
            s = json.loads(summary.read_text())
        except (OSError, json.JSONDecodeError):
            s = {}
        if s.get("checkpoint") and Path(s["checkpoint"]).resolve() == Path(source["path"]).resolve():
            info["summary"] = {k: s.get(k) for k in ("train_seconds", "images_per_second", "world_size", "device", "threads")}
            info["run_folder"] = str(run)
            info["curves"] = str(run / "curves.png") if (run / "curves.png").is_file() else None
    return info


def _data_description(cfg: dict) -> str:
    ds = cfg.get("dataset", "unknown")
    name = "Fashion-MNIST (train split, 60k 28x28 grey images, 10 classes)" if ds in ("fashion-mnist", "fashion_mnist") else ds
    parts = [name]
    if cfg.get("max_train_images"):
        parts.append(f"class-balanced subset of {cfg['max_train_images']} images")
    parts.append(f"validation: {cfg['val_dataset']}" if cfg.get("val_dataset")
                 else f"validation: {cfg.get('val_fraction', 0):.3g} of train held out")
    return "; ".join(parts)


def _recipe_of(cfg: dict) -> str | None:
    try:
        from .train import TrainConfig
        from .zoo import RECIPES, recipe_key

        key = recipe_key(TrainConfig(**{k: v for k, v in cfg.items() if k in TrainConfig.__dataclass_fields__}))
        return next((name for name, r in RECIPES.items() if recipe_key(r) == key), None)
    except Exception:  # noqa: BLE001 - a config from another version matches no recipe
        return None


def _train_command(cfg: dict) -> str:
    from dataclasses import MISSING, fields

    from .train import TrainConfig

    flags = {"out_dir": "--out", "augment": "--no-augment", "channels_last": "--no-channels-last"}
    args = []
    for f in fields(TrainConfig):
        if f.name in ("progress", "extra", "num_workers") or f.name not in cfg:
            continue
        default = None if f.default is MISSING else f.default
        value = cfg[f.name]
        if value == default or value is None:
            continue
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        if isinstance(value, bool):
            args.append(flag)  # every bool flag flips its default
        else:
            args += [flag, str(value)]
    return "nox -s train -- " + shlex.join(args)


def _flag_args(params: dict) -> list[str]:
    args = []
    for k, v in params.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list):
            args += [flag, ",".join(map(str, v))]
        else:
            args += [flag, str(v)]
    return args


def export_info(pipeline: str, defaults: dict, effective: dict, *, exact: bool) -> dict:
    overrides = {k: v for k, v in effective.items() if k in defaults and v != defaults[k]}
    cmd = f"nox -s export_{pipeline}" + (" -- " + shlex.join(_flag_args(overrides)) if overrides else "")
    return {"pipeline": pipeline, "params": effective, "overrides": overrides, "exact": exact, "reproduce": cmd}


def export_from_context(ctx) -> dict:
    """The publishing run's effective parameters (every stage's declared ones), exactly."""
    effective: dict = {}
    for r in ctx.all_results.values():
        effective.update(r.meta.get("key_data", {}).get("params", {}))
    effective.update(ctx.params)
    return export_info(ctx.pipeline.name, ctx.pipeline.params, effective, exact=True)


def _export_from_manifest(folder: Path, manifest: dict) -> dict:
    """Best effort for a folder without a card: what the manifest records (not calibration counts)."""
    pipeline = PIPELINE_OF_FORMAT.get(manifest["format"])
    if pipeline is None:
        return {"pipeline": None, "params": {}, "overrides": {}, "exact": False,
                "reproduce": f"unknown (format {manifest['format']!r} has no known pipeline)"}
    try:
        from .pipeline import load_pipeline

        defaults = load_pipeline(pipeline).params
    except UserError:
        defaults = {}
    # Whatever the manifest does not record is assumed to have been the pipeline's default.
    effective = {**defaults, VARIANTS_PARAM[pipeline]: list(manifest["figures"]), "out": str(folder.parent),
                 "name": folder.name if folder.name != _default_name(manifest) else ""}
    source = manifest.get("source_checkpoint", {}).get("path", "")
    recipe = _zoo_recipe_of_path(source)
    effective.update({"recipe": recipe, "checkpoint": ""} if recipe else {"checkpoint": source})
    if "fp32" in manifest["figures"]:
        effective["parity_images"] = manifest["figures"]["fp32"].get("images")
    info = export_info(pipeline, defaults, effective, exact=False)
    info["note"] = ("reconstructed from manifest.json, other settings assumed default (calibration and "
                    "evaluation settings are not recorded there)")
    return info


def _default_name(manifest: dict) -> str:
    return f"{manifest['model']['name']}_{manifest['preprocessing']['resolution']}px"


def _zoo_recipe_of_path(path: str) -> str | None:
    try:
        from .zoo import RECIPES, recipe_dir

        return next((n for n in RECIPES if Path(path).parent.resolve() == recipe_dir(n).resolve()), None)
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------- the card


def _artifacts_of_variant(manifest: dict, variant: str) -> str:
    v = (manifest.get("variants") or {}).get(variant) or {}
    names = [v[k] for k in ("file", "pte", "package", "bundled") if isinstance(v.get(k), str)]
    if not names and manifest["format"] == "onnx" and variant in ONNX_FILES:
        names = [ONNX_FILES[variant]]
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
    eval_data = export.get("params", {}).get("eval_data", "unknown")

    sizes_by_path = {e["path"]: e["bytes"] for e in manifest["files"]}
    accuracy = []
    for variant, f in manifest["figures"].items():
        artifact = _artifacts_of_variant(manifest, variant)
        accuracy.append({"variant": variant, "artifact": artifact, "bytes": sizes_by_path.get(artifact.split(", ")[0]),
                         "runtime": VERIFY_RUNTIME.get(manifest["format"], "unknown"), "data": f"{eval_data} test split",
                         **{k: f.get(k) for k in ("images", "top1", "reference_top1", "top1_drop_pts", "top1_agreement",
                                                  "max_abs_logit_diff", "mean_abs_logit_diff", "min_cosine")},
                         "reproduce": export_cmd})

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
    manifest_sha = _sha256(manifest_path)
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
        "deployment": deployment_info(manifest, export),
        "gates": manifest.get("gates", {}),
        "reproduce": {
            "export": export_cmd, "info": info_cmd,
            "parity": parity_sec["reproduce"] if parity_sec else _parity_command(None, export),
            # `mbv3 bench` times the .pte and ONNX runtimes; Core ML runs only on Apple hardware.
            "bench": _measured_command(latency["host"]) or (None if manifest["format"] == "coreml-mlprogram" else "nox -s bench"),
            "harness": _measured_command(latency["devices"]) or _harness_hint(manifest, final),
            "card": f"nox -s card -- {shlex.quote(str(final))} [--parity P] [--bench B] [--harness H ...]",
        },
    }
    return card


def deployment_info(manifest: dict, export: dict) -> dict:
    """What the app side must match: runtime/version, opset or OS minimum, delegation, precision."""
    fmt, versions = manifest["format"], manifest.get("versions") or {}
    notes = []
    if fmt == "onnx":
        dyn = export.get("params", {}).get("dynamic_batch")
        notes.append(f"ONNX opset {manifest.get('opset', '?')}; verified with onnxruntime {versions.get('onnxruntime', '?')}")
        if dyn is not None:
            notes.append("batch dimension is dynamic (any N)" if dyn else "batch is fixed at 1")
    elif fmt == "executorch-xnnpack":
        notes.append(f"ExecuTorch {versions.get('executorch', '?')} wrote these .pte files: link the app against the "
                     "same ExecuTorch release (the program format and operator set follow the runtime version)")
        for v, d in (manifest.get("delegation") or {}).items():
            left = d.get("non_delegated_compute_ops") or []
            notes.append(f"{v}: {d.get('delegated_nodes')} nodes in {d.get('delegated_subgraphs')} XNNPACK subgraph(s); "
                         f"compute ops outside XNNPACK: {', '.join(left) if left else 'none'}")
        for v, info in (manifest.get("variants") or {}).items():
            if info.get("scheme"):
                notes.append(f"{v}: {info['scheme']} ({info.get('calibration_images', '?')} calibration images)")
        notes.append("each .bpte bundles real test images and expected outputs for an on-device self-check")
    elif fmt == "coreml-mlprogram":
        notes.append(f"Core ML ML program, minimum deployment target {manifest.get('deployment_target', '?')}; "
                     f"converted with coremltools {versions.get('coremltools', '?')}")
        for v, info in (manifest.get("variants") or {}).items():
            notes.append(f"{v}: `{info.get('package')}`, precision {info.get('precision')}, compression "
                         f"{info.get('compression') or 'none'}")
        et = manifest.get("executorch_coreml") or {}
        if et and "skipped" not in et:
            notes.append(f"ExecuTorch Core ML delegate .pte included (ExecuTorch {versions.get('executorch', '?')}); "
                         "not run on this host")
    return {"runtime": VERIFY_RUNTIME.get(fmt, "unknown"), "notes": notes}


def _measured_command(section: dict) -> str | None:
    cmds = list(dict.fromkeys(r["reproduce"] for r in section.get("rows", []) if r.get("reproduce")))
    return "; ".join(cmds) or None


def _same_file(source: dict) -> bool:
    p = Path(source["path"])
    return p.is_file() and (not source.get("sha256") or _sha256(p) == source["sha256"])


def _empty_latency() -> dict:
    return {"status": NOT_MEASURED, "rows": [], "sources": []}


def _parity_command(parity_sec: dict | None, export: dict) -> str:
    if parity_sec and parity_sec.get("command"):
        return parity_sec["command"]
    args = _model_args(export)
    if parity_sec:  # the formats, from the rows' names (parity.json records no command line)
        fmts = [f for f, pre in PARITY_PREFIXES.items() if any(r["format"].startswith(pre) for r in parity_sec["rows"])]
        if fmts and len(fmts) < len(PARITY_PREFIXES):
            args += ["--formats", ",".join(fmts)]
    args += ["--images", str(parity_sec["images"] if parity_sec else 1000)]
    if parity_sec and parity_sec.get("data") not in (None, "unknown", "fashion-mnist"):
        args += ["--data", parity_sec["data"]]
    return "nox -s parity -- " + shlex.join(args)


def _harness_hint(manifest: dict, folder: Path) -> str:
    fmt = manifest["format"]
    if fmt == "executorch-xnnpack":
        return f"nox -s harness -- --target adb --model {shlex.quote(str(folder))}"
    if fmt == "coreml-mlprogram":
        return f"nox -s harness -- --target ios --model {shlex.quote(str(folder))}"  # on a Mac with Xcode
    return None  # the harness runs .pte and .mlpackage files only


# ---------------------------------------------------------------- markdown


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _ms(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def markdown(card: dict) -> str:
    m, io, t, ex = card["model"], card["io"], card["training"], card["export"]
    pre = io["preprocessing"]
    r = m["resolution"]
    L = [f"# Model card: {card['name']} ({card['format']})", ""]
    L += [f"{m['name']} (MobileNetV3-{str(m['arch']).capitalize()}, width {m['width']}"
          f"{', minimalistic' if m['minimal'] else ''}) classifying {m['num_classes']} classes at {r}x{r} px. "
          f"Card schema {card['schema']}, built {card['created']} from `manifest.json` "
          f"(sha256 `{card['manifest']['sha256'][:16]}…`, published {card['manifest']['created']}).", ""]
    L += ["## Model", "", "| | |", "|---|---|",
          f"| architecture | MobileNetV3-{m['arch']}, width multiplier {m['width']}, minimalistic: {'yes' if m['minimal'] else 'no'} |",
          f"| input resolution | {r}x{r} RGB |", f"| classes | {m['num_classes']} (`labels.txt`, one per line, index = output index) |",
          f"| parameters | {m['params']:,} |", f"| MACs (per image) | {m['macs'] / 1e6:.2f} M |",
          f"| source checkpoint | `{card['source_checkpoint'].get('path', '?')}` ({card['source_checkpoint'].get('format', '?')}, "
          f"sha256 `{str(card['source_checkpoint'].get('sha256', '?'))[:16]}…`) |", "",
          f"Reproduce params/MACs: `{m['reproduce']}`", ""]
    L += ["## Input and output", "",
          f"- preprocessing: resize to {r}x{r} ({pre.get('resize_rule', 'bilinear')}), then `(pixel / 255 - mean) / std` "
          f"with mean {pre.get('mean')} and std {pre.get('std')}"
          + (" — **inside the program** for this format: feed the image as is" if card["format"] == "coreml-mlprogram" else ""),
          f"- input: `{json.dumps(io['input'])}`", f"- output: `{json.dumps(io['output'])}`",
          f"- labels: {', '.join(io['labels']['names'][:10])}{' …' if io['labels']['count'] > 10 else ''}", ""]
    L += ["## Training", ""]
    if t["status"] != "known":
        L += [f"Training data and recipe: **unknown** — {t['reason']}.", ""]
    else:
        cfg = t["config"]
        L += [f"- data: {t['data']}",
              f"- recipe: {t['recipe'] or 'custom (not a named zoo recipe)'}; {cfg.get('epochs')} epochs, "
              f"{cfg.get('optimizer')} lr {cfg.get('lr')} (warm-up {cfg.get('warmup_epochs')} epochs), batch "
              f"{cfg.get('batch_size')} x {cfg.get('processes', 1)} processes, weight decay {cfg.get('weight_decay')}, "
              f"label smoothing {cfg.get('label_smoothing')}, EMA {cfg.get('ema_decay')}, dropout {cfg.get('dropout')}, "
              f"augmentation {'flip + shift ' + str(cfg.get('translate')) if cfg.get('augment') else 'none'}"
              f"{', random erasing ' + str(cfg['random_erasing']) if cfg.get('augment') and cfg.get('random_erasing') else ''}, "
              f"seed {cfg.get('seed')}" + (f", fine-tuned from `{cfg['init_checkpoint']}`" if cfg.get("init_checkpoint") else ""),
              f"- validation top-1 {_pct(t.get('val_top1'))} %, top-5 {_pct(t.get('val_top5'))} % ({t.get('val_note')})"]
        if t.get("summary"):
            s = t["summary"]
            L.append(f"- trained in {s['train_seconds'] / 60:.1f} min on {s.get('world_size')} x {s.get('device')} "
                     f"process(es), {s.get('images_per_second') or 0:.0f} images/s; run folder `{t.get('run_folder')}` "
                     "(metrics.jsonl, curves.png)")
        if t.get("limitations"):
            L.append(f"- limitations: {t['limitations']}")
        L += ["", f"Reproduce: `{t['reproduce']}`", ""]
    L += ["## Accuracy per format", "",
          "Each variant against eager PyTorch fp32 on the same real test images (the export's verify stage).", "",
          "| variant | file | size | images | top-1 % | eager fp32 top-1 % (same images) | drop (pt) | "
          "top-1 agreement % | max abs Δlogit | min cosine |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a in card["accuracy"]:
        size = _mb(a["bytes"]) if a.get("bytes") is not None else "–"
        L.append(f"| {a['variant']} | {a['artifact']} | {size} | {a['images']} | {_pct(a['top1'])} | {_pct(a['reference_top1'])} | "
                 f"{a['top1_drop_pts']:.2f} | {_pct(a['top1_agreement'])} | {a['max_abs_logit_diff']:.2e} | {a['min_cosine']:.6f} |")
    if card["accuracy"]:
        a = card["accuracy"][0]
        L += ["", f"Evaluated in: {a['runtime']}; data: {a['data']}. A negative drop means the variant scored "
              "higher than eager fp32 on these images."]
    L += ["", f"Reproduce: `{ex['reproduce']}`", ""]
    L += ["## Parity matrix (every format, same images)", ""]
    p = card["parity"]
    if not p:
        L += [f"Not run for this card. Run `{card['reproduce']['parity']}`, then "
              f"`{card['reproduce']['card'].split(' [')[0]} --parity dist/parity/{card['name']}/report`.", ""]
    else:
        L += [f"{p['images']} real images ({p['data']}); reference eager fp32 top-1 {_pct(p['reference_top1'])} %. "
              f"Source `{p['source']}`.", "",
              "| format | precision | top-1 % | drop (pt) | agreement % | max abs Δlogit | min cosine | gate |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
        for row in p["rows"]:
            if "skipped" in row:
                L.append(f"| {row['format']} | {row['precision']} | – | – | – | – | – | skipped: {row['skipped']} |")
            else:
                L.append(f"| {row['format']} | {row['precision']} | {_pct(row['top1'])} | {row['top1_drop_pts']:.2f} | "
                         f"{_pct(row['top1_agreement'])} | {row['max_abs_logit_diff']:.2e} | {row['min_cosine']:.6f} | "
                         f"{row.get('gate') or '–'} |")
        if p["failures"]:
            L += ["", "Gate failures: " + "; ".join(p["failures"])]
        L += ["", f"Reproduce: `{p['reproduce']}`", ""]
    L += ["## Latency", ""]
    for section, title in (("host", "Host"), ("devices", "Devices (adb / iOS)")):
        sec = card["latency"][section]
        if sec["status"] != "measured":
            hint = card["reproduce"]["bench"] if section == "host" else card["reproduce"]["harness"]
            if hint:
                how = (f"To measure: `{hint}`" + (" on a Mac with Xcode" if "--target ios" in hint else "")
                       + f", then `{card['reproduce']['card'].split(' [')[0]} --{'bench' if section == 'host' else 'harness'} RESULT.json`.")
            elif section == "host":
                how = "`mbv3 bench` times the .pte and ONNX runtimes; Core ML runs only on Apple hardware (see Devices)."
            else:
                how = "The device harness runs .pte and .mlpackage files; use the Android or iOS export."
            L += [f"**{title}: {NOT_MEASURED}.** {how}", ""]
            continue
        L += [f"**{title}**", ""]
        L += [f"- {src.get('target')}: {src.get('device')} (`{src.get('path')}`"
              + (f", {src['created']}" if src.get("created") else "") + ")" for src in sec.get("sources", [])]
        L += ["", "| target | device | file | runtime | threads | p50 ms | p90 ms | min ms | load ms | peak RSS MB | "
              "p50 / eager fp32 | reliable |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in sec["rows"]:
            flags = row.get("flags") or []
            rel = "–" if row.get("reliable") is None else ("yes" if row["reliable"] else
                                                         "NO: " + flags[0] + (f" (+{len(flags) - 1} more)" if len(flags) > 1 else ""))
            rss = "–" if row.get("peak_rss_mb") is None else f"{row['peak_rss_mb']:.1f}"
            ratio = "–" if row.get("ratio_vs_baseline") is None else f"{row['ratio_vs_baseline']:.3g}"
            device = row["device"] if section == "devices" else "this host"  # the host is named above the table
            L.append(f"| {row['target']} | {device} | {row['artifact']} | {row['runtime']} | {row['threads']} | "
                     f"{_ms(row['p50_ms'])} | {_ms(row['p90_ms'])} | {_ms(row['min_ms'])} | {_ms(row['load_ms'])} | {rss} | "
                     f"{ratio} | {rel} |")
        skipped = [n for src in sec.get("sources", []) for n in src.get("not_measured") or []]
        if skipped:
            L += [""] + [f"- not measured: {n['artifact']} in {n['runtime']} ({n['reason']})" for n in skipped]
        if section == "host" and any(r.get("ratio_vs_baseline") is not None for r in sec["rows"]):
            L += ["", "On a shared host the ratios to eager PyTorch (timed interleaved in the same run) are the "
                  "stable figures; absolute milliseconds move with the machine's load."]
        L += [""] + [f"Reproduce: `{c}`" for c in dict.fromkeys(row["reproduce"] for row in sec["rows"])] + [""]
    L += ["## Deploying", "", f"- accuracy evaluated in: {card['deployment']['runtime']}"]
    L += [f"- {n}" for n in card["deployment"]["notes"]]
    L += ["- `README.md` in this folder: loading code and the exact input recipe", ""]
    L += ["## Files and sizes", "", "| file | size | bytes | sha256 |", "|---|---:|---:|---|"]
    for s in card["sizes"]:
        digest = f"`{s['sha256'][:16]}…`" if "sha256" in s else f"directory, {s['files']} files (per-file sha256 in manifest.json)"
        L.append(f"| {s['path']} | {_mb(s['bytes'])} | {s['bytes']:,} | {digest} |")
    L += ["", f"Reproduce: `{ex['reproduce']}`", ""]
    v = card["versions"]
    L += ["## Versions (machine that exported and verified)", "",
          f"{v.get('platform')} ({v.get('machine')}): " + ", ".join(f"{k} {val}" for k, val in (v.get("versions") or {}).items()), ""]
    if card["gates"]:
        L += ["Gates the export passed: " + ", ".join(f"{k} {val:g}" if isinstance(val, int | float) else f"{k} {val}"
                                                      for k, val in card["gates"].items()), ""]
    L += ["## Reproduce", ""] + [f"- {k}: `{c}`" for k, c in card["reproduce"].items() if c]
    if not ex.get("exact", True):
        L.append(f"- note: the export command is {ex.get('note', 'not exact')}")
    L += ["", "`nox -s X -- ARGS` runs `mbv3 ...` in the project's pinned environment (`mbv3 export onnx ARGS` etc. "
          "work the same in an installed checkout)."]
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- writing


def write_card(folder: str | os.PathLike, **kwargs) -> dict:
    """Build the card (everything checked first) and write both files, each atomically."""
    folder = Path(folder)
    previous = None
    if (folder / CARD_JSON).is_file() and "previous" not in kwargs:
        try:
            previous = json.loads((folder / CARD_JSON).read_text())
        except (OSError, json.JSONDecodeError):
            previous = None  # an unreadable old card is rebuilt from the manifest
        if previous and (previous.get("schema") != SCHEMA
                         or previous.get("manifest", {}).get("sha256") != _sha256(folder / MANIFEST)):
            previous = None  # a card of another manifest (or schema) says nothing about this one
    card = build_card(folder, previous=kwargs.pop("previous", previous), **kwargs)
    text = markdown(card)
    with atomic_path(folder / CARD_JSON) as tmp:
        tmp.write_text(json.dumps(card, indent=2, default=str) + "\n")
        with atomic_path(folder / CARD_MD) as tmp_md:
            tmp_md.write_text(text)
    return card


def refresh_cards(folders: Iterable[str | os.PathLike], **kwargs) -> list[Path]:
    """The hook for `mbv3 parity` / `mbv3 bench`: refresh each folder's card with new figures."""
    done = []
    for f in folders:
        write_card(f, **kwargs)
        done.append(Path(f) / CARD_MD)
    return done


def write_card_at_publish(ctx, folder: Path, final: Path) -> None:
    """Called inside the package stage's atomic publish, after the manifest is written."""
    from .stages.common import MODEL_FILE

    resolved = ctx.inputs["resolve"]
    meta = resolved.meta
    # The resolved copy carries the source checkpoint's metadata; the source itself may move later.
    source = {"path": meta.get("source"), "format": meta.get("source_format"), "sha256": meta.get("source_sha256")}
    training = training_info(resolved.file(MODEL_FILE), source)
    write_card(folder, export=export_from_context(ctx), training=training, previous=None, published_as=final)


# ---------------------------------------------------------------- CLI


def register_cli(sub) -> None:
    p = sub.add_parser("card", help="write/refresh MODEL_CARD.md + model_card.json of a published artifact folder")
    p.add_argument("folder", help="a published folder, e.g. dist/android/mobilenet_v3_small_100_64px")
    p.add_argument("--parity", help="parity.json (or its report folder) from `nox -s parity`")
    p.add_argument("--bench", help="bench.json from `nox -s bench` (host latency, sizes, RSS)")
    p.add_argument("--harness", action="append", default=[], help="harness results.json (host/adb/ios); repeatable")
    p.set_defaults(func=_cmd_card)


def _cmd_card(args) -> int:
    card = write_card(args.folder, parity=args.parity, bench=args.bench, harness=args.harness)
    lat = card["latency"]
    print(f"[card] wrote {Path(args.folder) / CARD_MD} and {CARD_JSON}: {len(card['accuracy'])} accuracy rows, "
          f"parity {'yes' if card['parity'] else 'not run'}, host latency {lat['host']['status']}, "
          f"device latency {lat['devices']['status']}")
    return 0
