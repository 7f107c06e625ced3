"""The cross-runtime benchmark on this host: `mbv3 bench` / `nox -s bench`.

One checkpoint, the artifacts of the android and onnx pipelines (cached), the same real test image
and the same thread counts for every runtime: eager PyTorch fp32, the .pte fp32/int8 in
ExecuTorch's Python runtime and in the native C++ runner (mobile_harness), ONNX Runtime fp32/int8
(QDQ) and, where a converter is at hand, LiteRT. Latencies come from interleaved rounds after a
warm-up (the order rotates every round, so drift in the machine's load hits every runtime alike)
and are reported as medians and as ratios against a baseline measured in the same run; absolute
times on a shared 2-core host are noise, ratios much less so. Also measured: artifact sizes, load
time and peak RSS (each in a fresh process), export time per stage (cold and cached), training
throughput, and achieved GFLOP/s against the machine's FP32 peak.

Like parity, this is the cross-format room: it may import several formats' modules. Parameters,
goals and aims live in `pipelines/05_bench.toml`.
"""

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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_dir
from .errors import UserError
from .pipeline import load_pipeline, run_pipeline
from .stages import common

SCHEMA = "mbv3-bench/1"
BASELINE = "eager_fp32"
# key -> (label, precision). The order is the tables' order.
RUNTIMES = {
    "eager_fp32": ("eager PyTorch fp32", "fp32"),
    "pte_fp32": (".pte XNNPACK fp32 (Python runtime)", "fp32"),
    "pte_int8": (".pte XNNPACK int8 (Python runtime)", "int8"),
    "pte_fp32_native": (".pte XNNPACK fp32 (native runner)", "fp32"),
    "pte_int8_native": (".pte XNNPACK int8 (native runner)", "int8"),
    "ort_fp32": ("ONNX Runtime fp32", "fp32"),
    "ort_int8": ("ONNX Runtime int8 (QDQ)", "int8"),
    "litert_fp32": ("LiteRT fp32 (XNNPACK)", "fp32"),
}
QUICK = {"warmup": 3, "rounds": 3, "iters": 5, "probe_iters": 5, "train_warmup": 1, "train_steps": 2, "train_rounds": 2,
         "train_compile": False, "cold_export": False}


class BenchError(UserError):
    """A benchmark parameter or measurement the user can act on."""


# ---------------------------------------------------------------- pure logic


def parse_cpuinfo(text: str) -> dict:
    """Vendor, family, model name, flags and clock of the first processor in /proc/cpuinfo text."""
    info: dict = {"flags": set()}
    for line in text.splitlines():
        if not line.strip():
            if "flags" in info and info["flags"]:
                break  # first processor block done
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id":
            info["vendor"] = value
        elif key == "cpu family":
            info["family"] = int(value)
        elif key == "model name":
            info["model_name"] = value
        elif key == "cpu MHz":
            info["mhz"] = float(value)
        elif key in ("flags", "Features"):
            info["flags"] = set(value.split())
    return info


def fp32_flop_per_cycle(info: dict) -> tuple[int, str]:
    """FP32 FLOP per cycle per core from the CPU's flags, and the assumption made.

    FLOP/cycle = SIMD fp32 lanes x 2 (an FMA is a multiply and an add) x FMA units. The number of
    FMA units cannot be read from the flags: 2 is assumed (every AVX2/AVX-512 server core of the
    last decade has 2 FMA pipes; some low-end AVX-512 parts have 1, which would halve the peak).
    AMD Zen 4 (family 25) runs AVX-512 on 256-bit datapaths, so it counts as 8 lanes."""
    flags = info.get("flags", set())
    amd_zen4 = info.get("vendor") == "AuthenticAMD" and info.get("family") == 25
    if "avx512f" in flags and not amd_zen4:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags or "avx" in flags or "avx512f" in flags:
        lanes, isa = 8, "AVX-512 on 256-bit datapaths (Zen 4)" if amd_zen4 else "AVX2"
    elif "asimd" in flags or "neon" in flags:
        lanes, isa = 4, "NEON"
    else:
        lanes, isa = 4, "SSE"
    fma = "fma" in flags or "asimd" in flags
    units = 2
    per_cycle = lanes * (2 if fma else 1) * units
    how = (f"{isa}: {lanes} fp32 lanes x {2 if fma else 1} FLOP/lane ({'FMA' if fma else 'no FMA'}) "
           f"x {units} units (assumed)")
    return per_cycle, how


