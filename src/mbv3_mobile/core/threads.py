"""The thread count to ship, picked by measurement: one rule for the bench, the export pipelines
(their `threads` stages write the pick into the manifest and the app snippets) and the device
harness (the phone's own pick).

    timings = time_thread_counts(lambda n: open_model(path, n), candidate_counts(usable_cores()))
    pick = pick_threads(timings)          # {"threads": 2, "speedup_vs_fewest": 1.7, ...}
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

NOISE_FLOOR = 0.03  # relative latency gap below which two thread counts are "the same"


def usable_cores() -> int:
    """CPUs this process may run on: the affinity mask, capped by a cgroup v2 CPU quota (containers
    and CI runners limit CPU time that way while still showing every core), not the machine's count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """CPUs' worth of time the cgroup v2 quota allows ("200000 100000" -> 2.0); None when unlimited or unknown."""
    try:
        quota, period = Path(path).read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def candidate_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to and including `cores`: more threads than cores only oversubscribe."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [max(1, cores)]


def time_thread_counts(open_at: Callable[[int], Callable[[], object]], counts: list[int], *, rounds: int = 5,
                       budget_s: float = 0.25, warmup: int = 3) -> dict[int, dict]:
    """{threads: {p50_ms, round_p50_ms, round_cv, iters}} for the model `open_at(n)` opens with n threads
    (it returns a one-inference callable). Rounds alternate the counts (each round re-opens the model:
    some runtimes size their thread pool only when a model is loaded), so drift on a shared host hits
    every count alike; each round times as many calls as fit in `budget_s` (at least 5)."""
    per_round: dict[int, list[float]] = {n: [] for n in counts}
    iters: dict[int, int] = {}
    for r in range(rounds):
        order = counts[r % len(counts):] + counts[: r % len(counts)]
        for n in order:
            run = open_at(n)
            for _ in range(warmup):
                run()
            if n not in iters:  # calls per round, sized once from a timed call
                t0 = time.perf_counter()
                run()
                iters[n] = max(5, min(200, int(budget_s / max(time.perf_counter() - t0, 1e-5))))
            lat = []
            for _ in range(iters[n]):
                t0 = time.perf_counter()
                run()
                lat.append((time.perf_counter() - t0) * 1e3)
            per_round[n].append(statistics.median(lat))
            del run
    out = {}
    for n, meds in per_round.items():
        cv = statistics.stdev(meds) / statistics.fmean(meds) if len(meds) > 1 else 0.0
        out[n] = {"p50_ms": statistics.median(meds), "round_p50_ms": meds, "round_cv": cv, "iters": iters[n]}
    return out


def pick_threads(per_threads: dict[int | str, dict], noise_floor: float = NOISE_FLOOR) -> dict:
    """The thread count to ship for one runtime, from {threads: latency summary (p50_ms, round_cv,
    round_p50_ms)}: the fastest, but only when it beats the best smaller count by more than the noise
    (the larger of `noise_floor` and two standard errors of the gap between the two counts' round
    medians, 2 x sqrt(cv_a^2 + cv_b^2) / sqrt(rounds)); otherwise the smaller count (fewer threads:
    less power, less contention with the app's own threads)."""
    if not per_threads:
        raise ValueError("pick_threads needs at least one measured thread count")
    counts = sorted(per_threads, key=int)
    best = counts[0]
    for n in counts[1:]:
        a, b = per_threads[best], per_threads[n]
        k = max(1, min(len(a.get("round_p50_ms") or [0]), len(b.get("round_p50_ms") or [0])))
        noise = max(noise_floor, 2 * math.hypot(a.get("round_cv", 0.0), b.get("round_cv", 0.0)) / math.sqrt(k))
        gain = (a["p50_ms"] - b["p50_ms"]) / a["p50_ms"]
        if gain > noise:
            best = n
    a = per_threads[counts[0]]
    b = per_threads[best]
    return {"threads": int(best), "p50_ms": b["p50_ms"], "speedup_vs_fewest": a["p50_ms"] / b["p50_ms"],
            "candidates": {str(n): per_threads[n]["p50_ms"] for n in counts},
            "rule": f"fastest count whose gain over the smaller counts exceeds max({noise_floor:.0%}, 2 standard errors "
                    "of the round medians' gap)"}


def host_identity() -> dict:
    """What a thread pick was measured on (it holds for that CPU and core budget only)."""
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model or platform.processor() or platform.machine(), "machine": platform.machine(),
            "usable_cores": usable_cores()}


def measure_threads(open_at: Callable[[int], Callable[[], object]], *, runtime: str, rounds: int = 5,
                    budget_s: float = 0.1) -> dict:
    """What a pipeline's `threads` stage records: every candidate count on this host timed, the pick,
    and where it was measured (manifest `variants.<v>.threads`)."""
    timings = time_thread_counts(open_at, candidate_counts(usable_cores()), rounds=rounds, budget_s=budget_s)
    pick = pick_threads(timings)
    return {"recommended": pick["threads"], "speedup_vs_fewest": pick["speedup_vs_fewest"],
            "p50_ms": {str(n): t["p50_ms"] for n, t in timings.items()},
            "round_cv": {str(n): t["round_cv"] for n, t in timings.items()},
            "measured_on": host_identity(), "runtime": runtime, "rounds": rounds, "rule": pick["rule"]}
