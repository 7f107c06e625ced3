"""Per-op profile of a .pte (fp32 and int8) with ExecuTorch's ETDump + devtools Inspector:
`mbv3 bench --profile` (Large 1.0 @ 224 by default, 1 and 2 threads).

The shipped .pte is one XNNPACK delegate, whose inside the pip runtime does not time. So, as drift
localisation does, the same program is lowered again one op per delegate call with an ETRecord
(`graph.PerOpLowering`: the same kernels, minus cross-op fusion); ETDump times every call and the
Inspector maps it back to the edge graph's nodes. Op types are summed per inference (median over
the runs). Statically, from the int8 edge graph: which compute ops run in
fp32 between a dequantize and a quantize (XNNPACK converts qs8 -> fp32 -> qs8 around them).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from mbv3_mobile.graph import PerOpLowering, export_program, is_qdq


def _op(node) -> str:
    """Short op type for tables: 'convolution' for aten.convolution.default."""
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0] if name.count(".") <= 1 else name.rsplit(".", 2)[-2]


def fp32_islands(edge_graph) -> dict[str, int]:
    """{op: count} of compute ops in a quantized edge graph whose inputs come from a dequantize and
    whose output feeds only quantize nodes, but which XNNPACK cannot run in int8: they run in fp32,
    wrapped in qs8 <-> fp32 conversions. Judged from the partitioner's own precision list."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType

    fp32_only = set()
    for cfg in ALL_PARTITIONER_CONFIGS:
        try:
            types = cfg().supported_precision_types()
        except Exception:  # noqa: BLE001 - a config may need arguments; it is not one of ours then
            continue
        if ConfigPrecisionType.STATIC_QUANT not in types:
            fp32_only.add(cfg.target_name.split(".")[0])
    out: dict[str, int] = defaultdict(int)
    for n in edge_graph.nodes:
        if n.op != "call_function":
            continue
        name = _op(n)
        if is_qdq(name) or name not in fp32_only:
            continue
        ins = [a for a in n.args if isinstance(a, torch.fx.Node)]
        if ins and all(is_qdq(_op(a)) for a in ins if a.op == "call_function"):
            out[name] += 1
    return dict(out)


def profile_pte(program, x: torch.Tensor, threads: list[int], runs: int = 20) -> dict[int, dict]:
    """Per-op-type time of `program` (an ExportedProgram) lowered per op (once), at each of `threads`:
    {n: {"ops": {op type: {"ms": median per inference, "calls", "share"}}, "total_ms", "groups"}}."""
    lowered = PerOpLowering(program, what="per-op lowering for the profile")
    nodes = {h: [_op(n) for n in ns] for h, ns in lowered.by_handle.items()}
    islands = fp32_islands(lowered.edge_graph)
    return {n: _profile_once(lowered, nodes, islands, x, n, runs) for n in threads}


def _profile_once(lowered: PerOpLowering, nodes: dict, islands: dict, x: torch.Tensor, threads: int, runs: int) -> dict:
    inspector, wall_ms = lowered.inspect(x, runs=runs, warmup=3, threads=threads)
    per_run: list[dict[str, float]] = []
    calls: dict[str, int] = defaultdict(int)
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is None or event.name == "Method::execute" or event.debug_handles is None:
                continue
            handles = [event.debug_handles] if isinstance(event.debug_handles, int) else list(event.debug_handles)
            ops = sorted({o for h in handles for o in nodes.get(h, [])})
            compute = [o for o in ops if not is_qdq(o)]
            key = "+".join(compute) if compute else "quantize/dequantize"
            if compute and len(compute) < len(ops):
                key += " (+q/dq)"
            raw = event.perf_data.raw
            while len(per_run) < len(raw):
                per_run.append(defaultdict(float))
            for i, v in enumerate(raw):
                per_run[i][key] += v
            calls[key] += 1
    runs_seen = [r for r in per_run if r]
    keys = sorted({k for r in runs_seen for k in r})
    ops = {k: {"ms": statistics.median(r.get(k, 0.0) for r in runs_seen), "calls": calls[k]} for k in keys}
    total = sum(v["ms"] for v in ops.values())
    for v in ops.values():
        v["share"] = v["ms"] / total if total else 0.0
    return {"threads": threads, "runs": len(runs_seen), "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]["ms"])),
            "total_ms": total, "wall_ms_with_etdump": wall_ms, "groups": sum(calls.values()),
            "fp32_islands": islands,
            "time_unit": "ms (ETDump's ticks, as the Inspector converts them)"}


