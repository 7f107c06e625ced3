"""Data loaders on the real Debian Fashion-MNIST files and on ImageFolder trees built on the fly."""

import gzip
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mbv3_mobile.data.datasets import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    ArrayDataset,
    BatchTransform,
    DataError,
    ImageFolderDataset,
    balanced_subset,
    fashion_mnist_preprocessing,
    load_dataset,
    load_fashion_mnist,
    random_erase,
    train_val_split,
)

COLORS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def make_image_tree(root: Path, per_class: int = 6, size: int = 20, classes=COLORS) -> Path:
    """root/<color>/NN.png|jpg: solid colour with a little per-image noise (classes are separable)."""
    rng = np.random.default_rng(0)
    for name, rgb in classes.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.integers(-20, 21, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(d / f"{i:02d}.{'png' if i % 2 else 'jpg'}", quality=95)
    return root


# ---------------------------------------------------------------- Fashion-MNIST (real files)


def test_fashion_mnist_train_shapes_labels_balance_and_statistics():
    train = load_fashion_mnist("train")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.classes == FASHION_MNIST_LABELS and len(train.classes) == 10
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    x = train.images.float() / 255
    # The normalisation constants stored in every checkpoint are this data's real statistics.
    assert x.mean().item() == pytest.approx(FASHION_MNIST_MEAN[0], abs=1e-3)
    assert x.std().item() == pytest.approx(FASHION_MNIST_STD[0], abs=1e-3)
    # Label 1 is "Trouser": tall thin items, so the centre column is brighter than the side columns.
    trousers = x[train.labels == 1]
    assert trousers[..., 12:16].mean() > 2 * trousers[..., :4].mean()


def test_fashion_mnist_test_split(fashion_test):
    assert fashion_test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(fashion_test.labels).tolist() == [1000] * 10
    first = fashion_test.images[0, 0]
    assert int(first.max()) > 200 and int(first.min()) == 0  # a real picture, not zeros
    assert fashion_test.labels[0].item() == 9  # the IDX file's first test label (Ankle boot)


def test_missing_files_name_the_apt_command(tmp_path):
    with pytest.raises(DataError, match=r"apt-get install -y dataset-fashion-mnist") as err:
        load_fashion_mnist("train", root=tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(err.value)
    with pytest.raises(DataError, match="unknown Fashion-MNIST split 'val'"):
        load_fashion_mnist("val")


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    src = Path(os.environ.get("MBV3_FASHION_MNIST_DIR", FASHION_MNIST_DIR))  # where the loader reads it
    with gzip.open(src / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[: len(raw) // 2])
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes((src / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_fashion_mnist("test", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a readable gzip file"):
        load_fashion_mnist("test", root=tmp_path)


def test_train_val_split_is_stratified_disjoint_and_complete():
    n = 120
    images = torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1).to(torch.uint8)  # pixel = index
    ds = ArrayDataset(images, torch.arange(n) % 3, ("a", "b", "c"))
    train, val = train_val_split(ds, val_fraction=0.25, seed=1)
    train_ids, val_ids = set(train.images.flatten().tolist()), set(val.images.flatten().tolist())
    assert not train_ids & val_ids and train_ids | val_ids == set(range(n))
    assert torch.bincount(val.labels).tolist() == [10, 10, 10]
    assert train_val_split(ds, 0.25, seed=1)[1].images.equal(val.images)  # seeded
    assert not train_val_split(ds, 0.25, seed=2)[1].images.equal(val.images)
    with pytest.raises(DataError, match=r"validation fraction must be in \(0, 1\)"):
        train_val_split(ds, 0.0)
    sub = balanced_subset(ds, 4)
    assert torch.bincount(sub.labels).tolist() == [4, 4, 4]


def test_fashion_mnist_validation_split_sizes():
    train, val = train_val_split(load_fashion_mnist("train"))
    assert len(train) == 55000 and len(val) == 5000
    assert torch.bincount(val.labels).tolist() == [500] * 10


# ---------------------------------------------------------------- batch transform / augmentation


def test_batch_transform_gray_to_rgb_resize_and_normalise():
    pre = fashion_mnist_preprocessing(40)
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    images[1] = 255
    x = BatchTransform(pre)(images)
    assert x.shape == (2, 3, 40, 40) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.full_like(x[0], -FASHION_MNIST_MEAN[0] / FASHION_MNIST_STD[0]))
    assert torch.allclose(x[1], torch.full_like(x[1], (1 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]))


def test_augmentation_is_seeded_and_changes_images(fashion_test):
    t = BatchTransform(fashion_mnist_preprocessing(32), augment=True, random_erasing=0.5)
    batch = fashion_test.images[:64]
    a = t(batch, torch.Generator().manual_seed(0))
    b = t(batch, torch.Generator().manual_seed(0))
    c = t(batch, torch.Generator().manual_seed(1))
    plain = BatchTransform(fashion_mnist_preprocessing(32))(batch)
    assert a.equal(b) and not a.equal(c)
    changed = (a != plain).flatten(1).any(1).float().mean().item()
    assert changed > 0.5  # most images moved, flipped or erased
    still = BatchTransform(fashion_mnist_preprocessing(32), augment=True, translate=0.0)(batch, torch.Generator())
    flipped_or_same = [still[i].equal(plain[i]) or still[i].equal(plain[i].flip(-1)) for i in range(64)]
    assert all(flipped_or_same)  # translate=0 leaves only the flip


def test_random_erase_rectangle_sizes():
    x = torch.ones(500, 3, 32, 32)
    out = random_erase(x, 1.0, torch.Generator().manual_seed(0))
    erased = (out[:, 0] == 0).flatten(1).float().mean(1)
    assert (erased >= 0.015).all() and (erased <= 0.30).all()
    assert out[:, 0].eq(out[:, 2]).all()  # the same rectangle on every channel
    assert random_erase(x, 0.0, torch.Generator()).equal(x)


# ---------------------------------------------------------------- ImageFolder


def test_image_folder_decodes_sorted_classes(tmp_path):
    root = make_image_tree(tmp_path / "tree")
    (root / "red" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ImageFolderDataset(root, 24)
    assert ds.classes == ("blue", "green", "red") and len(ds) == 18 and ds.skipped == []
    assert ds.images.shape == (18, 3, 24, 24) and ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels).tolist() == [6, 6, 6]
    red = ds.images[ds.labels == 2].float().mean((0, 2, 3))
    assert red[0] > 200 and red[1] < 40 and red[2] < 40
    assert isinstance(load_dataset(str(root), resolution=24), ImageFolderDataset)


def test_image_folder_skips_corrupt_and_non_image_files_with_a_count(tmp_path):
    root = make_image_tree(tmp_path / "tree")
    (root / "green" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    good = (root / "blue" / "00.jpg").read_bytes()
    (root / "blue" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "red" / "notes.txt").write_text("labels were checked by hand")
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable or non-image file\(s\)"):
        ds = ImageFolderDataset(root, 16)
    assert len(ds) == 18
    assert sorted(p.name for p, _ in ds.skipped) == ["broken.png", "notes.txt", "truncated.jpg"]
    with pytest.raises(DataError, match=r"notes\.txt: not an image file name .*--strict-images"):
        ImageFolderDataset(root, 16, strict=True)
    (root / "red" / "notes.txt").unlink()
    with pytest.raises(DataError, match=r"(broken\.png|truncated\.jpg): unreadable image .*--strict-images"):
        ImageFolderDataset(root, 16, strict=True)


def test_image_folder_modes_and_sizes(tmp_path):
    """Any size, gray / palette / RGBA / CMYK pictures become RGB at the model's resolution;
    16-bit pictures (which Pillow would clip to white) are refused by name."""
    from PIL import Image

    root = make_image_tree(tmp_path / "tree")
    Image.new("L", (7, 50), 128).save(root / "blue" / "gray_odd_size.png")
    Image.new("RGBA", (300, 200), (255, 0, 0, 255)).save(root / "red" / "rgba.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(root / "red" / "cmyk.jpg")
    Image.new("RGB", (20, 20), (0, 200, 0)).convert("P").save(root / "green" / "palette.png")
    ds = ImageFolderDataset(root, 24)
    assert len(ds) == 22 and ds.images.shape[1:] == (3, 24, 24) and ds.skipped == []
    row = {p.name: i for i, (p, _) in enumerate(ds.files)}
    assert ds.images[row["gray_odd_size.png"]].eq(128).all()
    assert ds.images[row["rgba.png"]][0].float().mean() > 250 and ds.images[row["cmyk.jpg"]][0].float().mean() > 200
    deep = Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16))
    deep.save(root / "blue" / "sixteen_bit.png")
    with pytest.raises(DataError, match=r"sixteen_bit\.png: unreadable image .*mode I;16.*convert it to 8-bit"):
        ImageFolderDataset(root, 24, strict=True)
    with pytest.warns(UserWarning, match="skipped 1"):
        assert len(ImageFolderDataset(root, 24)) == 22


def test_image_folder_empty_class_and_empty_tree_are_errors(tmp_path):
    root = make_image_tree(tmp_path / "tree")
    (root / "yellow").mkdir()
    with pytest.raises(DataError, match="class folder.* with no readable image .*: yellow; add images or remove"):
        ImageFolderDataset(root, 16)
    (root / "yellow" / "bad.png").write_bytes(b"garbage")  # only an unreadable file: still empty
    with pytest.raises(DataError, match=r"yellow \(skipped there: bad\.png \(UnidentifiedImageError"):
        ImageFolderDataset(root, 16)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.png").write_bytes((root / "red" / "01.png").read_bytes())
    with pytest.raises(DataError, match=r"no class sub-folders: put each class's images in .*<class_name>"):
        ImageFolderDataset(flat, 16)
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere", 16)
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
