"""The real adb client against the loopback test device, then whole benchmarks through it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from fake_adbd import DeviceProfile
from harness_support import ROOT, device_leftovers

from mobile_harness.adb import quote_command
from mobile_harness.bench import BenchPlan
from mobile_harness.device_state import collect_adb_state
from mobile_harness.targets.adb import run_adb

pytest_plugins = ["harness_fixtures"]  # the harness fixtures (tests/harness_fixtures.py)

WEIRD = "my model; $(touch PWNED) `id` & 'q'.pte"


def test_real_adb_client_speaks_to_test_device(adb, fake_devices, tmp_path):
    dev = fake_devices()
    assert (dev.serial, "device") in adb.devices()
    # shell v2: stdout, stderr and the exit code come back separately.
    r = adb.shell(dev.serial, "getprop ro.product.cpu.abi; echo oops >&2; exit 7")
    assert (r.exit_code, r.stdout, r.stderr) == (7, "x86_64\n", "oops\n")
    # sync: push (SEND) of a file with shell metacharacters in its name, LIST, STAT, pull (RECV).
    payload = os.urandom(300_000)  # several DATA chunks and WRTE/OKAY rounds
    src = tmp_path / WEIRD
    src.write_bytes(payload)
    adb.check_shell(dev.serial, ["mkdir", "-p", "/data/local/tmp/t"])
    adb.push(dev.serial, [src], "/data/local/tmp/t")
    assert dev.device_path(f"/data/local/tmp/t/{WEIRD}").read_bytes() == payload
    out = adb.check_shell(dev.serial, ["ls", "/data/local/tmp/t"])
    assert out.strip() == WEIRD
    back = tmp_path / "back"
    adb.pull(dev.serial, "/data/local/tmp/t", back)  # a folder: STAT then LIST then RECV
    assert (back / WEIRD).read_bytes() == payload
    assert not list(dev.root.rglob("PWNED"))
    # Outside the writable folders the device refuses, as a real one does.
    with pytest.raises(Exception, match="Permission denied"):
        adb.push(dev.serial, [src], "/system/bin")


def test_quoted_arguments_reach_the_device_shell_literally(adb, fake_devices):
    dev = fake_devices()
    args = ["printf", "%s|", "a b", "$(id)", "`id`", "x;y", "it's", "*", "$HOME"]
    out = adb.check_shell(dev.serial, args)
    assert out == "a b|$(id)|`id`|x;y|it's|*|$HOME|"
    assert quote_command(args) in dev.commands


def test_device_state_is_read_from_the_device(adb, fake_devices):
    plain = fake_devices("plain")
    s = collect_adb_state(adb, plain.serial)
    assert s["model"] == "MBV3 Test Device" and s["abi"] == "x86_64" and s["sdk"] == 34
    assert s["cpus"] == 2 and s["governors"] == ["schedutil"]
    assert s["cpufreq"]["cpu1"] == {"governor": "schedutil", "cur_khz": 1800000, "min_khz": 300000,
                                    "max_khz": 2400000}
    assert s["thermal_status"] == 0 and s["thermal_status_name"] == "none"
    assert s["battery_temp_c"] == pytest.approx(30.1) and s["thermal_zones"]["thermal_zone0"]["temp_c"] == 41.0
    assert s["rooted"] is False and s["shell_uid"] == 2000
    hot = fake_devices("hot", profile=DeviceProfile(rooted=True, cpus=8, governor="performance", thermal_status=3,
                                                    serial_model="Hot Phone"))
    s = collect_adb_state(adb, hot.serial)
    assert s["rooted"] is True and s["cpus"] == 8 and s["governors"] == ["performance"]
    assert s["thermal_status_name"] == "severe" and s["model"] == "Hot Phone"


@pytest.mark.slow
def test_benchmark_through_adb_end_to_end(adb, fake_devices, harness_runner, harness_models, tmp_path):
    """The CLI, as a person runs it: push, run the native runner on real models, pull, report, clean up."""
    dev = fake_devices()
    model = tmp_path / WEIRD
    shutil.copy(harness_models["pte"], model)
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "mobile_harness", "run", "--target", "adb", "--serial", dev.serial,
           "--model", str(model), "--model", str(harness_models["bpte"]), "--threads", "1,all", "--rounds", "2",
           "--iters", "5", "--warmup", "1", "--cooldown-s", "0", "--etdump",
           "--runner-dir", str(harness_runner.deploy_dir), "--adb-port", str(adb.server_port), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=adb.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["target"] == "adb" and results["serial"] == dev.serial
    assert results["device"]["abi"] == "x86_64" and results["device"]["governors"] == ["schedutil"]
    assert results["device_after"]["battery_temp_c"] == pytest.approx(30.1)
    ms = {(m["variant"], m["threads"]): m for m in results["measurements"]}
    assert set(ms) == {(WEIRD, 1), (WEIRD, 2), ("model.bpte", 1), ("model.bpte", 2)}
    for (_variant, threads), m in ms.items():
        assert m["runtime"] == "native" and len(m["rounds"]) == 2
        assert all(len(r["latencies_ms"]) == 5 and r["threads"] == threads for r in m["rounds"])
        assert m["summary"]["n"] == 10 and m["summary"]["cold_load_ms"] > 0
        assert len({r["checksum"] for r in m["rounds"]}) == 1  # same input, same output, every round
        assert (out / m["etdump"]).stat().st_size > 0
    assert ms[("model.bpte", 2)]["verification"]["status"] == "pass"
    assert ms[(WEIRD, 1)]["verification"]["status"] == "skipped"
    md = (out / "results.md").read_text()
    table, _, picks = md.partition("## Threads to ship")
    assert table.count("| native |") == 4  # the measurements: 2 models x 2 thread counts
    assert picks.count("| native |") == 2  # and per model the count to ship on this device
    assert {p["variant"] for p in results["recommended_threads"]} == {WEIRD, "model.bpte"}
    assert f"{WEIRD} (native): use " in proc.stdout
    # Per-op profile from the pulled ETDump: XNNPACK's own operators, not just one DELEGATE_CALL.
    ops = results["profiles"]["model.bpte"]
    assert isinstance(ops, list) and any("Convolution" in o["op"] for o in ops), ops
    assert "## Per-op profile: model.bpte" in (out / "results.md").read_text()
    assert (out / "latency.png").stat().st_size > 1000
    # Quoted on the way in, nothing injected, nothing left behind.
    assert any(quote_command([f"/data/local/tmp/mbv3/{r}/{WEIRD}"]) in c
               for c in dev.commands for r in [c.split("/data/local/tmp/mbv3/")[-1].split("/")[0]])
    assert not list(dev.root.rglob("PWNED")) and not list(ROOT.glob("PWNED"))
    assert device_leftovers(dev) == []


def test_run_adb_api_records_rounds_and_cleans_up(adb, fake_devices, harness_runner, harness_models):
    dev = fake_devices(profile=DeviceProfile(cpus=4))
    plan = BenchPlan(threads=["2", "all", "8"], rounds=2, iters=3, warmup=0, cooldown_s=0)
    logs = []
    res = run_adb([harness_models["bpte"]], plan, harness_runner, adb=adb, serial=dev.serial, log=logs.append)
    # 'all' is the device's CPU count; counts above it are dropped.
    assert [m["threads"] for m in res["measurements"]] == [2, 4]
    assert any("not rooted" in n for n in res["notes"]) and any("governor schedutil" in n for n in res["notes"])
    assert any("pushing runner" in m for m in logs)
    assert device_leftovers(dev) == []
