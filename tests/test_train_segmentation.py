"""Training and evaluating LR-ASPP: masks move with their pictures under augmentation, a short run on
the composite test bed writes its figures, a classifier's backbone starts the network, the shipped
test segmenter keeps its held-out mIoU, and bad input stops before any training."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from test_segmentation_data import write_pair

from mbv3_mobile.cli import main
from mbv3_mobile.data.datasets import load_fashion_mnist
from mbv3_mobile.data.segmentation import IGNORE_INDEX, augment_pairs, composite_labels, garment_silhouette
from mbv3_mobile.model.checkpoint import load_checkpoint
from mbv3_mobile.tasks.segmentation.checkpoint import load_segmentation_checkpoint
from mbv3_mobile.train.evaluate_segmentation import evaluate_segmentation
from mbv3_mobile.train.loop import TrainConfig
from mbv3_mobile.train.segmentation import make_model
from mbv3_mobile.train.shipped import resolve, shipped
from mbv3_mobile.train.zoo import ensure_model

TINY = ["--task", "segmentation", "--dataset", "composite", "--width", "0.35", "--resolution", "32",
        "--max-train-images", "48", "--batch-size", "16", "--epochs", "2", "--bn-recalibration-images", "32",
        "--val-fraction", "0.25", "--no-progress"]


def _blocks(n: int, side: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pictures whose red channel is 20 * class in 8-px blocks, and their masks."""
    gen = torch.Generator().manual_seed(0)
    small = torch.randint(0, classes, (n, side // 8, side // 8), generator=gen)
    masks = small.repeat_interleave(8, 1).repeat_interleave(8, 2)
    images = torch.zeros(n, 3, side, side)
    images[:, 0] = masks.float() * 20 / 255
    return images, masks


def test_augmentation_moves_masks_with_pictures_and_labels_outside_pixels_ignore():
    images, masks = _blocks(16, 64, 5)
    x, m = augment_pairs(images, masks, torch.Generator().manual_seed(3), translate=0.125, scale=(0.7, 1.3))
    red = (x[:, 0] * 255 / 20).round().long()
    labelled = m != IGNORE_INDEX
    # away from block edges (where bilinear mixes two classes) the picture's class is the mask's
    flat = torch.from_numpy(ndimage.minimum_filter(m.numpy(), size=(1, 5, 5)) == ndimage.maximum_filter(m.numpy(), size=(1, 5, 5)))
    flat[:, :2], flat[:, -2:], flat[:, :, :2], flat[:, :, -2:] = False, False, False, False  # the filter's own edge
    inner = flat & labelled
    assert inner.sum() > 0.2 * m.numel()  # the check covers a fair share of the pixels
    assert (red[inner] == m[inner]).float().mean() > 0.999
    assert not torch.equal(m, masks)  # something moved
    assert (~labelled).any()  # zoomed out or shifted: pixels from outside the picture are ignored, not invented
    assert set(m.unique().tolist()) <= set(range(5)) | {IGNORE_INDEX}


def test_composite_garments_are_filled_silhouettes_covering_every_bright_pixel():
    garments = load_fashion_mnist("test").images[:200, 0].numpy()
    for gray in garments:
        outline = garment_silhouette(gray)
        assert np.array_equal(ndimage.binary_fill_holes(outline), outline)  # no holes left
        assert outline[gray > 0.2 * 255].all()


def test_short_segmentation_run_writes_miou_per_class_iou_confusion_and_masks(tmp_path, monkeypatch):
    monkeypatch.setenv("MBV3_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "segmentation" and summary["model"] == "lraspp_mobilenet_v3_small_035"
    assert 0 < summary["val_miou"] <= 1 and 0 < summary["val_pixel_accuracy"] <= 1
    assert list(summary["val_per_class_iou"]) == list(composite_labels())
    confusion = np.array(summary["val_confusion"])
    assert confusion.shape == (11, 11) and confusion.sum() == 12 * 32 * 32  # every validation pixel counted once
    for png in ("curves.png", "confusion.png", "masks.png"):
        assert Image.open(out / png).format == "PNG"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_miou" in r for r in rows)
    ck = load_segmentation_checkpoint(out / "model.safetensors")
    assert ck.labels == list(composite_labels()) and ck.preprocessing.resolution == 32
    assert ck.extra["train_config"]["task"] == "segmentation"


def test_init_backbone_starts_the_segmenter_from_the_classifier_features():
    cfg = TrainConfig(task="segmentation", arch="small", width=0.5, init_backbone="embedded:ci")
    model = make_model(cfg, list(composite_labels()))
    features = load_checkpoint(resolve("embedded:ci")).model.features.state_dict()
    mine = model.backbone.state_dict()
    assert set(mine) == set(features)
    assert all(torch.equal(mine[k], features[k]) for k in features)
    assert model.config.num_classes == 11


def test_shipped_test_segmenter_keeps_its_recorded_held_out_miou(tmp_path, monkeypatch):
    """The tests' LR-ASPP (recipe segmentation-ci, shipped): its mIoU on 100 held-out composite
    pictures, recomputed here, is within its bounds of the figure recorded at embedding."""
    monkeypatch.setenv("MBV3_CACHE", str(tmp_path / "cache"))
    entry = shipped()["segmentation-ci"]
    report = evaluate_segmentation(ensure_model("segmentation-ci", progress=False), "composite", max_images=100,
                                   out_dir=tmp_path / "eval")
    lo, hi = report.miou_interval
    assert lo <= entry["test_miou_fp32_source"] + 0.02 and hi >= entry["test_miou_fp32_source"] - 0.02
    assert report.miou > 0.12  # trained: background alone scores ~0.07
    assert (tmp_path / "eval" / "masks.png").is_file()


@pytest.mark.parametrize("case, needle", [
    ("classifier as init-checkpoint", "--init-backbone FILE"),
    ("init-backbone for a classifier", "--init-backbone starts a segmentation backbone"),
    ("mask of another size", "40x30"),
    ("image without mask", "no mask"),
    ("rgb mask", "RGB"),
    ("class above the labels", "class index 7"),
    ("no dataset named", "--task segmentation needs masks"),
])
def test_bad_segmentation_input_is_one_line_before_any_training(tmp_path, capsys, monkeypatch, case, needle):
    monkeypatch.setenv("MBV3_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "seg"
    for i in range(4):
        write_pair(root, f"p{i}")
    args = ["train", "--task", "segmentation", "--dataset", str(root), "--width", "0.5", "--resolution", "32",
            "--epochs", "1", "--no-progress"]
    if case == "classifier as init-checkpoint":
        args += ["--init-checkpoint", resolve("embedded:ci")]
    elif case == "init-backbone for a classifier":
        args = ["train", "--init-backbone", resolve("embedded:ci"), "--no-progress"]
    elif case == "no dataset named":
        args = ["train", "--task", "segmentation", "--width", "0.5", "--no-progress"]
    elif case == "mask of another size":
        Image.fromarray(np.zeros((20, 20), np.uint8), "L").save(root / "masks" / "p1.png")
    elif case == "image without mask":
        (root / "masks" / "p2.png").unlink()
    elif case == "rgb mask":
        Image.fromarray(np.zeros((30, 40, 3), np.uint8), "RGB").save(root / "masks" / "p3.png")
    elif case == "class above the labels":
        Image.fromarray(np.full((30, 40), 7, np.uint8), "L").save(root / "masks" / "p0.png")
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mbv3 train: error:") and "\n" not in err and needle in err, err
    assert "Traceback" not in err and not out.exists()  # nothing written
