"""Your model, your pictures: a torchvision checkpoint exported from unlabelled real photos with
label-free gates, preprocessing that matches the checkpoint, ImageNet labels, a model trained on an
ImageFolder exported with accuracy gates, and bad input refused in seconds with nothing published."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mbv3_mobile.data.datasets import DataError
from mbv3_mobile.data.pictures import sample_photo_files
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.pipeline import PipelineError, load_pipeline, run_pipeline
from mbv3_mobile.verify.gates import tango_bounds

pytestmark = pytest.mark.slow
NAME = "mobilenet_v3_small_100_224px"


@pytest.fixture(scope="module")
def torchvision_checkpoint(tmp_path_factory) -> Path:
    from random_torchvision import randomized

    path = tmp_path_factory.mktemp("ckpt") / "mobilenet_v3_small.pth"
    torch.save(randomized("small"), path)  # a plain torchvision-layout state_dict
    return path


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """The sample photos as a user's unlabelled folder: sub-folders, six file formats, 8-bit modes."""
    out = tmp_path_factory.mktemp("photos")
    formats = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("bmp", "BMP"), ("gif", "GIF"), ("tiff", "TIFF")]
    for i, (path, _) in enumerate(sample_photo_files()):
        ext, fmt = formats[i % len(formats)]
        folder = out / ("trip" if i % 2 else "")
        folder.mkdir(exist_ok=True)
        with Image.open(path) as im:
            im = im.convert("RGB") if fmt == "JPEG" and im.mode not in ("RGB", "L") else im.copy()
        im.save(folder / f"{path.stem}.{ext}", fmt)
    (out / "notes.txt").write_text("not a picture: ignored")
    return out


