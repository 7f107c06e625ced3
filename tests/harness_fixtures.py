"""Fixtures for the device-harness tests (tests/test_harness_*.py load it with pytest_plugins).

- harness_runner: the host-built native runner (cached under $MBV3_CACHE/harness/build).
- harness_models: the CI checkpoint's published fp32 .pte (conftest's ci_android), a .bpte of it and a
  .bpte with wrong expected outputs (cached under $MBV3_CACHE/harness/models, keyed by their inputs).
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


def _bundle(checkpoint: Path, pte: Path, out: Path) -> None:
    import torch

    from mbv3_mobile import load_checkpoint
    from mbv3_mobile.export.executorch.bundle import bundle_program

    model = load_checkpoint(checkpoint).model.eval()
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(3, *INPUT_SHAPE[1:], generator=gen)
    with torch.no_grad():
        expected = model(inputs)
    out.mkdir(parents=True, exist_ok=True)
    files = (("model.pte", pte.read_bytes()), ("model.bpte", bundle_program(pte, inputs, expected)),
             ("wrong_expected.bpte", bundle_program(pte, inputs, expected + 1.0)))
    for name, data in files:
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out / name)


@pytest.fixture(scope="session")
def harness_models(trained_ci_checkpoint, ci_android) -> dict[str, Path]:
    """The fp32 .pte `mbv3 export android` published for the CI checkpoint, with bundles of 3 cases."""
    ckpt = Path(trained_ci_checkpoint)
    pte = ci_android / "model_fp32.pte"
    key = hashlib.sha256(ckpt.read_bytes() + pte.read_bytes() + executorch_version().encode() + b"harness-models-2").hexdigest()[:12]
    out = cache_root() / "models" / key
    names = ("model.pte", "model.bpte", "wrong_expected.bpte")
    if not all((out / n).is_file() for n in names):
        _bundle(ckpt, pte, out)
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

