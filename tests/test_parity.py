"""The parity matrix on the trained CI model (ONNX rows here; the other formats add theirs)."""

import json
from pathlib import Path

import ci_exports
import pytest

from mbv3_mobile.crossformat.parity import run_parity
from mbv3_mobile.pipeline import GateFailure, PipelineError
from mbv3_mobile.verify.gates import tango_bounds, wilson_bounds

pytestmark = pytest.mark.android_export  # the shared android export: conftest schedules it

# The shared export settings (tests/fixtures/ci_exports.py), so their cached stages are reused here
# (QAT is tested in test_quantize; on 300 images an int8 drop gate of 0.5 pt is 1.5 images).
FORMAT_PARAMS = {
    "android_params": ci_exports.ANDROID,
    "ios_params": {"variants": ["fp16", "fp32"], "parity_images": 300, "accuracy_images": 2000, "executorch_pte": False},
    "onnx_params": ci_exports.ONNX,
}


@pytest.mark.slow
def test_matrix_over_every_format(trained_ci_checkpoint, tmp_path):
    # 300 pictures cannot resolve a 0.1-pt fp16 or 0.5-pt int8 gate: those rows may be "inconclusive"
    # (said so, with the pictures needed), never "fail" on noise; fp32 rows are exact and must pass.
    result, report = run_parity({"checkpoint": str(trained_ci_checkpoint), "pictures": 300, "out": str(tmp_path),
                                 "inconclusive": "warn", **FORMAT_PARAMS}, progress=False)
    data = json.loads((report / "parity.json").read_text())
    assert (report / "parity.png").stat().st_size > 5000 and "| onnx fp32 (onnxruntime) |" in (report / "parity.md").read_text()
    rows = data["rows"]
    assert set(rows) == {"eager int8 (ptq, PT2E)", "pte fp32 (ExecuTorch)", "pte ptq (ExecuTorch)",
                         "coreml fp16 (MIL interp.)", "coreml fp32 (MIL interp.)",
                         "onnx fp32 (onnxruntime)", "onnx int8 (onnxruntime)",
                         "onnx fp32 .ort (onnxruntime)", "onnx int8 .ort (onnxruntime)"}
    for name in ("pte fp32 (ExecuTorch)", "coreml fp32 (MIL interp.)", "onnx fp32 (onnxruntime)"):
        assert rows[name]["max_abs_dlogit"] <= 1e-4 and rows[name]["top1_agreement"] == 1.0, name
        assert rows[name]["gate"] == "pass", name
    assert all(r["gate"] in ("pass", "inconclusive") and r["images"] == 300 for r in rows.values())
    for name, r in rows.items():  # every rate's bounds are the ones its own counts give (recomputed)
        c = r["counts"]
        assert r["top1_drop"] == pytest.approx((c["only_reference"] - c["only_candidate"]) / 300), name
        assert r["bounds"]["top1_drop"] == pytest.approx(list(tango_bounds(c["only_reference"], c["only_candidate"], 300))), name
        assert r["bounds"]["top1_agreement"] == pytest.approx(list(wilson_bounds(c["agree"], 300))), name
    assert 0.5 < data["reference_top1"] <= 1.0 and not data["failures"]
    assert "bounds" in (report / "parity.md").read_text()


def test_failing_gate_exits_with_matrix_and_localisation(trained_ci_checkpoint, tmp_path, capsys, edited_pipelines):
    # gates come only from the pipeline files: a copy with an int8 gate no model can meet
    edited_pipelines("04_parity.toml", "[gates.classification.int8]\ntop1_drop = { max = 0.005 }",
                     "[gates.classification.int8]\ntop1_drop = { max = -0.5 }")
    with pytest.raises(GateFailure, match="onnx int8"):
        run_parity({"checkpoint": str(trained_ci_checkpoint), "formats": ["onnx"], "pictures": 200,
                    "out": str(tmp_path / "out"), "onnx_params": FORMAT_PARAMS["onnx_params"]}, progress=False)
    data = json.loads(next((tmp_path / "out").rglob("parity.json")).read_text())
    assert data["rows"]["onnx int8 (onnxruntime)"]["gate"] == "fail"
    out = capsys.readouterr().out
    assert "| onnx int8 (onnxruntime) |" in out
    # the failing row, and only it, is localised: per-module drift of the int8 graph, named and tabled
    assert set(data["localisation"]) == {"onnx int8 (onnxruntime)"}
    loc = data["localisation"]["onnx int8 (onnxruntime)"]
    assert loc["table"] and loc["summary"] in out
    assert "## Drift localisation" in next((tmp_path / "out").rglob("parity.md")).read_text()


def test_unknown_format_names_the_known_ones(tmp_path):
    with pytest.raises(PipelineError, match=r"unknown format 'tflite'.*android, ios, onnx"):
        run_parity({"formats": ["onnx", "tflite"], "out": str(tmp_path)}, progress=False)


