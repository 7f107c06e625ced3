"""Segmentation data: user folders built on the fly, and the composite test bed written from the real
Fashion-MNIST files and scikit-image sample photos (no mocks)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mbv3_mobile.data.datasets import DataError, load_fashion_mnist
from mbv3_mobile.data.pictures import sample_photo_files
from mbv3_mobile.data.segmentation import (
    CROP_SHARE,
    SegmentationDataError,
    composite_labels,
    load_segmentation_folder,
    make_composite_dataset,
    scan_segmentation_folder,
)

COUNT, RES = 24, 64


@pytest.fixture(scope="module")
def composite(tmp_path_factory) -> Path:
    return make_composite_dataset(tmp_path_factory.mktemp("bed") / "train", count=COUNT, resolution=RES, seed=0)


@pytest.fixture(scope="module")
def composite_test(tmp_path_factory) -> Path:
    return make_composite_dataset(tmp_path_factory.mktemp("bed") / "test", count=COUNT, resolution=RES,
                                  split="test", seed=0)


@pytest.fixture(scope="module")
def loaded(composite):
    return load_segmentation_folder(composite, RES)


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_pair(root: Path, name: str, size=(40, 30), mask=None, suffix=".png", labels=("bg", "cat", "dog")) -> Path:
    """root/images/<name><suffix> (noise) and root/masks/<name>.png (mode L, `mask` or three stripes)."""
    w, h = size
    rng = np.random.default_rng(len(name))
    (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
    (root / "masks" / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{name}{suffix}")
    if mask is None:
        mask = (np.arange(w)[None, :].repeat(h, 0) * 3 // w).astype(np.uint8)
    Image.fromarray(np.asarray(mask, np.uint8), "L").save(root / "masks" / f"{name}.png")
    (root / "labels.txt").write_text("\n".join(labels) + "\n")
    return root


def covered(fashion, index: int, side: int) -> np.ndarray:
    """Where Fashion-MNIST image `index`, resized to `side`, is opaque enough to be labelled."""
    gray = np.asarray(Image.fromarray(fashion.images[index, 0].numpy()).resize((side, side), Image.BILINEAR))
    return gray.astype(np.float32) / 255 > 0.5


def refused(call, *needles: str) -> str:
    """The SegmentationDataError message of `call()`: one line (the CLI shows one), holding `needles`."""
    with pytest.raises(SegmentationDataError) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, DataError) and "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------- the composite test bed


def test_composite_loads_as_rgb_pictures_with_background_plus_ten_garment_classes(composite, loaded):
    assert loaded.images.shape == (COUNT, 3, RES, RES) and loaded.images.dtype == torch.uint8
    assert loaded.masks.shape == (COUNT, RES, RES) and loaded.masks.dtype == torch.uint8
    assert loaded.labels == composite_labels() and len(loaded.labels) == 11 and loaded.labels[0] == "background"
    assert loaded.files == [f"images/{i:05d}.png" for i in range(COUNT)]
    assert Image.open(composite / "masks" / "00000.png").mode == "L"
    assert Image.open(composite / "images" / "00000.png").mode == "RGB"


def test_composite_masks_hold_classes_0_to_10_with_garment_and_background_in_every_picture(loaded):
    assert int(loaded.masks.max()) <= 10
    garment = (loaded.masks > 0).flatten(1)
    assert garment.any(1).all() and (~garment).any(1).all()


def test_composite_garments_span_most_fashion_mnist_classes(loaded):
    present = torch.bincount(loaded.masks.flatten().long(), minlength=11)[1:] > 0
    assert int(present.sum()) >= 8


def test_composite_garment_pixels_change_the_photo_crop_and_nothing_else_does(composite, loaded):
    """Rebuilt from composite.json: outside every garment box the picture is the photo crop exactly;
    where the mask says garment, it differs from the crop by far more."""
    about = json.loads((composite / "composite.json").read_text())
    photos = {path.name: path for path, _ in sample_photo_files()}
    inside, count = 0.0, 0
    for i, record in enumerate(about["pictures"]):
        x0, y0, side = record["crop"]
        with Image.open(photos[record["photo"]]) as im:
            background = np.asarray(im.convert("RGB").resize((RES, RES), Image.BILINEAR,
                                                             box=(x0, y0, x0 + side, y0 + side)), np.float32)
        image = loaded.images[i].permute(1, 2, 0).numpy().astype(np.float32)
        boxes = np.zeros((RES, RES), bool)
        for g in record["garments"]:
            gx, gy, s = g["box"]
            boxes[gy:gy + s, gx:gx + s] = True
        assert np.array_equal(image[~boxes], background[~boxes])
        garment = loaded.masks[i].numpy() > 0
        inside += float(np.abs(image - background)[garment].sum())
        count += int(garment.sum()) * 3
    assert inside / count > 30  # of 255: the garments are visible, not faint


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(composite, tmp_path):
    again = make_composite_dataset(tmp_path / "again", count=COUNT, resolution=RES, seed=0)
    assert digests(again) == digests(composite) and len(digests(again)) == 2 * COUNT + 2
    other = digests(make_composite_dataset(tmp_path / "other", count=COUNT, resolution=RES, seed=1))
    differ = [name for name in other if name.startswith("images/") and other[name] != digests(composite)[name]]
    assert len(differ) == COUNT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]  # no temp folder left beside them


def test_train_and_test_garments_come_from_their_own_fashion_mnist_split(composite, composite_test):
    """The last garment of each picture is never occluded: its mask is the split's own Fashion-MNIST
    image, thresholded; the other split's image at that index does not reproduce it."""
    fashion = {split: load_fashion_mnist(split) for split in ("train", "test")}
    photos = {}
    for split, root in (("train", composite), ("test", composite_test)):
        about = json.loads((root / "composite.json").read_text())
        other = fashion["test" if split == "train" else "train"]
        assert about["split"] == split
        matches_other = 0
        for record in about["pictures"]:
            mask = np.asarray(Image.open(root / "masks" / Path(record["file"]).name))
            g = record["garments"][-1]
            gx, gy, s = g["box"]
            box = mask[gy:gy + s, gx:gx + s]
            assert int(fashion[split].labels[g["index"]]) == g["label"]
            assert (box[covered(fashion[split], g["index"], s)] == g["label"] + 1).all()
            if g["index"] < len(other):
                wrong = covered(other, g["index"], s)
                matches_other += bool((box[wrong] == g["label"] + 1).all() and (box == g["label"] + 1)[~wrong].sum() == 0)
        assert matches_other <= 2
        photos[split] = {record["photo"] for record in about["pictures"]}
    assert photos["train"].isdisjoint(photos["test"])
    train = digests(composite)
    assert all(digests(composite_test)[f"masks/{i:05d}.png"] != train[f"masks/{i:05d}.png"] for i in range(COUNT))


