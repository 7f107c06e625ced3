"""bench.md, findings and the PNG charts from a bench report."""

from __future__ import annotations

from pathlib import Path

from mbv3_mobile.crossformat.bench.goals import native_key


def _fmt(v, spec=".3f", none="–"):
    return none if v is None else format(v, spec)


def _reliable(flags: list[str]) -> str:
    return "yes" if not flags else f"no ({len(flags)} flag{'s' if len(flags) > 1 else ''}: {flags[0]})"


def _goal_text(g: dict) -> str:
    if g["kind"] == "speedup":
        return f"speedup {g['numerator']} ({g['threads']} threads)"
    if g["kind"] == "roofline":
        return f"{g['numerator']} / roofline @{g['threads']}"
    return f"{g['numerator']} / {g['denominator']} @{g['threads']}"


def findings(r: dict) -> list[str]:
    """Plain statements derived from the figures: why a goal missed, where the data says so."""
    out = []
    lat = r["latency"]
    counts = sorted(lat, key=int)
    verdicts = (r.get("goals") or {}).get("verdicts") or [g for b in lat.values() for g in b.get("goals", [])]
    by_pair = {(g["numerator"], g["denominator"], g["threads"]): g for g in verdicts}
    peak = r.get("peak") or {}
    for g in verdicts:
        if g["verdict"] != "miss" or g["numerator"].endswith("_native"):
            continue
        line = f"{_goal_text(g)} = {g['value']:.3f} misses {g['direction']} {g['limit']:g}"
        n = g["threads"]
        if g["kind"] == "ratio":
            med = lat[n]["medians_ms"]
            nat = by_pair.get((native_key(g["numerator"]), native_key(g["denominator"]), n))
            if nat and nat["verdict"] == "pass":
                over = {k: med[k] - med[f"{k}_native"] for k in ("pte_fp32", "pte_int8") if k in med and f"{k}_native" in med}
                line += (f"; the same .pte in the native runner passes ({nat['value']:.3f}), so the program is not the "
                         "cause: the Python runtime adds a per-call overhead (median Python minus native: "
                         + ", ".join(f"{k} {v * 1e3:.0f} us" for k, v in over.items()) + ")")
            elif nat:
                line += f" (native runner: {nat['value']:.3f}, also a miss)"
            one = lat.get(counts[0], {}).get("medians_ms", {})
            slower = [k for k in (g["numerator"], g["denominator"]) if n != counts[0] and k in one and med[k] > one[k]]
            if slower and not (nat and nat["verdict"] == "pass"):
                line += ("; " + ", ".join(f"{k} gets no faster from {counts[0]} to {n} threads ({one[k]:.3f} -> "
                                          f"{med[k]:.3f} ms)" for k in slower)
                         + ": its ops are too small to split across threads here, so the ratio reflects threading "
                           "overhead, not the program")
            rows = lat[n]["rows"]
            num, den = rows.get(g["numerator"], {}), rows.get(g["denominator"], {})
            if g["numerator"] == "pte_int8" and g["denominator"] == "pte_fp32" and "fraction_of_int8_peak" in num:
                line += (f"; int8 runs at {num['fraction_of_int8_peak']:.0%} of the int8 roofline while fp32 runs at "
                         f"{den.get('fraction_of_peak', 0):.0%} of the FP32 one: int8 is not limited by its MAC rate "
                         "but by what is not int8 MACs (fp32 hard-swish between dequantize/quantize, requantization, "
                         "depthwise and SE layers: see the per-op profile)")
            elif g["numerator"] == "pte_fp32" and g["denominator"].startswith("ort_fp32") and "fraction_of_peak" in num:
                line += (f"; .pte fp32 runs at {num['fraction_of_peak']:.0%} of the FP32 roofline, "
                         f"{g['denominator']} at {den.get('fraction_of_peak', 0):.0%}")
        elif g["kind"] == "speedup":
            lo, hi = g["threads"].split("->")
            a = g["numerator"]
            line += (f": {lat[lo]['medians_ms'][a]:.3f} ms at {lo} thread(s), {lat[hi]['medians_ms'][a]:.3f} ms at {hi}; "
                     f"{hi} threads reach {lat[hi]['rows'][a]['fraction_of_roofline']:.0%} of their roofline against "
                     f"{lat[lo]['rows'][a]['fraction_of_roofline']:.0%} for 1: the per-layer work (small late layers, "
                     "depthwise convolutions, SE and element-wise ops) does not split evenly across XNNPACK's "
                     "threadpool and each layer ends in a barrier")
        elif g["kind"] == "roofline":
            row = lat[n]["rows"].get(g["numerator"], {})
            which = "int8" if "fraction_of_int8_peak" in row else "FP32"
            per_core = peak.get("peak_int8_gops_per_core" if which == "int8" else "peak_gflops_per_core") or 0
            line += (f": {row.get('gflops', 0):.1f} G{'OP' if which == 'int8' else 'FLOP'}/s achieved against "
                     f"{per_core * int(n):.1f} for {n} core(s) ({peak.get('int8_assumption' if which == 'int8' else 'assumption', '')})")
        out.append(line + ".")
    load, cores = r.get("loadavg_before"), r.get("cores")
    if load and cores and len(counts) > 1 and max(load[0], (r.get("loadavg_after") or [0])[0]) > 0.75 * cores:
        out.append(f"The host was busy: load average {load[0]:.1f} before and {(r.get('loadavg_after') or ['?'])[0]:.1f} "
                   f"after the run on {cores} cores, so other processes held cores this run needed; the {counts[-1]}-thread "
                   "figures (and speedups, and the recommended thread counts) measure that contention more than the "
                   "programs. Rerun on an idle host to judge the multi-thread goals.")
    for n, block in lat.items():
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


