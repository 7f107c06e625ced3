"""The harness CLI as a person types it (`python -m mobile_harness build|run|devices|report`), in a
subprocess from the repo root: the host benchmark and its report, the cached build, the device
list, redrawing a report, and a clear stop when an adb run needs an Android NDK this machine lacks.
(The adb benchmark and its failures through the CLI are covered in test_harness_adb/_faults.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from harness_support import harness_cli as harness

pytest_plugins = ["harness_fixtures"]  # the harness fixtures (tests/harness_fixtures.py)

PNG = b"\x89PNG\r\n\x1a\n"
# Every variable through which a machine could point the harness (or a build) at an Android NDK/SDK.
ANDROID_VARS = ("ANDROID_NDK", "ANDROID_NDK_HOME", "ANDROID_NDK_ROOT", "ANDROID_HOME", "ANDROID_SDK_ROOT",
                "MBV3_EXECUTORCH_ANDROID_ROOT")


def tree(folder) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), and every folder (-> b'<dir>')."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def host_run(harness_runner, harness_models, tmp_path_factory):
    """One `run --target host` (native runner + Python runtime, 2 rounds x 5 iterations): its process, report
    folder, the model it timed and the thread counts it should have swept (1 and 'all' = this host's CPUs)."""
    out = tmp_path_factory.mktemp("host-run") / "runs" / "report"
    pte = harness_models["pte"]
    proc = harness("run", "--target", "host", "--model", pte, "--threads", "1,all", "--rounds", 2, "--iters", 5,
                   "--warmup", 1, "--cooldown-s", 0, "--out", out, timeout=300)
    return proc, out, pte, sorted({1, os.cpu_count() or 1})


@pytest.mark.slow
def test_run_host_writes_a_report_of_real_native_and_python_timings(host_run, harness_runner):
    proc, out, pte, threads = host_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"[harness] wrote {out}/results.json, results.md, latency.png" in proc.stdout.splitlines()
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "mbv3-harness/1" and results["target"] == "host"
    assert results["device"] == {"model": "host", "abi": harness_runner.arch, "cpus": os.cpu_count()}
    assert results["runner"]["deploy_dir"] == str(harness_runner.deploy_dir)  # the cached build, not a new one
    assert results["plan"] == {"threads": ["1", "all"], "rounds": 2, "iters": 5, "warmup": 1, "cooldown_s": 0.0,
                               "timeout_s": 300.0, "etdump": False}
    ms = {(m["runtime"], m["threads"]): m for m in results["measurements"]}
    assert set(ms) == {(rt, t) for rt in ("native", "python") for t in threads}
    for (runtime, t), m in ms.items():
        assert m["variant"] == pte.name and m["model"] == str(pte)
        assert len(m["rounds"]) == 2 and all(r["threads"] == t for r in m["rounds"])
        lat = [x for r in m["rounds"] for x in r["latencies_ms"]]
        assert len(lat) == 10 and min(lat) > 0
        s = m["summary"]
        assert s["n"] == 10 and 0 < s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["max_ms"]
        assert s["min_ms"] == pytest.approx(min(lat)) and s["max_ms"] == pytest.approx(max(lat))
        assert s["cold_load_ms"] > 0 and s["cold_first_inference_ms"] > 0
        assert m["reliable"] == (not m["flags"])
        if runtime == "native":
            assert m["verification"]["status"] == "skipped"  # a .pte bundles no expected outputs
            assert len({r["checksum"] for r in m["rounds"]}) == 1
        else:  # the Python runtime ran on the runner's input and agreed with it
            assert m["max_abs_diff_vs_native"] is not None and m["max_abs_diff_vs_native"] <= 1e-3
    # The console states the native/Python ratio per thread count, from the same figures as results.json.
    for t in threads:
        ratio = ms[("native", t)]["summary"]["p50_ms"] / ms[("python", t)]["summary"]["p50_ms"]
        assert f"[harness] {pte.name} {t} threads: native/python p50 ratio {ratio:.2f}" in proc.stdout
    if len(threads) > 1:  # several counts timed: the count to ship, per runtime, in results.json and on the console
        picks = {p["runtime"]: p["threads"] for p in results["recommended_threads"]}
        assert set(picks) == {"native", "python"} and set(picks.values()) <= set(threads)
        assert f"[harness] {pte.name} (native): use {picks['native']} thread(s) on this host target" in proc.stdout
    md = (out / "results.md").read_text()
    assert md.startswith("# Benchmark: host target\n")
    assert f"- device: host; ABI {harness_runner.arch}; {os.cpu_count()} CPUs" in md
    assert "- plan: 2 rounds x 5 timed iterations (+1 warm-up), cool-down 0.0 s" in md
    table = md.partition("\n## ")[0]  # the measurements, before the flags / threads-to-ship / ratio sections
    for runtime, t in ms:
        assert table.count(f"| {pte.name} | {runtime} | {t} | ") == 1
    assert (out / "latency.png").read_bytes()[:8] == PNG
    # The report folder holds the report and nothing else; no temp folder is left beside it.
    assert sorted(p.name for p in out.iterdir()) == ["latency.png", "results.json", "results.md"]
    assert [p.name for p in out.parent.iterdir()] == ["report"]


@pytest.mark.slow
def test_report_redraws_results_md_and_plot_from_an_edited_results_json(host_run, tmp_path):
    proc, out, pte, _ = host_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    before_md = (folder / "results.md").read_text()
    results = json.loads((folder / "results.json").read_text())
    assert results["notes"] == []
    results["notes"].append("re-run on battery, screen off")
    edited = json.dumps(results, indent=2) + "\n"
    (folder / "results.json").write_text(edited)
    (folder / "results.md").unlink()
    (folder / "latency.png").unlink()
    rep = harness("report", folder / "results.json")
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert rep.stdout == f"[harness] rewrote {folder}/results.md and latency.png\n"
    # The table is rebuilt from results.json: the same as `run` wrote, plus the note added by hand.
    assert (folder / "results.md").read_text() == before_md + "\n## Notes\n\n- re-run on battery, screen off\n"
    assert (folder / "latency.png").read_bytes()[:8] == PNG
    assert (folder / "results.json").read_text() == edited  # the input is left as it was
    assert sorted(p.name for p in folder.iterdir()) == ["latency.png", "results.json", "results.md"]


def test_report_on_a_missing_results_json_is_one_error_line(tmp_path):
    missing = tmp_path / "runs" / "results.json"
    rep = harness("report", missing)
    assert rep.returncode == 2 and rep.stdout == ""
    assert rep.stderr.splitlines() == [f"error: cannot read {missing}: [Errno 2] No such file or directory: "
                                       f"'{missing}'"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content, says", [('{"target": "host"}', "no 'plan' entry"), ("[1]", "it holds a list")])
def test_report_on_json_that_is_not_a_results_file_is_one_error_line(tmp_path, content, says):
    path = tmp_path / "results.json"
    path.write_text(content)
    rep = harness("report", path)
    assert rep.returncode == 2 and rep.stdout == "" and "Traceback" not in rep.stderr
    assert rep.stderr.splitlines() == [f"error: {path} is not a harness results.json ({says}): pass the results.json "
                                       "that `python -m mobile_harness run` wrote"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # nothing drawn from it


def test_devices_with_an_adb_path_that_does_not_exist_is_one_error_line(tmp_path):
    rep = harness("devices", "--adb", tmp_path / "no-adb")
    assert rep.returncode == 2 and "Traceback" not in rep.stderr
    assert rep.stderr.splitlines() == [f"error: adb '{tmp_path / 'no-adb'}' does not exist or is not executable: "
                                       "pass --adb /path/to/adb or set ADB (Debian: apt-get install adb)"]


def test_build_prints_the_cached_deploy_folder_and_builds_nothing_the_second_time(harness_runner):
    stamp = harness_runner.deploy_dir.parent / "build.json"
    stamp_mtime = stamp.stat().st_mtime_ns
    docs = []
    for _ in range(2):
        proc = harness("build", "--target", "host")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "building" not in proc.stderr  # the log (stderr) says nothing was built
        docs.append(json.loads(proc.stdout))  # stdout is only the JSON: `build | jq .deploy_dir` works
    first, second = docs
    assert first == second
    assert first["cached"] is True and first["target"] == "host" and first["arch"] == harness_runner.arch
    assert first["deploy_dir"] == str(harness_runner.deploy_dir)
    assert first["binary"] == str(harness_runner.deploy_dir / "mbv3_runner")
    assert first["libs"] == [p.name for p in harness_runner.libs]
    assert all((harness_runner.deploy_dir / n).is_file() for n in ["mbv3_runner", *first["libs"]])
    assert stamp.stat().st_mtime_ns == stamp_mtime  # the cached build was not rewritten


def test_devices_says_none_are_attached_on_an_empty_adb_server(adb):
    proc = harness("devices", "--adb-port", adb.server_port, env=adb.env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "no devices attached (adb devices lists none)\n"


def test_devices_lists_the_connected_device_and_its_state(adb, fake_devices):
    dev = fake_devices()
    proc = harness("devices", "--adb-port", adb.server_port, env=adb.env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{dev.serial}\tdevice\n"


def _no_ndk_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ANDROID_VARS}
    env.pop("ANDROID_SERIAL", None)
    return env


def _assert_one_ndk_error_line(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: android-arm64 needs the Android NDK: ")
    assert "set ANDROID_NDK" in line and "build/cmake/android.toolchain.cmake" in line  # the fix
    assert "mobile_harness/README.md" in line


def test_run_adb_without_ndk_stops_with_one_line_and_keeps_the_previous_report(harness_models, tmp_path):
    runs = tmp_path / "runs"
    out = runs / "report"
    out.mkdir(parents=True)
    (out / "results.json").write_text('{"previous": "report"}\n')
    (out / "results.md").write_text("# the previous report\n")
    before = tree(runs)
    proc = harness("run", "--target", "adb", "--model", harness_models["pte"], "--out", out, "--threads", 1,
                   "--rounds", 1, "--iters", 1, env=_no_ndk_env(), timeout=60)
    _assert_one_ndk_error_line(proc)
    assert tree(runs) == before  # the earlier report intact, no temp or artifacts folder beside it


def test_run_adb_without_ndk_creates_no_output_folder(harness_models, tmp_path):
    out = tmp_path / "runs" / "report"
    proc = harness("run", "--target", "adb", "--model", harness_models["pte"], "--out", out,
                   env=_no_ndk_env(), timeout=60)
    _assert_one_ndk_error_line(proc)
    assert list(tmp_path.iterdir()) == []