def test_formats_from_other_checkpoints_are_refused_before_exporting(trained_ci_checkpoint, tmp_path):
    """Mismatched label sets between artifacts: refused in seconds, nothing exported."""
    from mbv3_mobile import load_checkpoint
    from mbv3_mobile.model.checkpoint import save_checkpoint

    ck = load_checkpoint(trained_ci_checkpoint)
    renamed = save_checkpoint(tmp_path / "renamed.safetensors", ck.model, preprocessing=ck.preprocessing,
                              labels=[f"class_{i}" for i in range(len(ck.labels))])
    with pytest.raises(PipelineError, match=r"the ios checkpoint .*renamed.safetensors\) has other labels than the onnx"):
        run_parity({"checkpoint": str(trained_ci_checkpoint), "formats": ["onnx", "ios"], "out": str(tmp_path / "out"),
                    "ios_params": {"checkpoint": str(renamed)}}, progress=False)
    assert not (tmp_path / "out").exists()


def test_format_with_no_artifact_says_what_to_run(trained_ci_checkpoint, tmp_path):
    with pytest.raises(PipelineError, match=r"the ios pipeline.*--variants is empty.*"
                                            r"default: --variants fp16"):
        run_parity({"checkpoint": str(trained_ci_checkpoint), "formats": ["ios"], "out": str(tmp_path),
                    "ios_params": {**FORMAT_PARAMS["ios_params"], "variants": []}}, progress=False)


@pytest.mark.parametrize("fmt", ["android", "ios", "onnx"])
def test_every_format_refuses_images_it_cannot_take(trained_ci_checkpoint, tmp_path, fmt):
    """Wrong size, gray or RGBA channels, raw 0..255 pixels: a UserError naming the expected input,
    from each format's runner (the stages are cached by the matrix test above)."""
    import torch

    from mbv3_mobile.core.errors import UserError
    from mbv3_mobile.export.registry import get_format
    from mbv3_mobile.pipeline import load_pipeline, run_pipeline

    results = run_pipeline(load_pipeline(fmt), {"checkpoint": str(trained_ci_checkpoint), "out": str(tmp_path),
                                                **FORMAT_PARAMS[f"{fmt}_params"]}, progress=False)
    entry = get_format(fmt).hook("parity_entries")(results)[-1]
    assert entry.run(torch.zeros(2, 3, 32, 32)).shape == (2, 10)  # the right input works
    for bad, match in [(torch.zeros(2, 3, 40, 40), r"\(N, 3, 32, 32\); got \(2, 3, 40, 40\)"),
                       (torch.zeros(2, 1, 32, 32), r"gray: 1 channel"),
                       (torch.zeros(2, 4, 32, 32), r"RGBA: 4 channels"),
                       (torch.full((2, 3, 32, 32), 255.0), r"raw 0\.\.255 pixels"),
                       (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), r"normalised float32 images; got torch\.uint8")]:
        with pytest.raises(UserError, match=match):
            entry.run(bad)


def test_same_model_check_reads_cached_and_fresh_metadata_alike():
    """A cached resolve stage's metadata comes back from JSON (lists), a fresh one has tuples: the
    two describe one model; other preprocessing or other weights do not."""
    import json

    from mbv3_mobile.crossformat.formats import FormatRun, check_same_model
    from mbv3_mobile.data.preprocess import preset
    from mbv3_mobile.pipeline.contracts import ResolvedModel
    from mbv3_mobile.pipeline.runner import StageResult

    def run(pipeline: str, meta: dict) -> FormatRun:
        result = StageResult("resolve", None, "k", Path(), json.loads(json.dumps(meta)), True, 0.0)
        spec = type("Spec", (), {"name": pipeline})()
        return FormatRun(None, spec, {}, {"resolve": result})

    fresh = ResolvedModel(task="classification", model_name="m", config={"num_classes": 2}, preprocessing=preset("mbv3", 64),
                          preprocessing_rule="", labels=("a", "b"), labels_from="checkpoint", source="s",
                          source_format="mbv3-mobile", source_sha256="x", params=1, macs=1)
    check_same_model(run("android", fresh.to_meta()), run("ios", fresh.to_meta()))
    other = {**fresh.to_meta(), "preprocessing": preset("mbv3", 48).to_dict()}
    with pytest.raises(PipelineError, match=r"the ios artifacts carry another model than the android artifacts "
                                            r"\(preprocessing"):
        check_same_model(run("android", fresh.to_meta()), run("ios", other))
    with pytest.raises(PipelineError, match=r"weights: y vs x"):
        check_same_model(run("android", fresh.to_meta()), run("ios", {**fresh.to_meta(), "source_sha256": "y"}))