def goals_table(r: dict) -> list[str]:
    g_all = (r.get("goals") or {}).get("verdicts") or []
    if not g_all:
        return [f"No goal of `05_bench.toml` is judged on {r.get('model_key', 'this model')} (goals name the models "
                "they apply to; Large 1.0 @ 224 unless named).", ""]
    lines = ["| goal | threads | value | limit | verdict |", "|---|---|---|---|---|"]
    for g in g_all:
        what = (f"{g['numerator']} / {g['denominator']}" if g["kind"] == "ratio" else
                f"speedup of {g['numerator']}" if g["kind"] == "speedup" else f"{g['numerator']} / its roofline")
        lines.append(f"| {what} | {g['threads']} | {_fmt(g['value'])} | {g['direction']} {g['limit']:g} | "
                     f"**{g['verdict']}** |")
    return lines + [""]


def recommended_table(r: dict) -> list[str]:
    rec = r.get("recommended_threads") or {}
    if not rec:
        return []
    lines = ["## Recommended threads (picked by measurement)", "",
             "The fastest thread count per runtime, only where it beats fewer threads by more than the noise "
             "(max(3 %, 2 standard errors of the gap between the round medians)); otherwise the smaller count.", "",
             "| runtime | recommended threads | median ms | speedup vs fewest | medians by threads |", "|---|---|---|---|---|"]
    for key, v in rec.items():
        lines.append(f"| {r['runtimes'][key]['label']} | **{v['threads']}** | {v['p50_ms']:.3f} | "
                     f"{v['speedup_vs_fewest']:.2f} | " + ", ".join(f"{n}: {m:.3f}" for n, m in v["candidates"].items()) + " |")
    return lines + [""]


