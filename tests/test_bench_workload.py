"""Issue 15's bench logic: the int8 roofline from /proc/cpuinfo, goals judged per model with the
server ORT peer, the recommended-threads rule, workload model names, and a one-point sweep that
writes its table and PNG (real export + timing, quick; no timed assertions)."""

import json

import pytest
import torch

from mbv3_mobile.crossformat.bench.common import BenchError
from mbv3_mobile.crossformat.bench.goals import evaluate_goals, parse_goal, recommended_threads
from mbv3_mobile.crossformat.bench.host import cpu_peak
from mbv3_mobile.crossformat.bench.workload import resolve_models

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 9R14
cpu MHz\t\t: 2600.000
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw avx512_vnni

"""


def test_int8_roofline_from_cpuinfo():
    zen4 = cpu_peak(ZEN4, cores=2)
    assert zen4["fp32_flop_per_cycle"] == 32
    assert zen4["int8_op_per_cycle"] == 128  # 32 VNNI MACs per 256-bit half x 2 OP x 2 units: 4x fp32
    assert zen4["peak_int8_gops"] == pytest.approx(2 * 128 * 2.6)
    assert "VNNI" in zen4["int8_assumption"] and "2 cores x 128 int8 OP/cycle" in zen4["int8_formula"]
    intel = ZEN4.replace("AuthenticAMD", "GenuineIntel").replace("cpu family\t: 25", "cpu family\t: 6")
    assert cpu_peak(intel, cores=1)["int8_op_per_cycle"] == 256  # 512-bit VPDPBUSD: 64 MACs
    avx_vnni = intel.replace(" avx512f avx512bw avx512_vnni", " avx_vnni")
    assert cpu_peak(avx_vnni, cores=1)["int8_op_per_cycle"] == 128
    avx2 = intel.replace(" avx512f avx512bw avx512_vnni", "")
    assert cpu_peak(avx2, cores=1)["int8_op_per_cycle"] == 64  # int16 VPMADDWD, no VNNI
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp\nBogoMIPS\t: 50\n"
    assert cpu_peak(arm, cores=1, max_mhz=2000)["int8_op_per_cycle"] == 64


def _latency(one: dict, two: dict, macs_frac: dict | None = None) -> dict:
    def block(med, n):
        return {"medians_ms": med, "rows": {k: {"fraction_of_roofline": (macs_frac or {}).get((k, n))} for k in med}}
    return {"1": block(one, 1), "2": block(two, 2)}


def test_goals_judged_per_model_with_the_server_peer():
    goals = {"pte_int8/pte_fp32 @1": 0.45, "pte_fp32/ort_fp32_server|ort_fp32 @all": 1.0,
             "pte_fp32/ort_fp32_server|ort_fp32 @1": 0.95, "speedup pte_fp32": 1.6,
             "speedup pte_fp32 on small-224": 1.0, "roofline pte_int8 @1": 0.40}
    one = {"pte_fp32": 6.0, "pte_int8": 3.6, "ort_fp32": 9.0, "ort_fp32_server": 6.2}
    two = {"pte_fp32": 3.5, "pte_int8": 2.0, "ort_fp32": 5.0, "ort_fp32_server": 3.4}
    lat = _latency(one, two, {("pte_int8", 1): 0.37})
    v = evaluate_goals(lat, goals, "large-224")
    by = {(g["goal"], g["threads"]): g for g in v}
    assert by[("pte_int8/pte_fp32 @1", "1")]["value"] == pytest.approx(0.6)
    assert by[("pte_int8/pte_fp32 @1", "1")]["verdict"] == "miss"
    server2 = by[("pte_fp32/ort_fp32_server|ort_fp32 @all", "2")]
    assert server2["denominator"] == "ort_fp32_server"  # the server graph wins over the mobile-EP one
    assert server2["value"] == pytest.approx(3.5 / 3.4) and server2["verdict"] == "miss"
    one_t = by[("pte_fp32/ort_fp32_server|ort_fp32 @1", "1")]
    assert one_t["value"] == pytest.approx(6.0 / 6.2) and one_t["verdict"] == "miss"  # 0.968 > 0.95
    speed = by[("speedup pte_fp32", "1->2")]
    assert speed["value"] == pytest.approx(6.0 / 3.5) and speed["verdict"] == "pass"
    assert by[("roofline pte_int8 @1", "1")]["verdict"] == "miss"
    assert not any(g["goal"].endswith("on small-224") for g in v)  # judged on small-224 only
    small = evaluate_goals(lat, goals, "small-224")
    assert [g["goal"] for g in small] == ["speedup pte_fp32 on small-224"]
    # without the server row the plain ORT fp32 row is the peer
    fallback = evaluate_goals(_latency({k: x for k, x in one.items() if k != "ort_fp32_server"},
                                       {k: x for k, x in two.items() if k != "ort_fp32_server"}), goals, "large-224")
    assert {g["denominator"] for g in fallback if g["goal"].startswith("pte_fp32/")} == {"ort_fp32"}
    with pytest.raises(BenchError, match="numerator/denominator"):
        parse_goal("pte_fp32", 1.0)
    with pytest.raises(BenchError, match="thread count"):
        parse_goal("roofline pte_fp32", 0.75)


def test_recommended_threads_needs_a_gain_beyond_the_noise():
    fast = recommended_threads({1: {"p50_ms": 6.0, "round_cv": 0.01}, 2: {"p50_ms": 3.6, "round_cv": 0.02}})
    assert fast["threads"] == 2 and fast["speedup_vs_fewest"] == pytest.approx(6.0 / 3.6)
    tie = recommended_threads({1: {"p50_ms": 1.80, "round_cv": 0.01}, 2: {"p50_ms": 1.76, "round_cv": 0.01}})
    assert tie["threads"] == 1  # 2.2 % faster: inside the 3 % floor
    noisy = recommended_threads({1: {"p50_ms": 2.0, "round_cv": 0.10}, 2: {"p50_ms": 1.7, "round_cv": 0.02}})
    assert noisy["threads"] == 1  # 15 % faster, but one round only, varying by 10 %: noise 20 %
    seven = [0.0] * 7  # the same spread over 7 rounds: standard error 2 x 0.102 / sqrt(7) = 7.7 % < 15 %
    many = recommended_threads({1: {"p50_ms": 2.0, "round_cv": 0.10, "round_p50_ms": seven},
                                2: {"p50_ms": 1.7, "round_cv": 0.02, "round_p50_ms": seven}})
    assert many["threads"] == 2
    slower = recommended_threads({"1": {"p50_ms": 1.8, "round_cv": 0.0}, "2": {"p50_ms": 2.2, "round_cv": 0.0}})
    assert slower["threads"] == 1


def test_thread_counts_are_timed_interleaved_and_the_clearly_faster_one_picked():
    import time

    from mbv3_mobile.core.threads import candidate_counts, pick_threads, time_thread_counts

    assert candidate_counts(1) == [1] and candidate_counts(2) == [1, 2] and candidate_counts(6) == [1, 2, 4, 6]
    opened = []

    def open_at(n):  # a model that takes 4 ms on one thread and 1 ms on two
        opened.append(n)
        return lambda: time.sleep(0.004 / n**2)

    timings = time_thread_counts(open_at, [1, 2], rounds=3, budget_s=0.02, warmup=1)
    assert opened == [1, 2, 2, 1, 1, 2]  # re-opened every round, the order rotating
    assert timings[1]["p50_ms"] > 2 * timings[2]["p50_ms"] and len(timings[2]["round_p50_ms"]) == 3
    assert pick_threads(timings)["threads"] == 2


def test_models_by_name():
    assert resolve_models(["default"], "") == [("default", "", None)]
    assert resolve_models(["large-224"], "x/my.pth")[0][1] == "x/my.pth"  # --checkpoint wins
    with pytest.raises(BenchError, match="unknown bench model"):
        resolve_models(["huge-999"], "")


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    from mbv3_mobile.crossformat.bench.sweep import run_sweep

    out = tmp_path_factory.mktemp("sweep")
    p = {"sweep_arch": ["small"], "sweep_width": ["0.35"], "sweep_res": ["96"], "threads": ["1"],
         "sweep_runtimes": ["pte_fp32", "pte_int8"], "sweep_rounds": 2, "sweep_iters": 3, "warmup": 1,
         "out": str(out)}
    return run_sweep(p, progress=False), out / "sweep"


@pytest.mark.slow
def test_sweep_writes_table_json_and_png(tiny_sweep):
    report, folder = tiny_sweep
    assert {f.name for f in folder.iterdir()} >= {"sweep.json", "sweep.md", "sweep.png"}
    assert (folder / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (pt,) = report["points"]
    assert (pt["arch"], pt["width"], pt["resolution"]) == ("small", 0.35, 96)
    assert 0 < pt["macs"] < 10e6
    lat = pt["latency"]["1"]
    assert set(lat) == {"pte_fp32", "pte_int8"}  # ORT's dynamo export is left out to keep the test short
    assert all(v["p50_ms"] > 0 and v["n"] == 6 for v in lat.values())
    assert pt["bytes"]["pte_int8"] < pt["bytes"]["pte_fp32"]
    md = (folder / "sweep.md").read_text()
    assert f"| small | 0.35 | 96 | {pt['macs'] / 1e6:.1f} |" in md and "random" in md
    assert json.loads((folder / "sweep.json").read_text())["points"][0]["macs"] == pt["macs"]


def test_ort_profile_sums_its_kernels_per_op_type(tmp_path):
    from mbv3_mobile.crossformat.bench.profile import profile_ort
    from mbv3_mobile.crossformat.bench.workload import randomized_model
    from mbv3_mobile.export.onnx.convert import export_onnx

    export_onnx(randomized_model("small", 0.35, resolution=32), 32, tmp_path / "m.onnx")
    prof = profile_ort(tmp_path / "m.onnx", torch.randn(1, 3, 32, 32), [1], runs=3)[1]
    assert prof["runs"] == 3 and any("Conv" in op for op in prof["ops"])  # warm-up runs left out
    assert sum(v["share"] for v in prof["ops"].values()) == pytest.approx(1.0)
    assert prof["total_ms"] == pytest.approx(sum(v["ms"] for v in prof["ops"].values()))