def test_composite_crops_keep_within_the_photo_and_the_share_of_its_shorter_side(composite):
    sizes = {path.name: Image.open(path).size for path, _ in sample_photo_files()}
    for record in json.loads((composite / "composite.json").read_text())["pictures"]:
        (x0, y0, side), (w, h) = record["crop"], sizes[record["photo"]]
        assert CROP_SHARE[0] * min(w, h) - 1 <= side <= min(w, h) and x0 + side <= w and y0 + side <= h
        assert 1 <= len(record["garments"]) <= 3
        assert all(0.35 * RES - 1 <= g["box"][2] <= 0.75 * RES + 1 for g in record["garments"])


# ---------------------------------------------------------------- resizing


def test_nearest_resizing_keeps_only_stored_class_indices(composite):
    stored = load_segmentation_folder(composite, RES, limit=8, seed=1)
    for resolution in (40, 97):
        other = load_segmentation_folder(composite, resolution, limit=8, seed=1)
        assert other.files == stored.files and other.masks.shape == (8, resolution, resolution)
        for before, after in zip(stored.masks, other.masks):
            assert set(after.unique().tolist()) <= set(before.unique().tolist())


def test_mask_and_image_get_the_same_geometry(tmp_path):
    """Image red channel = 40 * class in 16-px blocks: after resizing a 96x64 pair to 48x48 (the
    model's geometry: the whole picture, no crop), the block interiors still agree pixel for pixel."""
    classes = np.kron(np.arange(24).reshape(4, 6) % 5, np.ones((16, 16), np.int64)).astype(np.uint8)  # 64 x 96
    root = write_pair(tmp_path / "seg", "blocks", size=(96, 64), mask=classes, labels=("a", "b", "c", "d", "e"))
    Image.fromarray(np.stack([classes * 40, np.zeros_like(classes), np.zeros_like(classes)], -1)).save(
        root / "images" / "blocks.png")
    arrays = load_segmentation_folder(root, 48)
    red, mask = arrays.images[0, 0].long(), arrays.masks[0].long()
    assert arrays.images.shape == (1, 3, 48, 48) and set(mask.unique().tolist()) <= set(range(5))
    # Interior: the mask is constant 2 px around (bilinear's reach when shrinking by 4/3).
    window = torch.nn.functional.max_pool2d
    m = mask.float()[None, None]
    interior = (window(m, 5, 1, 2) == -window(-m, 5, 1, 2))[0, 0]
    interior[:2], interior[-2:], interior[:, :2], interior[:, -2:] = False, False, False, False
    assert interior.sum() > 300 and torch.equal(red[interior], mask[interior] * 40)
    assert not torch.equal(red[:, 4:][interior[:, 4:]], mask[:, :-4][interior[:, 4:]] * 40)  # the check can fail


