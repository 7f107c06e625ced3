"""LR-ASPP through every format on the shipped test segmenter (recipe segmentation-ci, trained on
the composite test bed) and real composite pictures: the gates pass with masks, the apps get
logits at the input size with a label-map snippet, drift localisation names a broken module in
the backbone and in the head, and torchvision's layout exports."""

import copy
import json
import zipfile

import pytest
import torch

from mbv3_mobile.cli import main
from mbv3_mobile.data.segmentation import composite_labels
from mbv3_mobile.pipeline import load_pipeline, run_pipeline
from mbv3_mobile.tasks.segmentation.checkpoint import load_segmentation_checkpoint
from mbv3_mobile.tasks.segmentation.network import lraspp_mobilenet_v3_small
from mbv3_mobile.tasks.segmentation.outputs import pictures
from mbv3_mobile.train.zoo import ensure_model

FOLDER = "lraspp_mobilenet_v3_small_050_64px"
COMMON = {"parity_images": 60}


@pytest.fixture(scope="module")
def seg_checkpoint():
    return ensure_model("segmentation-ci", progress=False)


def _export(name: str, checkpoint, out, **params) -> tuple[dict, dict]:
    run_pipeline(load_pipeline(name), {"checkpoint": str(checkpoint), "out": str(out), **COMMON, **params}, progress=False)
    folder = out / FOLDER
    return json.loads((folder / "manifest.json").read_text()), {p.name: p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def android(seg_checkpoint, tmp_path_factory):
    return _export("android", seg_checkpoint, tmp_path_factory.mktemp("android"), quant=["fp32", "ptq"],
                   calib_images=100)


@pytest.fixture(scope="module")
def onnx_run(seg_checkpoint, tmp_path_factory):
    return _export("onnx", seg_checkpoint, tmp_path_factory.mktemp("onnx"), calib_images=100)


@pytest.fixture(scope="module")
def ios(seg_checkpoint, tmp_path_factory):
    return _export("ios", seg_checkpoint, tmp_path_factory.mktemp("ios"), variants=["fp16", "fp32"],
                   accuracy_images=100, executorch_pte=False)


def _fp32_ok(figures: dict) -> None:
    assert figures["labelled"] and figures["images"] == 60
    assert figures["bounds"]["pixel_agreement"][0] >= 0.999 and figures["max_abs_dlogit"] <= 1e-3
    assert figures["miou_drop"] == pytest.approx(0, abs=1e-3)


@pytest.mark.slow
def test_android_pte_fp32_and_int8_pass_mask_gates_and_output_logits_at_input_size(android):
    manifest, files = android
    assert manifest["task"] == "segmentation"
    assert manifest["output"]["shape"] == [1, 11, 64, 64] and "argmax" in manifest["output"]["meaning"]
    _fp32_ok(manifest["figures"]["fp32"])
    ptq = manifest["figures"]["ptq"]
    assert ptq["images"] == 200 and ptq["bounds"]["miou_drop"][1] <= 0.02 and ptq["pixel_agreement"] > 0.95
    for v in ("fp32", "ptq"):
        assert all(rule["verdict"] == "pass" for rule in manifest["variants"][v]["gate"])
        delegation = manifest["delegation"][v]  # every compute op, both upsamples included, in one delegate
        assert delegation["delegated_subgraphs"] == 1 and not delegation["non_delegated_compute_ops"]
    readme = files["README.md"].read_text()
    assert "fun segment(picture" in readme and "fun overlay(labelMap" in readme
    assert (files["labels.txt"].read_text().split("\n")[:11]) == list(composite_labels())
    # the card shows each variant's masks on the same real pictures, and the manifest vouches for the PNG
    assert "](masks.png)" in files["MODEL_CARD.md"].read_text()
    assert "masks.png" in {e["path"] for e in manifest["files"]} and files["masks.png"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_onnx_and_ort_pass_mask_gates_with_every_node_on_the_coreml_ep(onnx_run):
    manifest, files = onnx_run
    _fp32_ok(manifest["figures"]["fp32"])
    assert manifest["figures"]["int8"]["bounds"]["miou_drop"][1] <= 0.02
    coverage = manifest["ep_coverage"]["fp32"]["eps"]
    assert coverage["coreml_mlprogram"]["node_coverage"] == 1.0  # both Resize nodes taken (checker workaround)
    assert "label_map = logits[0].argmax(0)" in files["README.md"].read_text()


@pytest.mark.slow
def test_coreml_packages_output_a_multiarray_and_pass_mask_gates(ios):
    manifest, files = ios
    _fp32_ok(manifest["figures"]["fp32"])
    fp16 = manifest["figures"]["fp16"]
    assert fp16["images"] == 100 and fp16["bounds"]["miou_drop"][1] <= 0.005 and fp16["pixel_agreement"] > 0.999
    assert list(manifest["outputs"]) == ["logits"]
    with zipfile.ZipFile(files["MobileNetV3.mlpackage.zip"]) as z:
        assert any(n.endswith("model.mlmodel") for n in z.namelist())
    readme = files["README.md"].read_text()
    assert "VNCoreMLFeatureValueObservation" in readme and "classLabel" not in readme


@pytest.mark.slow
def test_drift_localisation_names_a_broken_backbone_block_and_a_broken_head_module(seg_checkpoint, tmp_path):
    """Deliberately broken ONNX exports of the test segmenter (a depthwise conv of the last stage, or
    the head's 1x1 conv, scaled by 1.05): the first module whose output departs is the one broken."""
    from mbv3_mobile.export.onnx.convert import export_onnx
    from mbv3_mobile.export.onnx.runtime import module_outputs, module_scopes
    from mbv3_mobile.verify.drift import localize

    ck = load_segmentation_checkpoint(seg_checkpoint)
    pics = pictures(given="composite", images="", labels=list(composite_labels()), pre=ck.preprocessing,
                    purpose="eval", split="test", limit=1)
    image = pics.normalized(ck.preprocessing)
    good = export_onnx(ck.model, 64, tmp_path / "good.onnx")
    assert localize(ck.model, image, module_outputs(good, image, module_scopes(good)), 1e-4).module is None
    last = len(ck.model.backbone) - 2  # the last inverted-residual block (then the 1x1 conv)
    for name, weight in ((f"backbone.{last}.block.1", lambda m: m.backbone[last].block[1][0].weight),
                         ("classifier.cbr", lambda m: m.classifier.cbr[0].weight)):
        broken = copy.deepcopy(ck.model)
        with torch.no_grad():
            weight(broken).mul_(1.05)
        bad = export_onnx(broken, 64, tmp_path / "bad.onnx")
        report = localize(ck.model, image, module_outputs(bad, image, module_scopes(bad)), 1e-4)
        assert report.module is not None and report.module.startswith(name), report.table()


@pytest.mark.slow
def test_torchvision_layout_lraspp_state_dict_exports_to_pte(tmp_path, capsys):
    """A state_dict in torchvision's lraspp_mobilenet_v3_large layout (here the Small builder's at
    width 0.5, random weights) loads from a .pth and exports; fp32 parity holds on sample photos."""
    model = lraspp_mobilenet_v3_small(width=0.5, num_classes=21)
    path = tmp_path / "lraspp.pth"
    torch.save(model.state_dict(), path)
    assert main(["-q", "export", "android", "--checkpoint", str(path), "--task", "segmentation", "--quant", "fp32",
                 "--resolution", "64", "--images", "samples", "--parity-images", "20", "--out", str(tmp_path / "d")]) == 0
    manifest = json.loads(next((tmp_path / "d").glob("*/manifest.json")).read_text())
    figures = manifest["figures"]["fp32"]
    assert not figures["labelled"] and figures["pixel_agreement"] == 1.0 and figures["max_abs_dlogit"] <= 1e-4


@pytest.mark.parametrize("args, needle", [
    (["--task", "segmentation", "--quant", "qat"], "QAT is not available for segmentation"),
    (["--eval-data", "{pictures}"], "needs masks"),
])
def test_bad_segmentation_export_requests_fail_before_any_stage(seg_checkpoint, tmp_path, capsys, args, needle):
    pics = tmp_path / "pics"
    pics.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 30, 200)).save(pics / "a.png")
    args = [a.replace("{pictures}", str(pics)) for a in args]
    assert main(["export", "android", "--checkpoint", str(seg_checkpoint), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and not (tmp_path / "o").exists()
