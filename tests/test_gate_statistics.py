"""The statistics every gate stands on (`verify.gates`), tested directly: the one-sided 95 % bounds
must miss the true rate about 5 % of the time (simulated with seeded draws), behave at the edges,
`pictures_needed` must agree with a brute-force search, and an inconclusive verdict must reach
the user with its picture count."""

import math
import textwrap

import numpy as np
import pytest

from mbv3_mobile.pipeline import GateFailure, load_pipeline, run_pipeline
from mbv3_mobile.verify.gates import (
    CONFIDENCE,
    FAIL,
    INCONCLUSIVE,
    PASS,
    GateRule,
    judge,
    pictures_needed,
    tango_bounds,
    wilson_bounds,
)

DRAWS = 2000
# With 2,000 draws the simulated miss rate of a bound with exactly 5 % misses falls in [3 %, 7 %]
# with probability > 0.9999 (binomial sd 0.49 pt); a bound a third too narrow misses ~14 %.
MISS_RANGE = (0.03, 0.07)


def _wilson_miss(n: int, p: float, z: float | None = None) -> tuple[float, float]:
    """Exact probabilities, over Binomial(n, p), that the Wilson lower bound lies above p and that the
    upper bound lies below it: summed over every outcome, so no simulation noise."""
    kw = {} if z is None else {"z": z}
    lower = upper = 0.0
    for k in range(n + 1):
        pmf = math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                       + k * math.log(p) + (n - k) * math.log1p(-p))
        lo, hi = wilson_bounds(k, n, **kw)
        lower += pmf if lo > p else 0.0
        upper += pmf if hi < p else 0.0
    return lower, upper


# Wilson's coverage is known to oscillate with n and p (Brown, Cai & DasGupta 2001): at the gates'
# sizes its exact one-sided miss rate stays within 2.5-7.5 % (measured: 2.6 % at n=200, p=0.95 to
# 7.3 % at n=100, p=0.9). A bound a third too narrow misses 11-16 % on the same grid.
WILSON_MISS_RANGE = (0.025, 0.075)
WILSON_GRID = [(50, 0.5), (50, 0.9), (100, 0.9), (200, 0.95), (400, 0.95), (500, 0.99), (1000, 0.98),
               (1000, 0.995), (2000, 0.9975)]


@pytest.mark.parametrize("n,p", WILSON_GRID)
def test_wilson_bounds_miss_the_true_rate_about_five_percent_of_the_time(n, p):
    lower, upper = _wilson_miss(n, p)
    for side, miss in (("lower", lower), ("upper", upper)):
        assert WILSON_MISS_RANGE[0] <= miss <= WILSON_MISS_RANGE[1], f"{side} bound misses {miss:.4f} at n={n}, p={p}"


def test_the_wilson_coverage_check_catches_a_bound_a_third_too_narrow():
    narrow = 1.6448536269514722 * 2 / 3
    for n, p in WILSON_GRID:
        assert max(_wilson_miss(n, p, narrow)) > WILSON_MISS_RANGE[1], (n, p)


# (pictures, P(only the reference is right), P(only the candidate is right)): the paired drop of an
# int8 model against fp32 lives at a few discordant pictures per hundred.
TANGO_GRID = [(100, 0.10, 0.05), (500, 0.02, 0.01), (1000, 0.01, 0.01), (2000, 0.006, 0.002)]


@pytest.mark.parametrize("n,pb,pc", TANGO_GRID)
def test_tango_bounds_miss_the_true_drop_five_percent_of_the_time(n, pb, pc):
    rng = np.random.default_rng(99 + n)
    draws = rng.multinomial(n, [pb, pc, 1 - pb - pc], size=DRAWS)
    delta = pb - pc
    bounds = [tango_bounds(int(b), int(c), n) for b, c, _ in draws]
    lower_miss = np.mean([lo > delta for lo, _ in bounds])
    upper_miss = np.mean([hi < delta for _, hi in bounds])
    for side, miss in (("lower", lower_miss), ("upper", upper_miss)):
        assert MISS_RANGE[0] <= miss <= MISS_RANGE[1], f"{side} bound misses {miss:.3f} at n={n}, pb={pb}, pc={pc}"


def test_wilson_bounds_at_the_edges():
    z2 = 1.6448536269514722 ** 2
    assert wilson_bounds(0, 0) == (0.0, 1.0)  # nothing measured: nothing known
    lo, hi = wilson_bounds(0, 100)
    assert lo == 0.0 and 0.0 < hi < 0.03  # ~2.6 %: zero failures still bound the rate above
    lo, hi = wilson_bounds(100, 100)
    assert hi == 1.0 and lo == pytest.approx(100 / (100 + z2))  # closed form at k = n
    lo, hi = wilson_bounds(1, 1)
    assert hi == 1.0 and lo == pytest.approx(1 / (1 + z2))  # one picture says little (~27 %)
    assert wilson_bounds(0, 1) == pytest.approx((0.0, z2 / (1 + z2)))
    for k in range(0, 21):  # always inside [0, 1], around the observed rate
        lo, hi = wilson_bounds(k, 20)
        assert 0.0 <= lo <= k / 20 <= hi <= 1.0


