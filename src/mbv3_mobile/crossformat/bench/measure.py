"""Measuring: interleaved latency rounds, fresh-process load/RSS probes, training throughput,
export time per stage."""

from __future__ import annotations

import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mbv3_mobile.crossformat.bench.common import BASELINE, BenchError
from mbv3_mobile.crossformat.bench.engines import Artifacts, Engine, Runtime, open_engine
from mbv3_mobile.crossformat.bench.goals import ratios, rotation
from mbv3_mobile.pipeline.runner import run_pipeline


def check_outputs(engines: dict[str, Engine], reference: np.ndarray) -> dict[str, dict]:
    """Each runtime's logits on the bench image vs eager fp32: a fast runtime that is wrong shows here.
    Per-pixel logits (N x C x H x W) also give the share of pixels whose argmax is eager's."""
    out = {}
    for key, e in engines.items():
        raw = np.asarray(e.once(), dtype=np.float32)
        row = {"max_abs_diff_vs_eager": float(np.max(np.abs(raw.reshape(-1) - reference.reshape(-1))))}
        if reference.ndim == 4 and raw.size == reference.size:
            agree = float(np.mean(raw.reshape(reference.shape).argmax(1) == reference.argmax(1)))
            row.update(pixel_agreement_vs_eager=agree, same_top1_as_eager=agree >= 0.999)
        else:
            row["same_top1_as_eager"] = bool(int(raw.reshape(-1).argmax()) == int(reference.argmax()))
        out[key] = row
    return out


def latency_rounds(keys: list[str], art: Artifacts, x: torch.Tensor, threads: list[int], p: dict, *, runner=None,
                   log=print) -> dict:
    """For each thread count: load every runtime, warm up, then interleaved rounds (rotating order)."""
    from mobile_harness.stats import reliability_flags, summarize_rounds

    per_threads = {}
    for n in threads:
        engines = {}
        for key in keys:
            engines[key] = open_engine(art.runtimes[key], n, x, runner=runner, warmup=min(p["warmup"], 5))
        reference = np.asarray(engines[BASELINE].once(), dtype=np.float32)
        outputs = check_outputs(engines, reference)
        for e in engines.values():
            e.block(1 if e.native else p["warmup"])
        rounds: dict[str, list[list[float]]] = {k: [] for k in keys}
        load = [os.getloadavg()[0]]
        for r in range(p["rounds"]):
            for key in rotation(keys, r):
                rounds[key].append(engines[key].block(p["iters"]))
            load.append(os.getloadavg()[0])
            meds = {k: statistics.median(v[-1]) for k, v in rounds.items()}
            log(f"[bench] threads={n} round {r + 1}/{p['rounds']}: "
                + "  ".join(f"{k} {m:.3f}" for k, m in meds.items()) + " ms")
        rows = {}
        for key in keys:
            rs = [{"latencies_ms": lat} for lat in rounds[key]]
            summary = summarize_rounds(rs)
            rows[key] = {"summary": summary, "flags": reliability_flags(summary, rs), "rounds_ms": rounds[key],
                         **outputs[key]}
        medians = {k: rows[k]["summary"]["p50_ms"] for k in keys}
        per_threads[n] = {"rows": rows, "medians_ms": medians, "ratio_vs_eager": ratios(medians),
                          "loadavg_1min": load}
        engines.clear()
        gc.collect()
    return per_threads


# ---------------------------------------------------------------- load time and peak RSS (fresh process each)

_PROBE = r"""
import importlib, json, sys, time
a = json.loads(sys.argv[1])
def rss_mb(field="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
t0 = time.perf_counter()
import numpy as np
x = np.load(a["input"])
module, _, name = a["opener"].partition(":")
opener = getattr(importlib.import_module(module), name)
import_s = time.perf_counter() - t0
base = rss_mb()
t0 = time.perf_counter()
once, keep = opener(a["file"], a["threads"], x)
load_ms = (time.perf_counter() - t0) * 1e3
after_load = rss_mb()
t0 = time.perf_counter(); once(); first_ms = (time.perf_counter() - t0) * 1e3
for _ in range(a["iters"]):
    once()
print(json.dumps({"import_s": import_s, "load_ms": load_ms, "first_inference_ms": first_ms,
                  "rss_after_import_mb": base, "rss_after_load_mb": after_load,
                  "peak_rss_mb": rss_mb("VmHWM")}))
"""


