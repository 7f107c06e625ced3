"""The parity matrix on the trained CI model (ONNX rows here; the other formats add theirs)."""

import json

import pytest

from mbv3_mobile.parity import run_parity
from mbv3_mobile.pipeline import GateFailure

# The same settings as the per-format pipeline tests, so their cached stages are reused here.
FORMAT_PARAMS = {
    "android_params": {"parity_images": 500, "calib_images": 100, "bundle_images": 4},
    "ios_params": {"variants": ["fp16", "fp32"], "parity_images": 300, "accuracy_images": 2000, "executorch_pte": False},
    "onnx_params": {"parity_images": 500, "calib_images": 100},
}


def test_matrix_over_every_format(trained_ci_checkpoint, tmp_path):
    result, report = run_parity({"checkpoint": str(trained_ci_checkpoint), "images": 300, "out": str(tmp_path),
                                 **FORMAT_PARAMS}, progress=False)
    data = json.loads((report / "parity.json").read_text())
    assert (report / "parity.png").stat().st_size > 5000 and "| onnx fp32 (onnxruntime) |" in (report / "parity.md").read_text()
    rows = data["rows"]
    assert set(rows) == {"eager int8 (ptq, PT2E)", "pte fp32 (ExecuTorch)", "pte ptq (ExecuTorch)",
                         "coreml fp16 (MIL interp.)", "coreml fp32 (MIL interp.)",
                         "onnx fp32 (onnxruntime)", "onnx int8 (onnxruntime)"}
    for name in ("pte fp32 (ExecuTorch)", "coreml fp32 (MIL interp.)", "onnx fp32 (onnxruntime)"):
        assert rows[name]["max_abs_logit_diff"] <= 1e-4 and rows[name]["top1_agreement"] == 1.0, name
    assert all(r["gate"] == "pass" and r["images"] == 300 for r in rows.values())
    assert 0.5 < data["reference_top1"] <= 1.0 and not data["failures"]


def test_failing_gate_exits_with_matrix_and_localisation(trained_ci_checkpoint, tmp_path, capsys):
    with pytest.raises(GateFailure, match="onnx int8"):
        run_parity({"checkpoint": str(trained_ci_checkpoint), "formats": ["onnx"], "images": 200, "out": str(tmp_path),
                    "gates": {"int8_max_drop_pts": -50.0}}, progress=False)
    data = json.loads(next(tmp_path.rglob("parity.json")).read_text())
    assert data["rows"]["onnx int8 (onnxruntime)"]["gate"] == "fail"
    assert "| onnx int8 (onnxruntime) |" in capsys.readouterr().out