def test_tango_bounds_at_the_edges():
    assert tango_bounds(0, 0, 0) == (-1.0, 1.0)
    lo, hi = tango_bounds(0, 0, 1000)  # no discordant picture: a symmetric, narrow bound around 0
    assert lo == pytest.approx(-hi, abs=1e-9) and 0.0 < hi < 0.004
    lo, hi = tango_bounds(10, 0, 10)  # every picture lost: the drop is 1 at most, well above 0.5
    assert hi == pytest.approx(1.0, abs=1e-6) and 0.5 < lo < 1.0
    lo, hi = tango_bounds(1, 0, 1)
    assert -1.0 < lo < 1.0 and hi == pytest.approx(1.0, abs=1e-6)
    for b, c in [(5, 0), (0, 5), (7, 3), (3, 7)]:  # the bounds bracket the observed drop and mirror
        lo, hi = tango_bounds(b, c, 100)
        assert lo <= (b - c) / 100 <= hi
        mlo, mhi = tango_bounds(c, b, 100)
        assert (mlo, mhi) == pytest.approx((-hi, -lo), abs=1e-9)


def _agreement_figures(agree: int, n: int) -> dict:
    return {"images": n, "top1_agreement": agree / n, "counts": {"agree": agree},
            "bounds": {"top1_agreement": list(wilson_bounds(agree, n))}}


def _brute_force_needed(agree: int, n: int, limit: float) -> int:
    """The smallest picture count m (>= n) whose Wilson lower bound, at the same agreement rate,
    clears `limit`: checked one m at a time."""
    m = n
    while wilson_bounds(agree * m / n, m)[0] < limit:
        m += 1
    return m


@pytest.mark.parametrize("agree,n,limit", [(198, 200, 0.98), (97, 100, 0.95), (995, 1000, 0.99), (48, 50, 0.9)])
def test_pictures_needed_matches_a_brute_force_search(agree, n, limit):
    rule = GateRule("top1_agreement", ">=", limit)
    figures = _agreement_figures(agree, n)
    assert judge(figures, rule)["verdict"] == INCONCLUSIVE
    need = pictures_needed(figures, rule)
    brute = _brute_force_needed(agree, n, limit)
    assert abs(need - brute) <= 1, (need, brute)  # bisection on a real factor vs one m at a time


def test_pictures_needed_is_none_when_the_observed_rate_is_on_the_wrong_side():
    rule = GateRule("top1_agreement", ">=", 0.99)
    figures = _agreement_figures(97, 100)  # 97 % observed: more pictures cannot make it pass
    assert pictures_needed(figures, rule) is None
    assert judge(figures, rule)["verdict"] in (FAIL, INCONCLUSIVE)


def test_verdicts_follow_the_safe_side_bound():
    rule = GateRule("top1_agreement", ">=", 0.95)
    assert judge(_agreement_figures(1000, 1000), rule)["verdict"] == PASS  # lower ~99.7 %
    assert judge(_agreement_figures(90, 100), rule)["verdict"] == FAIL  # upper ~93.9 %
    inconclusive = judge(_agreement_figures(39, 40), rule)
    assert inconclusive["verdict"] == INCONCLUSIVE
    assert f"{int(CONFIDENCE * 100)} % bounds" in inconclusive["message"]
    assert inconclusive["pictures_needed"] == pictures_needed(_agreement_figures(39, 40), rule)


RATE_PIPELINE = textwrap.dedent("""
    name = "rate"
    [params]
    pictures = 40
    disagree = 1
    inconclusive = "fail"
    [help]
    pictures = "pictures compared"
    disagree = "pictures on which the two models disagree"
    inconclusive = "fail or warn"
    [[stages]]
    name = "agreement"
    run = "toy_stages:agreement"
    params = ["pictures", "disagree"]
    [gates.toy_rate]
    top1_agreement = { min = 0.95 }
""")


def test_an_inconclusive_gate_stops_publishing_and_says_how_many_pictures_would_decide(tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.setenv("MBV3_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TOY_LOG", str(tmp_path / "log"))
    path = tmp_path / "rate.toml"
    path.write_text(RATE_PIPELINE)
    spec = load_pipeline(path)
    need = pictures_needed(_agreement_figures(39, 40), GateRule("top1_agreement", ">=", 0.95))
    assert need and need > 40
    with pytest.raises(GateFailure) as failure:
        run_pipeline(spec, progress=False)
    text = str(failure.value)
    assert "toy rate: gate inconclusive, nothing published" in text
    assert "97.50 %" in text and "on 40 pictures" in text
    assert f"cannot tell with 40 pictures; about {need} pictures with the same rates would resolve it" in text

    # --inconclusive warn: reported, not blocking (judged again from the cache, nothing re-measured)
    results = run_pipeline(spec, {"inconclusive": "warn"}, progress=False)
    assert results["agreement"].cached
    assert "warning: gate inconclusive: top1_agreement = 97.50 %" in capsys.readouterr().out

    # with the pictures it asked for (same rate), the same gate passes
    scaled = {"pictures": need, "disagree": need // 40}
    passed = run_pipeline(spec, scaled, progress=False)
    assert passed["agreement"].meta["figures"]["images"] == need