def test_palette_mask_is_read_as_class_indices_not_colours(tmp_path):
    root = write_pair(tmp_path / "seg", "p")
    indices = np.asarray(Image.open(root / "masks" / "p.png"))
    palette = Image.fromarray(indices, "P")
    palette.putpalette([0, 0, 0, 250, 20, 20, 20, 250, 20] + [0] * (256 * 3 - 9))
    palette.save(root / "masks" / "p.png")
    assert Image.open(root / "masks" / "p.png").mode == "P"
    arrays = load_segmentation_folder(root, 32)
    assert set(arrays.masks.unique().tolist()) == {0, 1, 2}


def test_ignore_value_255_is_accepted(tmp_path):
    mask = np.zeros((30, 40), np.uint8)
    mask[:, :10], mask[:, 30:] = 255, 2
    arrays = load_segmentation_folder(write_pair(tmp_path / "seg", "x", mask=mask), 32)
    assert set(arrays.masks.unique().tolist()) == {0, 2, 255}


def test_subfolders_mirror_and_hidden_files_and_suffix_case_are_handled(tmp_path):
    root = write_pair(tmp_path / "seg", "a/b/x", suffix=".JPG")
    write_pair(root, "y", suffix=".webp")
    (root / "images" / ".DS_Store").write_bytes(b"\0")
    (root / "images" / ".cache").mkdir()
    Image.new("RGB", (4, 4)).save(root / "images" / ".cache" / "thumb.png")  # hidden folder: no mask needed
    scan = scan_segmentation_folder(root)
    assert [(i.relative_to(root).as_posix(), m.relative_to(root).as_posix()) for i, m in scan.pairs] == [
        ("images/a/b/x.JPG", "masks/a/b/x.png"), ("images/y.webp", "masks/y.png")]
    assert scan.labels == ("bg", "cat", "dog")
    assert load_segmentation_folder(root, 32).files == ["images/a/b/x.JPG", "images/y.webp"]


def test_limit_picks_the_same_subset_for_the_same_seed(composite):
    first = load_segmentation_folder(composite, 32, limit=5, seed=3)
    assert len(first) == 5 and first.files == sorted(first.files)
    assert load_segmentation_folder(composite, 32, limit=5, seed=3).files == first.files
    assert load_segmentation_folder(composite, 32, limit=5, seed=4).files != first.files
    assert torch.equal(load_segmentation_folder(composite, 32, limit=5, seed=3).masks, first.masks)


