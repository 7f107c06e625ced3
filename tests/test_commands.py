"""The commands a user types, through `mbv3` itself (cli.main): export android and ios with their
defaults, parity on a folder of unlabelled pictures with --localize, and the int8 options only the
pipelines wire up (--quant qat against PTQ, --int8-stem int8, --int8-fallback auto, ONNX qoperator)."""

import json

import ci_exports
import onnx
import pytest
from PIL import Image

from mbv3_mobile.cli import main
from mbv3_mobile.core.hashing import sha256_file

pytestmark = pytest.mark.android_export  # the shared android export: conftest schedules it

NAME = ci_exports.NAME
# the shared export settings as options: the command reuses their cached stages
ANDROID = ci_exports.cli_args(ci_exports.ANDROID)


def _manifest(out):
    return json.loads((out / NAME / "manifest.json").read_text())


def test_export_android_command_publishes_a_verified_folder(trained_ci_checkpoint, tmp_path, capsys):
    out = tmp_path / "dist"
    assert main(["export", "android", "--checkpoint", str(trained_ci_checkpoint), *ANDROID, "--out", str(out)]) == 0
    manifest = _manifest(out)
    for entry in manifest["files"]:  # every published byte is the one the manifest names
        assert sha256_file(out / NAME / entry["path"]) == entry["sha256"], entry["path"]
    assert manifest["figures"]["fp32"]["top1_agreement"] == 1.0 and manifest["figures"]["ptq"]["images"] == 10000
    assert str(out / NAME) in capsys.readouterr().out  # the command says where the folder is


@pytest.mark.slow
def test_export_ios_command_builds_the_executorch_coreml_pte_by_default(trained_ci_checkpoint, tmp_path):
    out = tmp_path / "dist"
    assert main(["export", "ios", "--checkpoint", str(trained_ci_checkpoint), "--variants", "fp32",
                 "--parity-images", "100", "--out", str(out), "--quiet"]) == 0
    manifest = _manifest(out)
    assert (out / NAME / "model_coreml.pte").stat().st_size > 10_000
    assert manifest["executorch_coreml"]["file"] == "model_coreml.pte"
    assert manifest["executorch_coreml"]["delegated_nodes"] > 0
    assert "model_coreml.pte" in {f["path"] for f in manifest["files"]}
    assert "not run here" in (out / NAME / "README.md").read_text()  # the README says what was verified where