def profile_ort(path: str | Path, x: torch.Tensor, threads: list[int], runs: int = 20) -> dict[int, dict]:
    """The ONNX Runtime peer, timed by ORT's own profiler (CPU EP, session trace): per op type, the
    median over `runs` inferences of the summed kernel time, in the same shape as `profile_pte`'s.
    ORT runs the whole graph (its fusions and NCHWc layout included), so its op types are what ORT
    actually executes (FusedConv, the NCHWc Conv, ReorderInput/ReorderOutput layout conversions)."""
    import json

    import onnxruntime as ort

    out = {}
    for n in threads:
        with tempfile.TemporaryDirectory() as tmp:
            opts = ort.SessionOptions()
            opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "ort")
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = n, 1, 3
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x[:1].float().contiguous().numpy()}
            warm = 3
            for _ in range(warm):
                sess.run(None, feed)
            t0 = time.perf_counter()
            for _ in range(runs):
                sess.run(None, feed)
            wall_ms = (time.perf_counter() - t0) * 1e3 / runs
            trace = json.loads(Path(sess.end_profiling()).read_text())
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
        per_run: list[dict[str, float]] = [defaultdict(float) for _ in spans]
        calls: dict[str, int] = defaultdict(int)
        for e in trace:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            i = next((k for k, (a, b) in enumerate(spans) if a <= e["ts"] <= b), None)
            if i is None or i < warm:
                continue
            op = (e.get("args") or {}).get("op_name", "?")
            per_run[i][op] += e["dur"] / 1e3
            calls[op] += 1
        timed = [r for r in per_run[warm:] if r]
        keys = sorted({k for r in timed for k in r})
        ops = {k: {"ms": statistics.median(r.get(k, 0.0) for r in timed), "calls": calls[k] // max(1, len(timed))}
               for k in keys}
        total = sum(v["ms"] for v in ops.values())
        for v in ops.values():
            v["share"] = v["ms"] / total if total else 0.0
        out[n] = {"threads": n, "runs": len(timed), "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]["ms"])),
                  "total_ms": total, "wall_ms_with_profiler": wall_ms, "groups": sum(v["calls"] for v in ops.values()),
                  "time_unit": "ms (ORT profiler's kernel times)"}
    return out


def write_profile(r: dict, folder: Path) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profile.json").write_text(json.dumps(r, indent=2))
    (folder / "profile.md").write_text(profile_markdown(r))


def run_profile(arch: str = "large", width: float = 1.0, resolution: int = 224, threads: list[int] = (1, 2),
                runs: int = 20, log=print) -> dict:
    """Profiles of the fp32 and the int8 (PT2E PTQ, XNNPACKQuantizer) programs of a random-BN
    model at each thread count, plus the fused (shipped) program's latency for reference."""
    from mbv3_mobile.crossformat.bench.workload import photo_batch, randomized_model
    from mbv3_mobile.quantize.pt2e import quantize_ptq

    model = randomized_model(arch, width, resolution=resolution)
    photos = photo_batch(resolution)
    x = photos[:1]
    with torch.no_grad():
        # BN folded first, as the shipped program has it (XNNPACK folds conv+BN only inside one partition,
        # and per-op lowering puts each op in its own, which would time every BN separately)
        from torch.fx.experimental.optimization import fuse

        programs = {"fp32": export_program(fuse(copy.deepcopy(model).eval()), x),
                    "int8": export_program(quantize_ptq(model, photos[:32], progress=False), x)}
    out = {"model": f"{arch} {width:g} @ {resolution}", "profiles": {}, "ort_profiles": {}}
    for prec, program in programs.items():
        log(f"[profile] {prec}: per-op lowering, then {runs} runs at {list(threads)} thread(s)")
        for n, prof in profile_pte(program, x, list(threads), runs).items():
            out["profiles"][f"{prec}@{n}"] = prof
    from mbv3_mobile.export.onnx.convert import export_onnx, quantize_onnx_int8, simplify_onnx

    with tempfile.TemporaryDirectory() as tmp:
        # the bench's ORT peer: the simplified graph before the mobile-EP rewrite (the "server graph")
        # and its QDQ int8, calibrated on the same photos as the .pte int8
        export_onnx(model, resolution, Path(tmp) / "raw.onnx")
        simplify_onnx(Path(tmp) / "raw.onnx", Path(tmp) / "fp32.onnx")
        quantize_onnx_int8(Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", photos[:32])
        for prec in ("fp32", "int8"):
            log(f"[profile] ONNX Runtime {prec}: ORT's profiler, {runs} runs at {list(threads)} thread(s)")
            for n, prof in profile_ort(Path(tmp) / f"{prec}.onnx", x, list(threads), runs).items():
                out["ort_profiles"][f"{prec}@{n}"] = prof
    return out


def _op_table(heading: str, ops: dict, count: str) -> list[str]:
    return [heading, "", f"| op type | ms / inference | share | {count} |", "|---|---|---|---|",
            *(f"| {op} | {v['ms']:.3f} | {v['share']:.1%} | {v['calls']} |" for op, v in ops.items())]


def _ms_of(ops: dict, word: str) -> float:
    """Time of the op types whose name holds `word` (e.g. every convolution group)."""
    return sum(v["ms"] for k, v in ops.items() if word in k.lower())


def profile_markdown(r: dict) -> str:
    lines = [f"# Per-op profile: {r['model']} .pte (ETDump + Inspector, per-op lowering)", "",
             "Each op (or quantized dq->op->q group) lowered as its own XNNPACK delegate call, timed by ETDump; "
             "medians per inference. Cross-op fusion is lost in this mode, so the total is above the shipped "
             "program's latency: read shares, not absolute times.", ""]
    for key, p in r["profiles"].items():
        lines += _op_table(f"## {key} thread(s): {p['total_ms']:.2f} ms in {p['groups']} delegate calls "
                           f"(wall with ETDump {p['wall_ms_with_etdump']:.2f} ms)", p["ops"], "calls")
        fp32 = sum(v["ms"] for k, v in p["ops"].items() if "(+q/dq)" not in k and k != "quantize/dequantize")
        conv = sum(v["ms"] for k, v in p["ops"].items() if k == "quantize/dequantize")
        layout = sum(v["ms"] for k, v in p["ops"].items() if "_to_dim_order_copy" in k or "clone" in k)
        total = p["total_ms"] or 1.0
        if key.startswith("int8"):
            lines += ["", f"Time in groups with no int8 op (fp32 compute inside the int8 program): {fp32 / total:.1%}; "
                      f"in stand-alone quantize/dequantize conversions: {conv / total:.1%}; in groups holding a layout "
                      f"conversion (_to_dim_order_copy / clone): {layout / total:.1%}."]
        else:
            lines += ["", f"Time in groups holding a layout conversion (_to_dim_order_copy / clone): {layout / total:.1%}."]
        if p["fp32_islands"]:
            lines += ["", "Compute ops that run in fp32 inside the int8 program (between dequantize and quantize; "
                      "XNNPACK's partitioner has no int8 kernel for them): "
                      + ", ".join(f"{k} x{v}" for k, v in p["fp32_islands"].items())]
        lines.append("")
    if r.get("ort_profiles"):
        lines += ["# ONNX Runtime for comparison (CPU EP, ORT's profiler; the bench's server graph and its QDQ int8)", "",
                  "ORT runs its whole optimised graph: conv + activation fusions, NCHWc blocked layout (ReorderInput / "
                  "ReorderOutput are its layout conversions). Kernel times summed per op type, medians per inference.", ""]
        for key, p in r["ort_profiles"].items():
            lines += _op_table(f"## ORT {key} thread(s): {p['total_ms']:.2f} ms in {p['groups']} kernels "
                               f"(wall with the profiler {p['wall_ms_with_profiler']:.2f} ms)", p["ops"], "kernels")
            pte = r["profiles"].get(key)
            if pte:
                lines += ["", f"Convolutions: ORT {_ms_of(p['ops'], 'conv'):.2f} ms vs .pte "
                          f"{_ms_of(pte['ops'], 'convolution'):.2f} ms (per-op lowering) at {key}."]
            lines.append("")
    return "\n".join(lines)
