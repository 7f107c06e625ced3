import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
# Trained test models are cached inside the checkout (git-ignored) unless MBV3_CACHE says otherwise.
os.environ.setdefault("MBV3_CACHE", str(ROOT / ".cache"))
# Tests never reach the network: what they need is fetched by scripts/setup.sh (hash-pinned).
os.environ["MBV3_OFFLINE"] = "1"
# Torch threads: this process's share of the usable cores (affinity and CPU quota), split between
# pytest-xdist workers when there are several, so workers never oversubscribe the machine.
from mbv3_mobile.core.threads import usable_cores  # noqa: E402

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, usable_cores() // WORKERS))


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (what `nox -s tests` passes): one worker per usable core, not per visible CPU
    (xdist's own count ignores a container's CPU quota)."""
    return usable_cores()


@pytest.fixture(scope="session")
def trained_ci_checkpoint() -> Path:
    """MobileNetV3-Small 0.5 @32 trained briefly on real Fashion-MNIST (recipe 'ci', shipped in mbv3_mobile/train/zoo: the same file on every machine)."""
    from mbv3_mobile.train.zoo import ensure_model

    return ensure_model("ci", progress=False)


@pytest.fixture(scope="session")
def ci_android(trained_ci_checkpoint, tmp_path_factory) -> Path:
    """The published folder of `mbv3 export android` on the CI checkpoint (fp32 + int8 PTQ .pte,
    bundles, manifest) with the settings every file shares (tests/fixtures/ci_exports.py);
    read-only for the tests that use it."""
    import ci_exports

    from mbv3_mobile.pipeline import load_pipeline, run_pipeline

    out = tmp_path_factory.mktemp("ci_android")
    run_pipeline(load_pipeline("android"), {"checkpoint": str(trained_ci_checkpoint), "out": str(out),
                                            **ci_exports.ANDROID}, progress=False)
    return out / ci_exports.NAME


@pytest.fixture(scope="session")
def fashion_test():
    from mbv3_mobile.data.datasets import load_fashion_mnist

    return load_fashion_mnist("test")


@pytest.fixture
def edited_pipelines(tmp_path, monkeypatch):
    """`edit(file, old, new)`: the pipeline files copied, `old` replaced by `new` in `file`, and
    MBV3_PIPELINES_DIR pointing at the copy (gates live only in the pipeline files)."""
    import shutil

    from mbv3_mobile.pipeline.spec import pipelines_dir

    copy = tmp_path / "pipelines"
    shutil.copytree(pipelines_dir(), copy)
    monkeypatch.setenv("MBV3_PIPELINES_DIR", str(copy))

    def edit(file: str, old: str, new: str) -> None:
        text = (copy / file).read_text()
        assert old in text, f"{file} no longer contains {old!r}"
        (copy / file).write_text(text.replace(old, new))

    return edit


def pytest_collection_modifyitems(config, items):
    """Longest files first (tests/durations.json, seconds per file from a measured run; regenerate
    with scripts/test_durations.py), order within a file kept. pytest-xdist's loadfile hands files
    out in this order (`nox -s tests` passes --no-loadscope-reorder), so no long file starts last
    while the other workers idle. Files not listed yet go first: new tests are often the slow ones."""
    import json

    costs = json.loads((ROOT / "tests" / "durations.json").read_text())
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item.nodeid.split("::")[0], i)
    items.sort(key=lambda item: (-costs.get(item.nodeid.split("::")[0], float("inf")),
                                 first[item.nodeid.split("::")[0]]))
