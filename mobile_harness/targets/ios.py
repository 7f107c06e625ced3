"""iOS target (macOS only): time a Core ML .mlpackage per compute unit with the benchmark in
mobile_harness/ios/ (Swift: a small app + an XCTest sharing BenchmarkCore.swift).

- Simulator: `xcrun simctl` picks/boots a simulator, `xcodebuild test` runs the XCTest on it with
  TEST_RUNNER_MBV3_* variables (xcodebuild hands TEST_RUNNER_-prefixed variables to the test
  process); the simulator shares the Mac's filesystem, so the JSON is written straight to a host path.
- Device: the app is built and installed, the model copied into its container, the app launched
  with arguments, and the JSON copied back, all with `xcrun devicectl`; then it is uninstalled.

Nothing here runs on Linux: tests check the commands built and parse recorded-format samples
(mobile_harness/ios/samples/). Simulator timings are the Mac's CPU/GPU, not a phone's: they are
flagged unreliable for that reason.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..bench import BenchPlan, add_measurement, new_results
from ..errors import DeviceError, HarnessError, RunnerError

IOS_DIR = Path(__file__).resolve().parents[1] / "ios"
PROJECT = IOS_DIR / "MBV3Bench.xcodeproj"  # generated from ios/project.yml by XcodeGen
BUNDLE_ID = "org.mbv3mobile.bench"
APP_SCHEMA = "mbv3-ios-bench/1"
COMPUTE_UNITS = ("cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all")
UNRELIABLE_THERMAL = ("serious", "critical")


# ---- commands (pure: tested on Linux) ----------------------------------------------------------

def simctl_list_cmd() -> list[str]:
    return ["xcrun", "simctl", "list", "devices", "available", "--json"]


def simctl_boot_cmd(udid: str) -> list[str]:
    return ["xcrun", "simctl", "bootstatus", udid, "-b"]  # boots if needed, waits until ready


def xcodegen_cmd() -> list[str]:
    return ["xcodegen", "generate", "--spec", str(IOS_DIR / "project.yml"), "--project", str(IOS_DIR)]


def xcodebuild_test_cmd(udid: str, model: Path, out_json: Path, plan: BenchPlan, units: list[str],
                        derived: Path) -> tuple[list[str], dict[str, str]]:
    cmd = ["xcodebuild", "test", "-project", str(PROJECT), "-scheme", "MBV3BenchTests",
           "-destination", f"platform=iOS Simulator,id={udid}", "-derivedDataPath", str(derived),
           "-only-testing:MBV3BenchTests/BenchmarkTests/testBenchmark", "CODE_SIGNING_ALLOWED=NO"]
    env = {"TEST_RUNNER_MBV3_MODEL": str(model.resolve()), "TEST_RUNNER_MBV3_OUT": str(out_json.resolve()),
           "TEST_RUNNER_MBV3_ITERS": str(plan.iters), "TEST_RUNNER_MBV3_WARMUP": str(plan.warmup),
           "TEST_RUNNER_MBV3_ROUNDS": str(plan.rounds), "TEST_RUNNER_MBV3_UNITS": ",".join(units)}
    return cmd, env


def devicectl_list_cmd(out_json: Path) -> list[str]:
    return ["xcrun", "devicectl", "list", "devices", "--json-output", str(out_json)]


def xcodebuild_app_cmd(derived: Path, team: str | None) -> list[str]:
    cmd = ["xcodebuild", "build", "-project", str(PROJECT), "-scheme", "MBV3Bench", "-configuration", "Release",
           "-destination", "generic/platform=iOS", "-derivedDataPath", str(derived)]
    if team:
        cmd.append(f"DEVELOPMENT_TEAM={team}")
    return cmd


def devicectl_cmds(udid: str, app: Path, model: Path, plan: BenchPlan, units: list[str],
                   local_json: Path) -> dict[str, list[str]]:
    """The devicectl steps for one device run, by name (install, copy_model, launch, fetch, uninstall)."""
    remote_model = f"Documents/{model.name}"
    container = ["--domain-type", "appDataContainer", "--domain-identifier", BUNDLE_ID]
    return {
        "install": ["xcrun", "devicectl", "device", "install", "app", "--device", udid, str(app)],
        "copy_model": ["xcrun", "devicectl", "device", "copy", "to", "--device", udid, *container,
                       "--source", str(model), "--destination", remote_model],
        # Arguments after the bundle id go to the app (argv); it writes Documents/result.json and exits.
        "launch": ["xcrun", "devicectl", "device", "process", "launch", "--device", udid, "--terminate-existing",
                   BUNDLE_ID, "--mbv3-model", remote_model, "--mbv3-out", "Documents/result.json",
                   "--mbv3-iters", str(plan.iters), "--mbv3-warmup", str(plan.warmup),
                   "--mbv3-rounds", str(plan.rounds), "--mbv3-units", ",".join(units)],
        "fetch": ["xcrun", "devicectl", "device", "copy", "from", "--device", udid, *container,
                  "--source", "Documents/result.json", "--destination", str(local_json)],
        "uninstall": ["xcrun", "devicectl", "device", "uninstall", "app", "--device", udid, BUNDLE_ID],
    }


# ---- parsing (pure: tested on Linux against samples) --------------------------------------------

def parse_simctl_devices(text: str) -> list[dict]:
    """Available simulators, newest runtime first: {udid, name, state, runtime}."""
    data = json.loads(text)
    out = []
    for runtime, devices in data.get("devices", {}).items():
        if "iOS" not in runtime:
            continue
        version = tuple(int(x) for x in runtime.rsplit("iOS-", 1)[-1].split("-") if x.isdigit())
        for d in devices:
            if d.get("isAvailable", True):
                out.append({"udid": d["udid"], "name": d["name"], "state": d.get("state", ""),
                            "runtime": runtime, "version": version})
    return sorted(out, key=lambda d: d["version"], reverse=True)


def pick_simulator(sims: list[dict], wanted: str | None = None) -> dict:
    if not sims:
        raise DeviceError("no iOS simulator available: install an iOS runtime in Xcode (Settings > Platforms)")
    if wanted:
        for s in sims:
            if wanted in (s["udid"], s["name"]):
                return s
        raise DeviceError(f"no simulator named or with UDID {wanted!r}; available: "
                          + ", ".join(sorted({s['name'] for s in sims})))
    booted = [s for s in sims if s["state"] == "Booted"]
    if booted:
        return booted[0]
    phones = [s for s in sims if s["name"].startswith("iPhone")]
    return (phones or sims)[0]


def parse_devicectl_devices(text: str) -> list[dict]:
    """Physical devices from `devicectl list devices --json-output`: {udid, name, model, os, state}."""
    data = json.loads(text)
    out = []
    for d in data.get("result", {}).get("devices", []):
        hw, props = d.get("hardwareProperties", {}), d.get("deviceProperties", {})
        conn = d.get("connectionProperties", {})
        out.append({"udid": hw.get("udid") or d.get("identifier"), "identifier": d.get("identifier"),
                    "name": props.get("name", ""), "model": hw.get("productType", ""),
                    "os": props.get("osVersionNumber", ""), "platform": hw.get("platform", ""),
                    "state": conn.get("tunnelState", ""), "paired": conn.get("pairingState") == "paired"})
    return out


def parse_app_result(text: str, *, where: str) -> dict:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunnerError(f"{where}: the benchmark app wrote no valid JSON ({e})") from e
    if doc.get("schema") != APP_SCHEMA:
        raise RunnerError(f"{where}: result schema {doc.get('schema')!r}, expected {APP_SCHEMA}; rebuild the app")
    if doc.get("error"):
        raise RunnerError(f"{where}: the benchmark app failed: {doc['error']}")
    for r in doc.get("results", []):
        if r.get("error") is None and not r.get("rounds"):
            raise RunnerError(f"{where}: compute unit {r.get('compute_units')} has no timed rounds")
    return doc


def results_from_app(doc: dict, plan: BenchPlan, *, model: Path, target_desc: dict) -> dict:
    dev = doc.get("device", {})
    device = {"model": dev.get("model", ""), "name": dev.get("name", ""), "os": dev.get("os", ""),
              "abi": "arm64", "simulator": bool(dev.get("simulator")), "thermal_state": dev.get("thermal_state"),
              "low_power_mode": dev.get("low_power_mode"), "cpus": dev.get("cpus"), **target_desc}
    results = new_results("ios", plan, device=device, app=doc.get("app", {}))
    flags = []
    if device["simulator"]:
        flags.append("simulator: timings are the Mac's, not a phone's")
    if dev.get("low_power_mode"):
        flags.append("Low Power Mode was on")
    for state_key in ("thermal_state", "thermal_state_after"):
        if dev.get(state_key) in UNRELIABLE_THERMAL:
            flags.append(f"thermal state {dev[state_key]} ({state_key.replace('_', ' ')})")
    for r in doc["results"]:
        if r.get("error"):
            results["notes"].append(f"{r['compute_units']}: not measured: {r['error']}")
            continue
        add_measurement(results, variant=model.name, model=str(model), runtime=f"coreml-{r['compute_units']}",
                        threads=0, rounds=r["rounds"], extra_flags=flags, compile_ms=doc.get("compile_ms"),
                        output=r.get("output"))
    return results


# ---- running (macOS) ------------------------------------------------------------------------

def _run(cmd: list[str], *, timeout: float, env: dict | None = None, what: str) -> subprocess.CompletedProcess:
    import os

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{what} did not finish in {timeout:g} s") from None
    except FileNotFoundError as e:
        raise HarnessError(f"{what}: {cmd[0]} not found ({e}); the iOS target needs macOS with Xcode") from e
    if proc.returncode != 0:
        raise HarnessError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-1500:]}")
    return proc


def _require_macos() -> None:
    if platform.system() != "Darwin" or not shutil.which("xcrun"):
        raise HarnessError("the ios target needs macOS with Xcode (xcrun, xcodebuild); on Linux use --target host "
                           "or --target adb")
    if not PROJECT.exists():
        if not shutil.which("xcodegen"):
            raise HarnessError(f"{PROJECT.name} is generated from ios/project.yml: brew install xcodegen")
        _run(xcodegen_cmd(), timeout=120, what="generating the Xcode project")


def run_ios(models: list[Path], plan: BenchPlan, *, simulator: str | None = None, device: str | None = None,
            compute_units: str = "cpuOnly,cpuAndGPU,cpuAndNeuralEngine", team: str | None = None,
            log=print) -> dict:
    units = [u.strip() for u in compute_units.split(",") if u.strip()]
    bad = [u for u in units if u not in COMPUTE_UNITS]
    if bad:
        raise HarnessError(f"unknown compute units {bad}; choose from {', '.join(COMPUTE_UNITS)}")
    if len(models) != 1:
        raise HarnessError("the ios target times one .mlpackage per run; pass a single --model")
    _require_macos()
    model = models[0]
    with tempfile.TemporaryDirectory(prefix="mbv3-ios-") as tmp:
        tmp = Path(tmp)
        out_json = tmp / "result.json"
        if device:
            listing = tmp / "devices.json"
            _run(devicectl_list_cmd(listing), timeout=60, what="listing devices")
            devs = {d["udid"]: d for d in parse_devicectl_devices(listing.read_text())}
            if device not in devs:
                raise DeviceError(f"device {device} not found by devicectl (found: {', '.join(devs) or 'none'})")
            _run(xcodebuild_app_cmd(tmp / "dd", team), timeout=1200, what="building the benchmark app")
            app = next((tmp / "dd").rglob("MBV3Bench.app"))
            steps = devicectl_cmds(device, app, model, plan, units, out_json)
            try:
                for name in ("install", "copy_model", "launch"):
                    _run(steps[name], timeout=600, what=f"devicectl {name}")
                deadline = time.monotonic() + plan.timeout_s
                while True:  # the app writes its result when done; poll for it, bounded
                    try:
                        _run(steps["fetch"], timeout=60, what="fetching the result")
                        break
                    except HarnessError:
                        if time.monotonic() > deadline:
                            raise RunnerError(f"no result from the app after {plan.timeout_s:g} s") from None
                        time.sleep(2)
            finally:
                try:
                    _run(steps["uninstall"], timeout=120, what="uninstalling the app")
                except HarnessError as e:
                    log(f"[harness] {e}")
            desc = {"udid": device, **{k: devs[device][k] for k in ("name", "model", "os")}}
        else:
            sims = parse_simctl_devices(_run(simctl_list_cmd(), timeout=60, what="listing simulators").stdout)
            sim = pick_simulator(sims, simulator)
            _run(simctl_boot_cmd(sim["udid"]), timeout=300, what=f"booting {sim['name']}")
            cmd, env = xcodebuild_test_cmd(sim["udid"], model, out_json, plan, units, tmp / "dd")
            _run(cmd, env=env, timeout=plan.timeout_s + 900, what="xcodebuild test (simulator benchmark)")
            desc = {"udid": sim["udid"], "simulator_name": sim["name"], "runtime": sim["runtime"]}
        doc = parse_app_result(out_json.read_text(), where=f"{model.name} on iOS")
    return results_from_app(doc, plan, model=model, target_desc=desc)