def cpu_peak(cpuinfo_text: str, cores: int, max_mhz: float | None = None) -> dict:
    """The machine's FP32 peak: cores x FLOP/cycle x clock. `max_mhz` (cpufreq's maximum) wins over
    the clock /proc/cpuinfo reports, which on a VM is the nominal clock."""
    if cores < 1:
        raise BenchError(f"core count must be >= 1, got {cores}")
    info = parse_cpuinfo(cpuinfo_text)
    per_cycle, how = fp32_flop_per_cycle(info)
    mhz, source = (max_mhz, "cpufreq cpuinfo_max_freq") if max_mhz else (info.get("mhz"), "/proc/cpuinfo cpu MHz")
    if not mhz:
        raise BenchError("no CPU clock found in /proc/cpuinfo or cpufreq: cannot state the FP32 peak")
    per_core = per_cycle * mhz / 1e3  # GFLOP/s
    return {"cpu": info.get("model_name", "?"), "vendor": info.get("vendor", "?"), "cores": cores,
            "clock_mhz": mhz, "clock_source": source, "fp32_flop_per_cycle": per_cycle, "assumption": how,
            "peak_gflops_per_core": per_core, "peak_gflops": per_core * cores,
            "formula": f"{cores} cores x {per_cycle} FLOP/cycle x {mhz / 1e3:.3f} GHz = {per_core * cores:.1f} GFLOP/s"}


def host_peak() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    max_mhz = int(freq.read_text()) / 1e3 if freq.is_file() else None
    return cpu_peak(text, usable_cores(), max_mhz)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_counts(spec: list, cores: int) -> list[int]:
    """["1", "all"] -> [1, cores]; counts above the core count would only oversubscribe."""
    out = set()
    for t in spec:
        t = str(t).strip()
        if t == "all":
            out.add(cores)
        elif t.isdigit() and int(t) >= 1:
            if int(t) <= cores:
                out.add(int(t))
        else:
            raise BenchError(f"--threads takes positive integers or 'all' (e.g. --threads 1,all), got {t!r}")
    if not out:
        raise BenchError(f"none of the thread counts {spec} fits this machine's {cores} core(s)")
    return sorted(out)


def rotation(keys: list[str], round_index: int) -> list[str]:
    """Round r runs the runtimes starting at the r-th: each runtime takes every position in turn."""
    k = round_index % len(keys) if keys else 0
    return keys[k:] + keys[:k]


def ratios(medians: dict[str, float], baseline: str = BASELINE) -> dict[str, float]:
    """Each runtime's median latency over the baseline's (below 1: faster than the baseline)."""
    if baseline not in medians or medians[baseline] <= 0:
        raise BenchError(f"the baseline {baseline!r} has no positive median latency")
    return {k: v / medians[baseline] for k, v in medians.items()}


def evaluate_goals(medians: dict[str, float], goals: dict[str, float], aims: dict[str, float] | None = None) -> list[dict]:
    """Goals "a/b" = limit: pass when median(a) / median(b) <= limit. The .pte goals are checked
    for the Python runtime and, where measured, the native runner; a goal whose runtimes were not
    measured is reported as such, never as a pass."""
    aims = aims or {}
    out = []
    for name, limit in goals.items():
        num, sep, den = name.partition("/")
        if not sep or not num or not den:
            raise BenchError(f"goal {name!r} must read 'numerator/denominator' (e.g. 'pte_int8/ort_int8')")
        pairs = [(num, den)]
        native = (f"{num}_native" if num.startswith("pte_") else num, f"{den}_native" if den.startswith("pte_") else den)
        if native != (num, den):
            pairs.append(native)
        for a, b in pairs:
            row = {"goal": name, "numerator": a, "denominator": b, "limit": limit, "aim": aims.get(name)}
            if a not in medians or b not in medians:
                row.update(ratio=None, verdict="not measured")
            else:
                r = medians[a] / medians[b]
                row.update(ratio=r, verdict="pass" if r <= limit else "miss")
                if row["aim"] is not None:
                    row["aim_met"] = r <= row["aim"]
            out.append(row)
    return out


# ---------------------------------------------------------------- engines (one runtime, one thread count)


@dataclass
class Engine:
    key: str
    once: object  # () -> np.ndarray logits; one timed inference
    keep: list = field(default_factory=list)  # objects whose lifetime must span the engine's
    native: object = None  # (iters) -> latencies from the runner's own clock

    def block(self, iters: int) -> list[float]:
        if self.native is not None:
            return self.native(iters)
        lat = []
        for _ in range(iters):
            t0 = time.perf_counter()
            self.once()
            lat.append((time.perf_counter() - t0) * 1e3)
        return lat


@dataclass
class Artifacts:
    model_file: Path  # resolved checkpoint (eager)
    files: dict[str, Path]  # runtime key -> model file it runs
    sizes: dict[str, int]
    resolved: dict
    android: dict
    onnx: dict


