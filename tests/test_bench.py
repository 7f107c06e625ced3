"""`mbv3 bench`: a short real run on the CI model (structure and internal consistency of the figures,
never absolute times) and the pure logic: peak FLOPs from cpuinfo, ratios, goal verdicts, threads."""

import json
import math

import ci_exports
import pytest

from mbv3_mobile.cli import main
from mbv3_mobile.crossformat import bench

pytestmark = pytest.mark.android_export  # the shared android export: conftest schedules it

# The shared export settings (tests/fixtures/ci_exports.py): their cached stages are reused here.
FORMAT_PARAMS = {"android_params": ci_exports.ANDROID, "onnx_params": ci_exports.ONNX}

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Processor
cpu MHz\t\t: 2599.998
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw

processor\t: 1
vendor_id\t: GenuineIntel
cpu MHz\t\t: 1200.000
flags\t\t: fpu sse
"""


@pytest.fixture(scope="module")
def quick_report(trained_ci_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    report, folder = bench.run_bench({"checkpoint": str(trained_ci_checkpoint), "quick": True, "out": str(out),
                                      "litert": False, **FORMAT_PARAMS}, progress=False)
    return report, folder


@pytest.mark.slow
def test_quick_run_writes_a_consistent_report(quick_report):
    report, folder = quick_report
    assert {p.name for p in folder.iterdir()} >= {"bench.json", "bench.md", "latency.png", "goals.png"}
    assert json.loads((folder / "bench.json").read_text())["schema"] == bench.SCHEMA
    assert report["threads"] == sorted({1, bench.usable_cores()})
    assert report["runtimes"]["litert_fp32"]["skipped"] == "--no-litert"
    measured = [k for k, v in report["runtimes"].items() if not v["skipped"]]
    assert {"eager_fp32", "pte_fp32", "pte_int8", "ort_fp32", "ort_int8"} <= set(measured)
    macs = report["macs"]
    for n, block in report["latency"].items():
        assert set(block["rows"]) == set(measured)
        eager = block["medians_ms"]["eager_fp32"]
        for key, row in block["rows"].items():
            s = row["summary"]
            assert s["n"] == report["plan"]["rounds"] * report["plan"]["iters"]
            assert 0 < s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["max_ms"]
            assert block["medians_ms"][key] == s["p50_ms"]
            assert block["ratio_vs_eager"][key] == pytest.approx(s["p50_ms"] / eager)
            assert row["images_per_s"] == pytest.approx(1e3 / s["p50_ms"])
            assert row["gflops"] == pytest.approx(2 * macs * row["images_per_s"] / 1e9)
            assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / (report["peak"]["peak_gflops_per_core"] * int(n)))
            if report["runtimes"][key]["precision"] == "fp32":
                # Every fp32 runtime computes the eager logits on the same image: this also proves the
                # native runner (fed the .bpte's bundled case) got the same pixels as the rest.
                assert row["max_abs_diff_vs_eager"] < 1e-4 and row["same_top1_as_eager"], key
        for g in block["goals"]:
            assert g["threads"] == n
    # The CI model (small, 32 px) is none of the goals' models: no verdict, and the report says so.
    assert report["model_key"] == f"small-{report['resolution']}" and report["goals"]["verdicts"] == []
    assert f"No goal of `05_bench.toml` is judged on {report['model_key']}" in (folder / "bench.md").read_text()
    for key, rec in report["recommended_threads"].items():
        assert rec["threads"] in report["threads"], key
        assert rec["p50_ms"] == report["latency"][str(rec["threads"])]["medians_ms"][key]
    for n, block in report["latency"].items():
        for key, row in block["rows"].items():
            if report["runtimes"][key]["precision"] == "int8":
                assert row["fraction_of_int8_peak"] == pytest.approx(
                    row["gflops"] / (report["peak"]["peak_int8_gops_per_core"] * int(n)))
                assert row["fraction_of_roofline"] == row["fraction_of_int8_peak"]
            else:
                assert row["fraction_of_roofline"] == row["fraction_of_peak"]


@pytest.mark.slow
def test_quick_run_measures_memory_training_export_and_load(quick_report):
    report, _ = quick_report
    for key, pr in report["probes"].items():
        assert pr["load_ms"] > 0 and pr["first_inference_ms"] > 0, key
        assert pr["peak_rss_mb"] > 0, key
        if pr["process"] == "python":
            assert pr["peak_rss_mb"] >= pr["rss_after_load_mb"] >= pr["rss_after_import_mb"] * 0.9
    for key, rt in report["runtimes"].items():
        if not rt["skipped"]:
            assert rt["bytes"] > 0, key
    assert report["runtimes"]["pte_int8"]["bytes"] < report["runtimes"]["pte_fp32"]["bytes"]
    variants = report["training"]["variants"]
    assert set(variants) == {"eager", "channels_last"}  # --quick leaves torch.compile out
    for v in variants.values():
        assert v["images_per_s"] > 0 and v["steps"] >= 1
    assert variants["eager"]["speedup_vs_eager"] == 1.0
    export = report["export"]
    assert export["mode"] == "recorded"
    assert {"resolve", "lower[fp32]", "lower[ptq]", "package"} <= set(export["pipelines"]["android"]["stages"])
    assert export["pipelines"]["onnx"]["stages"]["export"]["cold_s"] > 0
    assert len(report["loadavg_before"]) == 3 and len(report["loadavg_after"]) == 3
    assert report["delegation"]["fp32"]["non_delegated_compute_ops"] == []


# ---------------------------------------------------------------- pure logic


def test_peak_from_cpuinfo_intel_avx512():
    peak = bench.cpu_peak(INTEL, cores=2)
    assert peak["fp32_flop_per_cycle"] == 64  # 16 lanes x FMA (2) x 2 units
    assert peak["clock_mhz"] == pytest.approx(2599.998)  # the first processor's clock, not the second's
    assert peak["peak_gflops"] == pytest.approx(2 * 64 * 2.599998)
    assert peak["peak_gflops_per_core"] * 2 == pytest.approx(peak["peak_gflops"])
    assert "2 cores x 64 FLOP/cycle" in peak["formula"]
    assert bench.cpu_peak(INTEL, cores=1, max_mhz=3000)["peak_gflops"] == pytest.approx(192.0)


ARM_VM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def test_peak_without_a_cpu_clock_says_clock_unknown_instead_of_failing():
    """Arm VMs list no "cpu MHz" and have no cpufreq: the bench still measures latency, with no roofline."""
    peak = bench.cpu_peak(ARM_VM, cores=2)
    assert peak["clock_mhz"] is None and peak["peak_gflops"] is None and peak["peak_int8_gops_per_core"] is None
    assert "clock unknown" in peak["formula"] and peak["fp32_flop_per_cycle"] == 16  # NEON 4 lanes x FMA x 2
    assert "SDOT" in peak["int8_assumption"]
    assert bench.cpu_peak(ARM_VM, cores=2, max_mhz=2000)["peak_gflops"] == pytest.approx(2 * 16 * 2.0)


def test_peak_from_cpuinfo_other_isas():
    zen4 = INTEL.replace("GenuineIntel", "AuthenticAMD").replace("cpu family\t: 6", "cpu family\t: 25")
    assert bench.cpu_peak(zen4, cores=1)["fp32_flop_per_cycle"] == 32  # AVX-512 on 256-bit datapaths
    avx2 = INTEL.replace(" avx512f avx512bw", "")
    assert bench.cpu_peak(avx2, cores=1)["fp32_flop_per_cycle"] == 32
    no_fma = INTEL.replace(" fma avx2 avx512f avx512bw", "")
    assert bench.cpu_peak(no_fma, cores=1)["fp32_flop_per_cycle"] == 16  # AVX, separate mul + add
    assert bench.cpu_peak(INTEL.replace("cpu MHz", "bogomips"), cores=1)["peak_gflops"] is None  # no clock
    with pytest.raises(bench.BenchError, match="core count"):
        bench.cpu_peak(INTEL, cores=0)


def test_goal_verdicts_follow_the_ratios():
    medians = {"eager_fp32": 10.0, "pte_fp32": 3.0, "pte_int8": 2.0, "ort_fp32": 4.0, "ort_int8": 2.4,
               "pte_fp32_native": 2.0, "pte_int8_native": 1.0}
    goals = {"pte_fp32/ort_fp32": 0.75, "pte_int8/pte_fp32": 0.6, "pte_int8/ort_int8": 0.8}
    lat = {"1": {"medians_ms": medians, "rows": {}}}
    rows = {(g["numerator"], g["denominator"]): g for g in bench.evaluate_goals(lat, goals)}
    assert rows[("pte_fp32", "ort_fp32")]["value"] == pytest.approx(0.75)
    assert rows[("pte_fp32", "ort_fp32")]["verdict"] == "pass"  # the limit itself passes
    assert rows[("pte_int8", "pte_fp32")]["verdict"] == "miss"  # 0.667 > 0.6
    assert rows[("pte_int8_native", "pte_fp32_native")]["value"] == pytest.approx(0.5)
    assert rows[("pte_int8_native", "ort_int8")]["verdict"] == "pass"
    assert rows[("pte_int8", "ort_int8")]["verdict"] == "miss"  # 0.833 > 0.8
    partial = bench.evaluate_goals({"1": {"medians_ms": {"pte_fp32": 1.0}}}, {"pte_fp32/ort_fp32": 0.75})
    assert [g["verdict"] for g in partial] == ["not measured"]
    assert bench.evaluate_goals(lat, goals, "small-64") == []  # the goals are Large 224's unless named
    with pytest.raises(bench.BenchError, match="numerator/denominator"):
        bench.evaluate_goals(lat, {"pte_fp32": 0.75})


def test_ratios_threads_and_rotation():
    r = bench.ratios({"eager_fp32": 8.0, "ort_fp32": 2.0})
    assert r == {"eager_fp32": 1.0, "ort_fp32": 0.25}
    with pytest.raises(bench.BenchError, match="baseline"):
        bench.ratios({"ort_fp32": 2.0})
    assert bench.thread_counts(["1", "all"], 2) == [1, 2]
    assert bench.thread_counts(["all", "2", "8"], 2) == [2]  # 8 would only oversubscribe 2 cores
    with pytest.raises(bench.BenchError, match="--threads"):
        bench.thread_counts(["0"], 2)
    with pytest.raises(bench.BenchError, match="fits"):
        bench.thread_counts(["4"], 2)
    keys = ["a", "b", "c"]
    orders = [bench.rotation(keys, r) for r in range(3)]
    for position in range(3):  # every runtime takes every position once in len(keys) rounds
        assert sorted(o[position] for o in orders) == keys
    assert math.isclose(bench.ratios({"eager_fp32": 3.0, "x": 1.0})["x"], 1 / 3)


def test_cli_rejects_bad_parameters_before_any_work(capsys, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MBV3_CACHE", str(cache))
    assert main(["bench", "--threads", "two", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--threads" in err and "'two'" in err
    assert main(["bench", "--threads", "64", "--out", str(tmp_path / "out")]) == 2  # more than this machine has
    assert "fits this machine" in capsys.readouterr().err
    assert main(["bench", "--rounds", "0", "--out", str(tmp_path / "out")]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err
    # refused before any model was resolved: no checkpoint written, no stage cached, no output
    assert not cache.exists() or not any(cache.rglob("*")), sorted(cache.rglob("*"))
    assert not (tmp_path / "out").exists()


def test_findings_explain_misses_from_the_figures():
    goals = {"pte_fp32/ort_fp32": 0.75, "pte_int8/pte_fp32": 0.6, "speedup pte_int8": 1.6}
    one = {"eager_fp32": 3.0, "pte_fp32": 0.48, "pte_fp32_native": 0.36, "ort_fp32": 0.52,
           "pte_int8": 0.28, "pte_int8_native": 0.17}
    two = {**one, "pte_int8": 0.33, "pte_int8_native": 0.23, "pte_fp32_native": 0.37}

    def block(med):
        rows = {k: {"summary": {"round_cv": 0.02}, "fraction_of_roofline": 0.5, "fraction_of_peak": 0.5} for k in med}
        return {"medians_ms": med, "rows": rows}

    lat = {"1": block(one), "2": block(two)}
    report = {"latency": lat, "training": {"variants": {}}, "goals": {"verdicts": bench.evaluate_goals(lat, goals)}}
    lines = bench.findings(report)
    first = next(line for line in lines if line.startswith("pte_fp32 / ort_fp32 @1"))
    assert "native runner passes (0.692)" in first and "pte_fp32 120 us" in first
    second = next(line for line in lines if line.startswith("pte_int8 / pte_fp32 @2"))
    assert "also a miss" in second and "pte_int8 gets no faster from 1 to 2 threads (0.280 -> 0.330 ms)" in second
    assert not any(line.startswith("pte_int8 / pte_fp32 @1") for line in lines)  # 0.583 passes at 1 thread
    speed = next(line for line in lines if line.startswith("speedup pte_int8"))
    assert "0.280 ms at 1 thread(s), 0.330 ms at 2" in speed
