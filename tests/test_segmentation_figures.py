"""The segmentation comparator: IoU arithmetic on hand-made masks, and bounds over pictures that
hold their stated confidence when the pixels of a picture move together."""

import numpy as np
import pytest
import torch

from mbv3_mobile.tasks.segmentation.figures import MaskComparison, compare_masks, iou_per_class, miou
from mbv3_mobile.verify.gates import GateRule, judge, wilson_bounds


def _logits(classes: torch.Tensor, c: int) -> torch.Tensor:
    """N x H x W class indices -> N x C x H x W logits whose argmax they are."""
    return torch.nn.functional.one_hot(classes.long(), c).permute(0, 3, 1, 2).float() * 4 - 2


def test_iou_and_pixel_figures_match_a_hand_count():
    truth = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])  # 1 picture, 2 x 4
    ref = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    cand = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 2]]])
    masks = truth.clone()
    masks[0, 1, 3] = 255  # ignored: its wrong class 2 counts for nothing
    f = compare_masks(_logits(ref, 3), _logits(cand, 3), masks)
    assert f["pixels"] == 7 and f["pixel_agreement"] == pytest.approx(6 / 7)
    # class 0: tp 3, truth 4, predicted 3 -> 3/4; class 1: tp 3, truth 3, predicted 4 -> 3/4; class 2 absent
    assert f["per_class_iou"][:2] == [pytest.approx(0.75), pytest.approx(0.75)] and f["per_class_iou"][2] is None
    assert f["miou"] == pytest.approx(0.75) and f["reference_miou"] == 1.0 and f["miou_drop"] == pytest.approx(0.25)
    assert f["pixel_accuracy"] == pytest.approx(6 / 7) and f["reference_pixel_accuracy"] == 1.0


def test_identical_outputs_have_no_drop_and_exact_bounds():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(20, 4, 8, 8, generator=g)
    f = compare_masks(ref, ref.clone(), ref.argmax(1))
    assert f["pixel_agreement"] == 1.0 and f["miou_drop"] == 0.0 and f["bounds"]["miou_drop"] == [0.0, 0.0]
    assert f["snr_db"] == float("inf") and f["max_abs_dlogit"] == 0.0


def test_a_class_broken_in_half_the_pictures_is_a_significant_miou_drop():
    g = torch.Generator().manual_seed(1)
    truth = torch.randint(0, 3, (40, 8, 8), generator=g)
    cand = truth.clone()
    cand[:20][cand[:20] == 2] = 0  # class 2 lost in 20 pictures
    f = compare_masks(_logits(truth, 3), _logits(cand, 3), truth)
    lo, hi = f["bounds"]["miou_drop"]
    assert 0 < lo <= f["miou_drop"] <= hi
    verdict = judge(f, GateRule("miou_drop", "<=", 0.01))
    assert verdict["verdict"] == "fail" and "pictures" in verdict["message"]


def _clustered_run(rng, n, side, mean_rate):
    """n pictures whose disagreement share is drawn per picture (a Beta around 1 - mean_rate): a
    whole region of a picture flips at once, as a misplaced boundary does."""
    pixels = side * side
    flips = rng.beta(0.5, 0.5 * mean_rate / (1 - mean_rate), size=n)  # mean: 1 - mean_rate
    ref = torch.zeros(n, side, side, dtype=torch.long)
    cand = ref.clone()
    for i, share in enumerate(flips):
        cand.view(n, -1)[i, : int(round(share * pixels))] = 1
    return _logits(ref, 2), _logits(cand, 2)


