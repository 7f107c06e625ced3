"""Gates on figures (see `verify.compare` for the figures and the statistics): parsed from the
pipelines' `[gates.<table>]` tables, judged pass / fail / inconclusive. Pure Python, so the
pipeline spec can hold rules without importing torch."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

CONFIDENCE = 0.95  # one-sided, for every bound
_Z = 1.6448536269514722  # standard normal quantile at CONFIDENCE
PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
# judged on their bounds: classification's (Wilson, Tango, bootstrap) and segmentation's (bootstrap
# over pictures, tasks/segmentation/figures.py)
RATE_FIGURES = ("top1_agreement", "top1_drop", "snr_db", "pixel_agreement", "miou_drop")


@dataclass(frozen=True)
class GateRule:
    """One bound on one figure: `figure op limit` must hold (op '<=' for max, '>=' for min)."""

    figure: str
    op: str
    limit: float

    def describe(self) -> str:
        return f"{self.figure} {self.op} {self.limit:g}"


# ---------------------------------------------------------------- bounds


def wilson_bounds(successes: float, n: float, z: float = _Z) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper) of a proportion. Counts may be fractional
    (`pictures_needed` scales them); at 0 and n the outer bound is exactly 0 or 1."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


def _tango_z(b: float, c: float, n: float, delta: float) -> float:
    """Tango's score statistic for delta = p_b - p_c in a paired 2x2 table (b, c: discordant counts)."""
    a_ = 2.0 * n
    b_ = -b - c + (2.0 * n - b + c) * delta
    c_ = -c * delta * (1.0 - delta)
    p21 = (math.sqrt(max(b_ * b_ - 4 * a_ * c_, 0.0)) - b_) / (2 * a_)
    var = n * (2 * p21 + delta * (1 - delta))
    if var <= 0:
        return math.copysign(math.inf, b - c - n * delta) if b - c - n * delta else 0.0
    return (b - c - n * delta) / math.sqrt(var)


def tango_bounds(b: float, c: float, n: float, z: float = _Z) -> tuple[float, float]:
    """One-sided score bounds (lower, upper) of (b - c) / n for paired binary outcomes (Tango 1998):
    b = pictures only the reference gets right, c = only the candidate."""
    if n == 0:
        return -1.0, 1.0

    def solve(target: float, lo: float, hi: float) -> float:
        # _tango_z decreases in delta; find delta with z(delta) = target
        for _ in range(100):
            mid = (lo + hi) / 2
            if _tango_z(b, c, n, mid) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    point = (b - c) / n
    eps = 1e-12
    return solve(z, -1 + eps, point), solve(-z, point, 1 - eps)


# ---------------------------------------------------------------- gates


def judge(figures: dict, rule: GateRule) -> dict:
    """One rule on one figure -> {rule, value, bound, verdict, message}."""
    if rule.figure not in figures:
        return {"rule": rule.describe(), "verdict": INCONCLUSIVE, "value": None,
                "message": f"{rule.figure} was not measured (it needs labelled pictures: --eval-data DIR)"}
    value = figures[rule.figure]
    upper_ok = rule.op == "<="
    exact = rule.figure not in RATE_FIGURES or (rule.figure == "top1_agreement" and rule.limit >= 1.0)
    holds = value <= rule.limit if upper_ok else value >= rule.limit
    if exact:
        verdict = PASS if holds else FAIL
        return {"rule": rule.describe(), "value": value, "verdict": verdict,
                "message": f"{rule.figure} = {format_value(rule.figure, value)} (must be {rule.op} {format_value(rule.figure, rule.limit)})"}
    lo, hi = figures["bounds"][rule.figure]
    safe, other = (hi, lo) if upper_ok else (lo, hi)
    if (safe <= rule.limit) if upper_ok else (safe >= rule.limit):
        verdict = PASS
    elif (other > rule.limit) if upper_ok else (other < rule.limit):
        verdict = FAIL
    else:
        verdict = INCONCLUSIVE
    n = figures["images"]
    text = (f"{rule.figure} = {format_value(rule.figure, value)}, {int(CONFIDENCE * 100)} % bounds "
            f"[{format_value(rule.figure, lo)}, {format_value(rule.figure, hi)}] on {n} pictures (must be {rule.op} {format_value(rule.figure, rule.limit)})")
    need = pictures_needed(figures, rule) if verdict == INCONCLUSIVE else None
    if verdict == INCONCLUSIVE:
        text += (f": cannot tell with {n} pictures; about {need} pictures with the same rates would resolve it"
                 if need else ": more pictures with the same rates would not bring it inside the gate")
    return {"rule": rule.describe(), "value": value, "bounds": [lo, hi], "verdict": verdict, "message": text,
            "pictures_needed": need}