def open_engine(key: str, art: Artifacts, threads: int, x: torch.Tensor, *, runner=None, warmup: int = 3) -> Engine:
    """Load one runtime at `threads` threads, ready to run `x` (1, 3, R, R)."""
    if key == "eager_fp32":
        from .checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        model = load_checkpoint(art.model_file).model.eval()

        def once():
            with torch.inference_mode():
                return model(x).numpy()

        return Engine(key, once, [model])
    if key in ("pte_fp32", "pte_int8"):
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        # XNNPACK takes ExecuTorch's threadpool when a method is loaded: size it first.
        portable_lib._unsafe_reset_threadpool(threads)
        program = Runtime.get().load_program(str(art.files[key]))
        method = program.load_method("forward")
        return Engine(key, lambda: method.execute([x])[0].numpy(), [program, method])
    if key in ("ort_fp32", "ort_int8"):
        from .export_onnx import ort_session

        sess = ort_session(art.files[key], threads=threads)
        feed = {sess.get_inputs()[0].name: x.numpy()}
        return Engine(key, lambda: sess.run(None, feed)[0], [sess])
    if key == "litert_fp32":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(art.files[key]), num_threads=threads)
        it.allocate_tensors()
        inp, outp = it.get_input_details()[0], it.get_output_details()[0]
        arr = x.numpy()

        def once():
            it.set_tensor(inp["index"], arr)
            it.invoke()
            return it.get_tensor(outp["index"])

        return Engine(key, once, [it])
    if key in ("pte_fp32_native", "pte_int8_native"):
        from mobile_harness.targets.host import run_runner

        model = art.files[key]

        def block(iters: int) -> list[float]:
            doc = run_runner(runner, model, ["--threads", str(threads), "--iters", str(iters), "--warmup", str(warmup)],
                             timeout_s=300)
            return [float(v) for v in doc["latencies_ms"]]

        def once():
            with tempfile.TemporaryDirectory(prefix="mbv3-bench-") as tmp:
                dump = Path(tmp) / "out.bin"
                run_runner(runner, model, ["--threads", str(threads), "--iters", "1", "--warmup", "0",
                                           "--dump-outputs", str(dump)], timeout_s=300)
                return np.fromfile(dump, dtype=np.float32)

        return Engine(key, once, native=block)
    raise BenchError(f"unknown runtime {key!r}")


# ---------------------------------------------------------------- artifacts


def gather_artifacts(p: dict, *, progress: bool) -> tuple[Artifacts, dict[str, dict]]:
    """Run (or reuse) the android and onnx pipelines; the files each runtime runs, and the results."""
    from .parity import check_same_model, format_overrides, run_format

    results = {}
    for fmt in ("android", "onnx"):
        spec = load_pipeline(fmt)
        results[fmt] = run_format(fmt, spec, format_overrides(fmt, spec, p), progress=progress)
    android, onnx = results["android"], results["onnx"]
    check_same_model("android", android["resolve"].meta, "onnx", onnx["resolve"].meta)
    files: dict[str, Path] = {"eager_fp32": android["resolve"].file(common.MODEL_FILE)}
    for variant, key in (("fp32", "pte_fp32"), ("ptq", "pte_int8")):
        if f"lower[{variant}]" in android:
            files[key] = android[f"lower[{variant}]"].file("model.pte")
            # The .bpte's first bundled case is the image every runtime gets (see bench_input).
            files[f"{key}_native"] = android[f"bundle[{variant}]"].file("model.bpte")
    for variant, name in (("fp32", "model.onnx"), ("int8", "model_int8.onnx")):
        if f"quantize[{variant}]" in onnx:
            files[f"ort_{variant}"] = onnx[f"quantize[{variant}]"].file(name)
    sizes = {k: f.stat().st_size for k, f in files.items()}
    art = Artifacts(files["eager_fp32"], files, sizes, android["resolve"].meta, android, onnx)
    return art, results


def bench_input(art: Artifacts, data: str, bundle_images: int) -> tuple[torch.Tensor, int]:
    """The first of the real test images the android pipeline bundles into each .bpte, so the
    native runner (which feeds the bundled case) and the in-process runtimes see the same pixels."""
    from .checkpoint import load_checkpoint

    ck = load_checkpoint(art.model_file)
    x, y = common.eval_images(data, ck.preprocessing, ck.labels, split="test", limit=bundle_images)
    return x[:1].contiguous(), int(y[0])


