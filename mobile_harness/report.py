"""Results on disk: results.json (everything), results.md (a table a person reads), latency.png
(latency distribution per variant, runtime and thread count). Written into a temp folder and
renamed into place, so an output folder holds a complete report or nothing new."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mbv3_mobile.core.atomic import atomic_dir
from mbv3_mobile.core.threads import pick_threads


def _ms(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def markdown(results: dict) -> str:
    dev = results.get("device") or {}
    lines = [f"# Benchmark: {results['target']} target", ""]
    ident = ", ".join(x for x in (dev.get("manufacturer"), dev.get("model"), dev.get("soc")) if x) or "unknown device"
    lines.append(f"- device: {ident}; ABI {dev.get('abi', '?')}; {dev.get('cpus', '?')} CPUs"
                 + (f"; serial {results['serial']}" if results.get("serial") else ""))
    if dev.get("governors") is not None:
        lines.append(f"- governor: {'/'.join(dev.get('governors') or ['?'])}; thermal status: "
                     f"{dev.get('thermal_status_name') or 'unknown'}; battery: "
                     f"{dev.get('battery_temp_c') if dev.get('battery_temp_c') is not None else '?'} °C; "
                     f"rooted: {'yes' if dev.get('rooted') else 'no'}")
    plan = results["plan"]
    lines.append(f"- plan: {plan['rounds']} rounds x {plan['iters']} timed iterations (+{plan['warmup']} warm-up), "
                 f"cool-down {plan['cooldown_s']} s; created {results['created']}")
    lines += ["", "| variant | runtime | threads | p50 ms | p90 ms | min ms | cold load ms | first inference ms | "
              "round CV | verified | reliable |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for m in results["measurements"]:
        s = m["summary"]
        ver = (m.get("verification") or {}).get("status", "–")
        rel = "yes" if m["reliable"] else "NO"
        lines.append(f"| {m['variant']} | {m['runtime']} | {m['threads']} | {_ms(s['p50_ms'])} | {_ms(s['p90_ms'])} | "
                     f"{_ms(s['min_ms'])} | {_ms(s['cold_load_ms'])} | {_ms(s['cold_first_inference_ms'])} | "
                     f"{s['round_cv']:.1%} | {ver} | {rel} |")
    flagged = [m for m in results["measurements"] if m["flags"]]
    if flagged:
        lines += ["", "## Why some rows are not reliable", ""]
        for m in flagged:
            lines.append(f"- {m['variant']} / {m['runtime']} / {m['threads']} threads: {'; '.join(m['flags'])}")
    picks = results.get("recommended_threads") or recommended_threads(results)
    if picks:
        lines += ["", "## Threads to ship (fastest count whose gain beats the noise; the export's rule)", "",
                  "| variant | runtime | threads | speedup vs 1 | p50 ms by threads |", "|---|---|---:|---:|---|"]
        for p in picks:
            lines.append(f"| {p['variant']} | {p['runtime']} | {p['threads']} | {p['speedup_vs_fewest']:.2f}x | "
                         + ", ".join(f"{n}: {_ms(ms)}" for n, ms in p["candidates"].items()) + " |")
    ratios = native_vs_python(results)
    if ratios:
        lines += ["", "## Native runner vs Python runtime (same process setup, same inputs)", ""]
        for (variant, threads), ratio in ratios.items():
            lines.append(f"- {variant}, {threads} threads: native p50 is {ratio:.2f}x the Python runtime's")
    for variant, ops in (results.get("profiles") or {}).items():
        lines += ["", f"## Per-op profile: {variant} (ETDump, top {len(ops) if isinstance(ops, list) else 0})", ""]
        if isinstance(ops, str):
            lines.append(f"- {ops}")
            continue
        lines += ["| op | mean ms per run | share |", "|---|---:|---:|"]
        lines += [f"| {o['op']} | {o['avg_ms']:.4f} | {o['share']:.1%} |" for o in ops]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def recommended_threads(results: dict) -> list[dict]:
    """Per (variant, runtime) timed at more than one thread count: the count to ship on this device
    (`core.threads.pick_threads`, the rule the export pipelines use on their host)."""
    by: dict[tuple[str, str], dict[int, dict]] = {}
    for m in results["measurements"]:
        if m["threads"] and m["threads"] > 0:
            by.setdefault((m["variant"], m["runtime"]), {})[m["threads"]] = m["summary"]
    return [{"variant": v, "runtime": rt, **pick_threads(per)} for (v, rt), per in by.items() if len(per) > 1]


def native_vs_python(results: dict) -> dict[tuple[str, int], float]:
    by = {(m["variant"], m["runtime"], m["threads"]): m["summary"]["p50_ms"] for m in results["measurements"]}
    return {(v, t): p50 / by[(v, "python", t)] for (v, rt, t), p50 in by.items()
            if rt == "native" and (v, "python", t) in by and by[(v, "python", t)] > 0}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = results["measurements"]
    if not ms:
        return
    labels = [f"{m['variant']}\n{m['runtime']}, {m['threads']}T" for m in ms]
    data = [[x for r in m["rounds"] for x in r["latencies_ms"]] for m in ms]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(ms) + 2), 4.5))
    ax.boxplot(data, showfliers=True, whis=(5, 95))
    ax.set_xticks(range(1, len(ms) + 1), labels, fontsize=7, rotation=30, ha="right")
    for i, m in enumerate(ms, start=1):
        if not m["reliable"]:
            ax.annotate("unreliable", (i, max(data[i - 1])), ha="center", va="bottom", fontsize=7, color="tab:red")
    ax.set_ylabel("latency per inference (ms)")
    dev = results.get("device") or {}
    ax.set_title(f"{results['target']}: {dev.get('model') or ''} ({dev.get('abi') or '?'}) — whiskers p5/p95",
                 fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict, out_dir: str | Path, artifacts: Path | None = None) -> Path:
    """Replace `out_dir` with the report; `artifacts` (e.g. pulled ETDumps) are moved into it."""
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        if artifacts is not None and artifacts.is_dir():
            for p in artifacts.iterdir():
                p.rename(tmp / p.name)
        results = {**results, "recommended_threads": recommended_threads(results)}
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "results.md").write_text(markdown(results))
        plot(results, tmp / "latency.png")
    return out
