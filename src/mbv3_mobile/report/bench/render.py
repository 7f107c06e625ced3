"""bench.md, findings and the PNG charts from a bench report."""

from __future__ import annotations

from pathlib import Path


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
             f"Ratios are against **{r['runtimes'][r['baseline']]['label']}** measured in the same run.", "",
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
            lines.append(f"| {r['runtimes'][key]['label']} | {s['p50_ms']:.3f} | {s['p90_ms']:.3f} | "
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
    ax2.set_yticks([j + width * (len(r["latency"]) - 1) / 2 for j in range(len(keys))], [r['runtimes'][k]['label'] for k in keys],
                   fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("median latency / eager fp32 median")
    ax2.legend(loc="lower right")
    ax2.set_title("ratio vs eager PyTorch fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
