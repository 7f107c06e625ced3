"""`mbv3 bench`: gather the artifacts (pipelines, cached), time every runtime, write the report."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mbv3_mobile.core.atomic import atomic_dir
from mbv3_mobile.core.errors import UserError
from mbv3_mobile.crossformat.bench.common import BASELINE, QUICK, SCHEMA, BenchError
from mbv3_mobile.crossformat.bench.engines import EAGER_OPENER, LITERT_OPENER, Artifacts, Runtime, convert_litert
from mbv3_mobile.crossformat.bench.goals import evaluate_goals, recommended_threads
from mbv3_mobile.crossformat.bench.host import host_peak, thread_counts, usable_cores
from mbv3_mobile.crossformat.bench.measure import export_timings, latency_rounds, probe, training_throughput
from mbv3_mobile.crossformat.bench.render import markdown, plot_goals, plot_latency
from mbv3_mobile.crossformat.bench.workload import models_for_task, resolve_models, workload_task
from mbv3_mobile.data.selection import choose, pictures
from mbv3_mobile.export.registry import list_formats
from mbv3_mobile.pipeline.publish import environment, write_json
from mbv3_mobile.pipeline.runner import check_params
from mbv3_mobile.pipeline.spec import load_pipeline

# ---------------------------------------------------------------- artifacts


def gather_artifacts(p: dict, *, progress: bool) -> Artifacts:
    """Run (or reuse) the pipelines of the formats the bench times; every runtime row they offer."""
    from mbv3_mobile.crossformat.formats import format_pipeline, plan_formats, run_formats

    for name in p["formats"]:
        fmt, _ = format_pipeline(name, command="bench")
        if not fmt.bench_runtimes:
            timed = ", ".join(f.pipeline for f in list_formats() if f.bench_runtimes)
            raise BenchError(f"format {name!r} has no runtime this host can time (bench knows: {timed})")
    plan = run_formats(plan_formats(p["formats"], p, command="bench"), progress=progress)
    resolved = plan[0].resolved
    runtimes = {BASELINE: Runtime(BASELINE, "eager PyTorch fp32", "fp32", resolved.model_file, opener=EAGER_OPENER)}
    for run in plan:
        for row in run.fmt.hook("bench_runtimes")(run.results):
            runtimes[row["key"]] = Runtime(row["key"], row["label"], row["precision"], Path(row["file"]),
                                           opener=row.get("opener"), native=bool(row.get("native")), format=run.fmt.name,
                                           pictures=Path(row["pictures"]) if row.get("pictures") else None,
                                           details=dict(row.get("details") or {}))
    return Artifacts(resolved.model_file, runtimes, resolved, plan)


def bench_input(art: Artifacts, p: dict) -> tuple[torch.Tensor, str]:
    """The first of the real pictures a format bundled with its files (the .bpte's test cases),
    so the native runner (which feeds the bundled case) and the in-process runtimes see the same
    pixels; when no format bundles pictures, the first eval picture."""
    bundled = next((rt.pictures for rt in art.runtimes.values() if rt.pictures is not None), None)
    if bundled is not None:
        return torch.from_numpy(np.load(bundled)[:1]).contiguous(), "first bundled picture"
    model, pre, labels = art.resolved.load()
    source, labelled = choose(given=p.get("eval_data", ""), images=p.get("images", ""), labels=labels, purpose="eval")
    pics = pictures(source, labelled, pre, labels, split="test", limit=1)
    return pics.normalized(pre), f"first picture of {pics.source}"


def resolve_params(params: dict) -> tuple[dict, dict]:
    spec = load_pipeline("bench")
    p = check_params(spec, params)
    if p["quick"]:
        p.update({k: v for k, v in QUICK.items() if k not in params or params[k] is None})
    for k in ("warmup", "train_warmup", "probe_iters", "train_steps", "train_batch"):
        least = 0 if k.endswith("warmup") else 1
        if p[k] < least:
            raise BenchError(f"--{k.replace('_', '-')} must be >= {least}, got {p[k]}")
    for k in ("rounds", "iters", "train_rounds", "sweep_iters", "sweep_rounds"):
        if p[k] < 1:
            raise BenchError(f"--{k.replace('_', '-')} must be >= 1, got {p[k]}")
    thread_counts(p["threads"], usable_cores())  # a bad --threads is refused before any model is resolved
    p["models"] = models_for_task(p["models"], p["task"], spec.params["models"])  # the task's own list by default
    return p, dict(spec.settings.get("goals", {}))


def run_bench(params: dict, *, progress: bool = True) -> tuple[dict, Path]:
    """Bench every model of `--models` (or the one `--checkpoint`), then `--sweep` if asked. One
    model: (its report, its folder). Several: (the summary, the output folder), with workload.{json,md}
    comparing them (goals per model, recommended threads)."""
    p, goals = resolve_params(params)
    log = print if progress else (lambda *_a, **_k: None)
    models = resolve_models(p["models"], p["checkpoint"])
    reports = {}
    for label, checkpoint, note in models:
        q = dict(p, checkpoint=checkpoint, task=workload_task(label) or p["task"])
        if note and not q.get("images"):
            q["images"] = "samples"  # photo-like pictures for calibration and the label-free gates
        q["train"] = label in p["train_models"] or (p["checkpoint"] and "checkpoint" in p["train_models"])
        log(f"[bench] model {label}" + (f" ({note})" if note else ""))
        reports[label] = bench_model(q, goals, label=label, weights_note=note, progress=progress)
    sweep = None
    if p["sweep"]:
        from mbv3_mobile.crossformat.bench.sweep import run_sweep

        sweep = run_sweep(p, progress=progress)
    if p["profile"]:
        from mbv3_mobile.crossformat.bench.profile import run_profile, write_profile

        threads = thread_counts(p["threads"], usable_cores())
        prof = run_profile("large", 1.0, 224, threads=threads, runs=p["profile_runs"], log=log)
        write_profile(prof, Path(p["out"]) / "profile")
        log(f"[bench] wrote {Path(p['out']) / 'profile' / 'profile.md'}")
    if len(reports) == 1 and sweep is None:
        return next(iter(reports.values()))
    if len(reports) == 1:
        return next(iter(reports.values()))[0], Path(p["out"])
    from mbv3_mobile.crossformat.bench.render import workload_markdown

    summary = {"schema": SCHEMA + "+workload", "models": {k: r for k, (r, _) in reports.items()},
               "folders": {k: str(f) for k, (_, f) in reports.items()}, "sweep": sweep}
    out = Path(p["out"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "workload.json", {**summary, "models": {k: _brief(r) for k, (r, _) in reports.items()}})
    md = workload_markdown(summary)
    (out / "workload.md").write_text(md)
    log("\n" + md)
    log(f"[bench] wrote {out / 'workload.md'}")
    return summary, out


def _brief(r: dict) -> dict:
    """A model's report without the per-iteration latencies (bench.json in its folder has them)."""
    lat = {n: {"medians_ms": b["medians_ms"], "ratio_vs_eager": b["ratio_vs_eager"],
               "rows": {k: {x: v for x, v in row.items() if x != "rounds_ms"} for k, row in b["rows"].items()}}
           for n, b in r["latency"].items()}
    keep = ("model", "model_key", "weights", "resolution", "macs", "params", "peak", "threads", "plan", "goals",
            "recommended_threads", "delegation")
    return {k: r.get(k) for k in keep} | {"latency": lat}


def bench_model(p: dict, goals: dict, *, label: str, weights_note: str | None, progress: bool) -> tuple[dict, Path]:
    log = print if progress else (lambda *_a, **_k: None)
    cores = usable_cores()
    threads = thread_counts(p["threads"], cores)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    art = gather_artifacts(p, progress=progress)
    resolved = art.resolved
    macs = resolved.macs
    x, picture = bench_input(art, p)
    # goals name models as `<arch>-<resolution>`, LR-ASPP ones as `lraspp-<arch>-<resolution>`
    model_key = ("lraspp-" if resolved.task == "segmentation" else "") + f"{resolved.config.get('arch', '?')}-{int(x.shape[-1])}"
    runner, skipped = None, {}
    native = [k for k, rt in art.runtimes.items() if rt.native]
    if native and p["native"]:
        try:
            from mobile_harness.build import ensure_runner

            runner = ensure_runner("host", log=log)
        except UserError as exc:
            skipped.update({k: f"native runner unavailable: {exc}" for k in native})
    elif native:
        skipped.update({k: "--no-native" for k in native})
    litert_seconds = None
    with tempfile.TemporaryDirectory(prefix="mbv3-bench-litert-") as litert_tmp:
        if p["litert"]:
            tfl, why, litert_seconds = convert_litert(art.model_file, p, Path(litert_tmp))
            if tfl:
                art.runtimes["litert_fp32"] = Runtime("litert_fp32", "LiteRT fp32 (XNNPACK)", "fp32", tfl,
                                                      opener=LITERT_OPENER)
            else:
                skipped["litert_fp32"] = why
        else:
            skipped["litert_fp32"] = "--no-litert"
        keys = [k for k in art.runtimes if k not in skipped]
        log(f"[bench] {resolved.model_name} @ {x.shape[-1]} px, {macs / 1e6:.1f} M MACs; runtimes: {', '.join(keys)}; "
            f"threads {threads}; {p['rounds']} rounds x {p['iters']} iterations after {p['warmup']} warm-up")
        latency = latency_rounds(keys, art, x, threads, p, runner=runner, log=log)
        log(f"[bench] load time / peak RSS: one fresh process per runtime, {max(threads)} threads")
        probes = {k: probe(art.runtimes[k], x, max(threads), p["probe_iters"], runner=runner) for k in keys}
        sizes = {k: rt.bytes for k, rt in art.runtimes.items()}
    if resolved.task != "classification":  # the throughput step is a classifier's (labels per picture)
        training = {"skipped": f"training throughput is timed for classifiers only, not {resolved.task}", "variants": {}}
    elif p.get("train", True):
        training = training_throughput(art, p, max(threads), log=log)
    else:
        training = {"skipped": "not timed for this model (--train-models)", "variants": {}}
    export = export_timings(p, art, cold=p["cold_export"], log=log)
    if litert_seconds:
        export["litert_convert_s"] = litert_seconds
    peak = host_peak()

    for n, block in latency.items():
        for key, row in block["rows"].items():
            p50 = row["summary"]["p50_ms"]
            gflops = 2 * macs / (p50 / 1e3) / 1e9
            row.update(images_per_s=1e3 / p50, gflops=gflops)
            if peak["peak_gflops_per_core"] is None:  # clock unknown: no roofline fractions
                continue
            row["fraction_of_peak"] = gflops / (peak["peak_gflops_per_core"] * n)
            if art.runtimes[key].precision == "int8":
                row["fraction_of_int8_peak"] = gflops / (peak["peak_int8_gops_per_core"] * n)
            row["fraction_of_roofline"] = row.get("fraction_of_int8_peak", row["fraction_of_peak"])
    verdicts = evaluate_goals(latency, goals, model_key)
    for n, block in latency.items():
        block["goals"] = [g for g in verdicts if g["threads"] == str(n)]
    recommended = {k: recommended_threads({n: latency[n]["rows"][k]["summary"] for n in latency
                                           if k in latency[n]["rows"]}) for k in keys}
    report = {
        "schema": SCHEMA, "model": resolved.model_name, "label": label, "model_key": model_key,
        "weights": weights_note or "as given (the checkpoint's own weights)", "resolution": int(x.shape[-1]), "macs": macs,
        "params": resolved.params, "input": {"image": picture, "images": p.get("images") or None, "eval_data": p.get("eval_data") or None},
        "cores": cores, "threads": threads, "plan": {k: p[k] for k in ("warmup", "rounds", "iters", "probe_iters", "quick")},
        "peak": peak, "baseline": BASELINE,
        "runtimes": {k: {"label": rt.label, "precision": rt.precision, "format": rt.format, "file": str(rt.file),
                         "bytes": sizes.get(k), "skipped": skipped.get(k)} for k, rt in art.runtimes.items()}
        | {k: {"label": k, "skipped": why} for k, why in skipped.items() if k not in art.runtimes},
        "latency": {str(n): v for n, v in latency.items()}, "probes": probes, "training": training, "export": export,
        "delegation": {rt.details["variant"]: rt.details["delegation"] for rt in art.runtimes.values()
                       if "delegation" in rt.details},
        "thread_settings": {
            "eager_fp32": "torch.set_num_threads(n)",
            "pte": "executorch portable_lib._unsafe_reset_threadpool(n) before the program is loaded",
            "native": "mbv3_runner --threads n",
            "ort": "SessionOptions.intra_op_num_threads = n, inter_op_num_threads = 1",
            "litert": "Interpreter(num_threads=n)"},
        "goals": {"limits": goals, "judged_on": model_key, "verdicts": verdicts},
        "recommended_threads": recommended,
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "wall_s": time.perf_counter() - t_start, **environment(),
    }
    name = resolved.output_name(p)
    out = Path(p["out"]) / name
    md = markdown(report)
    with atomic_dir(out) as tmp:
        write_json(tmp / "bench.json", report)
        (tmp / "bench.md").write_text(md)
        plot_latency(report, tmp / "latency.png")
        plot_goals(report, tmp / "goals.png")
    from mbv3_mobile.card import refresh_cards

    # The model cards of the benchmarked artifact folders get the host latency.
    refresh_cards([run.published for run in art.runs if run.published], bench=out / "bench.json")
    log("\n" + md)
    log(f"[bench] wrote {out}")
    return report, out


def load_report(path: str | Path) -> dict:
    return json.loads((Path(path) / "bench.json").read_text())
