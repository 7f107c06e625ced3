"""Interleaving order, ratios against the baseline, goals, and the thread count picked by measurement.

Goals live in `pipelines/05_bench.toml` `[goals]`, one line each, as `"<expression> [@threads] [on
model,...]" = limit`:

- `"a/b @1" = 0.45`: median(a) / median(b) <= limit at 1 thread (`@all`: every usable core; no `@`:
  at every measured thread count). `b` may be a fallback chain `b1|b2`: the first one measured.
- `"speedup a" = 1.6`: median(a at 1 thread) / median(a at the most threads) >= limit.
- `"roofline a @1" = 0.75`: a's achieved GOP/s over the roofline of its precision (fp32 FLOP/s,
  int8 OP/s) at that thread count >= limit.
- `on` names the models (`<arch>-<resolution>`, e.g. `small-224`) a goal is judged on; without it,
  `large-224`. Other models' reports carry no verdict for it.
"""

from __future__ import annotations

from mbv3_mobile.core.threads import pick_threads as recommended_threads  # noqa: F401 - the bench's name for it
from mbv3_mobile.crossformat.bench.common import BASELINE, BenchError

DEFAULT_ON = ("large-224",)


def native_key(key: str) -> str:
    """The native runner's row for a `.pte` runtime key (other runtimes have one row)."""
    return f"{key}_native" if key.startswith("pte_") else key


def rotation(keys: list[str], round_index: int) -> list[str]:
    """Round r runs the runtimes starting at the r-th: each runtime takes every position in turn."""
    k = round_index % len(keys) if keys else 0
    return keys[k:] + keys[:k]


def ratios(medians: dict[str, float], baseline: str = BASELINE) -> dict[str, float]:
    """Each runtime's median latency over the baseline's (below 1: faster than the baseline)."""
    if baseline not in medians or medians[baseline] <= 0:
        raise BenchError(f"the baseline {baseline!r} has no positive median latency")
    return {k: v / medians[baseline] for k, v in medians.items()}


def parse_goal(name: str, limit: float) -> dict:
    """`"pte_fp32/ort_fp32_server|ort_fp32 @1 on large-224"` -> its parts (see the module docstring)."""
    text, on = name, list(DEFAULT_ON)
    if " on " in text:
        text, _, models = text.partition(" on ")
        on = [m.strip() for m in models.split(",") if m.strip()]
    threads = None
    if "@" in text:
        text, _, threads = text.partition("@")
        threads = threads.strip()
        if threads != "all" and not threads.isdigit():
            raise BenchError(f"goal {name!r}: '@' takes a thread count or 'all', got {threads!r}")
    words = text.split()
    kind = words[0] if len(words) == 2 and words[0] in ("speedup", "roofline") else "ratio"
    expr = words[-1] if words else ""
    if kind == "ratio":
        num, sep, den = expr.partition("/")
        if len(words) != 1 or not sep or not num or not den:
            raise BenchError(f"goal {name!r} must read 'numerator/denominator [@threads] [on model]', 'speedup KEY' "
                             "or 'roofline KEY @threads' (e.g. 'pte_int8/ort_int8')")
        return {"goal": name, "kind": kind, "numerator": num, "denominators": den.split("|"), "threads": threads,
                "on": on, "limit": float(limit)}
    if kind == "roofline" and threads is None:
        raise BenchError(f"goal {name!r}: a roofline goal names its thread count (e.g. '@1')")
    return {"goal": name, "kind": kind, "numerator": expr, "denominators": [], "threads": threads, "on": on,
            "limit": float(limit)}


def _thread_keys(latency: dict, threads: str | None) -> list[str]:
    counts = sorted(latency, key=int)
    if threads is None:
        return counts
    if threads == "all":
        return counts[-1:]
    return [threads] if threads in latency else []


def evaluate_goals(latency: dict, goals: dict[str, float], model: str | None = None) -> list[dict]:
    """Verdicts of the goals that apply to `model` (`None`: all of them) from a report's `latency`
    ({threads: {"medians_ms", "rows"}}). A ratio goal on `.pte` rows is judged for the Python runtime
    and, where measured, the native runner; a goal whose runtimes were not measured is reported as
    such, never as a pass."""
    latency = {str(k): v for k, v in latency.items()}
    out = []
    for name, limit in goals.items():
        g = parse_goal(name, limit)
        if model is not None and model not in g["on"]:
            continue
        base = {"goal": name, "kind": g["kind"], "limit": g["limit"], "on": g["on"]}
        if g["kind"] == "speedup":
            counts = sorted(latency, key=int)
            lo, hi = counts[0], counts[-1]
            a = g["numerator"]
            row = {**base, "numerator": a, "denominator": None, "threads": f"{lo}->{hi}", "direction": ">="}
            if lo == hi or any(a not in latency[n]["medians_ms"] for n in (lo, hi)):
                row.update(value=None, verdict="not measured")
            else:
                v = latency[lo]["medians_ms"][a] / latency[hi]["medians_ms"][a]
                row.update(value=v, verdict="pass" if v >= g["limit"] else "miss")
            out.append(row)
            continue
        ns = _thread_keys(latency, g["threads"])
        if not ns:
            out.append({**base, "numerator": g["numerator"], "denominator": None, "threads": g["threads"],
                        "direction": ">=" if g["kind"] == "roofline" else "<=", "value": None,
                        "verdict": "not measured"})
        for n in ns:
            med, rows = latency[n]["medians_ms"], latency[n].get("rows", {})
            if g["kind"] == "roofline":
                a = g["numerator"]
                frac = (rows.get(a) or {}).get("fraction_of_roofline")
                out.append({**base, "numerator": a, "denominator": None, "threads": n, "direction": ">=",
                            "value": frac, "verdict": "not measured" if frac is None else
                            ("pass" if frac >= g["limit"] else "miss")})
                continue
            num = g["numerator"]
            den = next((d for d in g["denominators"] if d in med), g["denominators"][0])
            pairs = [(num, den)]
            native = (native_key(num), native_key(den))
            if native != (num, den) and native[0] in med:
                pairs.append(native)
            for a, b in pairs:
                row = {**base, "numerator": a, "denominator": b, "threads": n, "direction": "<="}
                if a not in med or b not in med:
                    row.update(value=None, verdict="not measured")
                else:
                    v = med[a] / med[b]
                    row.update(value=v, verdict="pass" if v <= g["limit"] else "miss")
                out.append(row)
    return out
