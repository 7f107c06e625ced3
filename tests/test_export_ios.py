"""iOS pipeline end to end on the trained CI model (the export library itself: test_export_coreml.py)."""

import json
import zipfile

import pytest

from mbv3_mobile.pipeline import GateFailure, PipelineError, load_pipeline, run_pipeline


@pytest.fixture(scope="module")
def ios_run(trained_ci_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    params = {"checkpoint": str(trained_ci_checkpoint), "out": str(out), "variants": ["fp16", "fp32"],
              "parity_images": 300, "accuracy_images": 2000, "executorch_pte": False}
    return params, run_pipeline(load_pipeline("ios"), params, progress=False), out / "mobilenet_v3_small_050_32px"


@pytest.mark.slow
def test_published_packages_manifest_and_gates(ios_run):
    _, _, folder = ios_run
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (folder / "MobileNetV3.mlpackage" / "Manifest.json").is_file()  # the drop-in package (fp16)
    assert (folder / "MobileNetV3_fp32.mlpackage").is_dir()
    with zipfile.ZipFile(folder / "MobileNetV3.mlpackage.zip") as z:
        assert {n.split("/")[0] for n in z.namelist()} == {"MobileNetV3.mlpackage"}
    entries = {f["path"]: f for f in manifest["files"]}
    assert entries["MobileNetV3.mlpackage"]["kind"] == "directory" and entries["MobileNetV3.mlpackage"]["files"]
    fp32, fp16 = manifest["figures"]["fp32"], manifest["figures"]["fp16"]
    assert fp32["images"] == 300 and fp32["top1_agreement"] == 1.0 and fp32["max_abs_dlogit"] <= 1e-4
    assert fp16["images"] == 2000 and fp16["top1_drop"] <= 0.001 and fp16["reference_top1"] > 0.5
    assert manifest["variants"]["fp16"]["precision"] == "fp16" and manifest["deployment_target"] == "iOS16"
    assert "VNCoreMLRequest" in (folder / "README.md").read_text()


@pytest.mark.slow
def test_fp16_gate_failure_publishes_nothing(trained_ci_checkpoint, tmp_path):
    spec = load_pipeline("ios")
    from mbv3_mobile.verify.gates import GateRule

    strict = spec.__class__(**{**spec.__dict__, "gates": {**spec.gates, "classification.fp16": (GateRule("max_abs_dlogit", "<=", 0.0),)}})
    with pytest.raises(GateFailure, match="Core ML fp16"):
        run_pipeline(strict, {"checkpoint": str(trained_ci_checkpoint), "out": str(tmp_path), "variants": ["fp16"],
                              "accuracy_images": 200, "executorch_pte": False}, progress=False)
    assert not any(tmp_path.iterdir())


def test_unknown_variant_is_a_clear_error(trained_ci_checkpoint, tmp_path):
    with pytest.raises(PipelineError, match="unknown Core ML variant 'fp8'"):
        run_pipeline(load_pipeline("ios"), {"checkpoint": str(trained_ci_checkpoint), "out": str(tmp_path),
                                            "variants": ["fp8"]}, progress=False)