def convert_litert(art: Artifacts, p: dict, dest: Path) -> tuple[Path | None, str | None, float]:
    """(tflite path, reason it could not be made, conversion seconds). litert-torch is not part of
    the pinned stack (it pulls jax, transformers, ...); it converts in-process when importable, or
    in `litert_python`, an interpreter whose environment has it."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return None, ("ai-edge-litert is not installed in this environment (pip install ai-edge-litert==2.3.0; "
                      "a converted model also needs litert-torch, which resolves with torch 2.13.0)"), 0.0
    script = ("import sys, torch, litert_torch\n"
              f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
              "from mbv3_mobile.checkpoint import load_checkpoint\n"
              "ck = load_checkpoint(sys.argv[1]); r = ck.preprocessing.resolution\n"
              "litert_torch.convert(ck.model.eval(), (torch.zeros(1, 3, r, r),)).export(sys.argv[2])\n")
    python = p.get("litert_python") or sys.executable
    if not p.get("litert_python"):
        try:
            import litert_torch  # noqa: F401
        except ImportError:
            return None, ("litert-torch (the PyTorch -> LiteRT converter) is not installed here; it is not in the "
                          "pinned stack. Pass --litert-python PATH of an interpreter whose environment has "
                          "litert-torch==0.10.0 (it installs beside torch 2.13.0)"), 0.0
    out = dest / "model_fp32.tflite"
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-c", script, str(art.model_file), str(out)], capture_output=True, text=True,
                          timeout=900)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return None, f"litert-torch conversion failed with {python}: {tail}", seconds
    return out, None, seconds


# ---------------------------------------------------------------- latency rounds


def check_outputs(engines: dict[str, Engine], reference: np.ndarray) -> dict[str, dict]:
    """Each runtime's logits on the bench image vs eager fp32: a fast runtime that is wrong shows here."""
    out = {}
    for key, e in engines.items():
        logits = np.asarray(e.once(), dtype=np.float32).reshape(-1)
        out[key] = {"max_abs_diff_vs_eager": float(np.max(np.abs(logits - reference.reshape(-1)))),
                    "same_top1_as_eager": bool(int(logits.argmax()) == int(reference.argmax()))}
    return out