@pytest.fixture(scope="module")
def android_torchvision(torchvision_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    results = run_pipeline(load_pipeline("android"), {"checkpoint": str(torchvision_checkpoint), "out": str(out),
                                                      "inconclusive": "fail"}, progress=False)
    return results, out / NAME


def test_torchvision_checkpoint_exports_from_sample_photos_with_label_free_gates(android_torchvision):
    """No --images, no labels: the sample photos calibrate and judge; every label-free gate passes
    (inconclusive would have failed the run: `inconclusive = fail`)."""
    _, folder = android_torchvision
    m = json.loads((folder / "manifest.json").read_text())
    assert m["pictures"]["ptq"]["source"].startswith("sample photos") and not m["pictures"]["ptq"]["labelled"]
    assert m["pictures"]["ptq"]["gate_table"] == "classification.ptq_unlabelled"
    assert m["pictures"]["fp32"]["gate_table"] == "classification.fp32"
    fp32, ptq = m["figures"]["fp32"], m["figures"]["ptq"]
    assert "top1" not in ptq and ptq["images"] == 80
    assert fp32["top1_agreement"] == 1.0 and fp32["max_abs_dlogit"] <= 1e-4
    assert ptq["bounds"]["top1_agreement"][0] >= 0.85 and ptq["bounds"]["snr_db"][0] >= 15.0
    assert all(j["verdict"] == "pass" for j in m["variants"]["ptq"]["gate"])
    # the preprocessing of a torchvision checkpoint (V1 by default), in the manifest and in words
    pre = m["preprocessing"]
    assert (pre["preset"], pre["resize_shorter"], pre["resolution"], pre["interpolation"]) == ("torchvision-v1", 256, 224, "bilinear")
    assert "shorter side to 256" in pre["rule"] and "central 224x224 crop" in pre["rule"]
    # ImageNet-1k names for a 1000-class head
    labels = (folder / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[:2] == ["tench", "goldfish"] and m["labels_from"].startswith("ImageNet-1k")
    readme = (folder / "README.md").read_text()
    assert "createBitmap(picture, (picture.width - side) / 2" in readme and "im.crop((left, top" in readme


def test_manifest_preprocessing_reproduces_the_gates_inputs_from_raw_files(torchvision_checkpoint, photo_folder, tmp_path):
    """From the raw files and the manifest alone, the pixels the gates used (their sha256)."""
    results = run_pipeline(load_pipeline("onnx"), {"checkpoint": str(torchvision_checkpoint), "images": str(photo_folder),
                                                   "out": str(tmp_path)}, progress=False)
    m = json.loads((tmp_path / NAME / "manifest.json").read_text())
    used = m["pictures"]["fp32"]
    assert used["count"] == 16 and used["source"] == str(photo_folder)
    pre = Preprocessing.from_dict({k: v for k, v in m["preprocessing"].items() if k != "rule"})
    files = sorted(p for p in photo_folder.rglob("*") if p.is_file() and p.suffix != ".txt")
    pixels = np.stack([np.asarray(pre.geometry(Image.open(f)), np.uint8).transpose(2, 0, 1) for f in files])
    import hashlib

    assert hashlib.sha256(pixels.tobytes()).hexdigest() == used["pixels_sha256"]
    assert {f.suffix for f in files} == {".jpg", ".png", ".webp", ".bmp", ".gif", ".tiff"}
    assert m["figures"]["fp32"]["top1_agreement"] == 1.0 and "int8" in m["figures"]
    assert results["verify[int8]"].meta["gate"] == "classification.int8_unlabelled"


def test_core_ml_package_of_a_torchvision_checkpoint_is_an_imagenet_classifier(torchvision_checkpoint, tmp_path):
    import coremltools as ct

    run_pipeline(load_pipeline("ios"), {"checkpoint": str(torchvision_checkpoint), "variants": ["fp16"],
                                        "executorch_pte": False, "out": str(tmp_path), "inconclusive": "fail"},
                 progress=False)
    folder = tmp_path / NAME
    m = json.loads((folder / "manifest.json").read_text())
    assert m["figures"]["fp16"]["bounds"]["snr_db"][0] >= 40 and m["pictures"]["fp16"]["gate_table"] == "classification.fp16_unlabelled"
    spec = ct.models.MLModel(str(folder / "MobileNetV3.mlpackage"), skip_model_load=True).get_spec()
    names = list(spec.description.output)
    assert [o.name for o in names][:2] == ["classLabel", "classLabel_probs"]
    ud = dict(spec.description.metadata.userDefined)
    assert len(json.loads(ud["mbv3.labels"])) == 1000 and json.loads(ud["mbv3.preprocessing"])["resize_shorter"] == 256


def test_preset_and_options_override_the_guess(torchvision_checkpoint, tmp_path):
    from mbv3_mobile.pipeline.runner import preflight

    spec = load_pipeline("android")
    base = {"checkpoint": str(torchvision_checkpoint), "out": str(tmp_path)}
    from mbv3_mobile.pipeline.checks import export_inputs

    assert export_inputs(spec, {**spec.params, **base, "preset": "torchvision-v2"})["preprocessing"].resize_shorter == 232
    timm = export_inputs(spec, {**spec.params, **base, "preset": "timm"})["preprocessing"]
    assert (timm.interpolation, timm.resize_shorter) == ("bicubic", 256)
    custom = export_inputs(spec, {**spec.params, **base, "resize": "none", "mean": ["0.5", "0.5", "0.5"]})["preprocessing"]
    assert custom.resize_shorter is None and custom.mean == (0.5, 0.5, 0.5)
    with pytest.raises(PipelineError, match="--mean takes three numbers"):
        preflight(spec, {**base, "mean": ["0.5"]})


def test_model_trained_on_an_image_folder_exports_with_accuracy_gates(trained_ci_checkpoint, fashion_test, tmp_path):
    """`mbv3 train --dataset DIR` on a small ImageFolder, then the export with --eval-data DIR:
    the labelled (accuracy-drop) gate tables judge it."""
    from mbv3_mobile.cli import main

    root = tmp_path / "folder"
    names = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
    for split, start in (("train", 0), ("test", 5000)):
        for i in range(start, start + 1000 if split == "train" else start + 400):
            img, label = fashion_test[i]
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0].numpy()).save(folder / f"{i}.png")
    # fine-tuned from the tests' model (a new head: the folder's classes are not its labels); a
    # from-scratch model this small and short is too poor for its int8 version to pass the gate
    assert main(["train", "--dataset", str(root / "train"), "--init-checkpoint", str(trained_ci_checkpoint),
                 "--epochs", "2", "--batch-size", "64", "--lr", "0.005", "--no-progress", "--bn-recalibration-images",
                 "512", "--out", str(tmp_path / "run")]) == 0
    results = run_pipeline(load_pipeline("onnx"), {"checkpoint": str(tmp_path / "run" / "model.safetensors"),
                                                   "eval_data": str(root / "test"), "out": str(tmp_path / "dist")},
                           progress=False)
    fig = results["verify[int8]"].meta["figures"]
    assert results["verify[int8]"].meta["gate"] == "classification.int8" and fig["labelled"] and fig["images"] == 400
    c = fig["counts"]  # the drop is judged from the folder's own labels: its paired counts give its bounds
    assert fig["top1_drop"] == pytest.approx((c["only_reference"] - c["only_candidate"]) / 400)
    assert fig["bounds"]["top1_drop"] == pytest.approx(list(tango_bounds(c["only_reference"], c["only_candidate"], 400)))
    labels = (tmp_path / "dist" / "mobilenet_v3_small_050_32px" / "labels.txt").read_text().split()
    assert labels == sorted(names)