def pictures_needed(figures: dict, rule: GateRule, *, limit_n: int = 10_000_000) -> int | None:
    """Pictures (at the observed rates) at which the safe-side bound would clear the limit; None
    when the observed value itself is on the wrong side (no sample size makes it pass). Counts are
    scaled without rounding, so the bound grows monotonically with the picture count and the
    bisection finds the first count that clears (rounded counts make it step and mislead it)."""
    value = figures[rule.figure]
    if (value > rule.limit) if rule.op == "<=" else (value < rule.limit):
        return None
    n = figures["images"]
    c = figures["counts"]

    def clears(k: float) -> bool:
        if rule.figure == "top1_agreement":
            return wilson_bounds(c["agree"] * k, n * k)[0] >= rule.limit
        if rule.figure == "top1_drop":
            return tango_bounds(c["only_reference"] * k, c["only_candidate"] * k, n * k)[1] <= rule.limit
        # a bootstrap bound: its distance from the value shrinks as 1/sqrt(n)
        lo, hi = figures["bounds"][rule.figure]
        return (value - (value - lo) / math.sqrt(k) >= rule.limit) if rule.op == ">=" else \
            (value + (hi - value) / math.sqrt(k) <= rule.limit)
    lo_k, hi_k = 1.0, 2.0
    while not clears(hi_k):
        lo_k, hi_k = hi_k, hi_k * 2
        if n * hi_k > limit_n:
            return None
    for _ in range(40):
        mid = (lo_k + hi_k) / 2
        lo_k, hi_k = (lo_k, mid) if clears(mid) else (mid, hi_k)
    return int(math.ceil(n * hi_k))


def check_gates(figures: dict, rules: Iterable[GateRule]) -> list[dict]:
    """Every rule judged; the caller decides what an inconclusive verdict does."""
    return [judge(figures, rule) for rule in rules]


def gate_verdict(judged: list[dict]) -> str:
    verdicts = {j["verdict"] for j in judged}
    return FAIL if FAIL in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS


INCONCLUSIVE_POLICIES = ("fail", "warn")


def blocking(judged: list[dict], inconclusive: str) -> list[dict]:
    """The judged rules that stop publishing: every failure, and an inconclusive one when the
    policy (the pipelines' `inconclusive` option) is "fail"; with "warn" it is reported only."""
    if inconclusive not in INCONCLUSIVE_POLICIES:
        raise ValueError(f"inconclusive policy {inconclusive!r}: use {' or '.join(INCONCLUSIVE_POLICIES)}")
    return [j for j in judged if j["verdict"] == FAIL or (j["verdict"] == INCONCLUSIVE and inconclusive == "fail")]


# ---------------------------------------------------------------- rendering


def format_value(figure: str, value) -> str:
    """A figure's value as the reports write it: rates in %, drops in pt, SNR in dB."""
    if value is None:
        return "–"
    if figure in ("top1_agreement", "top1", "reference_top1", "pixel_agreement", "min_picture_agreement",
                  "pixel_accuracy", "reference_pixel_accuracy", "miou", "reference_miou"):
        return f"{100 * value:.2f} %"
    if figure in ("top1_drop", "miou_drop"):
        return f"{100 * value:+.2f} pt"
    if figure == "snr_db":
        return "inf dB" if value == math.inf else f"{value:.1f} dB"
    if figure == "min_cosine":
        return f"{value:.6f}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def with_bounds(figures: dict, figure: str) -> str:
    """'93.10 % [92.8, 93.4]'-style text: the figure and its one-sided bounds, where it has them."""
    if figure not in figures:
        return "–"
    text = format_value(figure, figures[figure])
    if figure in figures.get("bounds", {}):
        lo, hi = figures["bounds"][figure]
        return f"{text} [{format_value(figure, lo)}, {format_value(figure, hi)}]"
    return text


def markdown_table(rows: dict[str, dict], columns: list[str], cells, *, label: str,
                   lead: tuple[str, Callable[[dict], object]], verdict: bool) -> str:
    """A task's figures as markdown, one row per entry: `label`, the `lead` column, the task's
    `columns` (their text from `cells(figures)`) and, with `verdict`, the gate. Skipped rows say why."""
    head, value = lead
    cols = [label, head, *columns] + (["verdict"] if verdict else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, f in rows.items():
        if "skipped" in f:
            lines.append(f"| {name} | {value(f)} | " + "– | " * (len(cols) - 3) + f"skipped: {f['skipped']} |")
            continue
        row = [name, value(f), *cells(f)] + ([f["gate"]] if verdict else [])
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