def _poll_hwm(proc: subprocess.Popen) -> float | None:
    """The child's peak RSS (VmHWM, MiB), sampled until it exits. Not ru_maxrss: Linux carries the
    parent's high-water mark into a forked child across exec, so a child of this (large) process
    would report at least our own size."""
    peak = None
    status, exe = Path(f"/proc/{proc.pid}/status"), Path(f"/proc/{proc.pid}/exe")
    binary = Path(proc.args[0]).resolve()
    while proc.poll() is None:
        try:
            # Before exec the status still shows this process's forked image: skip it.
            if exe.resolve() == binary:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass  # exiting: its memory map is gone
        time.sleep(0.002)
    return peak


def probe(rt: Runtime, x: torch.Tensor, threads: int, iters: int, *, runner=None) -> dict:
    """Load + first inference + `iters` runs in a fresh process: load time and peak RSS untouched by
    the other runtimes (a long-lived benchmark process holds every runtime's allocations)."""
    with tempfile.TemporaryDirectory(prefix="mbv3-probe-") as tmp:
        key = rt.key
        if rt.native:
            out_json = Path(tmp) / "r.json"
            env = {**os.environ, "LD_LIBRARY_PATH": str(runner.deploy_dir)}
            proc = subprocess.Popen([str(runner.binary), "--model", str(rt.file), "--json", str(out_json),
                                     "--threads", str(threads), "--iters", str(iters), "--warmup", "0"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            peak = _poll_hwm(proc)
            stderr = proc.stderr.read().decode(errors="replace")
            if proc.returncode != 0 or not out_json.is_file():
                raise BenchError(f"{key}: the native runner failed in the memory probe (exit {proc.returncode}): "
                                 f"{stderr[-300:]}")
            doc = json.loads(out_json.read_text())
            return {"load_ms": doc["load_ms"], "first_inference_ms": doc["first_inference_ms"],
                    "peak_rss_mb": peak, "process": "native runner"}
        np.save(Path(tmp) / "x.npy", x.numpy())
        arg = json.dumps({"opener": rt.opener, "file": str(rt.file), "input": str(Path(tmp) / "x.npy"),
                          "threads": threads, "iters": iters})
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[3]),
                                                           os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-c", _PROBE, arg], capture_output=True, text=True, timeout=600, env=env)
        if proc.returncode != 0:
            raise BenchError(f"{key}: memory/load probe failed: {proc.stderr.strip()[-500:]}")
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
        doc["process"] = "python"
        return doc


# ---------------------------------------------------------------- training throughput


def training_throughput(art: Artifacts, p: dict, threads: int, *, log=print) -> dict:
    """Images/s of a full training step (forward, loss, backward, AdamW) on a batch of real training
    images, per variant, in interleaved rounds. Augmentation and data loading are not timed."""
    from mbv3_mobile.data.datasets import BatchTransform, load_fashion_mnist
    from mbv3_mobile.model.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    ck = load_checkpoint(art.model_file)
    # Real training pictures (Fashion-MNIST, at the model's input size) whatever the model: the
    # content does not change a training step's cost; labels folded into the model's classes.
    ds = load_fashion_mnist("train")
    bs = p["train_batch"]
    x = BatchTransform(ck.preprocessing)(ds.images[:bs])
    y = ds.labels[:bs].clone() % ck.config.num_classes
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)  # train.py's default
    variants = {"eager": (False, False), "channels_last": (True, False)}
    if p["train_compile"]:
        variants["channels_last + torch.compile"] = (True, True)
    steps, results = {}, {}
    for name, (cl, compiled) in variants.items():
        model = copy.deepcopy(ck.model).train()
        xb = x.contiguous(memory_format=torch.channels_last) if cl else x
        if cl:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        fwd = torch.compile(model) if compiled else model

        def step(fwd=fwd, opt=opt, xb=xb):
            opt.zero_grad(set_to_none=True)
            criterion(fwd(xb), y).backward()
            opt.step()

        t0 = time.perf_counter()
        try:
            # Several steps, not one: on this 2-vCPU VM a new OpenMP thread count ran its first
            # training steps ~20x slower (seconds each) before settling.
            for _ in range(max(1, p["train_warmup"])):
                step()
        except Exception as exc:  # noqa: BLE001 - torch.compile can fail in many ways; report, don't abort
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            log(f"[bench] training {name}: failed ({results[name]['error']})")
            continue
        results[name] = {"warmup_s": time.perf_counter() - t0, "warmup_steps": max(1, p["train_warmup"])}
        steps[name] = step
    from mobile_harness.stats import reliability_flags, summarize_rounds

    per_round: dict[str, list[list[float]]] = {k: [] for k in steps}  # step times in ms, per round
    for r in range(p["train_rounds"]):
        for name in rotation(list(steps), r):
            lat = []
            for _ in range(p["train_steps"]):
                t0 = time.perf_counter()
                steps[name]()
                lat.append((time.perf_counter() - t0) * 1e3)
            per_round[name].append(lat)
        log(f"[bench] training round {r + 1}/{p['train_rounds']}: "
            + "  ".join(f"{k} {1e3 * bs / statistics.median(v[-1]):.0f} img/s" for k, v in per_round.items()))
    for name, rounds in per_round.items():
        rs = [{"latencies_ms": lat} for lat in rounds]
        summary = summarize_rounds(rs)
        med = summary["p50_ms"] / 1e3
        results[name].update(median_step_s=med, images_per_s=bs / med, steps=summary["n"],
                             round_cv=summary["round_cv"], flags=reliability_flags(summary, rs))
    base = results.get("eager", {}).get("images_per_s")
    for r in results.values():
        if base and "images_per_s" in r:
            r["speedup_vs_eager"] = r["images_per_s"] / base
    return {"batch": bs, "threads": threads, "resolution": ck.preprocessing.resolution, "variants": results,
            "note": "forward + label-smoothed cross-entropy + backward + AdamW step, one batch of real training "
                    "images, already normalised (augmentation and loading not timed)"}