# ---------------------------------------------------------------- bad input: seconds, nothing published


def _refused(tmp_path, match, **params):
    with pytest.raises((PipelineError, DataError), match=match):
        run_pipeline(load_pipeline(params.pop("pipeline", "android")), {"out": str(tmp_path / "out"), **params},
                     progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_picture_folders_are_refused_by_name(trained_ci_checkpoint, tmp_path):
    ck = str(trained_ci_checkpoint)
    _refused(tmp_path, "does not exist", checkpoint=ck, images=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    _refused(tmp_path, "holds no pictures .*it is empty", checkpoint=ck, images=str(tmp_path / "empty"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    _refused(tmp_path, r"holds no pictures \(1 other file", checkpoint=ck, images=str(tmp_path / "docs"))
    (tmp_path / "deep").mkdir()
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(tmp_path / "deep" / "scan.png")
    _refused(tmp_path, r"scan.png: more than 8 bits per channel.*convert", checkpoint=ck, images=str(tmp_path / "deep"))


def test_bad_labels_checkpoints_and_qat_without_labels(trained_ci_checkpoint, torchvision_checkpoint, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    _refused(tmp_path, "has 2 lines but the model has 10 outputs", checkpoint=str(trained_ci_checkpoint), labels=str(labels))
    resnet = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64), "fc.weight": torch.zeros(1000, 512)},
               resnet)
    _refused(tmp_path, "not a MobileNetV3", checkpoint=str(resnet))
    _refused(tmp_path, "QAT needs labelled training pictures.*--train-data", checkpoint=str(torchvision_checkpoint),
             quant=["fp32", "qat"])


def test_bad_input_fails_before_any_stage_runs(torchvision_checkpoint, tmp_path, monkeypatch):
    """The checks run first: not one stage function is called for bad input."""
    import mbv3_mobile.pipeline.stages as stages

    called = []
    monkeypatch.setattr(stages, "resolve_checkpoint", lambda ctx: called.append("resolve"))
    _refused(tmp_path, "not one of fp32, ptq, qat", checkpoint=str(torchvision_checkpoint), quant=["int4"])
    _refused(tmp_path, "does not exist", checkpoint=str(torchvision_checkpoint), images=str(tmp_path / "none"))
    assert called == []
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