def latency_rounds(keys: list[str], art: Artifacts, x: torch.Tensor, threads: list[int], p: dict, *, runner=None,
                   log=print) -> dict:
    """For each thread count: load every runtime, warm up, then interleaved rounds (rotating order)."""
    from mobile_harness.stats import reliability_flags, summarize_rounds

    per_threads = {}
    for n in threads:
        engines = {}
        for key in keys:
            engines[key] = open_engine(key, art, n, x, runner=runner, warmup=min(p["warmup"], 5))
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
import json, sys, time
a = json.loads(sys.argv[1])
def rss_mb(field="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
t0 = time.perf_counter()
import numpy as np
x = np.load(a["input"])
k = a["key"]
if k == "eager_fp32":
    import torch
    from mbv3_mobile.checkpoint import load_checkpoint
    torch.set_num_threads(a["threads"])
elif k.startswith("pte_"):
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime
    portable_lib._unsafe_reset_threadpool(a["threads"])
elif k.startswith("ort_"):
    import onnxruntime as ort  # not via export_onnx, which would import torch into the measured RSS
else:
    from ai_edge_litert.interpreter import Interpreter
import_s = time.perf_counter() - t0
base = rss_mb()
t0 = time.perf_counter()
if k == "eager_fp32":
    m = load_checkpoint(a["file"]).model.eval(); xt = torch.from_numpy(x)
    def run():
        with torch.inference_mode():
            m(xt)
elif k.startswith("pte_"):
    prog = Runtime.get().load_program(a["file"]); meth = prog.load_method("forward"); xt = torch.from_numpy(x)
    run = lambda: meth.execute([xt])
elif k.startswith("ort_"):
    o = ort.SessionOptions(); o.intra_op_num_threads = a["threads"]; o.inter_op_num_threads = 1
    s = ort.InferenceSession(a["file"], o, providers=["CPUExecutionProvider"]); feed = {s.get_inputs()[0].name: x}
    run = lambda: s.run(None, feed)
else:
    it = Interpreter(model_path=a["file"], num_threads=a["threads"]); it.allocate_tensors()
    i = it.get_input_details()[0]["index"]
    def run():
        it.set_tensor(i, x); it.invoke()
load_ms = (time.perf_counter() - t0) * 1e3
after_load = rss_mb()
t0 = time.perf_counter(); run(); first_ms = (time.perf_counter() - t0) * 1e3
for _ in range(a["iters"]):
    run()
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


def probe(key: str, art: Artifacts, x: torch.Tensor, threads: int, iters: int, *, runner=None) -> dict:
    """Load + first inference + `iters` runs in a fresh process: load time and peak RSS untouched by
    the other runtimes (a long-lived benchmark process holds every runtime's allocations)."""
    with tempfile.TemporaryDirectory(prefix="mbv3-probe-") as tmp:
        if key.endswith("_native"):
            out_json = Path(tmp) / "r.json"
            env = {**os.environ, "LD_LIBRARY_PATH": str(runner.deploy_dir)}
            proc = subprocess.Popen([str(runner.binary), "--model", str(art.files[key]), "--json", str(out_json),
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
        arg = json.dumps({"key": key, "file": str(art.files[key]), "input": str(Path(tmp) / "x.npy"),
                          "threads": threads, "iters": iters})
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
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
    from .checkpoint import load_checkpoint
    from .data import BatchTransform, load_fashion_mnist

    torch.set_num_threads(threads)
    ck = load_checkpoint(art.model_file)
    if p["data"] not in ("fashion-mnist", "fashion_mnist", "fmnist"):
        raise BenchError("training throughput uses Fashion-MNIST training images; pass --data fashion-mnist")
    ds = load_fashion_mnist("train")
    bs = p["train_batch"]
    x = BatchTransform(ck.preprocessing)(ds.images[:bs])
    y = ds.labels[:bs].clone()
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


def export_timings(p: dict, art: Artifacts, main_results: dict[str, dict], *, cold: bool, log=print) -> dict:
    """Per stage of the android and onnx pipelines: cold (a fresh, empty cache folder) and cached
    (the same run again). Without `cold`: the times recorded when each stage was first computed."""
    out: dict = {"mode": "cold+cached" if cold else "recorded", "pipelines": {}}
    if not cold:
        for fmt, res in main_results.items():
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
            for fmt in ("android", "onnx"):
                spec = load_pipeline(fmt)
                # The resolved checkpoint file, not the recipe: a recipe would retrain in the empty cache.
                overrides = {"checkpoint": str(art.model_file), **p.get(f"{fmt}_params", {}),
                             "out": str(Path(tmp) / "out" / fmt)}
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


# ---------------------------------------------------------------- the command


def resolve_params(params: dict) -> tuple[dict, dict, dict]:
    spec = load_pipeline("bench")
    p = {**spec.params, **{k: v for k, v in params.items() if v is not None}}
    if p["quick"]:
        p.update({k: v for k, v in QUICK.items() if k not in params or params[k] is None})
    for k in ("warmup", "train_warmup", "probe_iters", "train_steps", "train_batch"):
        least = 0 if k.endswith("warmup") else 1
        if p[k] < least:
            raise BenchError(f"--{k.replace('_', '-')} must be >= {least}, got {p[k]}")
    for k in ("rounds", "iters", "train_rounds"):
        if p[k] < 1:
            raise BenchError(f"--{k.replace('_', '-')} must be >= 1, got {p[k]}")
    raw = tomllib.loads(spec.path.read_text())
    return p, dict(raw.get("goals", {})), dict(raw.get("aims", {}))


def run_bench(params: dict, *, progress: bool = True) -> tuple[dict, Path]:
    p, goals, aims = resolve_params(params)
    log = print if progress else (lambda *_a, **_k: None)
    cores = usable_cores()
    threads = thread_counts(p["threads"], cores)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    art, results = gather_artifacts(p, progress=progress)
    resolved = art.resolved
    macs = resolved["macs"]
    bundled = p.get("android_params", {}).get("bundle_images", load_pipeline("android").params["bundle_images"])
    x, label = bench_input(art, p["data"], bundled)

    runner, skipped = None, {}
    if p["native"]:
        try:
            from mobile_harness.build import ensure_runner

            runner = ensure_runner("host", log=log)
        except UserError as exc:
            skipped.update({k: f"native runner unavailable: {exc}" for k in ("pte_fp32_native", "pte_int8_native")})
    else:
        skipped.update({k: "--no-native" for k in ("pte_fp32_native", "pte_int8_native")})
    litert_seconds = None
    with tempfile.TemporaryDirectory(prefix="mbv3-bench-litert-") as litert_tmp:
        if p["litert"]:
            tfl, why, litert_seconds = convert_litert(art, p, Path(litert_tmp))
            if tfl:
                art.files["litert_fp32"] = tfl
                art.sizes["litert_fp32"] = tfl.stat().st_size
            else:
                skipped["litert_fp32"] = why
        else:
            skipped["litert_fp32"] = "--no-litert"
        keys = [k for k in RUNTIMES if k in art.files and k not in skipped]
        for k in RUNTIMES:
            if k not in art.files and k not in skipped:
                skipped[k] = "not exported (check the android/onnx params in pipelines/05_bench.toml)"
        log(f"[bench] {resolved['model_name']} @ {x.shape[-1]} px, {macs / 1e6:.1f} M MACs; runtimes: {', '.join(keys)}; "
            f"threads {threads}; {p['rounds']} rounds x {p['iters']} iterations after {p['warmup']} warm-up")
        latency = latency_rounds(keys, art, x, threads, p, runner=runner, log=log)
        log(f"[bench] load time / peak RSS: one fresh process per runtime, {max(threads)} threads")
        probes = {k: probe(k, art, x, max(threads), p["probe_iters"], runner=runner) for k in keys}
    training = training_throughput(art, p, max(threads), log=log)
    export = export_timings(p, art, results, cold=p["cold_export"], log=log)
    if litert_seconds:
        export["litert_convert_s"] = litert_seconds
    peak = host_peak()

    for n, block in latency.items():
        for row in block["rows"].values():
            p50 = row["summary"]["p50_ms"]
            gflops = 2 * macs / (p50 / 1e3) / 1e9
            row.update(images_per_s=1e3 / p50, gflops=gflops,
                       fraction_of_peak=gflops / (peak["peak_gflops_per_core"] * n))
        block["goals"] = evaluate_goals(block["medians_ms"], goals, aims)
    report = {
        "schema": SCHEMA, "model": resolved["model_name"], "resolution": int(x.shape[-1]), "macs": macs,
        "params": resolved["params"], "input": {"image": "first bundled real test image", "label": label, "data": p["data"]},
        "cores": cores, "threads": threads, "plan": {k: p[k] for k in ("warmup", "rounds", "iters", "probe_iters", "quick")},
        "peak": peak, "baseline": BASELINE,
        "runtimes": {k: {"label": RUNTIMES[k][0], "precision": RUNTIMES[k][1], "file": str(art.files.get(k, "")),
                         "bytes": art.sizes.get(k), "skipped": skipped.get(k)} for k in RUNTIMES},
        "latency": {str(n): v for n, v in latency.items()}, "probes": probes, "training": training, "export": export,
        "delegation": {v: art.android[f"lower[{v}]"].meta.get("delegation") for v in ("fp32", "ptq")
                       if f"lower[{v}]" in art.android},
        "thread_settings": {
            "eager_fp32": "torch.set_num_threads(n)",
            "pte": "executorch portable_lib._unsafe_reset_threadpool(n) before the program is loaded",
            "native": "mbv3_runner --threads n",
            "ort": "SessionOptions.intra_op_num_threads = n, inter_op_num_threads = 1",
            "litert": "Interpreter(num_threads=n)"},
        "goals": {"limits": goals, "aims": aims},
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "wall_s": time.perf_counter() - t_start, **common.environment(),
    }
    name = p["name"] or f"{resolved['model_name']}_{x.shape[-1]}px"
    out = Path(p["out"]) / name
    md = markdown(report)
    with atomic_dir(out) as tmp:
        common.write_json(tmp / "bench.json", report)
        (tmp / "bench.md").write_text(md)
        plot_latency(report, tmp / "latency.png")
        plot_goals(report, tmp / "goals.png")
    from .model_card import refresh_cards

    # The model cards of the benchmarked artifact folders get the host latency.
    refresh_cards([r["package"].meta["published"] for r in results.values() if "package" in r], bench=out / "bench.json")
    log("\n" + md)
    log(f"[bench] wrote {out}")
    return report, out


# ---------------------------------------------------------------- report


def _fmt(v, spec=".3f", none="–"):
    return none if v is None else format(v, spec)


def _reliable(flags: list[str]) -> str:
    return "yes" if not flags else f"no ({len(flags)} flag{'s' if len(flags) > 1 else ''}: {flags[0]})"


def findings(r: dict) -> list[str]:
    """Plain statements derived from the figures: why a goal missed where the data says so."""
    out = []
    for n, block in r["latency"].items():
        med = block["medians_ms"]
        by_pair = {(g["numerator"], g["denominator"]): g for g in block["goals"]}
        for g in block["goals"]:
            if g["verdict"] != "miss" or g["numerator"].endswith("_native"):
                continue
            nat = by_pair.get((f"{g['numerator']}_native" if g["numerator"].startswith("pte_") else g["numerator"],
                               f"{g['denominator']}_native" if g["denominator"].startswith("pte_") else g["denominator"]))
            line = f"{n} thread(s): {g['numerator']} / {g['denominator']} = {g['ratio']:.3f} misses {g['limit']:g}"
            if nat and nat["verdict"] == "pass":
                over = {k: med[k] - med[f"{k}_native"] for k in ("pte_fp32", "pte_int8") if k in med and f"{k}_native" in med}
                line += (f"; the same .pte in the native runner passes ({nat['ratio']:.3f}), so the program is not the "
                         "cause: the Python runtime adds a per-call overhead (median Python minus native: "
                         + ", ".join(f"{k} {v * 1e3:.0f} us" for k, v in over.items()) + ")")
            one = r["latency"].get("1", {}).get("medians_ms", {})
            slower = [k for k in (g["numerator"], g["denominator"]) if n != "1" and k in one and med[k] > one[k]]
            if slower and not (nat and nat["verdict"] == "pass"):
                if nat and nat["verdict"] == "miss":
                    line += f" (native runner: {nat['ratio']:.3f}, also a miss)"
                line += ("; " + ", ".join(f"{k} gets no faster from 1 to {n} threads ({one[k]:.3f} -> {med[k]:.3f} ms)"
                                          for k in slower)
                         + ": the model's ops are too small to split across threads here, so the ratio reflects "
                           "threading overhead, not the program; the goal is judged at 1 thread too")
            out.append(line + ".")
        eager = block["rows"].get("eager_fp32")
        if eager and eager["summary"]["round_cv"] > 0.5:
            out.append(f"{n} thread(s): eager PyTorch's round medians vary by {eager['summary']['round_cv']:.0%}: its "
                       "OpenMP regions wait for every thread, so one core taken by other work stalls each of its "
                       "many small ops (XNNPACK's pthreadpool lets the caller steal the work instead). Ratios vs "
                       "eager at this thread count measure the host's load as much as the runtimes.")
    for name, v in r["training"]["variants"].items():
        if v.get("flags"):
            out.append(f"training {name}: unreliable ({v['flags'][0]}).")
    return out


def markdown(r: dict) -> str:
    peak = r["peak"]
    lines = [f"# Benchmark: {r['model']} at {r['resolution']} px on this host", "",
             f"{r['macs'] / 1e6:.1f} M MACs, batch 1, the same real test image for every runtime. "
             f"{r['plan']['rounds']} interleaved rounds x {r['plan']['iters']} iterations per runtime after "
             f"{r['plan']['warmup']} warm-up (order rotated each round); medians of all timed iterations. "
             f"Ratios are against **{RUNTIMES[r['baseline']][0]}** measured in the same run.", "",
             f"Load average (1/5/15 min) before {', '.join(f'{v:.2f}' for v in r['loadavg_before'])}, after "
             f"{', '.join(f'{v:.2f}' for v in r['loadavg_after'])} on {r['cores']} cores shared with other work: "
             "absolute times are indicative only; ratios are the result.", "",
             f"FP32 peak: {peak['formula']} ({peak['cpu']}; {peak['assumption']}; clock from {peak['clock_source']}). "
             "Achieved GFLOP/s = 2 x MACs x images/s; % of peak is against the peak of the cores in use "
             "(threads x per-core peak). int8 rows are counted in the same FLOPs, against the FP32 peak.", ""]
    for n, block in r["latency"].items():
        lines += [f"## {n} thread{'s' if n != '1' else ''}", "",
                  "| runtime | median ms | p90 ms | ratio vs eager | images/s | GFLOP/s | % of peak | round CV | "
                  "max abs dlogit vs eager | reliable |", "|---|---|---|---|---|---|---|---|---|---|"]
        for key, row in block["rows"].items():
            s = row["summary"]
            lines.append(f"| {RUNTIMES[key][0]} | {s['p50_ms']:.3f} | {s['p90_ms']:.3f} | "
                         f"{block['ratio_vs_eager'][key]:.3f} | {row['images_per_s']:.0f} | {row['gflops']:.2f} | "
                         f"{100 * row['fraction_of_peak']:.1f} | {s['round_cv']:.1%} | {row['max_abs_diff_vs_eager']:.1e} | "
                         f"{_reliable(row['flags'])} |")
        lines += ["", "| goal | ratio | limit | aim | verdict |", "|---|---|---|---|---|"]
        for g in block["goals"]:
            aim = "–" if g["aim"] is None else f"{g['aim']:g}" + ("" if g.get("aim_met") is None else
                                                                   (" (met)" if g["aim_met"] else " (not met)"))
            lines.append(f"| {g['numerator']} / {g['denominator']} | {_fmt(g['ratio'])} | {g['limit']:g} | {aim} | "
                         f"**{g['verdict']}** |")
        lines.append("")
    found = findings(r)
    if found:
        lines += ["## Findings", ""] + [f"- {f}" for f in found] + [""]
    skipped = {k: v for k, v in r["runtimes"].items() if v["skipped"]}
    if skipped:
        lines += ["## Not measured", ""] + [f"- {v['label']}: {v['skipped']}" for v in skipped.values()] + [""]
    lines += ["## Artifacts, load time and peak RSS", "",
              f"Each runtime loaded in a fresh process at {max(r['threads'])} threads, then {r['plan']['probe_iters']} "
              "inferences; peak RSS is the process's VmHWM (the Python rows include the interpreter and the "
              "runtime's imports: `rss after import` is that floor; the native runner's is sampled every 2 ms).", "",
              "| runtime | file | size KiB | load ms | first inference ms | rss after import MiB | peak RSS MiB |",
              "|---|---|---|---|---|---|---|"]
    for key, pr in r["probes"].items():
        rt = r["runtimes"][key]
        lines.append(f"| {rt['label']} | {Path(rt['file']).name} | {rt['bytes'] / 1024:.1f} | {pr['load_ms']:.1f} | "
                     f"{pr['first_inference_ms']:.2f} | {_fmt(pr.get('rss_after_import_mb'), '.0f')} | {_fmt(pr['peak_rss_mb'], '.0f')} |")
    t = r["training"]
    lines += ["", f"## Training throughput ({t['threads']} threads, batch {t['batch']}, {t['resolution']} px)", "",
              t["note"] + ".", "", "| variant | images/s | speedup vs eager | warm-up s (incl. compile) | round CV | reliable |",
              "|---|---|---|---|---|---|"]
    for name, v in t["variants"].items():
        if "error" in v:
            lines.append(f"| {name} | failed: {v['error']} | – | – | – | – |")
        else:
            lines.append(f"| {name} | {v['images_per_s']:.0f} | {_fmt(v.get('speedup_vs_eager'), '.2f')} | "
                         f"{v['warmup_s']:.1f} ({v['warmup_steps']} steps) | {_fmt(v.get('round_cv'), '.1%')} | {_reliable(v.get('flags', []))} |")
    e = r["export"]
    lines += ["", f"## Export time per stage ({e['mode']})", "", e["note"] + ".", "",
              "| pipeline | stage | cold s | cached s |", "|---|---|---|---|"]
    for fmt, pl in e["pipelines"].items():
        for label, st in pl["stages"].items():
            lines.append(f"| {fmt} | {label} | {_fmt(st['cold_s'], '.1f')} | {_fmt(st['cached_s'], '.2f')} |")
        if "cold_total_s" in pl:
            lines.append(f"| {fmt} | **total** | {pl['cold_total_s']:.1f} | {pl['cached_total_s']:.2f} |")
    if e.get("litert_convert_s"):
        lines.append(f"| litert | litert-torch convert | {e['litert_convert_s']:.1f} | – |")
    lines += ["", "## Delegation (.pte)", ""]
    for v, d in r["delegation"].items():
        if d:
            lines.append(f"- {v}: {d['delegated_subgraphs']} XNNPACK delegate(s), {d['delegated_nodes']} nodes inside, "
                         f"{d['non_delegated_nodes']} outside (allowed: {', '.join(d['outside_allowed']) or 'none'}; "
                         f"compute outside: {', '.join(d['non_delegated_compute_ops']) or 'none'})")
    lines += ["", "Thread settings: " + "; ".join(f"{k}: {v}" for k, v in r["thread_settings"].items()) + ".", ""]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(r: dict, path: Path) -> None:
    """Latency distribution per runtime (box: every timed iteration), one panel per thread count."""
    plt = _plt()
    blocks = list(r["latency"].items())
    fig, axes = plt.subplots(1, len(blocks), figsize=(6.5 * len(blocks), 0.5 * len(RUNTIMES) + 2), squeeze=False)
    for ax, (n, block) in zip(axes[0], blocks, strict=True):
        keys = list(block["rows"])
        data = [[v for rnd in block["rows"][k]["rounds_ms"] for v in rnd] for k in keys]
        ax.boxplot(data, vert=False, showfliers=False, tick_labels=[RUNTIMES[k][0] for k in keys])
        ax.set_xscale("log")
        ax.set_xlabel("latency per image (ms, log)")
        ax.set_title(f"{n} thread(s)")
        ax.invert_yaxis()
        if ax is not axes[0][0]:
            ax.set_yticklabels([])
    fig.suptitle(f"{r['model']} @ {r['resolution']} px: latency distributions (interleaved rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_goals(r: dict, path: Path) -> None:
    """Goal ratios per thread count against their limits (red: missed), and ratios vs eager."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    names, vals, limits, colors = [], [], [], []
    for n, block in r["latency"].items():
        for g in block["goals"]:
            if g["ratio"] is None:
                continue
            names.append(f"{g['numerator']}/{g['denominator']} @{n}t")
            vals.append(g["ratio"])
            limits.append(g["limit"])
            colors.append("tab:green" if g["verdict"] == "pass" else "tab:red")
    ys = range(len(names))
    ax1.barh(list(ys), vals, color=colors)
    ax1.scatter(limits, list(ys), marker="|", s=300, color="k", label="limit", zorder=3)
    ax1.set_yticks(list(ys), names, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("latency ratio (lower is better)")
    ax1.legend(loc="lower right")
    ax1.set_title("goals (green: pass, red: miss)")
    width = 0.8 / max(1, len(r["latency"]))
    keys = list(next(iter(r["latency"].values()))["rows"])
    for i, (n, block) in enumerate(r["latency"].items()):
        ax2.barh([j + i * width for j in range(len(keys))], [block["ratio_vs_eager"][k] for k in keys], height=width,
                 label=f"{n} thread(s)")
    ax2.axvline(1.0, color="k", ls="--", lw=1)
    ax2.set_yticks([j + width * (len(r["latency"]) - 1) / 2 for j in range(len(keys))], [RUNTIMES[k][0] for k in keys],
                   fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("median latency / eager fp32 median")
    ax2.legend(loc="lower right")
    ax2.set_title("ratio vs eager PyTorch fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def register_cli(sub) -> None:
    p = sub.add_parser("bench", help="latency/memory/export/training benchmark of every runtime on this host",
                       add_help=False)
    p.set_defaults(func=_cmd_bench, passthrough=True)


def _cmd_bench(args, rest: list[str]) -> int:
    from .pipeline import parse_overrides

    spec = load_pipeline("bench")
    run_bench(parse_overrides(spec, rest), progress=True)
    return 0


def load_report(path: str | Path) -> dict:
    return json.loads((Path(path) / "bench.json").read_text())

