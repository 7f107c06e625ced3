"""Pieces of the harness that need no device: statistics, flags, parsing, quoting, reports, plans."""

from __future__ import annotations

import json
import shlex
import subprocess

import numpy as np
import pytest
from harness_support import ROOT  # noqa: F401  (puts mobile_harness on sys.path)

from mobile_harness.adb import quote_command
from mobile_harness.bench import BenchPlan, add_measurement, find_models, new_results, parse_runner_output
from mobile_harness.device_state import parse_state
from mobile_harness.errors import HarnessError, RunnerError, VerificationError
from mobile_harness.report import markdown, native_vs_python, recommended_threads, write_report
from mobile_harness.runner_inputs import synthetic_input
from mobile_harness.stats import percentile, reliability_flags, summarize, summarize_rounds


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        v = list(rng.exponential(3.0, n))
        for q in (0, 10, 50, 90, 100):
            assert percentile(v, q) == pytest.approx(np.percentile(v, q))
    s = summarize([1.0, 2.0, 3.0, 10.0])
    assert s["p50_ms"] == 2.5 and s["min_ms"] == 1.0 and s["n"] == 4


def test_variance_flags():
    steady = [{"latencies_ms": [10.0, 10.1, 10.2, 9.9], "load_ms": 5.0, "first_inference_ms": 20.0}] * 3
    assert reliability_flags(summarize_rounds(steady), steady) == []
    drifting = [{"latencies_ms": [x * k for x in (10.0, 10.1, 10.2)]} for k in (1.0, 1.3, 1.6)]
    flags = reliability_flags(summarize_rounds(drifting), drifting)
    assert any("round medians vary" in f for f in flags)
    tail = [{"latencies_ms": [10.0] * 8 + [40.0, 40.0]}] * 2
    assert any("p90 is" in f for f in reliability_flags(summarize_rounds(tail), tail))
    flags = reliability_flags(summarize_rounds(steady), steady, {"thermal_status": 1}, {"thermal_status": 3})
    assert any("thermal status severe after" in f for f in flags) and any("heated up" in f for f in flags)
    assert "single round" in reliability_flags(summarize_rounds(steady[:1]), steady[:1])[0]


def test_thread_plan():
    plan = BenchPlan(threads=["1", "2", "4", "all"])
    assert plan.thread_counts(8) == [1, 2, 4, 8]
    assert plan.thread_counts(2) == [1, 2]  # 4 would oversubscribe a 2-core device
    assert plan.thread_counts(None) == [1]
    with pytest.raises(HarnessError, match="positive integers or 'all'"):
        BenchPlan(threads=["0"])


def test_quote_command_survives_a_real_shell():
    nasty = ["a b", "$(id)", "`id`", "x;y", "it's", "*", "\"q\"", "\\", "-n", "", "new\nline"]
    out = subprocess.run(["sh", "-c", quote_command(["printf", "%s\\0", *nasty])], capture_output=True, timeout=10)
    assert out.stdout.split(b"\0")[:-1] == [a.encode() for a in nasty]
    assert shlex.split(quote_command(nasty)) == nasty


def test_parse_state_from_a_real_phone_listing():
    text = "\n".join([
        "prop.ro.product.manufacturer=Google", "prop.ro.product.model=Pixel 7", "prop.ro.product.cpu.abi=arm64-v8a",
        "prop.ro.build.version.sdk=34", "prop.ro.soc.manufacturer=Google", "prop.ro.soc.model=Tensor G2",
        "cpu.possible=0-7", "cpu0.governor=sched_pixel", "cpu0.cur_khz=1197000", "cpu7.governor=sched_pixel",
        "cpu7.max_khz=2850000", "thermal.status=", "zone.thermal_zone3=BIG:45123", "battery.temp=287",
        "id=uid=2000(shell) gid=2000(shell) groups=2000(shell) context=u:r:shell:s0", "su=",
    ])
    s = parse_state(text)
    assert (s["model"], s["abi"], s["soc"], s["cpus"]) == ("Pixel 7", "arm64-v8a", "Google Tensor G2", 8)
    assert s["governors"] == ["sched_pixel"] and s["cpufreq"]["cpu7"]["max_khz"] == 2850000
    assert s["thermal_status"] is None and s["battery_temp_c"] == pytest.approx(28.7)
    assert s["thermal_zones"]["thermal_zone3"] == {"type": "BIG", "temp_c": pytest.approx(45.123)}
    assert s["rooted"] is False and s["shell_uid"] == 2000
    assert parse_state("su=uid=0(root) gid=0(root)\ncpu.possible=0-3,6")["rooted"] is True
    assert parse_state("cpu.possible=0-3,6")["cpus"] == 5


def _runner_json(**over):
    doc = {"schema": "mbv3-runner/1", "status": "ok", "latencies_ms": [1.0, 2.0], "p50_ms": 1.5}
    doc.update(over)
    return json.dumps(doc)


