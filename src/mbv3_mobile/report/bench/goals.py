"""Interleaving order, ratios against the baseline, goals as latency ratios."""

from __future__ import annotations

from mbv3_mobile.report.bench.common import BASELINE, BenchError


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
