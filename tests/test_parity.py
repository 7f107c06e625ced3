"""The parity matrix on the trained CI model (ONNX rows here; the other formats add theirs)."""

import json

import pytest

from mbv3_mobile.parity import run_parity
from mbv3_mobile.pipeline import GateFailure


def test_matrix_report_files_and_figures(trained_ci_checkpoint, tmp_path):
    result, report = run_parity({"checkpoint": str(trained_ci_checkpoint), "formats": ["onnx"], "images": 300,
                                 "out": str(tmp_path)}, progress=False)
    data = json.loads((report / "parity.json").read_text())
    assert (report / "parity.png").stat().st_size > 5000 and "| onnx fp32 (onnxruntime) |" in (report / "parity.md").read_text()
    fp32 = data["rows"]["onnx fp32 (onnxruntime)"]
    assert data["images"] == 300 and fp32["gate"] == "pass" and fp32["max_abs_logit_diff"] <= 1e-4
    assert 0.5 < data["reference_top1"] <= 1.0 and not data["failures"]


def test_failing_gate_exits_with_matrix_and_localisation(trained_ci_checkpoint, tmp_path, capsys):
    with pytest.raises(GateFailure, match="onnx int8"):
        run_parity({"checkpoint": str(trained_ci_checkpoint), "formats": ["onnx"], "images": 200, "out": str(tmp_path),
                    "gates": {"int8_max_drop_pts": -50.0}}, progress=False)
    data = json.loads(next(tmp_path.rglob("parity.json")).read_text())
    assert data["rows"]["onnx int8 (onnxruntime)"]["gate"] == "fail"
    assert "| onnx int8 (onnxruntime) |" in capsys.readouterr().out
