"""`mbv3 eval`: accuracy figures, per-class table, confusion matrix, on Fashion-MNIST and ImageFolders."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import make_image_tree

from mbv3_mobile.cli import main
from mbv3_mobile.core.errors import UserError
from mbv3_mobile.data.datasets import FASHION_MNIST_LABELS, BatchTransform
from mbv3_mobile.model.checkpoint import load_checkpoint, save_checkpoint
from mbv3_mobile.model.network import build_model
from mbv3_mobile.train.evaluate import evaluate

PNG = b"\x89PNG\r\n\x1a\n"


def test_eval_on_fashion_mnist_test(trained_ci_checkpoint, fashion_test):
    report = evaluate(trained_ci_checkpoint, "fashion-mnist")
    assert report.images == 10000 and report.dataset == "fashion-mnist/test"
    assert report.labels == list(FASHION_MNIST_LABELS)
    assert report.top1 > 0.8 and report.top5 >= report.top1  # the 'ci' recipe's bar for int8/parity checks
    confusion = torch.tensor(report.confusion)
    assert confusion.shape == (10, 10) and confusion.sum() == 10000
    assert confusion.diagonal().sum().item() / 10000 == pytest.approx(report.top1)
    for i, label in enumerate(FASHION_MNIST_LABELS):
        assert report.per_class[label]["images"] == 1000 == confusion[i].sum()
        assert report.per_class[label]["top1"] == pytest.approx(confusion[i, i].item() / 1000)
    # Shirt is Fashion-MNIST's hardest class and Trouser one of its easiest, for any decent model.
    assert report.per_class["Shirt"]["top1"] < report.per_class["Trouser"]["top1"]

    # The same figure computed independently from the checkpoint.
    ckpt = load_checkpoint(trained_ci_checkpoint)
    x = BatchTransform(ckpt.preprocessing)(fashion_test.images)
    with torch.no_grad():
        predicted = ckpt.model(x).argmax(1)
    assert (predicted == fashion_test.labels).float().mean().item() == pytest.approx(report.top1, abs=1e-6)


def test_eval_cli_writes_json_and_confusion_png(tmp_path, capsys, trained_ci_checkpoint):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(trained_ci_checkpoint), "--max-images", "500", "--out", str(out),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "eval.json").read_text())
    assert printed == saved and saved["images"] == 500 and len(saved["per_class"]) == 10
    assert saved["preprocessing"]["resolution"] == 32
    assert (out / "confusion.png").read_bytes()[:8] == PNG
    assert main(["eval", "--checkpoint", str(trained_ci_checkpoint), "--max-images", "100", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "top-1" in table and "Ankle boot" in table and "confusion.png" in table


def test_eval_on_image_folder_maps_class_names_and_skips_corrupt(tmp_path, trained_ci_checkpoint, fashion_test):
    root = tmp_path / "fm"
    picks = {"Trouser": 1, "Bag": 8, "Sneaker": 7}  # a subset of the model's classes, as folders
    for name, label in picks.items():
        (root / name).mkdir(parents=True)
        for i, idx in enumerate(torch.nonzero(fashion_test.labels == label).flatten()[:20].tolist()):
            Image.fromarray(fashion_test.images[idx, 0].numpy()).save(root / name / f"{i}.png")
    (root / "Bag" / "corrupt.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="skipped 1"):
        report = evaluate(trained_ci_checkpoint, str(root))
    assert report.images == 60 and set(report.per_class) == set(picks)
    assert report.top1 > 0.75 and any("skipped 1" in note for note in report.notes)
    confusion = torch.tensor(report.confusion)
    rows = {FASHION_MNIST_LABELS[i] for i in range(10) if confusion[i].sum() > 0}
    assert rows == set(picks)  # true labels landed on the model's own class indices


def test_eval_label_mismatch_and_foreign_checkpoint(tmp_path, capsys, trained_ci_checkpoint):
    tree = make_image_tree(tmp_path / "colors", per_class=3, size=8)
    with pytest.raises(UserError, match=r"data class\(es\) \['blue', 'green', 'red'\] are not among"):
        evaluate(trained_ci_checkpoint, str(tree))
    assert main(["eval", "--checkpoint", str(trained_ci_checkpoint), "--dataset", str(tree),
                 "--out", str(tmp_path / "e")]) == 2
    assert "not among the checkpoint's labels" in capsys.readouterr().err

    # A torchvision-style file (no labels, no preprocessing) with as many outputs as classes:
    plain = build_model(arch="small", width=0.35, num_classes=3)
    torch.save(plain.state_dict(), tmp_path / "tv.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = evaluate(tmp_path / "tv.pth", str(tree), resolution=32)
    assert report.images == 9 and report.preprocessing["resolution"] == 32
    assert any("ImageNet mean/std" in n for n in report.notes) and any("sorted folder order" in n for n in report.notes)
    with pytest.raises(UserError, match="differs from the checkpoint's 32 px"):
        evaluate(trained_ci_checkpoint, resolution=64)

    four = build_model(arch="small", width=0.35, num_classes=4)
    save_checkpoint(tmp_path / "four.safetensors", four)
    with pytest.raises(UserError, match="no label names and 4 outputs, but the data has 3 classes"):
        evaluate(tmp_path / "four.safetensors", str(tree), resolution=32)


def test_random_model_is_near_chance(tmp_path):
    # Guards the figures against leaking labels: an untrained model must score about 1/10.
    model = build_model(arch="small", width=0.35, num_classes=10)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.classifier[3].parameters():
            p.normal_(0, 1)
    from mbv3_mobile.data.datasets import fashion_mnist_preprocessing

    save_checkpoint(tmp_path / "rand.safetensors", model, preprocessing=fashion_mnist_preprocessing(32),
                    labels=list(FASHION_MNIST_LABELS))
    report = evaluate(tmp_path / "rand.safetensors", max_images=1000)
    assert report.top1 < 0.3
    assert np.isclose(sum(c["images"] for c in report.per_class.values()), 1000)