# ---------------------------------------------------------------- bad folders


def test_image_without_mask_names_it_and_where_the_mask_belongs(tmp_path):
    root = write_pair(tmp_path / "seg", "sub/x")
    Image.new("RGB", (8, 8)).save(root / "images" / "sub" / "lonely.jpg")
    refused(lambda: scan_segmentation_folder(root), "lonely.jpg has no mask", str(root / "masks" / "sub" / "lonely.png"))


def test_mask_without_image_names_it(tmp_path):
    root = write_pair(tmp_path / "seg", "x")
    Image.new("L", (8, 8)).save(root / "masks" / "stray.png")
    refused(lambda: scan_segmentation_folder(root), str(root / "masks" / "stray.png"), "has no image")


def test_mask_of_another_size_gives_both_sizes(tmp_path):
    root = write_pair(tmp_path / "seg", "x", size=(40, 30))
    Image.new("L", (20, 15)).save(root / "masks" / "x.png")
    refused(lambda: scan_segmentation_folder(root), "x.png is 20x15", "x.png is 40x30")


def test_rgb_mask_is_refused_with_how_to_convert_colours(tmp_path):
    root = write_pair(tmp_path / "seg", "x")
    Image.new("RGB", (40, 30), (128, 64, 0)).save(root / "masks" / "x.png")
    refused(lambda: scan_segmentation_folder(root), "x.png", "mode RGB",
            "masks must be single-channel class-index PNGs (mode L or P), not RGB: convert colours to indices")


def test_jpeg_and_16_bit_masks_are_refused(tmp_path):
    root = write_pair(tmp_path / "seg", "x")
    (root / "masks" / "x.png").unlink()
    Image.new("L", (40, 30)).save(root / "masks" / "x.jpg")
    refused(lambda: scan_segmentation_folder(root), "x.jpg", "not PNG")
    (root / "masks" / "x.jpg").unlink()
    Image.fromarray(np.zeros((30, 40), np.uint16)).save(root / "masks" / "x.png")
    refused(lambda: scan_segmentation_folder(root), "x.png", "8-bit")


def test_class_index_above_the_label_count_names_file_value_and_count(tmp_path):
    labels = composite_labels()
    mask = np.full((30, 40), 3, np.uint8)
    mask[5, 5] = 11
    root = write_pair(tmp_path / "seg", "x", mask=mask, labels=labels)
    scan_segmentation_folder(root)  # headers are fine: the pixels are checked when decoded
    refused(lambda: load_segmentation_folder(root, 32), "masks/x.png", "class index 11", "names 11 classes")


@pytest.mark.parametrize("remove", ["root", "images", "masks", "labels.txt"])
def test_missing_root_folders_or_labels_say_what_is_missing(tmp_path, remove):
    root = write_pair(tmp_path / "seg", "x")
    target = tmp_path / "nowhere" if remove == "root" else root / remove
    if remove == "labels.txt":
        target.unlink()
    elif remove != "root":
        for path in sorted(target.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        target.rmdir()
    refused(lambda: scan_segmentation_folder(target if remove == "root" else root), str(target))


@pytest.mark.parametrize(("text", "needle"), [("", "is empty"), ("\n\n", "is empty"), ("bg\ncat\nbg\n", "'bg' twice"),
                                              ("bg\n\ncat\n", "line 2 is empty")])
def test_empty_blank_or_duplicate_labels_are_refused(tmp_path, text, needle):
    root = write_pair(tmp_path / "seg", "x")
    (root / "labels.txt").write_text(text)
    refused(lambda: scan_segmentation_folder(root), "labels.txt", needle)


def test_unreadable_image_and_unknown_split_are_one_line_errors(tmp_path):
    root = write_pair(tmp_path / "seg", "x")
    (root / "images" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    refused(lambda: scan_segmentation_folder(root), "image", "x.png is unreadable")
    refused(lambda: make_composite_dataset(tmp_path / "bed", count=2, split="val"), "'val'")
    assert not (tmp_path / "bed").exists()