def markdown(r: dict) -> str:
    peak = r["peak"]
    lines = [f"# Benchmark: {r['model']} at {r['resolution']} px on this host", "",
             f"{r['macs'] / 1e6:.1f} M MACs, batch 1, the same real test image for every runtime. "
             f"{r['plan']['rounds']} interleaved rounds x {r['plan']['iters']} iterations per runtime after "
             f"{r['plan']['warmup']} warm-up (order rotated each round); medians of all timed iterations. "
             f"Ratios are against **{r['runtimes'][r['baseline']]['label']}** measured in the same run.", "",
             f"Load average (1/5/15 min) before {', '.join(f'{v:.2f}' for v in r['loadavg_before'])}, after "
             f"{', '.join(f'{v:.2f}' for v in r['loadavg_after'])} on {r['cores']} cores shared with other work: "
             "absolute times are indicative only; ratios are the result.", "",
             f"Weights: {r.get('weights', 'as given')}.", "",
             f"Rooflines: FP32 {peak['formula']} ({peak['cpu']}; {peak['assumption']}; clock from {peak['clock_source']}); "
             f"int8 {peak.get('int8_formula', '?')} ({peak.get('int8_assumption', '?')}). Achieved G(FL)OP/s = "
             "2 x MACs / median latency; `% FP32 roofline` is against the FP32 peak of the cores in use (threads x "
             "per-core peak) for every row; int8 rows are also given against the int8 roofline.", ""]
    for n, block in r["latency"].items():
        lines += [f"## {n} thread{'s' if n != '1' else ''}", "",
                  "| runtime | median ms | p90 ms | ratio vs eager | images/s | G(FL)OP/s | % FP32 roofline | "
                  "% int8 roofline | round CV | max abs dlogit vs eager | reliable |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, row in block["rows"].items():
            s = row["summary"]
            i8 = row.get("fraction_of_int8_peak")
            lines.append(f"| {r['runtimes'][key]['label']} | {s['p50_ms']:.3f} | {s['p90_ms']:.3f} | "
                         f"{block['ratio_vs_eager'][key]:.3f} | {row['images_per_s']:.0f} | {row['gflops']:.2f} | "
                         f"{_fmt(100 * row['fraction_of_peak'] if 'fraction_of_peak' in row else None, '.1f')} | "
                         f"{_fmt(None if i8 is None else 100 * i8, '.1f')} | "
                         f"{s['round_cv']:.1%} | {row['max_abs_diff_vs_eager']:.1e} | {_reliable(row['flags'])} |")
        lines.append("")
    lines += [f"## Goals (judged on {r.get('model_key', '?')})", ""] + goals_table(r) + recommended_table(r)
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
    if t.get("skipped"):
        lines += ["", f"## Training throughput: {t['skipped']}"]
    else:
        lines += training_lines(t)
    append_export_section(r, lines)
    return "\n".join(lines)


def training_lines(t: dict) -> list[str]:
    lines = ["", f"## Training throughput ({t['threads']} threads, batch {t['batch']}, {t['resolution']} px)", "",
              t["note"] + ".", "", "| variant | images/s | speedup vs eager | warm-up s (incl. compile) | round CV | reliable |",
              "|---|---|---|---|---|---|"]
    for name, v in t["variants"].items():
        if "error" in v:
            lines.append(f"| {name} | failed: {v['error']} | – | – | – | – |")
        else:
            lines.append(f"| {name} | {v['images_per_s']:.0f} | {_fmt(v.get('speedup_vs_eager'), '.2f')} | "
                         f"{v['warmup_s']:.1f} ({v['warmup_steps']} steps) | {_fmt(v.get('round_cv'), '.1%')} | {_reliable(v.get('flags', []))} |")
    return lines


def append_export_section(r: dict, lines: list[str]) -> None:
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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(r: dict, path: Path) -> None:
    """Latency distribution per runtime (box: every timed iteration), one panel per thread count."""
    plt = _plt()
    blocks = list(r["latency"].items())
    fig, axes = plt.subplots(1, len(blocks), figsize=(6.5 * len(blocks), 0.5 * len(r['runtimes']) + 2), squeeze=False)
    for ax, (n, block) in zip(axes[0], blocks, strict=True):
        keys = list(block["rows"])
        data = [[v for rnd in block["rows"][k]["rounds_ms"] for v in rnd] for k in keys]
        ax.boxplot(data, vert=False, showfliers=False, tick_labels=[r['runtimes'][k]['label'] for k in keys])
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
            if g["value"] is None or g["kind"] != "ratio":
                continue
            names.append(f"{g['numerator']}/{g['denominator']} @{n}t")
            vals.append(g["value"])
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
    ax2.set_yticks([j + width * (len(r["latency"]) - 1) / 2 for j in range(len(keys))], [r['runtimes'][k]['label'] for k in keys],
                   fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("median latency / eager fp32 median")
    ax2.legend(loc="lower right")
    ax2.set_title("ratio vs eager PyTorch fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


WORKLOAD_KEYS = ("eager_fp32", "pte_fp32", "pte_int8", "ort_fp32_server", "ort_fp32", "ort_int8", "pte_fp32_native",
                 "pte_int8_native")


def workload_markdown(summary: dict) -> str:
    """The models phones run side by side: medians, same-run ratios, roofline fractions, recommended
    threads and goal verdicts per model (each model's bench.md has the rest)."""
    models = summary["models"]
    first = next(iter(models.values()))
    peak = first["peak"]
    lines = ["# Benchmark: the workload phones run", "",
             "Every model benched in its own interleaved run (runtimes rotated each round, medians of all timed "
             "iterations); ratios are within one model's run. Absolute times on a shared host are indicative only.", "",
             f"Rooflines: FP32 {peak['formula']} ({peak['assumption']}); int8 {peak.get('int8_formula')} "
             f"({peak.get('int8_assumption')}).", ""]
    for label, r in models.items():
        lat = r["latency"]
        counts = sorted(lat, key=int)
        lines += [f"## {label}: {r['model']} @ {r['resolution']} px, {r['macs'] / 1e6:.1f} M MACs", "",
                  f"Weights: {r.get('weights')}. Folder: `{summary['folders'][label]}`.", "",
                  "| runtime | " + " | ".join(f"ms @{n}" for n in counts) + " | " +
                  " | ".join(f"% roofline @{n}" for n in counts) + " | speedup | recommended threads | reliable |",
                  "|---|" + "---|" * (2 * len(counts) + 3)]
        for key in WORKLOAD_KEYS:
            if not all(key in lat[n]["rows"] for n in counts):
                continue
            rows = [lat[n]["rows"][key] for n in counts]
            rec = (r.get("recommended_threads") or {}).get(key, {})
            flags = [f for row in rows for f in row["flags"]]
            lines.append(f"| {r['runtimes'][key]['label']} | " + " | ".join(f"{row['summary']['p50_ms']:.3f}" for row in rows)
                         + " | " + " | ".join(f"{100 * row['fraction_of_roofline']:.0f}" for row in rows)
                         + f" | {rows[0]['summary']['p50_ms'] / rows[-1]['summary']['p50_ms']:.2f}x | {rec.get('threads', '–')} | "
                         + _reliable(flags) + " |")
        lines.append("")
        for n in counts:
            med = lat[n]["medians_ms"]
            server = "ort_fp32_server" if "ort_fp32_server" in med else "ort_fp32"
            pairs = [("pte_int8", "pte_fp32"), ("pte_int8", "ort_int8"), ("pte_fp32", server), ("pte_fp32", "eager_fp32")]
            lines.append(f"- {n} thread(s), same-run ratios: " + ", ".join(
                f"{a} / {b} = {med[a] / med[b]:.3f}" for a, b in pairs if a in med and b in med))
        lines += ["", f"Goals judged on {r.get('model_key')}:", ""] + goals_table(r)
        found = [f for f in findings(r) if "eager PyTorch's round medians" not in f]
        if found:
            lines += ["Findings:", ""] + [f"- {f}" for f in found] + [""]
    sweep = summary.get("sweep")
    if sweep:
        lines += ["## Sweep", "", f"{len(sweep.get('points', []))} points: see `{sweep.get('folder')}/sweep.md` and "
                  "`sweep.png`.", ""]
    return "\n".join(lines)
