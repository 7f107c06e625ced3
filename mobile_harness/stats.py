"""Latency statistics and the rules that flag a measurement as unreliable."""

from __future__ import annotations

import math
import statistics

# A measurement is flagged when its rounds disagree by more than this (coefficient of variation of
# the per-round medians), or a round's tail is this much above its median.
MAX_ROUND_CV = 0.10
MAX_TAIL_RATIO = 1.5
THERMAL_STATUS = {0: "none", 1: "light", 2: "moderate", 3: "severe", 4: "critical", 5: "emergency", 6: "shutdown"}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default; the runner uses the same)."""
    if not values:
        return math.nan
    v = sorted(values)
    pos = q / 100 * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summarize(latencies: list[float]) -> dict:
    if not latencies:
        raise ValueError("no latencies to summarize")
    mean = statistics.fmean(latencies)
    stdev = statistics.stdev(latencies) if len(latencies) > 1 else 0.0
    return {"n": len(latencies), "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
            "min_ms": min(latencies), "max_ms": max(latencies), "mean_ms": mean, "stdev_ms": stdev,
            "cv": stdev / mean if mean > 0 else math.nan}


def summarize_rounds(rounds: list[dict]) -> dict:
    """Pool every timed iteration of every round; add cold-start figures and round-to-round spread."""
    pooled = [x for r in rounds for x in r["latencies_ms"]]
    s = summarize(pooled)
    medians = [percentile(r["latencies_ms"], 50) for r in rounds]
    s["round_p50_ms"] = medians
    s["round_cv"] = (statistics.stdev(medians) / statistics.fmean(medians)) if len(medians) > 1 else 0.0
    loads = [r["load_ms"] for r in rounds if r.get("load_ms") is not None]
    firsts = [r["first_inference_ms"] for r in rounds if r.get("first_inference_ms") is not None]
    s["cold_load_ms"] = percentile(loads, 50) if loads else None
    s["cold_first_inference_ms"] = percentile(firsts, 50) if firsts else None
    s["first_launch_load_ms"] = loads[0] if loads else None
    return s


def reliability_flags(summary: dict, rounds: list[dict], before: dict | None = None,
                      after: dict | None = None) -> list[str]:
    """Reasons not to trust a measurement; empty when it looks stable."""
    flags = []
    if len(rounds) > 1 and summary["round_cv"] > MAX_ROUND_CV:
        flags.append(f"round medians vary by {summary['round_cv']:.0%} (> {MAX_ROUND_CV:.0%})")
    for i, r in enumerate(rounds):
        lat = r["latencies_ms"]
        p50, p90 = percentile(lat, 50), percentile(lat, 90)
        if p50 > 0 and p90 / p50 > MAX_TAIL_RATIO:
            flags.append(f"round {i + 1}: p90 is {p90 / p50:.1f}x p50 (> {MAX_TAIL_RATIO}x)")
    if len(rounds) < 2:
        flags.append("single round: run-to-run variance unknown")
    for label, state in (("before", before), ("after", after)):
        status = (state or {}).get("thermal_status")
        if status is not None and status >= 2:
            flags.append(f"thermal status {THERMAL_STATUS.get(status, status)} {label} the run")
    if before and after and before.get("thermal_status") is not None and after.get("thermal_status") is not None \
            and after["thermal_status"] > before["thermal_status"]:
        flags.append(f"device heated up during the run (thermal status {before['thermal_status']} -> "
                     f"{after['thermal_status']})")
    return flags