# ---------------------------------------------------------------- export time per stage


def export_timings(p: dict, art: Artifacts, *, cold: bool, log=print) -> dict:
    """Per stage of the android and onnx pipelines: cold (a fresh, empty cache folder) and cached
    (the same run again). Without `cold`: the times recorded when each stage was first computed."""
    out: dict = {"mode": "cold+cached" if cold else "recorded", "pipelines": {}}
    if not cold:
        for fmt, res in art.results.items():
            stages = {label: {"cold_s": r.meta.get("seconds"), "cached_s": r.seconds if not r.cached else None}
                      for label, r in res.items() if label != "_total"}
            out["pipelines"][fmt] = {"stages": stages, "lookup_total_s": res["_total"].seconds}
        out["note"] = ("cold_s: recorded in each stage's stage.json when it was first computed (possibly under "
                       "another load); run without --quick for a cold run in a fresh cache")
        return out
    old = os.environ.get("MBV3_CACHE")
    with tempfile.TemporaryDirectory(prefix="mbv3-bench-cold-") as tmp:
        os.environ["MBV3_CACHE"] = tmp  # pipeline.cache_dir() reads it on every call
        try:
            for run in art.runs:
                fmt, spec = run.pipeline.name, run.pipeline
                # The resolved checkpoint file, not the recipe: a recipe would retrain in the empty cache.
                overrides = {**run.overrides, "checkpoint": str(art.model_file), "out": str(Path(tmp) / "out" / fmt)}
                log(f"[bench] cold export: {fmt} pipeline in an empty cache")
                t0 = time.perf_counter()
                cold_res = run_pipeline(spec, overrides, progress=False)
                cold_wall = time.perf_counter() - t0
                t0 = time.perf_counter()
                warm_res = run_pipeline(spec, overrides, progress=False)
                warm_wall = time.perf_counter() - t0
                stages = {label: {"cold_s": r.seconds,
                                  "cached_s": warm_res[label].seconds if label in warm_res else None,
                                  "reused": warm_res[label].cached if label in warm_res else None}
                          for label, r in cold_res.items() if label != "_total"}
                out["pipelines"][fmt] = {"stages": stages, "cold_total_s": cold_wall, "cached_total_s": warm_wall}
        finally:
            if old is None:
                os.environ.pop("MBV3_CACHE", None)
            else:
                os.environ["MBV3_CACHE"] = old
    out["note"] = ("cached_s is 0 for a stage served from the cache (a stage.json lookup); the package stage "
                   "is never cached (it republishes); cached_total_s includes hashing the checkpoint")
    return out
