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


# The shared android export (the `ci_android` fixture's settings) takes about this long to build
# on 2 cores; a second worker that asks for it meanwhile waits on the stage lock (docs/testing.md).
ANDROID_BUILD_S = 100.0


def pytest_itemcollected(item):
    if "ci_android" in item.fixturenames:
        item.add_marker("android_export")


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: the costs are those of the selected tests
def pytest_collection_modifyitems(config, items):
    """Files ordered for pytest-xdist's loadfile workers (`nox -s tests` passes --no-loadscope-reorder,
    so they are handed out in this order): the longest first, a file's cost being the sum of its
    selected tests' seconds in tests/durations.json (regenerate with scripts/test_durations.py;
    files with no measured test go first: new tests are often the slow ones). The first file that
    uses the shared android export (`android_export` marker, or the ci_android fixture) goes first
    and is followed by about ANDROID_BUILD_S of files that do not, so the other worker has work
    while it builds instead of waiting on its lock. Order within a file is kept."""
    import json

    costs = json.loads((ROOT / "tests" / "durations.json").read_text())
    by_file: dict[str, list] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0], []).append(item)

    measured = {nodeid.split("::")[0] for nodeid in costs}

    def cost(file: str) -> float:  # a test the logs do not list counts 0 s (new, or under --durations-min)
        return sum(costs.get(i.nodeid, 0.0) for i in by_file[file]) if file in measured else float("inf")

    longest = sorted(by_file, key=cost, reverse=True)  # stable: collection order among equals
    android = [f for f in longest if any(i.get_closest_marker("android_export") for i in by_file[f])]
    order, covered = android[:1], 0.0
    for file in longest:
        if android and file not in android and covered < ANDROID_BUILD_S:
            order.append(file)
            covered += cost(file)
    order += [f for f in longest if f not in order]
    items[:] = [item for file in order for item in by_file[file]]