@pytest.fixture
def picture_folder(fashion_test, tmp_path):
    """300 real Fashion-MNIST test pictures as PNG files in nested folders, no labels."""
    folder = tmp_path / "my_pictures"
    for i, img in enumerate(fashion_test.images[:300]):
        (folder / f"batch{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"batch{i % 3}" / f"{i:04d}.png")
    return folder


@pytest.mark.slow
def test_parity_command_on_unlabelled_pictures_localises_every_row(trained_ci_checkpoint, picture_folder, tmp_path,
                                                                    capsys):
    out = tmp_path / "parity"
    assert main(["parity", "--checkpoint", str(trained_ci_checkpoint), "--formats", "onnx", "--images",
                 str(picture_folder), "--localize", "--out", str(out)]) == 0
    data = json.loads(next(out.rglob("parity.json")).read_text())
    assert data["images"] == 300 and data["pictures"]["count"] == 300 and not data["pictures"]["labelled"]
    rows = data["rows"]
    assert set(rows) == {"onnx fp32 (onnxruntime)", "onnx int8 (onnxruntime)", "onnx fp32 .ort (onnxruntime)",
                         "onnx int8 .ort (onnxruntime)"}
    int8 = rows["onnx int8 (onnxruntime)"]
    assert "top1_drop" not in int8 and int8["gate"] == "pass"  # no labels: agreement and SNR gates only
    assert int8["gate_table"] == "classification.int8_unlabelled" and set(int8["bounds"]) == {"top1_agreement", "snr_db"}
    # --localize: every passing row with per-module outputs (the .ort files are the same graphs, opaque)
    assert set(data["localisation"]) == {"onnx fp32 (onnxruntime)", "onnx int8 (onnxruntime)"}
    assert "## Drift localisation" in capsys.readouterr().out


@pytest.mark.slow
def test_android_int8_stem_and_fallback_options_reach_the_published_model(trained_ci_checkpoint, tmp_path):
    """--int8-stem int8 quantizes the stem too; --int8-fallback auto judges it on held-out pictures
    and records its decision."""
    out = tmp_path / "dist"
    assert main(["export", "android", "--checkpoint", str(trained_ci_checkpoint), "--quant", "ptq",
                 "--int8-stem", "int8", "--int8-fallback", "auto", "--int8-fallback-max", "2", "--fallback-images", "200",
                 "--calib-images", "100", "--bundle-images", "2", "--out", str(out), "--quiet"]) == 0
    ptq = _manifest(out)["variants"]["ptq"]
    mixed = ptq["mixed_precision"]
    assert mixed["mode"] == "auto" and mixed["held_out"]["count"] == 200
    assert ptq["fp32_layers"] == mixed["fp32_layers"]  # only what the fallback chose stays fp32
    if mixed["all_int8"]["verdict"] == "pass":  # int8 stem: nothing in fp32 unless the gate needs it
        assert mixed["fp32_layers"] == [] and mixed["chosen"] == mixed["all_int8"]
    else:  # it missed on held-out pictures: ranked, and at most --int8-fallback-max layers kept
        assert mixed["ranking"] and len(mixed["units"]) <= 2


@pytest.mark.slow
def test_android_qat_is_not_significantly_less_accurate_than_ptq(trained_ci_checkpoint, ci_android, fashion_test,
                                                                   tmp_path):
    """--quant qat fine-tunes (80 steps of 64 real training pictures) from the same calibration as
    the shared PTQ export; on the 10k test pictures its .pte is not significantly less accurate
    than the PTQ .pte (paired, one-sided 95 %), and its own drop gate is not failed."""
    from mbv3_mobile import load_checkpoint
    from mbv3_mobile.export.executorch.runtime import run_pte_on_dataset
    from mbv3_mobile.verify.gates import tango_bounds

    out = tmp_path / "dist"
    settings = ci_exports.cli_args({k: v for k, v in ci_exports.ANDROID.items() if k != "quant"})
    assert main(["export", "android", "--checkpoint", str(trained_ci_checkpoint), "--quant", "qat", "--qat-steps", "80",
                 *settings, "--out", str(out), "--quiet"]) == 0
    manifest = _manifest(out)
    qat = manifest["variants"]["qat"]
    assert qat["qat"]["steps"] == 80 and qat["calibration_images"] == 100
    assert qat["fp32_layers"] == ["features.0.0", "features.1.block.0.0"]  # the same float-stem recipe as PTQ
    assert all(j["verdict"] != "fail" for j in qat["gate"])
    pre = load_checkpoint(trained_ci_checkpoint).preprocessing
    ptq_logits, labels = run_pte_on_dataset(ci_android / "model_int8.pte", fashion_test, pre)
    qat_logits, _ = run_pte_on_dataset(out / NAME / "model_int8_qat.pte", fashion_test, pre)
    ptq_ok, qat_ok = ptq_logits.argmax(1) == labels, qat_logits.argmax(1) == labels
    lower, _ = tango_bounds(int((ptq_ok & ~qat_ok).sum()), int((~ptq_ok & qat_ok).sum()), len(labels))
    assert lower <= 0.0, (float(qat_ok.float().mean()), float(ptq_ok.float().mean()))


@pytest.mark.slow
def test_onnx_qoperator_int8_is_a_qlinear_graph(trained_ci_checkpoint, tmp_path):
    out = tmp_path / "dist"
    assert main(["export", "onnx", "--checkpoint", str(trained_ci_checkpoint), "--variants", "int8",
                 "--int8-format", "qoperator", "--calib-images", "100", "--out", str(out), "--quiet"]) == 0
    ops = {n.op_type for n in onnx.load(str(out / NAME / "model_int8.onnx")).graph.node}
    assert "QLinearConv" in ops and "DequantizeLinear" in ops
    assert _manifest(out)["figures"]["int8"]["top1_drop"] <= 0.005
