"""Failures through the test device: each one a clear error, nothing half-pushed left on the
device, and no partial result reported as a measurement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_adbd import Faults
from harness_support import device_leftovers, harness_cli

from mobile_harness.bench import BenchPlan
from mobile_harness.errors import DeviceError, RunnerError, RunnerTimeout, VerificationError
from mobile_harness.targets.adb import run_adb

pytest_plugins = ["harness_fixtures"]  # the harness fixtures (tests/harness_fixtures.py)

PLAN = BenchPlan(threads=["1"], rounds=1, iters=3, warmup=0, cooldown_s=0, timeout_s=60)
# Long enough (seconds) for the test device to catch the runner alive and signal it.
LONG = BenchPlan(threads=["1"], rounds=1, iters=30_000, warmup=0, cooldown_s=0, timeout_s=60)


def runner_processes(root: Path) -> list[int]:
    """Live processes running a runner binary from inside the device sandbox."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/exe").startswith(str(root)):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def cli(adb, *args, timeout=120):
    return harness_cli("run", "--target", "adb", "--adb-port", adb.server_port, *args, env=adb.env, timeout=timeout)


def test_no_device(adb, harness_runner, harness_models, tmp_path):
    with pytest.raises(DeviceError, match=r"no device found .*adb connect HOST:PORT"):
        run_adb([harness_models["pte"]], PLAN, harness_runner, adb=adb)
    out = tmp_path / "report"
    proc = cli(adb, "--model", harness_models["pte"], "--runner-dir", harness_runner.deploy_dir, "--out", out)
    assert proc.returncode == 2 and "error: no device found" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_two_devices_and_no_serial(adb, fake_devices, harness_runner, harness_models):
    a, b = fake_devices("a"), fake_devices("b")
    with pytest.raises(DeviceError, match=r"2 devices attached .*pass --serial") as e:
        run_adb([harness_models["pte"]], PLAN, harness_runner, adb=adb)
    assert a.serial in str(e.value) and b.serial in str(e.value)
    with pytest.raises(DeviceError, match="is not attached"):
        run_adb([harness_models["pte"]], PLAN, harness_runner, adb=adb, serial="emulator-5554")
    assert a.commands == [] and b.commands == []  # nothing was touched on either


def test_disconnect_mid_push(adb, fake_devices, harness_runner, harness_models, tmp_path):
    # Drop the transport 1 MB into the push (the runner's libraries alone are ~15 MB).
    dev = fake_devices(faults=Faults(disconnect_after_bytes=1_000_000))
    out = tmp_path / "report"
    proc = cli(adb, "--serial", dev.serial, "--model", harness_models["pte"], "--runner-dir",
               harness_runner.deploy_dir, "--out", out, "--rounds", 1, "--iters", 2, "--threads", 1)
    assert proc.returncode == 2, proc.stderr
    assert "pushing to" in proc.stderr and "disconnected" in proc.stderr
    assert len(dev.events) == 1 and ".staging-" in dev.events[0]  # a partial file was left on the device
    # The device left a partial file behind; the harness reconnected and removed its staging folder.
    assert device_leftovers(dev) == []
    assert not out.exists()
    assert dev.pushed == [] or all(".staging-" in p for p in dev.pushed)


def test_storage_full(adb, fake_devices, harness_runner, harness_models):
    dev = fake_devices(faults=Faults(quota_bytes=5_000_000))
    with pytest.raises(DeviceError, match=r"out of storage .*free space"):
        run_adb([harness_models["pte"]], PLAN, harness_runner, adb=adb, serial=dev.serial)
    assert dev.pushed, "some files should have made it before the device filled up"
    assert any("storage full" in e for e in dev.events)
    assert device_leftovers(dev) == []


def test_runner_crash(adb, fake_devices, harness_runner, harness_models):
    dev = fake_devices(faults=Faults(runner_fault="crash"))
    with pytest.raises(RunnerError, match=r"runner crashed \(SIGSEGV, exit 139\); no result was recorded") as e:
        run_adb([harness_models["pte"]], LONG, harness_runner, adb=adb, serial=dev.serial)
    assert e.value.exit_code == 139
    assert device_leftovers(dev) == []


def test_runner_nonzero_exit_on_a_corrupt_model(adb, fake_devices, harness_runner, harness_models, tmp_path):
    dev = fake_devices()
    bad = tmp_path / "truncated.pte"
    bad.write_bytes(harness_models["pte"].read_bytes()[:5000])
    with pytest.raises(RunnerError, match=r"truncated.pte .*runner failed \(exit 1\): loading program") as e:
        run_adb([bad], PLAN, harness_runner, adb=adb, serial=dev.serial)
    assert e.value.exit_code == 1
    assert device_leftovers(dev) == []


def test_wrong_bundled_outputs_are_not_a_measurement(adb, fake_devices, harness_runner, harness_models, tmp_path):
    dev = fake_devices()
    out = tmp_path / "report"
    with pytest.raises(VerificationError, match="differ from the bundled expected outputs"):
        run_adb([harness_models["wrong_bpte"]], PLAN, harness_runner, adb=adb, serial=dev.serial)
    proc = cli(adb, "--serial", dev.serial, "--model", harness_models["wrong_bpte"], "--runner-dir",
               harness_runner.deploy_dir, "--out", out, "--rounds", 1, "--iters", 2, "--threads", 1)
    assert proc.returncode == 2 and "bundled expected outputs" in proc.stderr and not out.exists()
    assert device_leftovers(dev) == []


def test_runner_hang_times_out_and_is_killed(adb, fake_devices, harness_runner, harness_models):
    dev = fake_devices(faults=Faults(runner_fault="hang"))
    plan = BenchPlan(threads=["1"], rounds=1, iters=1_000_000, warmup=0, cooldown_s=0, timeout_s=4)
    with pytest.raises(RunnerTimeout, match=r"did not finish in 4 s and was killed; no result was recorded"):
        run_adb([harness_models["pte"]], plan, harness_runner, adb=adb, serial=dev.serial)
    assert runner_processes(dev.root) == []  # the stopped runner was killed on the device, by pid
    assert any(c.startswith("kill -9 $(cat ") for c in dev.commands)
    assert device_leftovers(dev) == []
