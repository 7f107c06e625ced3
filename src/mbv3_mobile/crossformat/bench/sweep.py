"""`mbv3 bench --sweep`: latency vs MACs over arch x width x resolution, like the paper's trade-off
figure, so a user can pick a variant for a latency budget.

Each point is built with random torchvision-layout weights and photo-calibrated BatchNorm
statistics (`workload.randomized_model`: latency depends on the graph, not on the weights' values;
there are no trained weights for most of the grid), exported with the project's own functions
(`export_to_executorch` for .pte fp32, `quantize_ptq` + `export_to_executorch` for .pte int8,
`export_onnx` + `simplify_onnx` for ONNX Runtime fp32), and timed in this process in interleaved
rounds (runtime order rotated every round), medians. No accuracy column: the weights are random.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mbv3_mobile.crossformat.bench.common import BenchError
from mbv3_mobile.crossformat.bench.goals import rotation
from mbv3_mobile.crossformat.bench.host import thread_counts, usable_cores
from mbv3_mobile.crossformat.bench.workload import WEIGHTS_NOTE, photo_batch, randomized_model

RUNTIMES = {"pte_fp32": ".pte fp32 (XNNPACK)", "pte_int8": ".pte int8 (XNNPACK, PT2E PTQ)",
            "pte_int8_all": ".pte int8 with the stem int8 too (--int8-stem int8)", "ort_fp32": "ONNX Runtime fp32"}
ARCHS = ("large", "small")


def grid(p: dict) -> list[tuple[str, float, int]]:
    try:
        widths = [float(w) for w in p["sweep_width"]]
        res = [int(r) for r in p["sweep_res"]]
    except ValueError as exc:
        raise BenchError(f"--sweep-width takes numbers and --sweep-res integers: {exc}") from None
    bad = [a for a in p["sweep_arch"] if a not in ARCHS]
    if bad or any(w <= 0 for w in widths) or any(r < 32 for r in res):
        raise BenchError(f"sweep grid: arch in {ARCHS}, width > 0, resolution >= 32 (got {p['sweep_arch']}, "
                         f"{widths}, {res})")
    unknown = [k for k in p["sweep_runtimes"] if k not in RUNTIMES]
    if unknown:
        raise BenchError(f"--sweep-runtimes: unknown {unknown}; choose from {', '.join(RUNTIMES)}")
    return [(a, w, r) for a in p["sweep_arch"] for w in widths for r in res]


def _artifacts(arch: str, width: float, res: int, keys: list[str], tmp: Path) -> tuple[dict[str, Path], int, dict]:
    from mbv3_mobile.export.executorch.lower import export_to_executorch, write_pte
    from mbv3_mobile.model.flops import profile_model

    model = randomized_model(arch, width, resolution=res)
    macs = profile_model(model, res).macs
    example = torch.zeros(1, 3, res, res)
    files, seconds = {}, {}
    if "pte_fp32" in keys:
        t0 = time.perf_counter()
        files["pte_fp32"] = write_pte(export_to_executorch(model, example), tmp / "fp32.pte")
        seconds["pte_fp32"] = time.perf_counter() - t0
    int8 = [(k, stem) for k, stem in (("pte_int8", True), ("pte_int8_all", False)) if k in keys]  # the float stem's cost
    if int8:
        from mbv3_mobile.quantize.pt2e import quantize_ptq

        calib = photo_batch(res)[:32]  # once for both int8 variants
    for key, float_stem in int8:
        t0 = time.perf_counter()
        graph = quantize_ptq(model, calib, float_stem=float_stem, progress=False)
        files[key] = write_pte(export_to_executorch(graph, example), tmp / f"{key}.pte")
        seconds[key] = time.perf_counter() - t0
    if "ort_fp32" in keys:
        from mbv3_mobile.export.onnx.convert import export_onnx, simplify_onnx

        t0 = time.perf_counter()
        export_onnx(model, res, tmp / "raw.onnx")
        simplify_onnx(tmp / "raw.onnx", tmp / "fp32.onnx")
        files["ort_fp32"] = tmp / "fp32.onnx"
        seconds["ort_fp32"] = time.perf_counter() - t0
    return files, macs, seconds


def _time(files: dict[str, Path], res: int, threads: int, p: dict) -> dict[str, dict]:
    from mbv3_mobile.export.executorch.bench_open import open_pte
    from mbv3_mobile.export.onnx.bench_open import open_session

    x = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(0)).numpy()
    engines = {k: (open_pte if k.startswith("pte_") else open_session)(str(f), threads, x) for k, f in files.items()}
    keys = list(engines)
    for k in keys:
        for _ in range(p["warmup"]):
            engines[k][0]()
    rounds: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(p["sweep_rounds"]):
        for k in rotation(keys, r):
            once = engines[k][0]
            for _ in range(p["sweep_iters"]):
                t0 = time.perf_counter()
                once()
                rounds[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"p50_ms": statistics.median(v), "n": len(v)} for k, v in rounds.items()}


def run_sweep(p: dict, *, progress: bool = True) -> dict:
    """Build, export and time every grid point; write sweep.{json,md,png} under `<out>/sweep`."""
    from tqdm import tqdm

    points_spec = grid(p)
    keys = list(p["sweep_runtimes"])
    threads = thread_counts(p["threads"], usable_cores())
    out = Path(p["out"]) / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    points = []
    t_start = time.perf_counter()
    bar = tqdm(points_spec, desc="sweep", disable=not progress)
    for arch, width, res in bar:
        bar.set_postfix_str(f"{arch} {width:g} @ {res}")
        with tempfile.TemporaryDirectory(prefix="mbv3-sweep-") as tmp:
            files, macs, export_s = _artifacts(arch, width, res, keys, Path(tmp))
            latency = {str(n): _time(files, res, n, p) for n in threads}
            sizes = {k: f.stat().st_size for k, f in files.items()}
        points.append({"arch": arch, "width": width, "resolution": res, "macs": macs, "latency": latency,
                       "bytes": sizes, "export_s": export_s})
    report = {"schema": "mbv3-bench-sweep/1", "weights": WEIGHTS_NOTE, "threads": threads, "runtimes": keys,
              "plan": {"warmup": p["warmup"], "rounds": p["sweep_rounds"], "iters": p["sweep_iters"]},
              "points": points, "wall_s": time.perf_counter() - t_start, "folder": str(out)}
    (out / "sweep.json").write_text(json.dumps(report, indent=2))
    (out / "sweep.md").write_text(sweep_markdown(report))
    plot_sweep(report, out / "sweep.png")
    return report


def sweep_markdown(r: dict) -> str:
    keys, counts = r["runtimes"], [str(n) for n in r["threads"]]
    lines = ["# Latency vs MACs sweep", "", f"Weights: {r['weights']}. Batch 1, {r['plan']['rounds']} interleaved "
             f"rounds x {r['plan']['iters']} iterations per runtime after {r['plan']['warmup']} warm-up; medians (ms). "
             "No accuracy column: the weights are random.", "",
             "| arch | width | px | M MACs | " + " | ".join(f"{k} ms @{n}" for n in counts for k in keys)
             + " | int8 / fp32 @" + counts[0] + " | float stem / all int8 @" + counts[0] + " |",
             "|---|---|---|---|" + "---|" * (len(keys) * len(counts) + 2)]
    for pt in sorted(r["points"], key=lambda q: q["macs"]):
        lat = pt["latency"][counts[0]]
        lines.append(f"| {pt['arch']} | {pt['width']:g} | {pt['resolution']} | {pt['macs'] / 1e6:.1f} | "
                     + " | ".join(f"{pt['latency'][n][k]['p50_ms']:.3f}" for n in counts for k in keys)
                     + f" | {_ratio(lat, 'pte_int8', 'pte_fp32')} | {_ratio(lat, 'pte_int8', 'pte_int8_all')} |")
    return "\n".join(lines) + "\n"


def _ratio(latency: dict, a: str, b: str) -> str:
    return f"{latency[a]['p50_ms'] / latency[b]['p50_ms']:.3f}" if {a, b} <= set(latency) else "–"


def plot_sweep(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [str(n) for n in r["threads"]]
    fig, axes = plt.subplots(1, len(counts), figsize=(7 * len(counts), 5.5), squeeze=False)
    markers = {"pte_fp32": "o", "pte_int8": "s", "pte_int8_all": "D", "ort_fp32": "^"}
    colors = {"large": "tab:blue", "small": "tab:orange"}
    for ax, n in zip(axes[0], counts, strict=True):
        for k in r["runtimes"]:
            for arch in colors:
                pts = sorted((q for q in r["points"] if q["arch"] == arch), key=lambda q: q["macs"])
                if pts:
                    ax.scatter([q["macs"] / 1e6 for q in pts], [q["latency"][n][k]["p50_ms"] for q in pts],
                               marker=markers.get(k, "x"), color=colors[arch], alpha=0.8, label=f"{arch} {k}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("M MACs (log)")
        ax.set_ylabel("median latency, ms (log)")
        ax.set_title(f"{n} thread(s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("MobileNetV3 latency vs MACs (arch x width x resolution; random-BN weights)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
