"""The native runner itself: built against the executorch wheel, run on real exported models, on
the host and (cross-built for aarch64) under qemu. Emulated timings are never asserted or reported."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time

import numpy as np
import pytest
from harness_support import INPUT_SHAPE

from mobile_harness.build import ensure_runner
from mobile_harness.elf import elf_arch, elf_needed
from mobile_harness.runner_inputs import synthetic_input

pytest_plugins = ["harness_fixtures"]  # the harness fixtures (tests/harness_fixtures.py)


def run(runner, *args, wrapper=(), timeout=120):
    env = {"LD_LIBRARY_PATH": str(runner.deploy_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([*wrapper, str(runner.binary), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    doc = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
    return proc.returncode, doc, proc.stderr


def python_reference(pte) -> np.ndarray:
    """ExecuTorch's Python runtime on the runner's synthetic input."""
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(pte)).load_method("forward")
    return method.execute([torch.from_numpy(synthetic_input(0, INPUT_SHAPE))])[0].numpy().reshape(-1)


def test_runner_build_is_cached_and_deployable(harness_runner):
    host = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    assert harness_runner.binary.is_file() and elf_arch(harness_runner.binary) == host  # built for this host
    # The deploy folder holds exactly the ExecuTorch libraries the binary needs (closure of DT_NEEDED).
    shipped = {p.name for p in harness_runner.libs}
    needed = {n for n in elf_needed(harness_runner.binary) if n.startswith("libexecutorch")}
    assert needed <= shipped and "libexecutorch_backend_xnnpack.so" in shipped
    assert "libexecutorch_backend_qnn.so" not in shipped  # only what a CPU model needs
    t0 = time.monotonic()
    again = ensure_runner("host", log=lambda *_: None)
    assert again.cached and again.binary == harness_runner.binary and time.monotonic() - t0 < 5


def test_pte_run_reports_timings_and_matches_python_runtime(harness_runner, harness_models, tmp_path):
    dump = tmp_path / "out.bin"
    rc, doc, err = run(harness_runner, "--model", harness_models["pte"], "--threads", 1, "--iters", 7,
                       "--warmup", 2, "--dump-outputs", dump, "--json", tmp_path / "r.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "r.json").read_text()) == doc  # --json writes the same object
    assert doc["status"] == "ok" and doc["format"] == "pte" and doc["threads"] == 1
    assert doc["iterations"] == 7 and len(doc["latencies_ms"]) == 7
    lat = sorted(doc["latencies_ms"])
    assert doc["min_ms"] == lat[0] and doc["p50_ms"] == pytest.approx(np.percentile(lat, 50), rel=1e-6)
    assert doc["p90_ms"] == pytest.approx(np.percentile(lat, 90), rel=1e-6)
    assert doc["load_ms"] > 0 and doc["first_inference_ms"] > 0
    assert doc["outputs"][0]["shape"] == [1, 10] and doc["checksum"].startswith("fnv1a64:")
    assert doc["verification"]["status"] == "skipped"
    native = np.fromfile(dump, dtype=np.float32)
    np.testing.assert_allclose(native, python_reference(harness_models["pte"]), atol=1e-5)
    assert doc["outputs"][0]["argmax"] == int(np.argmax(native))


def test_bpte_verification_passes_and_detects_wrong_expectations(harness_runner, harness_models, tmp_path):
    rc, doc, err = run(harness_runner, "--model", harness_models["bpte"], "--iters", 3, "--threads", 2,
                       "--etdump", tmp_path / "p.etdump")
    assert rc == 0, err
    v = doc["verification"]
    assert doc["format"] == "bpte" and doc["input"] == "bundled"
    assert v["status"] == "pass" and v["test_cases"] == 3 and v["max_abs_diff"] < 1e-4
    assert (tmp_path / "p.etdump").stat().st_size > 0 and doc["etdump"].endswith("p.etdump")
    rc, doc, _ = run(harness_runner, "--model", harness_models["wrong_bpte"], "--iters", 1)
    assert rc == 3 and doc["status"] == "verify_failed"
    assert doc["verification"]["status"] == "fail" and "test case 0" in doc["verification"]["first_failure"]
    assert doc["verification"]["max_abs_diff"] == pytest.approx(1.0, abs=1e-3)


def test_runner_errors_are_json_with_exit_codes(harness_runner, harness_models, tmp_path):
    truncated = tmp_path / "truncated.pte"
    truncated.write_bytes(harness_models["pte"].read_bytes()[:4000])
    rc, doc, _ = run(harness_runner, "--model", truncated)
    assert rc == 1 and doc["status"] == "error" and "loading program" in doc["error"]
    rc, doc, _ = run(harness_runner, "--model", tmp_path / "missing.pte")
    assert rc == 1 and "cannot open model file" in doc["error"]
    garbage = tmp_path / "garbage.bpte"
    garbage.write_bytes(b"\x10\x00\x00\x00BP08" + b"\xff" * 8)  # bundle id, offsets out of range
    rc, doc, _ = run(harness_runner, "--model", garbage)
    assert rc == 1 and "malformed .bpte" in doc["error"]
    rc, doc, err = run(harness_runner, "--iters", "0", "--model", harness_models["pte"])
    assert rc == 2 and doc is None and "--iters needs an integer >= 1" in err


@pytest.mark.skipif(not shutil.which("qemu-aarch64-static") or not shutil.which("aarch64-linux-gnu-g++"),
                    reason="needs qemu-user-static and g++-aarch64-linux-gnu (scripts/setup.sh installs them)")
@pytest.mark.slow
def test_aarch64_runner_under_qemu_verifies_bundle(harness_runner, harness_models, tmp_path):
    from mobile_harness.errors import BuildError

    try:
        arm = ensure_runner("linux-aarch64", log=print)
    except BuildError as exc:  # the tests never download: scripts/setup.sh fetches the pinned wheel
        if "MBV3_OFFLINE" in str(exc):
            pytest.skip(str(exc))
        raise
    assert elf_arch(arm.binary) == "aarch64" and all(elf_arch(lib) == "aarch64" for lib in arm.libs)
    qemu = ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"]
    dump = tmp_path / "arm.bin"
    rc, doc, err = run(arm, "--model", harness_models["bpte"], "--iters", 1, "--warmup", 0, "--threads", 1,
                       "--dump-outputs", dump, wrapper=qemu, timeout=300)
    assert rc == 0, err
    assert doc["arch"] == "aarch64" and doc["verification"]["status"] == "pass"
    assert doc["verification"]["test_cases"] == 3
    host_dump = tmp_path / "host.bin"
    rc, _, err = run(harness_runner, "--model", harness_models["bpte"], "--iters", 1, "--threads", 1,
                     "--dump-outputs", host_dump)
    assert rc == 0, err
    np.testing.assert_allclose(np.fromfile(dump, np.float32), np.fromfile(host_dump, np.float32), atol=1e-5)
