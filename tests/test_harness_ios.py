"""iOS target on Linux: the xcrun / xcodebuild / devicectl commands it builds, and parsing of
format samples (mobile_harness/ios/samples, invented values). Running it needs macOS + Xcode."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
from harness_support import ROOT  # noqa: F401  (puts mobile_harness on sys.path)

from mobile_harness.bench import BenchPlan
from mobile_harness.errors import DeviceError, HarnessError, RunnerError
from mobile_harness.targets import ios

SAMPLES = Path(ios.IOS_DIR) / "samples"
PLAN = BenchPlan(rounds=2, iters=4, warmup=1)


def test_simulator_selection_from_simctl_json():
    sims = ios.parse_simctl_devices((SAMPLES / "simctl_list.json").read_text())
    assert [s["name"] for s in sims] == ["iPad Air 11-inch (M2)", "iPhone 15", "iPhone 14"]  # watchOS dropped
    assert ios.pick_simulator(sims)["name"] == "iPhone 15"  # newest runtime, an iPhone
    assert ios.pick_simulator(sims, "iPhone 14")["udid"].endswith("0001")
    booted = [dict(sims[2], state="Booted"), *sims[:2]]
    assert ios.pick_simulator(booted)["name"] == "iPhone 14"
    with pytest.raises(DeviceError, match="no simulator named"):
        ios.pick_simulator(sims, "iPhone 99")
    with pytest.raises(DeviceError, match="install an iOS runtime"):
        ios.pick_simulator([])


def test_simulator_commands(tmp_path):
    assert ios.simctl_list_cmd() == ["xcrun", "simctl", "list", "devices", "available", "--json"]
    model = tmp_path / "m m.mlpackage"
    cmd, env = ios.xcodebuild_test_cmd("UDID-1", model, tmp_path / "r.json", PLAN, ["cpuOnly", "all"],
                                       tmp_path / "dd")
    assert cmd[:2] == ["xcodebuild", "test"] and "platform=iOS Simulator,id=UDID-1" in cmd
    assert "-only-testing:MBV3BenchTests/BenchmarkTests/testBenchmark" in cmd
    assert env == {"TEST_RUNNER_MBV3_MODEL": str(model.resolve()), "TEST_RUNNER_MBV3_OUT": str(tmp_path / "r.json"),
                   "TEST_RUNNER_MBV3_ITERS": "4", "TEST_RUNNER_MBV3_WARMUP": "1", "TEST_RUNNER_MBV3_ROUNDS": "2",
                   "TEST_RUNNER_MBV3_UNITS": "cpuOnly,all"}


def test_device_commands(tmp_path):
    devs = ios.parse_devicectl_devices((SAMPLES / "devicectl_list.json").read_text())
    assert devs == [{"udid": "00008130-000A00000000001E", "identifier": "A1B2C3D4-0000-4000-8000-00000000000A",
                     "name": "Test iPhone", "model": "iPhone16,1", "os": "17.5.1", "platform": "iOS",
                     "state": "connected", "paired": True}]
    steps = ios.devicectl_cmds("UD", Path("/b/MBV3Bench.app"), Path("/m/my model.mlpackage"), PLAN, ["cpuOnly"],
                               tmp_path / "r.json")
    assert steps["install"] == ["xcrun", "devicectl", "device", "install", "app", "--device", "UD", "/b/MBV3Bench.app"]
    # Arguments are passed as argv elements (no shell), so a space in the name needs no quoting.
    assert steps["copy_model"][-2:] == ["--destination", "Documents/my model.mlpackage"]
    launch = steps["launch"]
    assert launch[launch.index(ios.BUNDLE_ID) + 1:] == [
        "--mbv3-model", "Documents/my model.mlpackage", "--mbv3-out", "Documents/result.json", "--mbv3-iters", "4",
        "--mbv3-warmup", "1", "--mbv3-rounds", "2", "--mbv3-units", "cpuOnly"]
    assert steps["fetch"][-4:] == ["--source", "Documents/result.json", "--destination", str(tmp_path / "r.json")]
    assert steps["uninstall"][-1] == ios.BUNDLE_ID
    assert "DEVELOPMENT_TEAM=T1" in ios.xcodebuild_app_cmd(tmp_path, "T1")


def test_app_results_become_measurements():
    doc = ios.parse_app_result((SAMPLES / "result_device.json").read_text(), where="sample")
    res = ios.results_from_app(doc, PLAN, model=Path("mbv3_small.mlpackage"), target_desc={"udid": "UD"})
    by = {m["runtime"]: m for m in res["measurements"]}
    assert set(by) == {"coreml-cpuOnly", "coreml-cpuAndNeuralEngine"}
    assert by["coreml-cpuOnly"]["summary"]["n"] == 8 and by["coreml-cpuOnly"]["summary"]["cold_load_ms"] == 37.5
    assert by["coreml-cpuAndNeuralEngine"]["summary"]["first_launch_load_ms"] == 300.0
    assert any("cpuAndGPU: not measured" in n for n in res["notes"])
    assert res["device"]["model"] == "iPhone16,1" and res["device"]["udid"] == "UD"
    sim = ios.parse_app_result((SAMPLES / "result_simulator.json").read_text(), where="sample")
    res = ios.results_from_app(sim, PLAN, model=Path("m.mlpackage"), target_desc={})
    assert "simulator: timings are the Mac's, not a phone's" in res["measurements"][0]["flags"]
    with pytest.raises(RunnerError, match="expected mbv3-ios-bench/1"):
        ios.parse_app_result('{"schema": "x"}', where="w")
    with pytest.raises(RunnerError, match="the benchmark app failed: cannot compile"):
        ios.parse_app_result('{"schema": "mbv3-ios-bench/1", "error": "cannot compile m"}', where="w")


def test_swift_sources_agree_with_the_harness():
    core = (Path(ios.IOS_DIR) / "MBV3Bench" / "BenchmarkCore.swift").read_text()
    assert f'"schema": "{ios.APP_SCHEMA}"' in core
    for key in ("load_ms", "first_inference_ms", "latencies_ms", "compute_units", "thermal_state_after"):
        assert f'"{key}"' in core
    assert "(j * 7919 + 13 * i) % 255" in core  # same synthetic input as the native runner
    project = (Path(ios.IOS_DIR) / "project.yml").read_text()
    assert f"PRODUCT_BUNDLE_IDENTIFIER: {ios.BUNDLE_ID}" in project


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the refusal on non-macOS hosts")
def test_ios_target_refuses_clearly_off_macos(tmp_path):
    model = tmp_path / "m.mlpackage"
    model.mkdir()
    with pytest.raises(HarnessError, match="needs macOS with Xcode"):
        ios.run_ios([model], PLAN)
