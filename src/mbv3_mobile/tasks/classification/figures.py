"""How a classifier's exports are judged and shown: the comparator (`verify.compare.compare_logits`:
max |dlogit|, min cosine, SNR, top-1 agreement and, with labels, the paired accuracy drop, each
rate with one-sided 95 % bounds), the tables and the parity plot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mbv3_mobile.verify.compare import compare_logits
from mbv3_mobile.verify.gates import format_value, markdown_table, with_bounds

compare = compare_logits

# Every verify stage records these; the accuracy ones only with labelled pictures.
KEYS = ("images", "top1_agreement", "max_abs_dlogit", "min_cosine")
LABELLED_KEYS = ("top1", "reference_top1", "top1_drop")
_TEXT_KEYS = ("images", "top1", "reference_top1", "top1_drop", "top1_agreement", "snr_db", "max_abs_dlogit",
              "mean_abs_dlogit", "min_cosine")


def text(figures: dict) -> str:
    """Indented `name value` lines, for a gate-failure message."""
    return "\n".join(f"  {k:<16} {format_value(k, figures[k])}" for k in _TEXT_KEYS if k in figures)


def table(rows: dict[str, dict], *, label: str = "variant",
          lead: tuple[str, Callable[[dict], object]] = ("pictures", lambda f: f["images"]), verdict: bool = False) -> str:
    """Markdown, one row per entry: `label`, the `lead` column, then top-1, the drop and the agreement
    with their bounds, SNR, max |dlogit|, min cosine (and the gate verdict). Skipped rows say why."""
    return markdown_table(
        rows, ["top-1", "drop [bounds]", "top-1 agreement [bounds]", "SNR", "max abs dlogit", "min cosine"],
        lambda f: [format_value("top1", f.get("top1")), with_bounds(f, "top1_drop"), with_bounds(f, "top1_agreement"),
                   format_value("snr_db", f["snr_db"]), f"{f['max_abs_dlogit']:.2e}", f"{f['min_cosine']:.6f}"],
        label=label, lead=lead, verdict=verdict)


def parity_table(rows: dict[str, dict]) -> str:
    """The parity matrix's table: one row per format entry, judged by its gate table."""
    return table(rows, label="format", lead=("gate table", lambda f: f["precision"]), verdict=True)


def summary_line(figures: dict) -> str:
    """One line per entry while parity runs."""
    top1 = f"top-1 {format_value('top1', figures['top1'])}  " if "top1" in figures else ""
    return (f"{top1}agreement {format_value('top1_agreement', figures['top1_agreement'])}"
            f"  max|dlogit| {figures['max_abs_dlogit']:.2e}")


def parity_plot(rows: dict[str, dict], path: Path) -> None:
    """max |dlogit| (log) and top-1 accuracy (or agreement, without labels) with bounds, per entry;
    red: failed, orange: inconclusive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in rows.items() if "skipped" not in v}
    names = list(rows)
    colors = [{"fail": "tab:red", "inconclusive": "tab:orange"}.get(rows[n]["gate"], "tab:blue") for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.8))
    ax1.barh(names, [max(rows[n]["max_abs_dlogit"], 1e-9) for n in names], color=colors)
    ax1.set_xscale("log")
    ax1.set_xlabel("max |Δlogit| vs eager fp32 (log)")
    ax1.invert_yaxis()
    labelled = all("top1" in rows[n] for n in names)
    key, label = ("top1", "top-1 accuracy (%)") if labelled else ("top1_agreement", "top-1 agreement with eager (%)")
    values = [100 * rows[n][key] for n in names]
    bound_key = "top1_drop" if labelled else "top1_agreement"
    err = []
    for n in names:
        lo, hi = rows[n]["bounds"][bound_key]
        if labelled:  # drop bounds -> accuracy bounds
            ref = rows[n]["reference_top1"]
            err.append((100 * (rows[n]["top1"] - (ref - hi)), 100 * ((ref - lo) - rows[n]["top1"])))
        else:
            err.append((100 * (rows[n][key] - lo), 100 * (hi - rows[n][key])))
    ax2.barh(names, values, color=colors, xerr=list(zip(*err)) if err else None, capsize=3)
    if labelled:
        ax2.axvline(100 * next(iter(rows.values()))["reference_top1"], color="k", ls="--", lw=1, label="eager fp32")
        ax2.legend(loc="lower right")
    ax2.set_xlabel(label + ", 95 % one-sided bounds")
    lo = min(values) if values else 0
    ax2.set_xlim(max(0, lo - 3), 100.5)
    ax2.invert_yaxis()
    ax2.set_yticklabels([])
    fig.suptitle("parity with eager PyTorch fp32 on the same real pictures (red: failed, orange: inconclusive)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reference_figures(rows: dict[str, dict]) -> dict:
    """What a parity report says of the reference itself: its top-1 on labelled pictures."""
    top1 = next((r["reference_top1"] for r in rows.values() if "reference_top1" in r), None)
    return {"reference_top1": top1}


def reference_text(rows: dict[str, dict]) -> str:
    top1 = reference_figures(rows)["reference_top1"]
    return f" (top-1 {100 * top1:.2f} %)" if top1 is not None else ""