def test_pixel_agreement_bound_holds_95_percent_over_clustered_pictures():
    """The one-sided lower bound misses the true rate about 5 % of the time (400 seeded runs of 60
    pictures); a binomial bound over pixels, on the same runs, misses far more often."""
    rng = np.random.default_rng(0)
    rate, side, runs = 0.97, 16, 400
    b = 0.5 * rate / (1 - rate)
    # the population's agreement: the Beta's draws rounded to whole pixels, averaged over 2M pictures
    truth = 1 - np.round(np.random.default_rng(99).beta(0.5, b, size=2_000_000) * side * side).mean() / (side * side)
    missed = pixel_missed = 0
    for _ in range(runs):
        ref, cand = _clustered_run(rng, 60, side, rate)
        comparison = MaskComparison(2)
        comparison.add(ref, cand)
        f = comparison.figures(reps=500, seed=int(rng.integers(1 << 30)))
        missed += f["bounds"]["pixel_agreement"][0] > truth
        pixel_missed += wilson_bounds(f["counts"]["agree"], f["pixels"])[0] > truth
    assert 0.02 <= missed / runs <= 0.09, missed / runs
    assert pixel_missed / runs >= 0.25, pixel_missed / runs  # why the bounds are over pictures


def test_pixel_agreement_gate_is_judged_on_its_bound_and_says_how_many_pictures():
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(30, 3, 16, 16, generator=g)
    cand = ref.clone()
    cand[:3, :, :1, :2] = -cand[:3, :, :1, :2]  # up to 6 pixels of 3 pictures change class
    f = compare_masks(ref, cand)
    assert 0.999 <= f["pixel_agreement"] < 1.0
    verdict = judge(f, GateRule("pixel_agreement", ">=", 0.999))
    assert verdict["verdict"] in ("pass", "inconclusive") and verdict["bounds"] == f["bounds"]["pixel_agreement"]
    if verdict["verdict"] == "inconclusive":
        assert verdict["pictures_needed"] > 30 and "pictures" in verdict["message"]


def test_miou_averages_only_the_classes_in_the_truth():
    conf = np.array([[[5, 1, 0], [0, 4, 0], [0, 0, 0]]], dtype=float)  # class 2 absent from the truth
    iou = iou_per_class(conf)[0]
    assert np.isnan(iou[2]) and miou(conf)[0] == pytest.approx((5 / 6 + 4 / 5) / 2)


def test_masks_with_classes_the_model_lacks_or_other_sizes_are_refused():
    ref = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="class 5, but the model has 3 classes"):
        compare_masks(ref, ref, torch.full((1, 4, 4), 5))
    with pytest.raises(ValueError, match="masks are"):
        compare_masks(ref, ref, torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="logit shapes differ"):
        compare_masks(ref, torch.zeros(1, 3, 4, 5))


def test_examples_keep_each_runtimes_label_map_and_draw_one_column_per_variant(tmp_path):
    from PIL import Image

    from mbv3_mobile.tasks.segmentation.figures import plot_examples, write_examples

    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 16, 16, generator=g)  # "pictures" whose logits are the pixels themselves
    images = torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)
    truth = x.argmax(1)
    flipped = torch.roll(x, 1, dims=1)  # a broken runtime: every pixel's class moves by one
    write_examples(x, x, images, truth, tmp_path / "fp32.npz")
    write_examples(x, flipped, images, None, tmp_path / "int8.npz")
    fp32, int8 = np.load(tmp_path / "fp32.npz"), np.load(tmp_path / "int8.npz")
    assert np.array_equal(fp32["reference"], truth.numpy()) and np.array_equal(fp32["candidate"], fp32["reference"])
    assert np.array_equal(int8["candidate"], flipped.argmax(1).numpy()) and "truth" not in int8.files
    assert np.array_equal(fp32["images"], images.permute(0, 2, 3, 1).numpy())
    plot_examples({"fp32": tmp_path / "fp32.npz", "int8": tmp_path / "int8.npz"}, ["bg", "a", "b", "c"],
                  tmp_path / "masks.png")
    with Image.open(tmp_path / "masks.png") as im:
        w, h = im.size
    # picture, true mask, eager fp32, fp32, int8 across; one row per picture (2.2 in each, 0.8 in legend)
    assert w / h == pytest.approx(5 * 2.2 / (3 * 2.2 + 0.8), rel=0.02)