def test_parse_runner_output_errors():
    assert parse_runner_output("log line\n" + _runner_json(), 0, where="w")["p50_ms"] == 1.5
    with pytest.raises(RunnerError, match=r"crashed \(SIGSEGV, exit 139\)"):
        parse_runner_output("", 139, where="w")
    with pytest.raises(RunnerError, match=r"crashed \(SIGKILL, exit 137\)"):
        parse_runner_output("partial", 137, where="w")
    with pytest.raises(RunnerError, match=r"runner failed \(exit 1\): cannot open"):
        parse_runner_output(json.dumps({"status": "error", "error": "cannot open x"}), 1, where="w")
    with pytest.raises(VerificationError, match="bundled expected outputs"):
        parse_runner_output(_runner_json(status="verify_failed", verification={"first_failure": "case 0"}), 3,
                            where="w")
    with pytest.raises(RunnerError, match="no valid latencies"):
        parse_runner_output(_runner_json(latencies_ms=[]), 0, where="w")
    with pytest.raises(RunnerError, match="rebuild it"):
        parse_runner_output(_runner_json(schema="mbv3-runner/0"), 0, where="w")


def test_synthetic_input_formula():
    x = synthetic_input(1, (1, 2, 3))
    j = np.arange(6)
    np.testing.assert_array_equal(x.reshape(-1), (((j * 7919 + 13) % 255) / 127.5 - 1).astype(np.float32))


def test_find_models(tmp_path):
    (tmp_path / "a.pte").write_bytes(b"x")
    (tmp_path / "b.bpte").write_bytes(b"x")
    (tmp_path / "c.onnx").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.pte").write_bytes(b"x")
    pkg = tmp_path / "e.mlpackage" / "Data"
    pkg.mkdir(parents=True)
    (pkg / "inner.mlpackage").mkdir()  # inside a package: not a model of its own
    assert [p.name for p in find_models([tmp_path])] == ["a.pte", "b.bpte", "d.pte"]
    assert [p.name for p in find_models([tmp_path], suffixes=(".mlpackage",))] == ["e.mlpackage"]
    with pytest.raises(HarnessError, match="does not exist"):
        find_models([tmp_path / "nope.pte"])
    with pytest.raises(HarnessError, match="not a .pte / .bpte model"):
        find_models([tmp_path / "c.onnx"])


def test_report_files(tmp_path):
    plan = BenchPlan(rounds=2, iters=3)
    res = new_results("host", plan, device={"model": "host", "abi": "x86_64", "cpus": 2})
    rounds = [{"latencies_ms": [2.0, 2.1, 2.0], "load_ms": 4.0, "first_inference_ms": 3.0}] * 2
    add_measurement(res, variant="m.pte", model="m.pte", runtime="native", threads=1, rounds=rounds)
    slow = [{"latencies_ms": [4.0, 4.2, 4.0], "load_ms": 9.0, "first_inference_ms": 6.0}] * 2
    add_measurement(res, variant="m.pte", model="m.pte", runtime="python", threads=1, rounds=slow)
    assert native_vs_python(res) == {("m.pte", 1): pytest.approx(0.5)}
    md = markdown(res)
    assert "| m.pte | native | 1 | 2.000 | 2.100 | 2.000 | 4.000 | 3.000 | 0.0% | – | yes |" in md
    assert "native p50 is 0.50x the Python runtime's" in md
    artifacts = tmp_path / "art"
    (artifacts / "etdump").mkdir(parents=True)
    (artifacts / "etdump" / "m.etdump").write_bytes(b"e")
    out = write_report(res, tmp_path / "rep", artifacts=artifacts)
    assert json.loads((out / "results.json").read_text())["measurements"][0]["reliable"] is True
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG" and (out / "etdump" / "m.etdump").is_file()


def test_report_picks_the_thread_count_by_the_exports_rule(tmp_path):
    res = new_results("adb", BenchPlan(rounds=3, iters=3), device={"model": "phone", "abi": "arm64-v8a", "cpus": 8})
    for threads, ms in ((1, 6.0), (2, 3.5), (4, 3.45)):  # 4 threads: 1.4 % faster than 2, inside the noise
        add_measurement(res, variant="m.pte", model="m.pte", runtime="native", threads=threads,
                        rounds=[{"latencies_ms": [ms, ms * 1.01, ms]}] * 3)
    pick = recommended_threads(res)
    assert [(p["variant"], p["threads"]) for p in pick] == [("m.pte", 2)]
    out = write_report(res, tmp_path / "rep")
    assert json.loads((out / "results.json").read_text())["recommended_threads"][0]["threads"] == 2
    assert "| m.pte | native | 2 | 1.71x |" in (out / "results.md").read_text()
