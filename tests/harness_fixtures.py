"""Fixtures for the device-harness tests (tests/test_harness_*.py load it with pytest_plugins).

- harness_runner: the host-built native runner (cached under $MBV3_CACHE/harness/build).
- harness_models: a real .pte, .bpte and a .bpte with wrong expected outputs, exported from the
  trained CI checkpoint (cached under $MBV3_CACHE/harness/models, keyed by checkpoint + executorch).
- adb: the real adb client with its own server on a free loopback port and a private HOME (its
  keys), killed at teardown.
- fake_devices: start loopback ADB test devices (sandbox folders) and `adb connect` them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from fake_adbd import DeviceProfile, FakeAdbDevice, Faults
from harness_support import INPUT_SHAPE, free_port

from mobile_harness.adb import Adb
from mobile_harness.build import cache_root, ensure_runner, executorch_version


@pytest.fixture(scope="session")
def harness_runner():
    return ensure_runner("host", log=print)


def _export(checkpoint: Path, out: Path) -> None:
    import torch

    from mbv3_mobile import load_checkpoint

    model = load_checkpoint(checkpoint).model.eval()
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(3, *INPUT_SHAPE[1:], generator=gen)
    with torch.no_grad():
        expected = model(inputs)
    example = inputs[:1]
    from mbv3_mobile.export.executorch.bundle import bundle_program
    from mbv3_mobile.export.executorch.lower import export_to_executorch

    lowered = export_to_executorch(model, example)
    pte = lowered.buffer
    bpte = bundle_program(lowered, inputs, expected)
    bad = bundle_program(lowered, inputs, expected + 1.0)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("model.pte", pte), ("model.bpte", bpte), ("wrong_expected.bpte", bad)):
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out / name)


@pytest.fixture(scope="session")
def harness_models(trained_ci_checkpoint) -> dict[str, Path]:
    ckpt = Path(trained_ci_checkpoint)
    key = hashlib.sha256(ckpt.read_bytes() + executorch_version().encode() + b"harness-models-1").hexdigest()[:12]
    out = cache_root() / "models" / key
    names = ("model.pte", "model.bpte", "wrong_expected.bpte")
    if not all((out / n).is_file() for n in names):
        _export(ckpt, out)
    return {"pte": out / "model.pte", "bpte": out / "model.bpte", "wrong_bpte": out / "wrong_expected.bpte"}


@pytest.fixture
def adb(tmp_path):
    home = tmp_path / "adb-home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home))
    env.pop("ANDROID_SERIAL", None)
    client = Adb(server_port=free_port(), env=env)
    client.start_server()
    try:
        yield client
    finally:
        client.kill_server()


@pytest.fixture
def fake_devices(adb, tmp_path):
    """start(name, profile=None, faults=None, connect=True) -> a running FakeAdbDevice."""
    started: list[FakeAdbDevice] = []

    def start(name: str = "phone", *, profile: DeviceProfile | None = None, faults: Faults | None = None,
              connect: bool = True) -> FakeAdbDevice:
        dev = FakeAdbDevice(tmp_path / name, profile=profile, faults=faults, lifetime_s=300,
                            command_timeout_s=120).start()
        started.append(dev)
        if connect:
            adb.connect(dev.serial)
            assert adb.wait_for(dev.serial, 10), f"{dev.serial} did not come online"
        return dev

    try:
        yield start
    finally:
        for dev in started:
            dev.stop()

