"""Android pipeline end to end on the trained CI model: .pte fp32 + int8 PTQ, bundles, manifest, cache."""

import json

import ci_exports
import pytest

from mbv3_mobile.pipeline import PipelineError, load_pipeline, run_pipeline
from mbv3_mobile.pipeline.runner import plan_pipeline

pytestmark = pytest.mark.android_export  # the shared android export: conftest schedules it


@pytest.fixture(scope="module")
def android_run(trained_ci_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    spec = load_pipeline("android")
    params = {"checkpoint": str(trained_ci_checkpoint), "out": str(out), **ci_exports.ANDROID}
    return spec, params, run_pipeline(spec, params, progress=False), out / ci_exports.NAME


def test_published_folder_and_manifest(android_run):
    _, _, results, folder = android_run
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    assert {"model_fp32.pte", "model_int8.pte", "model_fp32.bpte", "model_int8.bpte", "labels.txt", "README.md"} <= set(files)
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in files.values())
    assert manifest["input"]["shape"] == [1, 3, 32, 32] and manifest["preprocessing"]["std"] == [0.353] * 3
    assert manifest["versions"]["executorch"] == "1.5.1" and manifest["versions"]["torch"].startswith("2.13.0")
    assert (folder / "labels.txt").read_text().splitlines()[0] == "T-shirt/top"
    assert "org.pytorch.executorch.Module" in (folder / "README.md").read_text()
    for variant in ("fp32", "ptq"):
        delegation = manifest["delegation"][variant]
        assert delegation["delegated_subgraphs"] == 1 and delegation["non_delegated_compute_ops"] == []
        assert delegation["by_op"]["aten_convolution_default"]["non_delegated"] == 0
        assert manifest["variants"][variant]["bundle_check"]["cases"] == 4
        threads = manifest["variants"][variant]["threads"]  # timed on this host at 1 .. every usable core
        assert str(threads["recommended"]) in threads["p50_ms"] and "1" in threads["p50_ms"]
    assert manifest["variants"]["ptq"]["fp32_layers"] == ["features.0.0", "features.1.block.0.0"]  # the recipe's float stem
    int8_threads = manifest["variants"]["ptq"]["threads"]["recommended"]
    assert f"Module.LOAD_MODE_MMAP, {int8_threads})" in (folder / "README.md").read_text()


def test_gates_held_on_real_images(android_run):
    _, _, results, folder = android_run
    figures = json.loads((folder / "manifest.json").read_text())["figures"]
    fp32, ptq = figures["fp32"], figures["ptq"]
    assert fp32["images"] == 500 and fp32["top1_agreement"] == 1.0 and fp32["max_abs_dlogit"] <= 1e-4
    assert ptq["images"] == 10000 and ptq["top1_drop"] <= 0.005 and ptq["top1_agreement"] > 0.9
    assert fp32["reference_top1"] > 0.5  # trained weights, not chance


def test_bundled_program_verifies_in_the_runtime(android_run):
    from mbv3_mobile.export.executorch.bundle import bundled_program_bytes, verify_bundled_program

    _, _, _, folder = android_run
    assert verify_bundled_program(folder / "model_fp32.bpte")["cases"] == 4
    for variant in ("fp32", "int8"):  # each bundle wraps the published .pte, byte for byte
        assert bundled_program_bytes(folder / f"model_{variant}.bpte") == (folder / f"model_{variant}.pte").read_bytes()


def test_rerun_is_cached_and_a_calibration_change_rekeys_only_the_int8_chain(android_run):
    spec, params, _, _ = android_run
    again = run_pipeline(spec, params, progress=False)
    assert {k for k, r in again.items() if not r.cached} == {"package", "_total"}
    # which stages a changed setting rebuilds: the runner's plan (cache keys), nothing built or deleted
    before, after = plan_pipeline(spec, params), plan_pipeline(spec, {**params, "calib_images": 60})
    assert before == {k: r.key for k, r in again.items() if k != "_total"}  # the plan is what a run uses
    assert {k for k in before if before[k] != after[k]} == {
        "quantize[ptq]", "lower[ptq]", "verify[ptq]", "bundle[ptq]", "threads[ptq]", "package"}


def test_bad_quant_choice_and_resolution(trained_ci_checkpoint, tmp_path):
    with pytest.raises(PipelineError, match="not one of fp32, ptq, qat"):
        run_pipeline(load_pipeline("android"), {"checkpoint": str(trained_ci_checkpoint), "quant": ["int4"],
                                                "out": str(tmp_path)}, progress=False)
    from mbv3_mobile.core.errors import ConfigError

    with pytest.raises(ConfigError, match="resolution 16"):
        run_pipeline(load_pipeline("android"), {"checkpoint": str(trained_ci_checkpoint), "resolution": 16,
                                                "out": str(tmp_path)}, progress=False)
    assert not any(tmp_path.iterdir())
